package proxy

import (
	"errors"
	"fmt"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/protocol"
)

// serve reads the client's messages after login until it leaves.
func (ss *session) serve() error {
	for {
		if ss.readerDone == nil && ss.lease != nil {
			ss.goRelay(ss.lease.Conn()) // a server the loop relayed until it ejected the session
		}
		listener := ss.lis != nil
		if listener {
			if err := ss.writeNotifications(); err != nil {
				return err
			}
		}
		if ss.rd.Buffered() == 0 {
			ss.rd.Release() // an idle client holds no read buffer
			if ss.enterLoop() {
				return errParked
			}
		}
		if listener && !ss.readNextIdle() {
			continue // notifications came meanwhile
		}
		typ, n, err := ss.rd.Next()
		woke := listener && ss.takeNotifyWake()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if woke {
					continue // to write the notifications
				}
				if requested, parked := ss.tryPark(); parked {
					return errParked
				} else if requested {
					continue
				}
				if terr := ss.timeoutError(); terr != nil {
					return terr
				}
				continue
			}
			return ss.clientError(err)
		}
		if skip, reply := ss.Skip(typ); skip {
			if err := ss.answerAlone(n, reply); err != nil {
				return err
			}
			continue
		}
		switch kind, perr := core.Classify(typ); kind {
		case core.CopyData:
			if !ss.bound() { // no server, so no COPY
				if err := ss.rd.Skip(n); err != nil {
					return ss.clientError(err)
				}
				continue
			}
		case core.Terminate:
			ss.rd.Skip(n)
			return errQuiet
		case core.Invalid:
			return perr
		case core.Relay:
			if typ == 'Q' && ss.mode == ModeTransaction && !ss.NoLook {
				if handled, err := ss.listenCommand(n); err != nil {
					return err
				} else if handled {
					continue
				}
			}
			if typ == 'Q' && ss.Mapping && !ss.bound() && ss.stmtCommand(n) {
				if handled, err := ss.answerLocally(n); err != nil {
					return err
				} else if handled {
					continue
				}
			}
		}
		err = ss.forward(typ, n)
		if err == errCancelledWait {
			ss.mu.Lock()
			reply := ss.CancelWaiting(nil, typ)
			ss.mu.Unlock()
			err = ss.answerAlone(n, reply)
		}
		if err != nil {
			return err
		}
	}
}

// answerAlone drops the client's message being read, of body length n, and
// writes reply, if any, to the client; the session holds no server.
func (ss *session) answerAlone(n int, reply []byte) error {
	if err := ss.rd.Skip(n); err != nil {
		return ss.clientError(err)
	}
	if reply == nil {
		return nil
	}
	if ss.writeClient(reply) != nil {
		return errQuiet
	}
	return nil
}

// writeClient writes b to the client now, through a writer from the pool;
// the session holds no server, so no relayServer writes meanwhile.
func (ss *session) writeClient(b []byte) error {
	w := ss.writer()
	w.Write(b)
	err := w.Flush()
	ss.putWriter()
	return err
}

// enterLoop hands the session, waiting for its client's next query with no
// server, to the relay loop (see loop.go), and reports whether it did: the
// goroutine must then return without touching the session.
func (ss *session) enterLoop() bool {
	if !ss.srv.options().RelayLoop || ss.mode != ModeTransaction || !ss.loopable() {
		return false
	}
	if ss.lc != nil && ss.lc.ejected {
		ss.lc.ejected = false // this time the goroutine reads
		return false
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.parkReq || !ss.mayParkLocked() {
		return false
	}
	return ss.loop.park(ss)
}

// mayParkLocked reports whether the session, with no server and nothing of
// its client's unread, may wait in the loop; relayServer must have finished
// with the client writer.
func (ss *session) mayParkLocked() bool {
	if ss.lease != nil || ss.draining || ss.serverDead || ss.stopping || ss.rd.Buffered() != 0 || ss.Skipping() ||
		ss.lis != nil && (len(ss.lis.q) > 0 || ss.lis.err != nil) {
		return false
	}
	if done := ss.readerDone; done != nil {
		select {
		case <-done:
			ss.readerDone = nil
		default:
			return false
		}
	}
	return ss.bw == nil
}

// loopable reports whether the event loop may serve the session: it reads
// and writes raw descriptors, so neither the client nor its pool's servers
// may speak TLS.
func (ss *session) loopable() bool { return !ss.tls && !ss.pool.tlsServers.Load() }

func (ss *session) bound() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.lease != nil
}

// clientError is the session's end after a failed client read; if the
// server went away first, the client has been told already.
func (ss *session) clientError(err error) error {
	ss.mu.Lock()
	dead, lis := ss.serverDead, ss.lis
	if lis != nil && lis.err != nil {
		ss.mu.Unlock()
		return lis.err
	}
	ss.mu.Unlock()
	if dead {
		return errQuiet
	}
	return clientReadError(err, "timeout")
}

