package prepared

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/pgmux/pgmux/protocol"
)

// serverStmtPrefix starts every statement name pgmux uses on servers.
const serverStmtPrefix = "pgmux_"

// dupMarker is the query of the Parse sent in place of a client's Parse of
// a name it already uses: its syntax error is turned into 42P05.
const dupMarker = "pgmux_duplicate_prepared_statement"

// closeNoop names no statement: closing it yields a CloseComplete and
// nothing else (PostgreSQL does not complain about closing what is not there).
const closeNoop = serverStmtPrefix + "none"

// stmt is one of a client's named statements.
type stmt struct {
	server string // name on servers
	query  []byte // the rest of its Parse body: query, NUL, parameter types
}

// entry is a Parse or Close sent to the server and not yet answered.
type entry struct {
	seg     uint64 // the segment it belongs to: segments sent before it
	kind    byte   // 'P' or 'C'
	name    string // the server statement a Parse prepares ("" for none)
	swallow bool   // injected: the client must not see the answer
	asParse bool   // a Close standing in for a ParseComplete the client awaits
	dupOf   string // the Parse stands for a duplicate of this client name
	// A client's Parse (parsed) or Close (closed) of a named statement is
	// applied to stmts when sent; if the server skips it, it is undone.
	parsed, closed string
	st             *stmt
}

// Mapper is one client's named statements and the answers it awaits from
// the server it holds. Counters must be set before use; the zero value is
// otherwise ready.
type Mapper struct {
	Counters *Counters

	stmts   map[string]*stmt // the client's named statements
	queue   []entry          // Parse and Close requests awaiting their answer
	arr     []entry          // queue's array from its front, kept for reuse (push)
	segSent uint64           // segments (Sync, Query, FunctionCall) sent
	segDone uint64           // segments answered (ReadyForQuery)
	dups    int              // duplicate-Parse stand-ins awaiting their error
}

// Query returns the Parse body (query, NUL, parameter types) of the
// client's named statement name, if it has one.
func (m *Mapper) Query(name []byte) ([]byte, bool) {
	st, ok := m.stmts[string(name)]
	if !ok {
		return nil, false
	}
	return st.query, true
}

// keepMax is the largest array the queue keeps for reuse once empty.
const keepMax = 8

// ServerName is the server name of a statement: identical query text and
// parameter types give the same name, whoever prepares it.
func ServerName(query []byte) string {
	sum := sha256.Sum256(query)
	return serverStmtPrefix + hex.EncodeToString(sum[:16])
}

// NamesStatement reports, from the start of a Parse, Bind, Describe or Close
// body (head, of a body of n bytes), whether the message names a prepared
// statement, so that Rewrite must see it. The unnamed statement and portals
// pass as they are.
func NamesStatement(typ byte, head []byte, n int) bool {
	switch typ {
	case 'P':
		return head[0] != 0
	case 'B':
		portal := bytes.IndexByte(head, 0)
		if portal < 0 || portal+1 >= len(head) {
			return true // names too long to see here: Rewrite reads them
		}
		return head[portal+1] != 0
	case 'D', 'C':
		return n >= 2 && head[0] == 'S' && (len(head) < 2 || head[1] != 0)
	}
	return false
}

// Attach starts the account with a new server: nothing is owed.
func (m *Mapper) Attach() {
	clear(m.queue)
	m.queue = m.arr[:0]
	m.dups, m.segDone = 0, m.segSent
}

// Count returns how many named statements the client has prepared.
func (m *Mapper) Count() int { return len(m.stmts) }

// Idle reports whether no answer is awaited.
func (m *Mapper) Idle() bool { return len(m.queue) == 0 }

// Park drops the queue's array, as an idle client keeps none.
func (m *Mapper) Park() {
	if len(m.queue) == 0 {
		m.queue, m.arr = nil, nil
	}
}

// AwaitsDup reports whether a duplicate Parse's stand-in awaits its error.
func (m *Mapper) AwaitsDup() bool { return m.dups > 0 }

// Sent accounts for n segments sent: each Sync, Query or FunctionCall ends
// one, and the answers of what follows belong to the next.
func (m *Mapper) Sent(n int) { m.segSent += uint64(n) }

