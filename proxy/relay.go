package proxy

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/prepared"
	"github.com/pgmux/pgmux/protocol"
)

// serve reads the client's messages after login until it leaves.
func (ss *session) serve() error {
	for {
		if ss.readerDone == nil && ss.lease != nil {
			ss.goRelay(ss.lease.Conn()) // a server the loop relayed until it ejected the session
		}
		if ss.rd.Buffered() == 0 {
			ss.rd.Release() // an idle client holds no read buffer
			if ss.enterLoop() {
				return errParked
			}
		}
		typ, n, err := ss.rd.Next()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
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
			if typ == 'Q' && ss.psOn && !ss.bound() && ss.stmtCommand(n) {
				if handled, err := ss.answerLocally(n); err != nil {
					return err
				} else if handled {
					continue
				}
			}
		}
		if err := ss.forward(typ, n); err != nil {
			return err
		}
	}
}

// enterLoop hands the session, waiting for its client's next query with no
// server, to the relay loop (see loop.go), and reports whether it did: the
// goroutine must then return without touching the session.
func (ss *session) enterLoop() bool {
	if !ss.srv.options().RelayLoop || ss.mode != ModeTransaction {
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
	if ss.lease != nil || ss.draining || ss.serverDead || ss.stopping || ss.rd.Buffered() != 0 {
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

func (ss *session) bound() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.lease != nil
}

// clientError is the session's end after a failed client read; if the
// server went away first, the client has been told already.
func (ss *session) clientError(err error) error {
	ss.mu.Lock()
	dead := ss.serverDead
	ss.mu.Unlock()
	if dead {
		return errQuiet
	}
	return clientReadError(err, "timeout")
}

// forward relays one client message to the session's server, binding one
// first if it holds none.
func (ss *session) forward(typ byte, n int) error {
	// Look at the start of the body, outside the lock: whether a Parse is of
	// the unnamed statement, and whether a message names a statement that
	// prepared-statement mapping must rewrite.
	unnamedParse, mapped := false, false
	switch typ {
	case 'P', 'B', 'D', 'C':
		head, _ := ss.rd.Peek(protocol.HeaderLen + min(n, 64))
		if len(head) > protocol.HeaderLen {
			body := head[protocol.HeaderLen:]
			unnamedParse = typ == 'P' && body[0] == 0
			mapped = ss.psOn && prepared.NamesStatement(typ, body, n)
		} else {
			mapped = ss.psOn && n > 0
		}
	}
	ss.mu.Lock()
	if ss.serverDead {
		ss.mu.Unlock()
		return errQuiet
	}
	if ss.lease == nil {
		if err := ss.bind(); err != nil {
			return err
		}
		ss.mu.Lock()
	}
	sc := ss.lease.Conn()
	endsSegment := ss.noteSentLocked(typ, n, unnamedParse, mapped)
	ss.writing = true
	ss.armDeadlineLocked()
	ss.mu.Unlock()

	var err error
	switch {
	case mapped:
		err = ss.writeMapped(sc, typ, n)
	case ss.psOn && typ == 'Q' && ss.stmtCommand(n):
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
	if endsSegment {
		ss.ps.Sent(1) // after the write: what it carried belongs to this segment
	}
	ss.writing = false
	if ss.readerWaiting {
		ss.cond.Broadcast()
	}
	ss.mu.Unlock()
	if err != nil {
		// The server got part of a message at most: it cannot be reused.
		ss.mu.Lock()
		ss.serverTorn = true
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
// bytes, about to be written to the session's server, and reports whether
// it ends a segment (its answer ends with ReadyForQuery). unmatched says
// that its answer needs no entry in the mapping's queue: the mapping
// rewrites it and queues its own, or the loop relays the answer as it is
// (parker.send).
func (ss *session) noteSentLocked(typ byte, n int, unnamedParse, unmatched bool) (endsSegment bool) {
	endsSegment = ss.acct.Sent(typ, unnamedParse)
	if ss.psOn && !unmatched && (typ == 'P' || typ == 'C') {
		// Relayed as it is, but its answer must still be matched.
		ss.ps.Passed(typ)
	}
	segs := 0
	if endsSegment {
		segs = 1
	}
	ss.noteSegmentsLocked(segs, protocol.HeaderLen+n)
	return endsSegment
}

// noteBatchLocked is noteSentLocked for a whole batch the loop sends at
// once (parker.send), from what core.Scan made of it, when none of its
// messages needs an entry in the mapping's queue. It also counts the
// batch's segments as sent.
func (ss *session) noteBatchLocked(b core.Batch, n int) {
	ss.acct.SentBatch(b)
	ss.noteSegmentsLocked(b.Segments, n)
	ss.ps.Sent(b.Segments)
}

// noteSegmentsLocked counts, for the statistics, n bytes sent, the last of
// them ending segs segments (a Sync, Query or FunctionCall each): when the
// transaction and each segment started.
func (ss *session) noteSegmentsLocked(segs, n int) {
	if ss.txStart == 0 || segs > 0 {
		now := ss.now()
		if ss.txStart == 0 {
			ss.txStart = now
		}
		for ; segs > 0 && ss.segLen < len(ss.segStarts); segs-- {
			ss.segStarts[(ss.segHead+ss.segLen)%len(ss.segStarts)] = now
			ss.segLen++
		}
	}
	ss.bytesIn += int64(n)
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
		step = ss.relayMessage(sc, ss.psOn)
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

// relayMessage relays one message of sc's to the client. ps: ParseComplete
// and CloseComplete are matched against the prepared-statement mapping's
// queue (psAnswer), else they pass as they are.
func (ss *session) relayMessage(sc *serverConn, ps bool) relayStep {
	if !sc.copyIn {
		// Messages passed on as they are (the default case below: rows,
		// their description, CommandComplete...), whole in the buffer, go
		// in one copy. CommandComplete would only clear copyIn.
		stop := &relayStopPS
		if !ps {
			stop = &relayStop
		}
		if n, count := sc.rd.WholeRun(stop); count > 0 {
			ss.bytesOut += int64(n)
			if _, err := ss.bw.Write(sc.rd.BufferedBytes()[:n]); err != nil {
				sc.rd.Discard(n)
				ss.clientWriteFailed()
				return stepEnded
			}
			sc.rd.Discard(n)
			if !sc.rd.Complete() {
				if err := ss.bw.Flush(); err != nil {
					ss.clientWriteFailed()
					return stepEnded
				}
			}
			return stepMore
		}
	}
	typ, n, err := sc.rd.Next()
	if err != nil {
		ss.serverFailed(err)
		return stepEnded
	}
	ss.bytesOut += int64(protocol.HeaderLen + n)
	switch typ {
	case 'Z':
		body, err := sc.rd.Body(n)
		if err != nil || n != 1 {
			ss.serverFailed(fmt.Errorf("bad ReadyForQuery: %v", err))
			return stepEnded
		}
		sc.copyIn = false
		_, werr := ss.bw.Write(readyMessage(body[0]))
		if ss.readyForQuery(sc, body[0], werr == nil) {
			return stepReleased
		}
		if werr != nil {
			ss.clientWriteFailed()
			return stepEnded
		}
	case '1', '3': // ParseComplete, CloseComplete
		if !ps {
			if err := sc.rd.Relay(ss.bw, n); err != nil {
				ss.relayFailed(err)
				return stepEnded
			}
			break
		}
		if err := sc.rd.Skip(n); err != nil {
			ss.serverFailed(err)
			return stepEnded
		}
		ss.mu.Lock()
		out := ss.ps.Answer(&sc.prepared, typ)
		ss.mu.Unlock()
		if out != 0 {
			msg := parseCompleteMsg
			if out == '3' {
				msg = closeCompleteMsg
			}
			if _, err := ss.bw.Write(msg); err != nil {
				ss.clientWriteFailed()
				return stepEnded
			}
		}
	case 'E':
		sc.copyIn = false
		body, err := sc.rd.Body(n)
		if err != nil {
			ss.serverFailed(err)
			return stepEnded
		}
		ss.pool.countError(errorCode(body))
		var out []byte
		if ss.psOn {
			ss.mu.Lock()
			if ss.ps.AwaitsDup() {
				out = ss.ps.DupError(body)
			}
			ss.mu.Unlock()
		}
		if out == nil {
			ss.bw.Write(protocol.AppendHeader(ss.hdr[:0], 'E', n))
			out = body
		}
		if _, err := ss.bw.Write(out); err != nil {
			ss.clientWriteFailed()
			return stepEnded
		}
	case 'S':
		body, err := sc.rd.Body(n)
		if err != nil {
			ss.serverFailed(err)
			return stepEnded
		}
		var ps pgproto3.ParameterStatus
		if ps.Decode(body) == nil {
			ss.want.Reported(sc.settings.Note(ps.Name, ps.Value), ps.Value)
		}
		ss.bw.Write(protocol.AppendHeader(ss.hdr[:0], 'S', n))
		if _, err := ss.bw.Write(body); err != nil {
			ss.clientWriteFailed()
			return stepEnded
		}
	default:
		switch typ {
		case 'G', 'W': // CopyInResponse, CopyBothResponse
			sc.copyIn = true
		case 'C':
			sc.copyIn = false
		}
		if err := sc.rd.Relay(ss.bw, n); err != nil {
			ss.relayFailed(err)
			return stepEnded
		}
	}
	if !sc.rd.Complete() {
		if err := ss.bw.Flush(); err != nil {
			ss.clientWriteFailed()
			return stepEnded
		}
	}
	return stepMore
}

// relayStop and relayStopPS (prepared statements mapped) are the server
// message types relayMessage looks at rather than passes on (its cases but
// the default), which end a run WholeRun may relay in one copy.
var relayStop, relayStopPS = relayStopTable(false), relayStopTable(true)

func relayStopTable(ps bool) (t [256]bool) {
	for _, typ := range []byte{'Z', 'E', 'S', 'G', 'W'} {
		t[typ] = true
	}
	if ps {
		t['1'], t['3'] = true, true
	}
	return t
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

// readyMessage is the ReadyForQuery message for a transaction status, made
// once for the three there are (a slice made per message escapes into the
// writer: one allocation per transaction).
func readyMessage(status byte) []byte {
	switch status {
	case 'I':
		return readyIdle
	case 'T':
		return readyInTx
	case 'E':
		return readyFailed
	}
	return []byte{'Z', 0, 0, 0, 5, status}
}

var (
	readyIdle   = []byte{'Z', 0, 0, 0, 5, 'I'}
	readyInTx   = []byte{'Z', 0, 0, 0, 5, 'T'}
	readyFailed = []byte{'Z', 0, 0, 0, 5, 'E'}
)

// readyForQuery accounts for a ReadyForQuery relayed from sc and, at a safe
// point in transaction mode, releases sc (unless the client could not be
// written, mayRelease false). It reports whether relayServer must stop
// because sc was released.
func (ss *session) readyForQuery(sc *serverConn, status byte, mayRelease bool) bool {
	now := ss.now()
	ss.mu.Lock()
	ss.acct.Answered()
	if ss.psOn {
		ss.ps.Ready(&sc.prepared)
	}
	sc.txStatus = status
	if ss.segLen > 0 {
		ss.pool.observeQuery(time.Duration(now-ss.segStarts[ss.segHead]), now)
		ss.segHead = (ss.segHead + 1) % len(ss.segStarts)
		ss.segLen--
	}
	if status == 'I' && ss.txStart != 0 {
		ss.pool.observeTransaction(time.Duration(now-ss.txStart), now)
		ss.txStart = 0
	}
	ss.pool.addBytes(ss.bytesIn, ss.bytesOut)
	ss.bytesIn, ss.bytesOut = 0, 0
	release := false
	if mayRelease && ss.mode == ModeTransaction && ss.acct.Releasable(status) && !ss.stopping {
		for ss.writing {
			ss.readerWaiting = true
			ss.cond.Wait()
		}
		ss.readerWaiting = false
		release = ss.acct.Releasable(status) && !ss.stopping
	}
	if !release {
		ss.armDeadlineLocked()
		ss.mu.Unlock()
		return false
	}
	lease := ss.lease
	ss.lease = nil
	if ss.draining {
		ss.drainAt = pastDeadline // its transaction is over: close it now
	}
	ss.armDeadlineLocked()
	ss.mu.Unlock()
	ss.setState(stateIdle)

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
	ss.logger().Warn("server connection lost", zap.Uint32("server_pid", lease.Conn().pid), zap.Error(err))
	destroyLease(lease)
	ss.bw.Write(protocol.Fatal(protocol.CodeConnectionFailure, "server conn crashed?").AppendTo(nil))
	ss.bw.Flush()
	ss.hangUp()
}

// clientWriteFailed handles a client that stopped reading: the session
// goroutine is woken to end the session, which settles the server.
func (ss *session) clientWriteFailed() {
	ss.hangUp()
}

// errorCode returns the SQLSTATE field of an ErrorResponse body.
func errorCode(body []byte) string {
	for len(body) > 1 {
		typ := body[0]
		end := 1
		for end < len(body) && body[end] != 0 {
			end++
		}
		if typ == 'C' {
			return string(body[1:end])
		}
		body = body[min(end+1, len(body)):]
	}
	return ""
}

// ParseComplete and CloseComplete, as psAnswer's caller writes them: built
// once, not a slice made each time (it escapes into the writer).
var (
	parseCompleteMsg = []byte{'1', 0, 0, 0, 4}
	closeCompleteMsg = []byte{'3', 0, 0, 0, 4}
)
