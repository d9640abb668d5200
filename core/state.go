package core

import (
	"bytes"
	"encoding/binary"
	"maps"
	"strings"
)

// Session state in transaction mode: what a statement a client sends may
// leave on its server beyond the transaction, and what becomes of it. SET
// and RESET follow the client (its settings are read back from the server
// when the transaction ends, and brought to whichever server it gets
// next); the rest pins the server to the client until it leaves.

// Effects is what a query may leave on the session.
type Effects uint8

const (
	// SetsSettings: a SET or RESET (not LOCAL), so the client's settings
	// are read back from the server when its transaction ends.
	SetsSettings Effects = 1 << iota
	// ResetsAll: a RESET ALL (or DISCARD ALL), so settings set before it
	// are gone unless set again.
	ResetsAll
	// Pins: a session advisory lock, a temporary table, a cursor WITH
	// HOLD, an SQL PREPARE or a LISTEN, which stay on the server.
	Pins
	// Listens: a LISTEN or UNLISTEN, which pgmux answers itself when it
	// is all a simple Query holds (ListenOps): the event loop leaves it to
	// the goroutine driver, which does that.
	Listens
)

// QueryEffects reads a query's text (a simple Query's, or a Parse's) and
// says what it may leave on the session, appending to names the custom
// settings (a name with a dot) its SETs and RESETs name: pg_settings does
// not list those, so they are read back by name. It errs on the side of a
// look that finds nothing (a SET inside a function it calls is not seen);
// a statement it cannot read is taken as ordinary.
func QueryEffects(q []byte, names []string) (Effects, []string) {
	if i := bytes.IndexByte(q, 0); i >= 0 {
		q = q[:i] // a message's text ends at its NUL
	}
	return textEffects(q, names)
}

// parseEffects is QueryEffects for what follows a Parse's statement name:
// its query, its NUL and its parameter types. A prepared statement holds
// one statement (PostgreSQL refuses more), so no split is looked for, and
// the NUL is looked for only when the first word may matter.
func parseEffects(rest []byte, names []string) (Effects, []string) {
	var e Effects
	if p := bytes.IndexByte(rest, '('); p >= 0 && hasAdvisoryLock(rest, p) {
		e |= Pins // a ( among the types' bytes finds no name before it
	}
	if !mayHaveEffects(rest) {
		return e, names
	}
	if i := bytes.IndexByte(rest, 0); i >= 0 {
		rest = rest[:i]
	}
	return statementEffects(rest, e, names)
}

// textEffects is QueryEffects for a text without its NUL.
func textEffects(q []byte, names []string) (Effects, []string) {
	var e Effects
	if p := bytes.IndexByte(q, '('); p >= 0 && hasAdvisoryLock(q, p) {
		e |= Pins // pg_advisory_lock, pg_try_advisory_lock and their _shared forms; not the _xact_ ones
	}
	// The common case, one statement with a ; at most at its end, needs
	// no split.
	if i := bytes.IndexByte(q, ';'); i < 0 || i == len(q)-1 || len(bytes.TrimSpace(q[i+1:])) == 0 {
		if mayHaveEffects(q) {
			return statementEffects(q, e, names)
		}
		return e, names
	}
	for _, st := range statements(q) {
		e, names = statementEffects(st, e, names)
	}
	return e, names
}

// statementEffects adds one statement's effects to e.
func statementEffects(st []byte, e Effects, names []string) (Effects, []string) {
	if !mayHaveEffects(st) {
		return e, names // the common case, without the allocations of words
	}
	w := words(st, 4)
	if len(w) == 0 {
		return e, names
	}
	switch w[0] {
	case "set":
		if len(w) > 1 && w[1] == "session" && len(w) > 2 {
			w = w[1:] // SET SESSION name, SET SESSION AUTHORIZATION
		}
		if len(w) > 1 && (w[1] == "local" || w[1] == "transaction" || w[1] == "constraints") {
			return e, names // ends with the transaction
		}
		e |= SetsSettings
		if len(w) > 1 && customName(w[1]) {
			names = append(names, w[1])
		}
	case "reset":
		e |= SetsSettings
		switch {
		case len(w) > 1 && w[1] == "all":
			e |= ResetsAll
		case len(w) > 1 && customName(w[1]):
			names = append(names, w[1])
		}
	case "discard":
		if len(w) > 1 && w[1] == "all" {
			e |= SetsSettings | ResetsAll
		}
	case "create":
		for _, x := range w[1:] {
			if x == "temp" || x == "temporary" {
				e |= Pins
			}
		}
	case "declare":
		if bytes.Contains(bytes.ToLower(st), []byte(" with hold")) {
			e |= Pins
		}
	case "prepare":
		if len(w) < 2 || w[1] != "transaction" {
			e |= Pins
		}
	case "listen":
		e |= Pins | Listens
	case "unlisten":
		e |= Listens
	}
	return e, names
}

