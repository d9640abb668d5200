package proxy

import (
	"bytes"
	"encoding/binary"
	"time"

	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/tracing"
)

// txTrace is what a session notes of its open transaction for its spans
// (tracing.Tx) when tracing is on; the session has none when it is off, and
// every hook below is then one nil test.
type txTrace struct {
	tx     tracing.Tx
	looked bool // the transaction's first Query or Parse was looked at for a traceparent
}

// startTrace gives a session that has logged in its trace notes, if
// tracing is on.
func (ss *session) startTrace() {
	if ss.srv.options().Tracer != nil {
		ss.tr = &txTrace{}
	}
}

// traceTextLocked looks at a client message (typ; its body, or its start)
// for the trace context of the transaction, if it is the transaction's
// first Query or Parse: a traceparent in the statement's text, else in the
// client's application_name.
func (ss *session) traceTextLocked(typ byte, body []byte) {
	t := ss.tr
	if t.looked || typ != 'Q' && typ != 'P' {
		return
	}
	t.looked = true
	text := statementText(typ, body)
	if sc, ok := tracing.Traceparent(text); ok {
		t.tx.Parent = sc
	} else if sc, ok := tracing.Traceparent(ss.appName); ok {
		t.tx.Parent = sc
	}
	if ss.srv.options().Tracer.IncludeQuery() {
		t.tx.Query = string(text[:min(len(text), maxTracedQuery)])
	}
}

// statementText is the query text of a Query or Parse body, as far as body
// holds it.
func statementText(typ byte, body []byte) []byte {
	if typ == 'P' { // the statement's name first
		if i := bytes.IndexByte(body, 0); i >= 0 {
			body = body[i+1:]
		}
	}
	if i := bytes.IndexByte(body, 0); i >= 0 {
		body = body[:i]
	}
	return body
}

// maxTracedQuery is the most of a statement's text a span carries.
const maxTracedQuery = 2048

// traceBatchLocked is traceTextLocked for the first Query or Parse in buf,
// whole messages as the loop sends them.
func (ss *session) traceBatchLocked(buf []byte) {
	for i := 0; i+protocol.HeaderLen <= len(buf) && !ss.tr.looked; {
		typ, l := buf[i], int(binary.BigEndian.Uint32(buf[i+1:]))
		if end := i + 1 + l; end <= len(buf) {
			ss.traceTextLocked(typ, buf[i+protocol.HeaderLen:end])
		}
		i += 1 + l
	}
}

// waited notes a wait for a server, from start to now (Unix nanoseconds),
// in the pool's statistics and the transaction's trace; both drivers call
// it when a server is granted.
func (ss *session) waited(start, now int64) {
	ss.pool.observeWait(time.Duration(now-start), now)
	if t := ss.tr; t != nil {
		ss.mu.Lock()
		t.tx.WaitStart, t.tx.Granted = start, now
		ss.mu.Unlock()
	}
}

// endTraceLocked hands the transaction that ended at now, on sc, to the
// tracer, and starts the next one's notes.
func (ss *session) endTraceLocked(sc *serverConn, now int64) {
	t := ss.tr
	t.tx.Sent, t.tx.End = sc.times.txStart, now
	t.tx.Database, t.tx.User, t.tx.Mode = ss.dbName, ss.user, ss.mode
	t.tx.ServerAddr, t.tx.ServerPID = sc.addr, sc.pid
	ss.srv.options().Tracer.Record(&t.tx)
	*t = txTrace{}
}
