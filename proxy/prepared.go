package proxy

import (
	"bytes"

	"github.com/pgmux/pgmux/prepared"
	"github.com/pgmux/pgmux/protocol"
)

// Prepared statements under transaction pooling are mapped by package
// prepared (see its doc); what follows is the I/O around it. The session's
// Mapper (ss.PS) is guarded by ss.mu, a server's Registry by the mutex of
// the session holding it.

// writeMapped writes a client's Parse, Bind, Describe or Close (typ) to sc
// with statement names mapped, preparing what sc lacks first. It consumes the
// message from the client. The caller has set writing.
func (ss *session) writeMapped(sc *serverConn, typ byte, n int) error {
	body, err := ss.rd.Body(n)
	if err != nil {
		return err
	}
	ss.mu.Lock()
	out, rest := ss.PS.Rewrite(&sc.Prepared, typ, body, ss.psBuf)
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

// writeMappedQuery writes a client's DEALLOCATE or DISCARD ALL to the server
// it holds, mapped (Mapper.RewriteQuery); a server whose statements it left
// unsure is marked psDirty, to be wiped before it is lent again.
func (ss *session) writeMappedQuery(sc *serverConn, n int) error {
	body, err := ss.rd.Body(n)
	if err != nil {
		return err
	}
	ss.mu.Lock()
	out, dirty := ss.PS.RewriteQuery(&sc.Prepared, string(bytes.TrimRight(body, "\x00")), ss.psBuf)
	if dirty {
		sc.psDirty = true
	}
	ss.mu.Unlock()
	ss.psBuf = out[:0]
	if _, err := sc.bw.Write(out); err != nil {
		return &protocol.WriteError{Err: err}
	}
	return nil
}

// trimPrepared closes the least recently used statements on sc beyond max,
// on a server no one else is using (before it is lent).
func (ss *session) trimPrepared(sc *serverConn, max int) error {
	msg, names := sc.Prepared.Trim(max)
	if len(names) == 0 {
		return nil
	}
	if _, err := sc.request(msg); err != nil {
		return err
	}
	sc.Prepared.Evicted(names, ss.PS.Counters)
	return nil
}

// stmtCommand reports whether the client's Query (of body length n, not yet
// consumed) may be a DEALLOCATE or DISCARD, which the mapping must see. It
// only peeks at what is buffered.
func (ss *session) stmtCommand(n int) bool {
	b, _ := ss.peek(min(protocol.HeaderLen+n, ss.rd.Size(), protocol.HeaderLen+64))
	if len(b) <= protocol.HeaderLen {
		return false
	}
	return prepared.IsStmtCommand(b[protocol.HeaderLen:])
}

// answerLocally answers a DEALLOCATE or DISCARD ALL while the session holds
// no server. It reports false, consuming nothing, for any other query.
func (ss *session) answerLocally(n int) (bool, error) {
	if protocol.HeaderLen+n > ss.rd.Size() {
		return false, nil
	}
	b, err := ss.peek(protocol.HeaderLen + n)
	if err != nil {
		return false, clientReadError(err, "timeout")
	}
	ss.mu.Lock()
	reply, discard, ok := ss.PS.Local(string(bytes.TrimRight(b[protocol.HeaderLen:], "\x00")))
	ss.mu.Unlock()
	if !ok {
		return false, nil
	}
	if discard {
		// DISCARD ALL puts the client's settings back as it logged in.
		ss.Want.Discard()
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