// customName reports whether w is a custom setting's name (prefix.name):
// words of letters, digits, _ and $ joined by dots, so that the query that
// reads it back cannot fail on it.
func customName(w string) bool {
	parts := strings.Split(w, ".")
	if len(parts) < 2 {
		return false
	}
	for _, p := range parts {
		if p == "" || p[0] >= '0' && p[0] <= '9' || p[0] == '$' {
			return false
		}
		for _, c := range p {
			if !(c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c >= 0x80) {
				return false
			}
		}
	}
	return true
}

// mayHaveEffects reports whether a statement may leave session state, by
// its first word. Every query of the event loop comes here: by its first
// letter, then the letter after a candidate word, so that most statements
// are told apart without a comparison.
func mayHaveEffects(st []byte) bool {
	i := 0
	for i < len(st) && (st[i] == ' ' || st[i] == '\t' || st[i] == '\n' || st[i] == '\r' || st[i] == '\f') {
		i++
	}
	if i == len(st) {
		return false
	}
	st = st[i:]
	switch st[0] | 0x20 {
	case 's':
		return isWord(st, "set")
	case 'r':
		return isWord(st, "reset")
	case 'c':
		return isWord(st, "create")
	case 'l':
		return isWord(st, "listen")
	case 'u':
		return isWord(st, "unlisten")
	case 'p':
		return isWord(st, "prepare")
	case 'd':
		return isWord(st, "discard") || isWord(st, "declare")
	case '-', '/', '(':
		return true // a comment first, maybe: words reads past it
	}
	return false
}

// isWord reports whether b begins with the word k (lower case), in any
// case.
func isWord(b []byte, k string) bool {
	if len(b) < len(k) || len(b) > len(k) && b[len(k)]|0x20 >= 'a' && b[len(k)]|0x20 <= 'z' {
		return false
	}
	for i := 0; i < len(k); i++ {
		if b[i]|0x20 != k[i] {
			return false
		}
	}
	return true
}

// hasAdvisoryLock reports whether q calls a session advisory lock function
// (a name ending in advisory_lock or advisory_lock_shared, in any case):
// the names before each parenthesis, of which most queries have few, found
// at memchr's speed; first is the first parenthesis's index.
func hasAdvisoryLock(q []byte, first int) bool {
	for i, j := 0, first; ; {
		if i > 0 {
			if j = bytes.IndexByte(q[i:], '('); j < 0 {
				return false
			}
			j += i
		}
		k := j
		for k > 0 && (q[k-1] == ' ' || q[k-1] == '\t' || q[k-1] == '\n' || q[k-1] == '\r') {
			k--
		}
		// A name ending in k or d only: most parentheses are told apart
		// without a comparison.
		if c := q[max(k-1, 0)] | 0x20; k > 0 && (c == 'k' && hasSuffixFold(q[:k], "advisory_lock") ||
			c == 'd' && hasSuffixFold(q[:k], "advisory_lock_shared")) {
			return true
		}
		if i = j + 1; i >= len(q) {
			return false
		}
	}
}

func hasSuffixFold(b []byte, suffix string) bool {
	return len(b) >= len(suffix) && bytes.EqualFold(b[len(b)-len(suffix):], []byte(suffix))
}

