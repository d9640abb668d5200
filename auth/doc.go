// Package auth holds what pgmux knows of client passwords and checks them
// with: the auth file in PgBouncer's userlist.txt format, md5 hashes, and
// the server side of SCRAM-SHA-256 (RFC 5802, RFC 7677). It decides whether
// a client's answer is right; the session that reads and writes the
// messages carrying it is the proxy's.
//
// It must never import net, the pools, the proxy, a logger or metrics.
package auth
