package prepared

import (
	"strings"

	"github.com/pgmux/pgmux/protocol"
)

// IsStmtCommand reports whether a Query's body (or its start) may be a
// DEALLOCATE or DISCARD, which the mapping must see: its first word begins
// with a d.
func IsStmtCommand(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c|0x20 == 'd'
	}
	return false
}

// words splits a query of one statement into its words, without the
// trailing semicolon.
func words(q string) []string {
	return strings.Fields(strings.TrimRight(strings.TrimSpace(q), "; \t\r\n"))
}

// Local answers, for a client that holds no server, a DEALLOCATE or DISCARD
// ALL query (q): the CommandComplete or ErrorResponse to send, and whether
// it was DISCARD ALL (the client's settings go back to their start too). ok
// is false, and nothing changed, for any other query.
func (m *Mapper) Local(q string) (reply []byte, discard, ok bool) {
	w := words(q)
	if len(w) == 0 {
		return nil, false, false
	}
	switch strings.ToLower(w[0]) {
	case "deallocate":
		w = w[1:]
		if len(w) > 0 && strings.EqualFold(w[0], "prepare") {
			w = w[1:]
		}
		if len(w) != 1 {
			return nil, false, false
		}
		if strings.EqualFold(w[0], "all") {
			clear(m.stmts)
			return protocol.CommandComplete("DEALLOCATE ALL"), false, true
		}
		name, ok := sqlIdent(w[0])
		if !ok {
			return nil, false, false
		}
		if _, ok := m.stmts[name]; !ok {
			return protocol.Error("26000", "prepared statement \""+name+"\" does not exist").AppendTo(nil), false, true
		}
		delete(m.stmts, name)
		return protocol.CommandComplete("DEALLOCATE"), false, true
	case "discard":
		if len(w) != 2 || !strings.EqualFold(w[1], "all") {
			return nil, false, false
		}
		clear(m.stmts)
		return protocol.CommandComplete("DISCARD ALL"), true, true
	}
	return nil, false, false
}

// RewriteQuery returns the query to send reg's server in place of a
// client's DEALLOCATE or DISCARD ALL (q), after any Parse it needs first, in
// out (appended to out[:0]). DEALLOCATE of a client name becomes DEALLOCATE
// of the server name; DEALLOCATE ALL and DISCARD ALL go as they are and empty
// the registry. dirty says the server's statements are no longer sure: it
// must be wiped with DISCARD ALL before it is lent again, whether the command
// succeeds or not.
func (m *Mapper) RewriteQuery(reg *Registry, q string, out []byte) (msg []byte, dirty bool) {
	out = out[:0]
	w := words(q)
	if len(w) > 1 && strings.EqualFold(w[0], "deallocate") && strings.EqualFold(w[1], "prepare") {
		w = w[1:]
	}
	switch {
	case len(w) == 2 && strings.EqualFold(w[0], "deallocate") && !strings.EqualFold(w[1], "all"):
		name, _ := sqlIdent(w[1])
		if st := m.stmts[name]; st != nil {
			out = m.ensure(reg, st, out)
			delete(m.stmts, name)
			reg.Remove(st.server)
			dirty = true
			q = "DEALLOCATE " + st.server
		}
	case len(w) == 2 && (strings.EqualFold(w[0], "deallocate") || strings.EqualFold(w[0], "discard")) && strings.EqualFold(w[1], "all"):
		clear(m.stmts)
		reg.Clear()
		dirty = true
	}
	out = protocol.AppendHeader(out, 'Q', len(q)+1)
	out = append(out, q...)
	return append(out, 0), dirty
}

// sqlIdent reads an SQL identifier as PostgreSQL folds it.
func sqlIdent(s string) (string, bool) {
	if strings.HasPrefix(s, `"`) {
		if len(s) < 2 || !strings.HasSuffix(s, `"`) {
			return "", false
		}
		return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`), true
	}
	for _, r := range s {
		if !(r == '_' || r == '$' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= 0x80) {
			return "", false
		}
	}
	return strings.ToLower(s), true
}
