package core

import (
	"bytes"
	"strings"
	"unicode/utf8"

	"github.com/pgmux/pgmux/protocol"
)

// LISTEN and UNLISTEN in transaction mode: a client's LISTEN is not sent to
// the server it happens to hold, which goes back to the pool, but answered
// by pgmux, which listens for all the pool's clients on one server
// connection of its own and hands each notification to every client
// listening on its channel. Only a simple Query made of nothing but LISTEN
// and UNLISTEN statements, sent between transactions, is answered so;
// anything else that LISTENs reaches the server and pins it (Pins).

// ListenOp is one LISTEN or UNLISTEN statement.
type ListenOp struct {
	Listen  bool   // LISTEN, else UNLISTEN
	All     bool   // UNLISTEN *
	Channel string // as PostgreSQL names it: folded to lower case unless quoted
}

// ListenOps reads a simple Query's text (its NUL included or not) and, when
// every statement in it is a LISTEN or an UNLISTEN, returns them in order;
// ok is false for any other query, or one it cannot read. A query with no
// statement is not one.
func ListenOps(q []byte) (ops []ListenOp, ok bool) {
	if i := bytes.IndexByte(q, 0); i >= 0 {
		q = q[:i]
	}
	if !mayListen(q) {
		return nil, false
	}
	for _, st := range statements(q) {
		if len(bytes.TrimSpace(st)) == 0 {
			continue
		}
		op, ok := listenOp(st)
		if !ok {
			return nil, false
		}
		ops = append(ops, op)
	}
	return ops, len(ops) > 0
}

// mayListen reports whether a query may begin with LISTEN or UNLISTEN, by
// its first letter: most queries are told apart without more.
func mayListen(q []byte) bool {
	i := 0
	for i < len(q) && isBlank(q[i]) {
		i++
	}
	if i == len(q) {
		return false
	}
	c := q[i]
	return c|0x20 == 'l' || c|0x20 == 'u' || c == '-' || c == '/' // a comment first, maybe
}

// listenOp reads one statement: LISTEN name, UNLISTEN name or UNLISTEN *.
func listenOp(st []byte) (ListenOp, bool) {
	i := skipBlank(st, 0)
	kw := i
	for i < len(st) && st[i]|0x20 >= 'a' && st[i]|0x20 <= 'z' {
		i++
	}
	var op ListenOp
	switch strings.ToLower(string(st[kw:i])) {
	case "listen":
		op.Listen = true
	case "unlisten":
	default:
		return op, false
	}
	if i == kw || i < len(st) && !isBlank(st[i]) && st[i] != '"' && !(st[i] == '-' || st[i] == '/' || st[i] == '*') {
		return op, false
	}
	i = skipBlank(st, i)
	switch {
	case i < len(st) && st[i] == '*' && !op.Listen:
		op.All, i = true, i+1
	case i < len(st) && st[i] == '"':
		name, end, ok := quotedIdent(st, i)
		if !ok {
			return op, false
		}
		op.Channel, i = name, end
	default:
		j := i
		for j < len(st) && identChar(st[j], j == i) {
			j++
		}
		if j == i {
			return op, false
		}
		op.Channel, i = strings.ToLower(string(st[i:j])), j
	}
	if skipBlank(st, i) != len(st) {
		return op, false // anything after the name: the server says what is wrong
	}
	if !utf8.ValidString(op.Channel) {
		return op, false // the server refuses it
	}
	op.Channel = truncateIdent(op.Channel)
	return op, true
}

// skipBlank returns the index of the first byte of st from i that is
// neither blank nor in a comment.
func skipBlank(st []byte, i int) int {
	for i < len(st) {
		if j := commentEnd(st, i); j > i {
			i = j
		} else if isBlank(st[i]) {
			i++
		} else {
			break
		}
	}
	return i
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }

// identChar reports whether c may be in an unquoted identifier (first: at
// its start, where a digit or $ may not be).
func identChar(c byte, first bool) bool {
	switch {
	case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80:
		return true
	case c >= '0' && c <= '9' || c == '$':
		return !first
	}
	return false
}

// quotedIdent reads the quoted identifier that begins at st[i] ("" is a
// quote in it) and returns it and the index past it.
func quotedIdent(st []byte, i int) (string, int, bool) {
	var b strings.Builder
	for j := i + 1; j < len(st); j++ {
		if st[j] != '"' {
			b.WriteByte(st[j])
			continue
		}
		if j+1 < len(st) && st[j+1] == '"' {
			b.WriteByte('"')
			j++
			continue
		}
		if b.Len() == 0 {
			return "", 0, false // a zero-length name: the server's error
		}
		return b.String(), j + 1, true
	}
	return "", 0, false
}

// maxIdentLen is PostgreSQL's NAMEDATALEN less its NUL: longer names are
// truncated, as the server does.
const maxIdentLen = 63

func truncateIdent(s string) string {
	if len(s) <= maxIdentLen {
		return s
	}
	n := maxIdentLen
	for n > 0 && !utf8.RuneStart(s[n]) {
		n-- // not in the middle of a character
	}
	return s[:n]
}

// QuoteIdent quotes a name for SQL, as quote_ident does for any name.
func QuoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// ListenAnswer is what a client is answered for ops it sent in one Query,
// when pgmux takes them: a CommandComplete each and a ReadyForQuery, the
// client idle.
func ListenAnswer(ops []ListenOp) []byte {
	var out []byte
	for _, op := range ops {
		tag := "UNLISTEN"
		if op.Listen {
			tag = "LISTEN"
		}
		out = protocol.AppendHeader(out, 'C', len(tag)+1)
		out = append(append(out, tag...), 0)
	}
	return append(out, readyIdle...)
}

// NotificationChannel returns the channel a NotificationResponse's body
// names (its sender's process ID, the channel, the payload).
func NotificationChannel(body []byte) (string, bool) {
	if len(body) < 4 {
		return "", false
	}
	name, _, ok := bytes.Cut(body[4:], []byte{0})
	return string(name), ok
}