// peek is ss.rd.Peek for the message being read. A park request (see
// requestPark) may have set a past read deadline meanwhile: the session is
// not idle, so the request is dropped and the read tried again.
func (ss *session) peek(n int) ([]byte, error) {
	b, err := ss.rd.Peek(n)
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		ss.mu.Lock()
		asked := ss.dropParkReqLocked()
		ss.mu.Unlock()
		if asked {
			b, err = ss.rd.Peek(n)
		}
	}
	return b, err
}

// forward relays one client message to the session's server, binding one
// first if it holds none.
func (ss *session) forward(typ byte, n int) error {
	// What the session must see of the message, seen outside the lock.
	var body []byte
	if m := ss.Peek(typ, n, ss.tr != nil, ss.rd.Size()-protocol.HeaderLen); m > 0 {
		if b, err := ss.peek(protocol.HeaderLen + m); err == nil {
			body = b[protocol.HeaderLen:]
		}
	}
	unnamedParse, mapped := ss.Looked(typ, body, n)
	ss.mu.Lock()
	if ss.serverDead {
		ss.mu.Unlock()
		return errQuiet
	}
	for ss.readingBack {
		ss.cond.Wait() // the server answers pgmux's own query first
	}
	if body != nil {
		was := ss.Pinned
		ss.NoteMessage(typ, body)
		if ss.Pinned && !was {
			ss.pool.clientsPinned.Add(1) // a client is pinned once, until it leaves (finish)
		}
	}
	if ss.tr != nil && body != nil {
		ss.traceTextLocked(typ, body)
	}
	if ss.lease == nil {
		ss.routeLocked(ss.rd.BufferedBytes())
		if err := ss.bind(); err != nil {
			return err
		}
		ss.mu.Lock()
	}
	sc := ss.lease.Conn()
	endsSegment := ss.noteSentLocked(sc, typ, n, unnamedParse, mapped)
	ss.writing = true
	ss.armDeadlineLocked()
	ss.mu.Unlock()

	var err error
	switch {
	case mapped:
		err = ss.writeMapped(sc, typ, n)
	case ss.Mapping && typ == 'Q' && ss.stmtCommand(n):
		err = ss.writeMappedQuery(sc, n)
	default:
		err = ss.rd.Relay(sc.bw, n)
	}
	if err == nil && !ss.rd.Complete() {
		if ferr := sc.bw.Flush(); ferr != nil {
			err = &protocol.WriteError{Err: ferr}
		}
	}

	ss.mu.Lock()
	cancel := false
	if endsSegment {
		ss.PS.Sent(1) // after the write: what it carried belongs to this segment
		cancel = ss.Forward() && err == nil
	}
	ss.writing = false
	if ss.readerWaiting {
		ss.cond.Broadcast()
	}
	ss.mu.Unlock()
	if cancel {
		ss.cancelSent()
	}
	if err != nil {
		// The server got part of a message at most: it cannot be reused.
		ss.mu.Lock()
		sc.torn = true
		ss.mu.Unlock()
		var we *protocol.WriteError
		if errors.As(err, &we) {
			return protocol.Fatal(protocol.CodeConnectionFailure, "server conn crashed?")
		}
		return ss.clientError(err)
	}
	return nil
}

// noteSentLocked accounts for a client message of type typ, with a body of n
// bytes, about to be written to the session's server (core.Session.Sent),
// and reports whether it ends a segment.
func (ss *session) noteSentLocked(sc *serverConn, typ byte, n int, unnamedParse, rewritten bool) (endsSegment bool) {
	endsSegment = ss.Sent(typ, unnamedParse, rewritten)
	segs := 0
	if endsSegment {
		segs = 1
	}
	ss.noteSegmentsLocked(sc, segs, protocol.HeaderLen+n)
	return endsSegment
}

// noteBatchLocked is noteSentLocked for a whole batch the loop sends at
// once (parker.send), with nothing in it for the mapping to match.
func (ss *session) noteBatchLocked(sc *serverConn, b core.Batch, n int) {
	ss.SentBatch(b)
	ss.noteSegmentsLocked(sc, b.Segments, n)
}

// noteSegmentsLocked times, for the statistics, n bytes sent to sc, the
// last of them ending segs segments (a Sync, Query or FunctionCall each).
func (ss *session) noteSegmentsLocked(sc *serverConn, segs, n int) {
	t := &sc.times
	if t.txStart != 0 && segs == 0 {
		t.bytesIn += int64(n) // no clock read for a message that ends nothing
		return
	}
	if ss.tr != nil {
		ss.tr.tx.Statements += segs
	}
	t.sent(ss.now(), segs, n)
}

