package proxy

import (
	"bytes"
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"strings"
	"sync/atomic"

	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/stats"
)

// Prepared statements under transaction pooling.
//
// A client's named statements live in its session (stmts): client name ->
// the statement's server name and Parse body. The server name is derived from
// the query text and parameter types, so identical statements of any clients
// share one name, and each server keeps a registry (preparedSet) of the
// names prepared on it. Client messages naming a statement are rewritten to
// the server name; a statement the current server lacks is prepared first
// with an injected Parse whose ParseComplete is swallowed.
//
// Responses are matched to requests through psQueue: one entry per Parse
// and Close sent to the server, in order, tagged with the Sync segment it
// belongs to. A ParseComplete or CloseComplete answers the oldest entry of
// the current segment; at ReadyForQuery the segment's unanswered entries
// (skipped after an error) are dropped, and their statements forgotten.
//
// The unnamed statement and portals pass through untouched.

// serverStmtPrefix starts every statement name pgmux uses on servers.
const serverStmtPrefix = "pgmux_"

// dupMarker is the query of the Parse pgmux sends in place of a client's
// Parse of a name it already uses: its syntax error is turned into 42P05.
const dupMarker = "pgmux_duplicate_prepared_statement"

// closeNoop names no statement: closing it yields a CloseComplete and
// nothing else (PostgreSQL does not complain about closing what is not there).
const closeNoop = serverStmtPrefix + "none"

// clientStmt is one of a client's named statements.
type clientStmt struct {
	server string // name on servers
	query  []byte // the rest of its Parse body: query, NUL, parameter types
}

// psEntry is a Parse or Close sent to the server and not yet answered.
type psEntry struct {
	seg     uint64 // Sync segment: syncs sent before it
	kind    byte   // 'P' or 'C'
	name    string // the server statement a Parse prepares ("" for none)
	swallow bool   // injected by pgmux: the client must not see the answer
	asParse bool   // a Close standing in for a ParseComplete the client awaits
	dupOf   string // the Parse stands for a duplicate of this client name
	// A client's Parse (parsed) or Close (closed) of a named statement is
	// applied to stmts when sent; if the server skips it, it is undone.
	parsed, closed string
	cs             *clientStmt
}

// preparedSet is the registry of statements prepared on one server, in
// least-recently-used order. Guarded by the mutex of the session holding the
// server.
type preparedSet struct {
	m     map[string]*list.Element // name -> element whose Value is *psState
	lru   list.List                // front: most recently used
	count atomic.Int64             // len(m), for reports read without the mutex
}

type psState struct {
	name  string
	ready bool // ParseComplete seen; else a Parse is in flight
}

func (p *preparedSet) get(name string) (*psState, bool) {
	if p.m == nil {
		return nil, false
	}
	e, ok := p.m[name]
	if !ok {
		return nil, false
	}
	p.lru.MoveToFront(e)
	return e.Value.(*psState), true
}

func (p *preparedSet) add(name string) {
	if p.m == nil {
		p.m = make(map[string]*list.Element)
	}
	if e, ok := p.m[name]; ok {
		p.lru.MoveToFront(e)
		return
	}
	p.m[name] = p.lru.PushFront(&psState{name: name})
	p.count.Store(int64(len(p.m)))
}

func (p *preparedSet) remove(name string) {
	if e, ok := p.m[name]; ok {
		p.lru.Remove(e)
		delete(p.m, name)
		p.count.Store(int64(len(p.m)))
	}
}

func (p *preparedSet) clear() {
	p.m = nil
	p.lru.Init()
	p.count.Store(0)
}

func (p *preparedSet) len() int { return len(p.m) }

// oldest returns up to n ready names from the least recently used end.
func (p *preparedSet) oldest(n int) []string {
	var out []string
	for e := p.lru.Back(); e != nil && len(out) < n; e = e.Prev() {
		if st := e.Value.(*psState); st.ready {
			out = append(out, st.name)
		}
	}
	return out
}

// hasPending reports whether a Parse is in flight for any statement.
func (p *preparedSet) hasPending() bool {
	for _, e := range p.m {
		if !e.Value.(*psState).ready {
			return true
		}
	}
	return false
}