// Passed accounts for a Parse or Close (typ) relayed as it is, whose answer
// must still be matched.
func (m *Mapper) Passed(typ byte) { m.push(entry{seg: m.segSent, kind: typ}) }

// Rewrite returns what to send the server in place of a client's Parse,
// Bind, Describe or Close (typ, with body), preparing first what reg's server
// lacks: the messages in out (appended to out[:0]), followed by rest, a part
// of body to be written after them unchanged.
func (m *Mapper) Rewrite(reg *Registry, typ byte, body, out []byte) (msg, rest []byte) {
	out = out[:0]
	n := len(body)
	switch typ {
	case 'P':
		name, query, ok := cstring(body)
		if !ok || len(name) == 0 {
			m.push(entry{seg: m.segSent, kind: 'P'})
			return protocol.AppendHeader(out, 'P', n), body // unnamed or malformed: the server judges
		}
		if _, dup := m.stmts[string(name)]; dup {
			// PostgreSQL answers 42P05; a Parse that fails in a way that is
			// recognised stands in for it at the same place in the stream.
			m.push(entry{seg: m.segSent, kind: 'P', dupOf: string(name)})
			m.dups++
			return appendParse(out, serverStmtPrefix+"dup", []byte(dupMarker+"\x00\x00\x00")), nil
		}
		m.Counters.parses.Add(1)
		st := &stmt{server: ServerName(query), query: append([]byte(nil), query...)}
		if m.stmts == nil {
			m.stmts = make(map[string]*stmt)
		}
		m.stmts[string(name)] = st
		if _, ok := reg.get(st.server); ok {
			// Already there: a Close of nothing answers in its place.
			m.Counters.hits.Add(1)
			m.push(entry{seg: m.segSent, kind: 'C', asParse: true, parsed: string(name), st: st})
			return appendClose(out, 'S', closeNoop), nil
		}
		m.Counters.misses.Add(1)
		m.Counters.prepared.Add(1)
		reg.add(st.server)
		m.push(entry{seg: m.segSent, kind: 'P', name: st.server, parsed: string(name), st: st})
		return appendParse(out, st.server, st.query), nil
	case 'B':
		portal, after, ok1 := cstring(body)
		name, params, ok2 := cstring(after)
		st := m.stmts[string(name)]
		if !ok1 || !ok2 || len(name) == 0 || st == nil {
			// Unnamed, malformed, or never prepared: the server answers,
			// 26000 for the last, naming the client's statement.
			return protocol.AppendHeader(out, 'B', n), body
		}
		m.Counters.binds.Add(1)
		out = m.ensure(reg, st, out)
		out = protocol.AppendHeader(out, 'B', len(portal)+1+len(st.server)+1+len(params))
		out = append(out, portal...)
		out = append(out, 0)
		out = append(out, st.server...)
		return append(out, 0), params
	case 'D', 'C':
		var st *stmt
		var name []byte
		if len(body) > 0 && body[0] == 'S' {
			name, _, _ = cstring(body[1:])
			st = m.stmts[string(name)]
		}
		switch {
		case st == nil:
			if typ == 'C' {
				m.push(entry{seg: m.segSent, kind: 'C'})
			}
			return protocol.AppendHeader(out, typ, n), body
		case typ == 'D':
			out = m.ensure(reg, st, out)
			out = protocol.AppendHeader(out, 'D', 2+len(st.server))
			out = append(out, 'S')
			out = append(out, st.server...)
			return append(out, 0), nil
		}
		// The client forgets the name; the server keeps the statement for
		// whoever else uses it, until evicted.
		delete(m.stmts, string(name))
		m.push(entry{seg: m.segSent, kind: 'C', closed: string(name), st: st})
		return appendClose(out, 'S', closeNoop), nil
	}
	return protocol.AppendHeader(out, typ, n), body
}