// relayStep is what relaying one server message led to.
type relayStep int8

const (
	stepMore     relayStep = iota // go on reading the server
	stepReleased                  // sc went back to the pool
	stepEnded                     // relaying ended on a failure, already handled
)

// relayServer copies sc's output to the client while the session holds sc,
// and gives sc back to the pool at the first safe point (see session). With
// the relay loop on, a session whose server went back asks to re-enter it.
func (ss *session) relayServer(sc *serverConn, done chan struct{}) {
	step := stepMore
	for step == stepMore {
		step = ss.relayMessage(sc, ss.Mapping)
	}
	close(done)
	if step == stepReleased && ss.srv.options().RelayLoop {
		ss.requestPark()
	}
}

// goRelay starts relayServer on the lease the session holds.
func (ss *session) goRelay(sc *serverConn) {
	done := make(chan struct{})
	ss.mu.Lock()
	ss.readerDone = done
	ss.mu.Unlock()
	go ss.relayServer(sc, done)
}

// relayMessage relays one message of sc's to the client, as the core
// decides (core.Session.FromServer). matched: ParseComplete and
// CloseComplete are matched against the prepared-statement mapping's queue.
func (ss *session) relayMessage(sc *serverConn, matched bool) relayStep {
	if !sc.CopyIn {
		// Messages passed on as they are, whole in the buffer, go in one copy.
		if n, count := sc.rd.WholeRun(core.StopTable(matched)); count > 0 {
			sc.times.bytesOut += int64(n)
			_, err := ss.bw.Write(sc.rd.BufferedBytes()[:n])
			sc.rd.DiscardBuffered(n)
			if err == nil && sc.rd.Complete() {
				return stepMore // flushPartial's common case, without its call
			}
			return ss.flushNow(err)
		}
	}
	typ, n, err := sc.rd.Next()
	if err != nil {
		ss.serverFailed(err)
		return stepEnded
	}
	sc.times.bytesOut += int64(protocol.HeaderLen + n)
	if !core.Looks(&sc.Server, typ, matched) {
		if err := sc.rd.Relay(ss.bw, n); err != nil {
			ss.relayFailed(err)
			return stepEnded
		}
		return ss.flushPartial(sc, nil)
	}
	body, err := sc.rd.Body(n)
	var r core.Reply
	if err == nil && typ == 'Z' {
		ss.mu.Lock()
		var release bool
		if release, err = ss.Ready(&sc.Server, body); err == nil {
			return ss.readyLocked(sc, release) // under the same lock
		}
		ss.mu.Unlock()
	} else if err == nil {
		ss.mu.Lock()
		r, err = ss.FromServer(&sc.Server, typ, body, matched)
		if r.Code != "" && ss.tr != nil && ss.tr.tx.SQLState == "" {
			ss.tr.tx.SQLState = r.Code
		}
		ss.mu.Unlock()
	}
	if err != nil {
		ss.serverFailed(err)
		return stepEnded
	}
	if r.Code != "" {
		ss.pool.countError(r.Code)
	}
	switch {
	case r.Out != nil:
		_, err = ss.bw.Write(r.Out)
	case !r.Drop:
		ss.bw.Write(protocol.AppendHeader(sc.hdr[:0], typ, n))
		_, err = ss.bw.Write(body)
	}
	return ss.flushPartial(sc, err)
}

// flushPartial ends a relayed message: after err writing it, relaying ends;
// else the client is written now if the server's reader holds nothing more
// whole.
func (ss *session) flushPartial(sc *serverConn, err error) relayStep {
	if err == nil && sc.rd.Complete() {
		return stepMore // written with what follows
	}
	return ss.flushNow(err)
}

// flushNow is flushPartial's end when the client is written now, or err
// ended relaying.
func (ss *session) flushNow(err error) relayStep {
	if err == nil {
		err = ss.bw.Flush()
	}
	if err != nil {
		ss.clientWriteFailed()
		return stepEnded
	}
	return stepMore
}

// relayFailed ends relaying after a failed Relay from the server.
func (ss *session) relayFailed(err error) {
	var we *protocol.WriteError
	if errors.As(err, &we) {
		ss.clientWriteFailed()
	} else {
		ss.serverFailed(err)
	}
}

