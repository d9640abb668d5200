// Package hba reads an auth_hba_file, pg_hba.conf's format as PgBouncer
// reads it, and says which authentication method a client connection must
// use: the first line whose connection type, database, user and address
// match decides. local lines are for clients on pgmux's Unix socket
// (unix_socket_dir), the others for TCP.
//
// It must never import the proxy, the pools, the configuration or a logger.
package hba

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
)

// Rule is one local, host, hostssl or hostnossl line.
type Rule struct {
	local    bool     // a local line: Unix-socket clients
	tls      int8     // 1: hostssl, -1: hostnossl, 0: host
	dbs      []string // nil: all
	sameUser bool     // the database named as the user
	users    []string // nil: all
	prefix   netip.Prefix
	anyAddr  bool
	Method   string // trust, reject, md5, scram-sha-256 or cert
	Line     int
}

// Rules are a file's lines in order.
type Rules []Rule

// Method returns the method the first matching rule gives a client of user
// asking for database from addr (on the Unix socket if local), over TLS or
// not, and its line; "reject" and 0 when none matches, as PostgreSQL.
func (rs Rules) Method(database, user string, addr netip.Addr, tls, local bool) (string, int) {
	addr = addr.Unmap()
	for _, r := range rs {
		switch {
		case r.local != local:
		case r.tls == 1 && !tls, r.tls == -1 && tls:
		case r.dbs != nil && !slices.Contains(r.dbs, database) && !(r.sameUser && database == user):
		case r.dbs == nil && r.sameUser && database != user:
		case r.users != nil && !slices.Contains(r.users, user):
		case !r.local && !r.anyAddr && !r.prefix.Contains(addr):
		default:
			return r.Method, r.Line
		}
	}
	return "reject", 0
}

var methods = map[string]string{"trust": "trust", "reject": "reject", "md5": "md5", "scram-sha-256": "scram-sha-256",
	"password": "scram-sha-256", "cert": "cert"}

// Parse reads a file. What pgmux cannot honour (a group, an @file, a host
// name, an unknown method) is an error naming its line, not a line skipped.
func Parse(r io.Reader) (Rules, error) {
	var rs Rules
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := fields(line)
		if len(f) == 0 {
			continue
		}
		rule, err := parseRule(f)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		rule.Line = n
		rs = append(rs, rule)
	}
	return rs, sc.Err()
}

func parseRule(f []string) (Rule, error) {
	var r Rule
	switch f[0] {
	case "local":
		// No address: the method follows the user.
		r.local, r.anyAddr = true, true
		f = append(f[:3:3], append([]string{"all"}, f[3:]...)...)
	case "host", "hostnogssenc":
	case "hostssl":
		r.tls = 1
	case "hostnossl":
		r.tls = -1
	default:
		return r, fmt.Errorf("connection type %q is not local, host, hostssl or hostnossl", f[0])
	}
	if len(f) < 5 {
		return r, fmt.Errorf("want type, database, user, address and method, got %d fields", len(f))
	}
	for _, d := range strings.Split(f[1], ",") {
		switch {
		case d == "all":
			r.dbs = nil
		case d == "sameuser":
			r.sameUser = true
		case strings.HasPrefix(d, "@"), d == "replication", d == "samerole", d == "samegroup":
			return r, fmt.Errorf("database %q is not supported", d)
		default:
			r.dbs = append(r.dbs, d)
		}
	}
	if f[1] == "all" {
		r.dbs = nil
	}
	if f[2] != "all" {
		for _, u := range strings.Split(f[2], ",") {
			if strings.HasPrefix(u, "+") || strings.HasPrefix(u, "@") {
				return r, fmt.Errorf("user %q: groups and files are not supported", u)
			}
			r.users = append(r.users, u)
		}
	}
	addr, rest := f[3], f[4:]
	switch {
	case addr == "all":
		r.anyAddr = true
	case strings.Contains(addr, "/"):
		p, err := netip.ParsePrefix(addr)
		if err != nil {
			return r, fmt.Errorf("address %q: %v", addr, err)
		}
		r.prefix = p.Masked()
	default:
		ip, err := netip.ParseAddr(addr)
		if err != nil {
			return r, fmt.Errorf("address %q is not all, an address with a mask, or a CIDR block (host names are not supported)", addr)
		}
		mask, err := netip.ParseAddr(rest[0])
		if err != nil || len(rest) < 2 {
			return r, fmt.Errorf("address %q wants a mask after it", addr)
		}
		bits := 0
		for _, b := range mask.AsSlice() {
			for ; b&0x80 != 0; b <<= 1 {
				bits++
			}
		}
		r.prefix = netip.PrefixFrom(ip.Unmap(), bits).Masked()
		rest = rest[1:]
	}
	m, ok := methods[rest[0]]
	if !ok {
		return r, fmt.Errorf("method %q is not trust, reject, md5, scram-sha-256, password or cert", rest[0])
	}
	r.Method = m
	return r, nil
}

// fields splits a line as pg_hba.conf does: on blanks, a quoted field kept
// whole.
func fields(line string) []string {
	var out []string
	var cur strings.Builder
	quoted, in := false, false
	for _, c := range line {
		switch {
		case c == '"':
			quoted, in = !quoted, true
		case (c == ' ' || c == '\t') && !quoted:
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(c)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}