// ensure makes sure st is prepared on reg's server, or will be by the time
// the message being written reaches it: if not, it appends a Parse to out
// and queues its swallowed answer.
func (m *Mapper) ensure(reg *Registry, st *stmt, out []byte) []byte {
	if _, ok := reg.get(st.server); ok {
		m.Counters.hits.Add(1)
		return out
	}
	m.Counters.misses.Add(1)
	m.Counters.prepared.Add(1)
	reg.add(st.server)
	m.push(entry{seg: m.segSent, kind: 'P', name: st.server, swallow: true})
	return appendParse(out, st.server, st.query)
}

// Answer takes a ParseComplete ('1') or CloseComplete ('3') from reg's
// server and says what the client sees instead: the same type, '1' for a
// Close that stood in for a Parse, or 0 for nothing.
func (m *Mapper) Answer(reg *Registry, typ byte) byte {
	for len(m.queue) > 0 {
		e := m.queue[0]
		if e.seg < m.segDone {
			m.drop(reg, e)
			m.pop()
			continue
		}
		if (typ == '1') != (e.kind == 'P') {
			return typ // not the mapping's to match: left as it is
		}
		m.pop()
		if e.name != "" {
			if st, ok := reg.get(e.name); ok {
				st.ready = true
			}
		}
		switch {
		case e.swallow:
			return 0
		case e.asParse:
			return '1'
		}
		return typ
	}
	return typ
}

// Ready accounts for a ReadyForQuery from reg's server: the entries of the
// segment it ends that got no answer are dropped.
func (m *Mapper) Ready(reg *Registry) {
	m.segDone++
	for len(m.queue) > 0 && m.queue[0].seg < m.segDone {
		m.drop(reg, m.queue[0])
		m.pop()
	}
}

// DupError returns the 42P05 error to send in place of the server's error
// body when that error answers a duplicate Parse's stand-in; else nil.
func (m *Mapper) DupError(body []byte) []byte {
	pgErr := protocol.DecodeError(body)
	if pgErr.Code != "42601" || !strings.Contains(pgErr.Message, dupMarker) {
		return nil
	}
	for i, e := range m.queue {
		if e.dupOf != "" && e.seg >= m.segDone {
			m.dups--
			m.queue[i].dupOf = "" // answered
			return protocol.Error("42P05", "prepared statement \""+e.dupOf+"\" already exists").AppendTo(nil)
		}
	}
	return nil
}

// push queues e. An emptied queue starts again at the front of its array
// (kept while small), so that a client sending a Parse each transaction does
// not make the queue allocate each time.
func (m *Mapper) push(e entry) {
	if len(m.queue) == 0 {
		m.queue = m.arr[:0]
	}
	c := cap(m.queue)
	m.queue = append(m.queue, e)
	if cap(m.queue) != c { // a new array, the queue at its front
		m.arr = nil
		if cap(m.queue) <= keepMax {
			m.arr = m.queue[:0]
		}
	}
}

// pop drops the queue's first entry, cleared so that the array kept does not
// hold on to what it named.
func (m *Mapper) pop() {
	m.queue[0] = entry{}
	m.queue = m.queue[1:]
}

// drop forgets an entry that got no answer: the server skipped it after an
// error, so a statement it was preparing is not there.
func (m *Mapper) drop(reg *Registry, e entry) {
	if e.name != "" {
		if st, ok := reg.get(e.name); ok && !st.ready {
			reg.Remove(e.name)
		}
	}
	if e.dupOf != "" {
		m.dups--
	}
	if e.parsed != "" && m.stmts[e.parsed] == e.st {
		delete(m.stmts, e.parsed)
	}
	if e.closed != "" && m.stmts[e.closed] == nil && m.stmts != nil {
		m.stmts[e.closed] = e.st
	}
}

// cstring splits a NUL-terminated string off b.
func cstring(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// appendParse appends a Parse of query (query text, NUL, parameter types)
// under name.
func appendParse(dst []byte, name string, query []byte) []byte {
	dst = protocol.AppendHeader(dst, 'P', len(name)+1+len(query))
	dst = append(dst, name...)
	dst = append(dst, 0)
	return append(dst, query...)
}

func appendClose(dst []byte, kind byte, name string) []byte {
	dst = protocol.AppendHeader(dst, 'C', 2+len(name))
	dst = append(dst, kind)
	dst = append(dst, name...)
	return append(dst, 0)
}