// readyLocked keeps the statistics of a ReadyForQuery the core has noted
// (core.Session.Ready), with ss.mu held, and releases it; when the core lets
// the server go back (may) and no client message is being written, it
// gives sc back to the pool after the client's ReadyForQuery is written.
func (ss *session) readyLocked(sc *serverConn, may bool) relayStep {
	now := ss.now()
	status := sc.TxStatus
	t := &sc.times
	if sent := t.answered(); sent != 0 {
		ss.pool.observeQuery(time.Duration(now-sent), now)
	}
	if status == 'I' && t.txStart != 0 {
		ss.pool.observeTransaction(time.Duration(now-t.txStart), now)
		if ss.pool.reads != nil && ss.txPool != ss.pool.reads {
			ss.wroteAt = now // on the primary: its next reads there too, for a while
		}
		if ss.tr != nil {
			ss.endTraceLocked(sc, now)
		}
		t.txStart = 0
	}
	ss.pool.addBytes(t.bytesIn, t.bytesOut)
	t.bytesIn, t.bytesOut = 0, 0
	release := false
	if may && !ss.stopping {
		for ss.writing {
			ss.readerWaiting = true
			ss.cond.Wait()
		}
		ss.readerWaiting = false
		release = ss.Acct.Releasable(status) && !ss.stopping // the client may have sent more meanwhile
	}
	if due, q := ss.ReadBackDue(&sc.Settings); release && due {
		if !ss.readBackLocked(sc, q) {
			return stepEnded
		}
		release = ss.Acct.Releasable(status) && !ss.stopping
	}
	var notes []byte
	if status == 'I' && ss.lis != nil {
		notes = ss.takeNotificationsLocked() // between transactions, as PostgreSQL sends them
	}
	if !release {
		ss.armDeadlineLocked()
		ss.mu.Unlock()
		if len(notes) > 0 {
			ss.bw.Write(notes)
		}
		_, err := ss.bw.Write(core.ReadyMessage(status))
		return ss.flushPartial(sc, err)
	}
	lease := ss.lease
	ss.lease = nil
	if ss.draining {
		ss.drainAt = pastDeadline // its transaction is over: close it now
	}
	ss.armDeadlineLocked()
	if ss.lis != nil && ss.lis.err != nil {
		ss.wakeForNotifyLocked() // the session goroutine ends the session with it
	}
	ss.setPhase(core.PhaseIdle)
	ss.mu.Unlock()

	if len(notes) > 0 {
		ss.bw.Write(notes)
	}
	ss.bw.Write(core.ReadyMessage(status))
	err := ss.bw.Flush()
	ss.putWriter()
	if sc.cancelling.Load() > 0 || sc.psDirty {
		// Not here, where the relay loop would wait with every other
		// client behind it: see releaseSettled.
		go releaseSettled(sc, lease)
	} else {
		releaseLeaseAt(lease, ss.poolNow())
	}
	if err != nil {
		ss.hangUp() // wakes the session goroutine, which ends
	}
	return stepReleased
}

// readBackLocked reads the client's settings back from sc, which it is
// about to give back, with q (core.Session.ReadBackDue), before the client
// sees the transaction's ReadyForQuery; the client's messages wait meanwhile
// (readingBack). It is called with ss.mu held, which it releases for the
// exchange. A failure is the server's: it reports false, with ss.mu
// released and the failure handled.
func (ss *session) readBackLocked(sc *serverConn, q []byte) bool {
	ss.readingBack = true
	ss.mu.Unlock()
	a, err := sc.request(q)
	ss.mu.Lock()
	ss.readingBack = false
	ss.cond.Broadcast()
	if err != nil {
		sc.torn = true // whatever it holds, it goes to no one
		ss.mu.Unlock()
		ss.serverFailed(fmt.Errorf("reading the client's settings back: %w", err))
		return false
	}
	ss.ReadBack(a.Rows, &sc.Settings)
	return true
}

// serverFailed handles a failed read of the server: unless the session is
// ending anyway, the server is destroyed and the client told and closed.
func (ss *session) serverFailed(err error) {
	ss.mu.Lock()
	if ss.stopping || ss.lease == nil {
		ss.mu.Unlock()
		return
	}
	lease := ss.lease
	ss.lease = nil
	ss.serverDead = true
	ss.mu.Unlock()
	sc := lease.Conn()
	timedOut, limit := sc.timedOut.Load(), ss.srv.options().QueryTimeout
	tell := core.ServerLost(&sc.Server, timedOut, limit)
	destroyLease(lease)
	if timedOut {
		ss.logger().Warn("query_timeout: server connection closed", zap.Uint32("server_pid", sc.pid), zap.Duration("query_timeout", limit))
	} else {
		ss.logger().Warn("server connection lost", zap.Uint32("server_pid", sc.pid), zap.Error(err))
	}
	if tell != nil {
		ss.bw.Write(tell.AppendTo(nil))
	}
	ss.bw.Flush()
	ss.hangUp()
}

// clientWriteFailed handles a client that stopped reading: the session
// goroutine is woken to end the session, which settles the server.
func (ss *session) clientWriteFailed() {
	ss.hangUp()
}