type preparedCounters struct {
	prepared, hits, misses, evictions atomic.Int64
}

func (c *preparedCounters) snapshot() stats.Prepared {
	return stats.Prepared{Prepared: c.prepared.Load(), Hits: c.hits.Load(), Misses: c.misses.Load(), Evictions: c.evictions.Load()}
}

// serverStmtName is the server name of a statement: identical query text
// and parameter types give the same name, whoever prepares it.
func serverStmtName(query []byte) string {
	sum := sha256.Sum256(query)
	return serverStmtPrefix + hex.EncodeToString(sum[:16])
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

// namesStatement reports, from the start of a Parse, Bind, Describe or
// Close body (head, of a body of n bytes), whether the message names a
// prepared statement, so that mapping must rewrite it. The unnamed statement
// and portals pass as they are.
func namesStatement(typ byte, head []byte, n int) bool {
	switch typ {
	case 'P':
		return head[0] != 0
	case 'B':
		portal := bytes.IndexByte(head, 0)
		if portal < 0 || portal+1 >= len(head) {
			return true // names too long to see here: let writeMapped read them
		}
		return head[portal+1] != 0
	case 'D', 'C':
		return n >= 2 && head[0] == 'S' && (len(head) < 2 || head[1] != 0)
	}
	return false
}

// ensureLocked makes sure the server statement name is prepared on sc, or
// will be by the time the message being written reaches it: if not, it
// appends a Parse to out and queues its swallowed answer.
func (ss *session) ensureLocked(sc *serverConn, cs *clientStmt, out []byte) []byte {
	if _, ok := sc.prepared.get(cs.server); ok {
		ss.srv.ps.hits.Add(1)
		return out
	}
	ss.srv.ps.misses.Add(1)
	ss.srv.ps.prepared.Add(1)
	sc.prepared.add(cs.server)
	ss.psPushLocked(psEntry{seg: ss.segSent, kind: 'P', name: cs.server, swallow: true})
	return appendParse(out, cs.server, cs.query)
}

// writeMapped writes a client's Parse, Bind, Describe or Close (typ) to sc
// with statement names mapped, preparing what sc lacks first. It consumes the
// message from the client. The caller has set writing.
func (ss *session) writeMapped(sc *serverConn, typ byte, n int) error {
	body, err := ss.rd.Body(n)
	if err != nil {
		return err
	}
	out := ss.psBuf[:0]
	var rest []byte // the part of body written after out, unchanged
	ss.mu.Lock()
	switch typ {
	case 'P':
		name, query, ok := cstring(body)
		if !ok || len(name) == 0 {
			rest = body // unnamed or malformed: the server judges
			out = protocol.AppendHeader(out, 'P', n)
			ss.psPushLocked(psEntry{seg: ss.segSent, kind: 'P'})
			break
		}
		if _, dup := ss.stmts[string(name)]; dup {
			// PostgreSQL answers 42P05; a Parse that fails in a way we can
			// recognise stands in for it at the same place in the stream.
			out = appendParse(out, serverStmtPrefix+"dup", []byte(dupMarker+"\x00\x00\x00"))
			ss.psPushLocked(psEntry{seg: ss.segSent, kind: 'P', dupOf: string(name)})
			ss.dupPending++
			break
		}
		cs := &clientStmt{server: serverStmtName(query), query: append([]byte(nil), query...)}
		if ss.stmts == nil {
			ss.stmts = make(map[string]*clientStmt)
		}
		ss.stmts[string(name)] = cs
		if _, ok := sc.prepared.get(cs.server); ok {
			// Already there: a Close of nothing answers in its place.
			ss.srv.ps.hits.Add(1)
			out = appendClose(out, 'S', closeNoop)
			ss.psPushLocked(psEntry{seg: ss.segSent, kind: 'C', asParse: true, parsed: string(name), cs: cs})
			break
		}
		ss.srv.ps.misses.Add(1)
		ss.srv.ps.prepared.Add(1)
		sc.prepared.add(cs.server)
		out = appendParse(out, cs.server, cs.query)
		ss.psPushLocked(psEntry{seg: ss.segSent, kind: 'P', name: cs.server, parsed: string(name), cs: cs})
	case 'B':
		portal, after, ok1 := cstring(body)
		stmt, params, ok2 := cstring(after)
		cs := ss.stmts[string(stmt)]
		if !ok1 || !ok2 || len(stmt) == 0 || cs == nil {
			// Unnamed, malformed, or never prepared: the server answers,
			// 26000 for the last, naming the client's statement.
			out = protocol.AppendHeader(out, 'B', n)
			rest = body
			break
		}
		out = ss.ensureLocked(sc, cs, out)
		out = protocol.AppendHeader(out, 'B', len(portal)+1+len(cs.server)+1+len(params))
		out = append(out, portal...)
		out = append(out, 0)
		out = append(out, cs.server...)
		out = append(out, 0)
		rest = params
	case 'D', 'C':
		var cs *clientStmt
		var name []byte
		if len(body) > 0 && body[0] == 'S' {
			name, _, _ = cstring(body[1:])
			cs = ss.stmts[string(name)]
		}
		switch {
		case cs == nil:
			out = protocol.AppendHeader(out, typ, n)
			rest = body
			if typ == 'C' {
				ss.psPushLocked(psEntry{seg: ss.segSent, kind: 'C'})
			}
		case typ == 'D':
			out = ss.ensureLocked(sc, cs, out)
			out = protocol.AppendHeader(out, 'D', 2+len(cs.server))
			out = append(out, 'S')
			out = append(out, cs.server...)
			out = append(out, 0)
		default:
			// The client forgets the name; the server keeps the statement
			// for whoever else uses it, until evicted.
			delete(ss.stmts, string(name))
			out = appendClose(out, 'S', closeNoop)
			ss.psPushLocked(psEntry{seg: ss.segSent, kind: 'C', closed: string(name), cs: cs})
		}
	}
	ss.mu.Unlock()
	ss.psBuf = out[:0]
	if _, err := sc.bw.Write(out); err != nil {
		return &protocol.WriteError{Err: err}
	}
	if _, err := sc.bw.Write(rest); err != nil {
		return &protocol.WriteError{Err: err}
	}
	return nil
}

// psAnswer handles a ParseComplete ('1') or CloseComplete ('3') from the
// server and reports what the client should see instead: the same type, '1'
// for a Close that stood in for a Parse, or 0 for nothing.
func (ss *session) psAnswer(sc *serverConn, typ byte) byte {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for len(ss.psQueue) > 0 {
		e := ss.psQueue[0]
		if e.seg < ss.segDone {
			ss.dropEntryLocked(sc, e)
			ss.psPopLocked()
			continue
		}
		if (typ == '1') != (e.kind == 'P') {
			return typ // not ours to match: leave it as it is
		}
		ss.psPopLocked()
		if e.name != "" {
			if st, ok := sc.prepared.get(e.name); ok {
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

// psSegmentDone drops the queue entries of segments answered by the
// ReadyForQuery just read. Called with mu held.
func (ss *session) psSegmentDoneLocked(sc *serverConn) {
	ss.segDone++
	for len(ss.psQueue) > 0 && ss.psQueue[0].seg < ss.segDone {
		ss.dropEntryLocked(sc, ss.psQueue[0])
		ss.psPopLocked()
	}
}

// psKeepMax is the largest array the queue keeps for reuse once empty.
const psKeepMax = 8

// psPushLocked queues e, the answer to match for a Parse or Close being
// written. An emptied queue starts again at the front of its array (kept
// while small), so that a client sending a Parse each transaction does not
// make the queue allocate each time.
func (ss *session) psPushLocked(e psEntry) {
	if len(ss.psQueue) == 0 {
		ss.psQueue = ss.psArr[:0]
	}
	c := cap(ss.psQueue)
	ss.psQueue = append(ss.psQueue, e)
	if cap(ss.psQueue) != c { // a new array, the queue at its front
		ss.psArr = nil
		if cap(ss.psQueue) <= psKeepMax {
			ss.psArr = ss.psQueue[:0]
		}
	}
}

// psPopLocked drops the queue's first entry, cleared so that the array
// kept does not hold on to what it named.
func (ss *session) psPopLocked() {
	ss.psQueue[0] = psEntry{}
	ss.psQueue = ss.psQueue[1:]
}

// psResetLocked empties the queue (a new server: nothing is owed).
func (ss *session) psResetLocked() {
	clear(ss.psQueue)
	ss.psQueue = ss.psArr[:0]
}

// dropEntryLocked forgets an entry that got no answer: the server skipped
// it after an error, so a statement it was preparing is not there.
func (ss *session) dropEntryLocked(sc *serverConn, e psEntry) {
	if e.name != "" {
		if st, ok := sc.prepared.get(e.name); ok && !st.ready {
			sc.prepared.remove(e.name)
		}
	}
	if e.dupOf != "" {
		ss.dupPending--
	}
	if e.parsed != "" && ss.stmts[e.parsed] == e.cs {
		delete(ss.stmts, e.parsed)
	}
	if e.closed != "" && ss.stmts[e.closed] == nil && ss.stmts != nil {
		ss.stmts[e.closed] = e.cs
	}
}

// dupError returns the 42P05 error to send in place of the server's error
// body, when that error answers a duplicate Parse; else nil.
func (ss *session) dupError(body []byte) []byte {
	pgErr := decodeError(body)
	if pgErr.Code != "42601" || !strings.Contains(pgErr.Message, dupMarker) {
		return nil
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for i, e := range ss.psQueue {
		if e.dupOf != "" && e.seg >= ss.segDone {
			ss.dupPending--
			ss.psQueue[i].dupOf = "" // answered""
			return protocol.Error("42P05", "prepared statement \""+e.dupOf+"\" already exists").AppendTo(nil)
		}
	}
	return nil
}

// trimPrepared closes the least recently used statements on sc beyond max,
// on a server no one else is using (before it is lent).
func (ss *session) trimPrepared(sc *serverConn, max int) error {
	over := sc.prepared.len() - max
	if over <= 0 {
		return nil
	}
	sc.clearDeadline()
	names := sc.prepared.oldest(over)
	var out []byte
	for _, name := range names {
		out = appendClose(out, 'S', name)
	}
	out = append(out, 'S', 0, 0, 0, 4)
	if _, err := sc.bw.Write(out); err != nil {
		return err
	}
	if err := sc.bw.Flush(); err != nil {
		return err
	}
	if err := sc.readUntilReady(nil); err != nil {
		return err
	}
	for _, name := range names {
		sc.prepared.remove(name)
	}
	ss.srv.ps.evictions.Add(int64(len(names)))
	return nil
}

// localQuery answers, without a server, a client's DEALLOCATE or DISCARD ALL
// when the session holds no server; it reports whether it did. q is the
// query text.
func (ss *session) localQuery(q string) (reply []byte, ok bool) {
	words := strings.Fields(strings.TrimRight(strings.TrimSpace(q), "; \t\r\n"))
	if len(words) == 0 {
		return nil, false
	}
	switch strings.ToLower(words[0]) {
	case "deallocate":
		words = words[1:]
		if len(words) > 0 && strings.EqualFold(words[0], "prepare") {
			words = words[1:]
		}
		if len(words) != 1 {
			return nil, false
		}
		ss.mu.Lock()
		defer ss.mu.Unlock()
		if strings.EqualFold(words[0], "all") {
			clear(ss.stmts)
			return commandComplete("DEALLOCATE ALL"), true
		}
		name, ok := sqlIdent(words[0])
		if !ok {
			return nil, false
		}
		if _, ok := ss.stmts[name]; !ok {
			return protocol.Error("26000", "prepared statement \""+name+"\" does not exist").AppendTo(nil), true
		}
		delete(ss.stmts, name)
		return commandComplete("DEALLOCATE"), true
	case "discard":
		if len(words) != 2 || !strings.EqualFold(words[1], "all") {
			return nil, false
		}
		ss.mu.Lock()
		clear(ss.stmts)
		ss.mu.Unlock()
		ss.want = maps.Clone(ss.startupWant)
		if ss.want == nil {
			ss.want = map[string]string{}
		}
		ss.wantGen++
		return commandComplete("DISCARD ALL"), true
	}
	return nil, false
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

func commandComplete(tag string) []byte {
	out := protocol.AppendHeader(nil, 'C', len(tag)+1)
	out = append(out, tag...)
	return append(out, 0)
}

// stmtCommand reports whether the client's Query (of body length n, not yet
// consumed) may be a DEALLOCATE or DISCARD, which prepared-statement mapping
// must see. It only peeks at what is buffered.
func (ss *session) stmtCommand(n int) bool {
	b, _ := ss.rd.Peek(min(protocol.HeaderLen+n, ss.rd.Size(), protocol.HeaderLen+64))
	if len(b) <= protocol.HeaderLen {
		return false
	}
	return stmtCommandText(b[protocol.HeaderLen:])
}

// stmtCommandText is stmtCommand on a Query's body, or its start.
func stmtCommandText(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c|0x20 == 'd'
	}
	return false
}

// answerLocally answers a DEALLOCATE or DISCARD ALL while the session holds
// no server. It reports false, consuming nothing, for any other query.
func (ss *session) answerLocally(n int) (bool, error) {
	if protocol.HeaderLen+n > ss.rd.Size() {
		return false, nil
	}
	b, err := ss.rd.Peek(protocol.HeaderLen + n)
	if err != nil {
		return false, clientReadError(err, "timeout")
	}
	reply, ok := ss.localQuery(string(bytes.TrimRight(b[protocol.HeaderLen:], "\x00")))
	if !ok {
		return false, nil
	}
	ss.rd.Skip(n)
	if prev := ss.readerDone; prev != nil {
		<-prev // the last relayServer may still be flushing to the client
	}
	w := ss.writer()
	w.Write(reply)
	w.Write([]byte{'Z', 0, 0, 0, 5, 'I'})
	if !ss.rd.Complete() {
		if err := w.Flush(); err != nil {
			return true, errQuiet
		}
		ss.putWriter()
	}
	return true, nil
}

// writeMappedQuery writes a client's DEALLOCATE or DISCARD ALL to the server
// it holds, mapped: DEALLOCATE of a client name becomes DEALLOCATE of the
// server name; DEALLOCATE ALL and DISCARD ALL go as they are and empty the
// server's registry. Each leaves the server marked psDirty, to be wiped with
// DISCARD ALL before it is lent again, whether the command succeeded or not.
func (ss *session) writeMappedQuery(sc *serverConn, n int) error {
	body, err := ss.rd.Body(n)
	if err != nil {
		return err
	}
	q := string(bytes.TrimRight(body, "\x00"))
	out := ss.psBuf[:0]
	ss.mu.Lock()
	words := strings.Fields(strings.TrimRight(strings.TrimSpace(q), "; \t\r\n"))
	if len(words) > 1 && strings.EqualFold(words[0], "deallocate") && strings.EqualFold(words[1], "prepare") {
		words = words[1:]
	}
	switch {
	case len(words) == 2 && strings.EqualFold(words[0], "deallocate") && !strings.EqualFold(words[1], "all"):
		name, _ := sqlIdent(words[1])
		if cs := ss.stmts[name]; cs != nil {
			out = ss.ensureLocked(sc, cs, out)
			delete(ss.stmts, name)
			sc.prepared.remove(cs.server)
			sc.psDirty = true
			q = "DEALLOCATE " + cs.server
		}
	case len(words) == 2 && (strings.EqualFold(words[0], "deallocate") || strings.EqualFold(words[0], "discard")) && strings.EqualFold(words[1], "all"):
		clear(ss.stmts)
		sc.prepared.clear()
		sc.psDirty = true
	}
	ss.mu.Unlock()
	out = protocol.AppendHeader(out, 'Q', len(q)+1)
	out = append(out, q...)
	out = append(out, 0)
	ss.psBuf = out[:0]
	if _, err := sc.bw.Write(out); err != nil {
		return &protocol.WriteError{Err: err}
	}
	return nil
}