// words returns up to n words of a statement, lower-cased, after blanks
// and comments; a word ends at a blank, =, (, ;, a comma or a quote. A
// quoted name loses its quotes.
func words(st []byte, n int) []string {
	var out []string
	for i := 0; i < len(st) && len(out) < n; {
		if j := commentEnd(st, i); j > i {
			i = j
			continue
		}
		c := st[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
		case c == '=' || c == '(' || c == ';' || c == ',' || c == '\'':
			return out // the words before a value are all a caller reads
		default:
			j, quoted := i, false
			for j < len(st) {
				d := st[j]
				if d == '"' && (quoted || j == i || st[j-1] == '.') {
					quoted = !quoted
				} else if !quoted && (d == ' ' || d == '\t' || d == '\n' || d == '\r' || d == '\f' || d == '=' || d == '(' || d == ';' || d == ',' || d == '\'' || d == '"' || d == '*') {
					break // LISTEN"x" is two words, UNLISTEN* too
				}
				j++
			}
			// Lower-cased even quoted: a setting's name is not
			// case-sensitive, and no other word read here is quoted.
			word := strings.ToLower(strings.ReplaceAll(string(st[i:j]), `"`, ""))
			out = append(out, word)
			i = j
		}
	}
	return out
}

// commentEnd returns the index just past the comment that begins at q[i]
// (-- to the end of the line, or /* */), or i if none begins there.
func commentEnd(q []byte, i int) int {
	switch {
	case q[i] == '-' && i+1 < len(q) && q[i+1] == '-':
		if j := bytes.IndexByte(q[i:], '\n'); j >= 0 {
			return i + j + 1
		}
		return len(q)
	case q[i] == '/' && i+1 < len(q) && q[i+1] == '*':
		if j := bytes.Index(q[i+2:], []byte("*/")); j >= 0 {
			return i + j + 4
		}
		return len(q)
	}
	return i
}

// statements splits a query at the semicolons outside quotes, dollar quotes
// and comments.
func statements(q []byte) [][]byte {
	var out [][]byte
	start := 0
	for i := 0; i < len(q); i++ {
		if j := commentEnd(q, i); j > i {
			i = j - 1
			continue
		}
		switch c := q[i]; {
		case c == ';':
			out = append(out, q[start:i])
			start = i + 1
		case c == '\'' || c == '"':
			for i++; i < len(q) && q[i] != c; i++ {
			} // '' and "" close and reopen: the same for a split
		case c == '$':
			// $tag$ … $tag$, the tag letters, digits and _ (or none).
			j := i + 1
			for j < len(q) && (q[j] == '_' || q[j] >= 'a' && q[j] <= 'z' || q[j] >= 'A' && q[j] <= 'Z' || q[j] >= '0' && q[j] <= '9') {
				j++
			}
			if j < len(q) && q[j] == '$' && !(j > i+1 && q[i+1] >= '0' && q[i+1] <= '9') {
				tag := q[i : j+1]
				end := bytes.Index(q[j+1:], tag)
				if end < 0 {
					i = len(q)
				} else {
					i = j + end + len(tag)
				}
			}
		}
	}
	return append(out, q[start:])
}

// notes are what the session's statements have left to be dealt with.
type notes struct {
	readBack bool     // settings to read back when the transaction ends
	resetAll bool     // a RESET ALL among them
	custom   []string // custom settings named since the last read-back
	// stmts: the effects of the client's named prepared statements that
	// have any, by name, for each Bind of them.
	stmts map[string]Effects
}

// NoteMessage takes a client message of type typ with body (or its start)
// that the session sends in transaction mode: a Query's or Parse's text, or
// a Bind of a named statement with effects (StmtEffects). State that stays
// on the server pins it to the client (Pooled goes off, as in session
// mode), and a SET or RESET makes the client's settings be read back
// before the server goes back to the pool (ReadBackDue).
func (s *Session) NoteMessage(typ byte, body []byte) {
	if !s.Pooled || s.NoLook {
		return // the server is the client's: what it leaves there stays its
	}
	var e Effects
	switch typ {
	case 'Q':
		e, s.noted.custom = QueryEffects(body, s.noted.custom)
	case 'P':
		name, q, ok := bytes.Cut(body, []byte{0})
		if !ok {
			return
		}
		if e, s.noted.custom = parseEffects(q, s.noted.custom); e != 0 && len(name) > 0 {
			if s.noted.stmts == nil {
				s.noted.stmts = map[string]Effects{}
			}
			s.noted.stmts[string(name)] = e
		}
	case 'B':
		e = s.StmtEffects(body)
	}
	s.note(e)
}

