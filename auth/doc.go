// Package auth holds what pgmux knows of client passwords and checks them
// with: the auth file in PgBouncer's userlist.txt format, md5 hashes, and
// both sides of SCRAM-SHA-256 (RFC 5802, RFC 7677). It decides whether a
// client's answer is right; the exchange of messages that carry the answers
// is core's (core.ClientAuth, core.ServerLogin).
//
// It must never import net, the pools, the proxy, a logger or metrics.
package auth