// StmtEffects returns the effects of the named statement a Bind's body
// names, if it has any.
func (s *Session) StmtEffects(bind []byte) Effects {
	if s == nil || len(s.noted.stmts) == 0 {
		return 0
	}
	_, rest, _ := bytes.Cut(bind, []byte{0}) // the portal
	name, _, _ := bytes.Cut(rest, []byte{0})
	return s.noted.stmts[string(name)]
}

// LeftState reports whether a transaction-mode client may have left state
// on its server that must not reach another client: it is pinned, or set
// something not yet read back.
func (s *Session) LeftState() bool { return s.Pinned || s.noted.readBack }

// note takes effects a message carries.
func (s *Session) note(e Effects) {
	switch {
	case e&Pins != 0:
		s.Pooled, s.Pinned = false, true
	case e&SetsSettings != 0:
		s.noted.readBack = true
		s.noted.resetAll = s.noted.resetAll || e&ResetsAll != 0
	}
}

// ReadBackDue reports whether the client's settings are to be read back
// from srv, the server it is about to give back, and the query that does
// it: the settings set in the session (pg_settings), and by name the
// custom ones the client or the server has.
func (s *Session) ReadBackDue(srv *ServerSettings) (bool, []byte) {
	if !s.noted.readBack || !s.Pooled {
		return false, nil
	}
	names := append([]string(nil), s.noted.custom...)
	for k := range s.Want.m {
		if strings.Contains(k, ".") {
			names = append(names, k)
		}
	}
	for k := range srv.differs {
		if strings.Contains(k, ".") {
			names = append(names, k)
		}
	}
	q := []byte("Q\x00\x00\x00\x00SELECT name, current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'")
	if len(names) > 0 {
		q = append(q, " UNION ALL SELECT n, coalesce(pg_catalog.current_setting(n, true), '') FROM pg_catalog.unnest(ARRAY["...)
		for i, n := range names {
			if i > 0 {
				q = append(q, ',')
			}
			q = appendLiteral(q, n)
		}
		q = append(q, "]::text[]) n"...)
	}
	q = append(q, 0)
	binary.BigEndian.PutUint32(q[1:], uint32(len(q)-1))
	return true, q
}

// ReadBack takes the rows of the answer to ReadBackDue's query, name and value
// (an empty value: a custom setting not set), as the client's settings from
// now on and as srv's.
func (s *Session) ReadBack(rows [][][]byte, srv *ServerSettings) {
	set := make(map[string]string, len(rows))
	for _, r := range rows {
		if len(r) == 2 {
			set[strings.ToLower(string(r[0]))] = string(r[1])
		}
	}
	s.Want.readBack(set, s.noted.resetAll)
	srv.readBack(set)
	s.noted = notes{stmts: s.noted.stmts}
}

// readBack makes w the settings read back from the server: those it had at
// startup, the custom ones it set before unless a RESET ALL came since,
// and the server's session settings over them.
func (w *Wanted) readBack(set map[string]string, resetAll bool) {
	next := maps.Clone(w.startup)
	if next == nil {
		next = map[string]string{}
	}
	if !resetAll {
		for k, v := range w.m {
			if strings.Contains(k, ".") {
				next[k] = v
			}
		}
	}
	for k, v := range set {
		if v == "" && strings.Contains(k, ".") {
			delete(next, k)
		} else {
			next[k] = v
		}
	}
	w.m = next
	w.gen++
}

// readBack records the server's settings as read back: those set in its
// session, the rest at their start.
func (s *ServerSettings) readBack(set map[string]string) {
	for k := range s.differs {
		if _, ok := set[k]; !ok {
			s.resetCur(k)
		}
	}
	for k, v := range set {
		if v == "" && strings.Contains(k, ".") {
			s.resetCur(k)
		} else {
			s.setCur(k, v)
		}
	}
}
