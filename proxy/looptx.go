//go:build linux

package proxy

import (
	"encoding/binary"
	"errors"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/pool"
	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/rawio"
)

// A transaction in the event loop: the client's request read whole and
// sorted (core.Scan), a server taken without blocking, its settings brought
// in line, the request sent and the answer relayed up to ReadyForQuery.

// startTx begins the transaction whose first messages the client has sent,
// if they are ordinary and whole; if they are not whole it waits for more.
func (p *parker) startTx(ss *session) exit {
	res, batch := core.Scan(ss.rd.BufferedBytes(), ss.srv.options().MaxPacketSize, ss.Mapping, &ss.Session)
	switch {
	case res == core.ScanTerminate:
		return p.goodbye(ss)
	case res == core.ScanEject, res == core.ScanMore && ss.rd.Buffered() >= ss.rd.Size():
		return eject // the goroutine path's, or larger than the buffer
	case res == core.ScanMore:
		return stay // more is to come before the server can answer
	}
	ss.lc.batch = batch
	ss.mu.Lock()
	if ss.draining || ss.serverDead {
		ss.mu.Unlock()
		return eject
	}
	if lease := ss.lease; lease != nil {
		// A transaction left open: its server is still the session's,
		// and the loop watches it (lc.srv) unless the session came in
		// with it some other way.
		ss.mu.Unlock()
		sc := ss.lc.srv
		if sc == nil {
			sc = lease.Conn()
		}
		return p.send(ss, sc)
	}
	adm := ss.Admit(ss.paused())
	from := ss.routeLocked(ss.rd.BufferedBytes())
	ss.mu.Unlock()
	if adm != core.Acquire {
		return eject // its goroutine waits for RESUME, or answers a cancel
	}
	lc := ss.lc
	lc.waitStart = p.now
	lease, err := from.pool.Load().AcquireAsync(lc.wait, ss.srv.options().QueryWaitTimeout)
	if err != nil {
		return eject // a closed pool: the goroutine path retries or tells
	}
	if lease == nil {
		// Queued: the session shows as waiting until its server comes.
		// One served at once goes from idle to active (attach), without
		// the two gauge moves and the stores of a wait of no length.
		ss.setPhase(core.PhaseWaiting)
		ss.waitingSince.Store(lc.waitStart)
		return stay
	}
	return p.gotServer(ss, lease, nil)
}

// gotServer goes on with a server (or the error) the session waited for.
func (p *parker) gotServer(ss *session, lease *pool.Lease[*serverConn], err error) exit {
	lc := ss.lc
	queued := ss.getPhase() == core.PhaseWaiting
	if queued {
		ss.setPhase(core.PhaseGranted) // out of the pool's queue
	}
	if err != nil {
		if !errors.Is(err, pool.ErrClosed) {
			lc.endErr = ss.acquireError(err)
		}
		return eject
	}
	ss.mu.Lock()
	adm := ss.Admit(false)
	ss.mu.Unlock()
	if adm == core.Cancelled {
		releaseLease(lease)
		return eject // its goroutine answers the request as cancelled (bind)
	}
	if lease.Conn().sys == nil {
		releaseLease(lease) // a TLS server, which only the goroutine path relays
		return ejectServed
	}
	// The steps acquireSynced takes, those that do not block; no look for
	// a hang-up: the client's socket stayed in the epoll set while it
	// waited, and clientReady saw it hang up.
	g := ss.granted(lease, 0)
	for {
		switch step := g.Next(); step {
		case core.GrantDone, core.SyncSettings: // the sync is the last step
			ss.waited(lc.waitStart, p.now)
			if queued {
				ss.waitingSince.Store(0)
			}
			if step == core.SyncSettings {
				return p.syncServer(ss, lease)
			}
			return p.bindServer(ss, lease)
		case core.LookAlive:
			if !lease.Conn().alive() {
				destroyLease(lease)
				return ejectServed // the goroutine path takes another
			}
		case core.RunCheckQuery:
			// It blocks: the goroutine path runs it, the server given
			// back with its idle time kept so that it asks.
			releaseLeaseAt(lease, p.mono-lease.IdleDurationAt(p.mono))
			return ejectServed
		case core.TrimStatements:
			// It blocks too. The loop read the request whole, so the
			// goroutine may hand the session back as soon as it has
			// served it.
			releaseLease(lease)
			return ejectServed
		}
	}
}

// bindServer makes lease, a server whose settings are the client's, the
// session's, and sends it the client's request.
func (p *parker) bindServer(ss *session, lease *pool.Lease[*serverConn]) exit {
	ss.attach(lease)
	return p.send(ss, lease.Conn())
}

// syncServer sends lease's server the query that brings its settings to the
// session's (Session.Sync), as acquireSynced does, and waits in the loop for
// the answer (syncAnswered) before it sends the client's request: one round
// trip, as PgBouncer's, without a goroutine.
func (p *parker) syncServer(ss *session, lease *pool.Lease[*serverConn]) exit {
	lc, sc := ss.lc, lease.Conn()
	msg := ss.Sync.Start(&sc.Server, &ss.Want, p.syncBuf[:0])
	p.syncBuf = msg[:0]
	if len(msg) == 0 {
		return p.bindServer(ss, lease)
	}
	if n, err := sc.sys.TryWrite(msg); n < len(msg) || err != nil {
		// A socket that does not take a small query at once (or failed)
		// holds part of it: the server is no use to anyone.
		destroyLease(lease)
		return ejectServed // the goroutine path takes another
	}
	lc.sync = lease
	ss.setPhase(core.PhaseGranted)
	if !p.watchServer(ss, sc) {
		return ejectServed // its goroutine reads the answer (finishSync)
	}
	return stay
}

// syncAnswered reads the answer to syncServer's query as far as it has
// come, and at its end goes on as core.SettingsSync.End says.
func (p *parker) syncAnswered(ss *session, sc *serverConn, hup bool) exit {
	for more := true; more; {
		var err error
		if more, err = p.fill(sc, hup); err != nil {
			return p.synced(ss, err)
		}
		for sc.rd.Complete() {
			typ, n, err := sc.rd.Next()
			var body []byte
			if err == nil {
				body, err = sc.rd.Body(n)
			}
			var done bool
			if err == nil {
				done, err = ss.Sync.Note(&sc.Server, &ss.Want, typ, body)
			}
			if done || err != nil {
				return p.synced(ss, err)
			}
		}
	}
	return stay
}

// synced goes on after the answer to syncServer's query, or a failure to
// read it (err): the client's request goes to the server; a client whose
// setting the server refused is told so; after a broken server the
// goroutine path takes another.
func (p *parker) synced(ss *session, err error) exit {
	lc := ss.lc
	lease := lc.sync
	lc.sync = nil
	p.unwatchServer(ss)
	switch ss.Sync.End(&lease.Conn().Server, &ss.Want, err) {
	case core.SyncDone:
		return p.bindServer(ss, lease)
	case core.SyncRefused:
		releaseLease(lease)
		lc.endErr = ss.Sync.Refusal()
		return eject
	}
	destroyLease(lease)
	return ejectServed
}

// finishSync reads, in the goroutine the session was ejected to, the rest
// of the answer to the loop's syncServer query, and gives the server back
// to the pool unless it broke; the goroutine path then takes a server again.
func (ss *session) finishSync() {
	lease := ss.lc.sync
	sc := lease.Conn()
	ss.lc.sync = nil
	if ss.Sync.End(&sc.Server, &ss.Want, sc.readSync(&ss.Sync, &ss.Want)) == core.SyncBroken {
		destroyLease(lease)
	} else {
		releaseLease(lease)
	}
}

// send writes what the client sent to sc, the session's server, as forward
// does message by message, and waits for the answer.
func (p *parker) send(ss *session, sc *serverConn) exit {
	lc := ss.lc
	ss.writer().Reset(&lc.out)
	if lc.batch.Mapped {
		return p.sendMapped(ss, sc)
	}
	buf := ss.rd.BufferedBytes()
	ss.mu.Lock()
	if ss.tr != nil {
		ss.traceBatchLocked(buf)
	}
	// No statement named (else sendMapped) and nothing queued before: the
	// answers to these Parses and Closes pass as they are, and none needs
	// an entry in the mapping's queue to keep the later ones in step.
	// Relaying them in one run with the rest (relayAnswer) saves looking
	// at each, which was most of what -M extended costs over simple.
	if lc.plain = ss.PS.Idle(); lc.plain {
		ss.noteBatchLocked(sc, lc.batch, len(buf))
	} else {
		for i := 0; i < len(buf); {
			typ := buf[i]
			l := int(binary.BigEndian.Uint32(buf[i+1:]))
			unnamedParse, _ := ss.Looked(typ, buf[i+protocol.HeaderLen:i+1+l], l-4)
			if ss.noteSentLocked(sc, typ, l-4, unnamedParse, false) {
				ss.PS.Sent(1)
			}
			i += 1 + l
		}
	}
	ss.armDeadlineLocked()
	cancel := ss.Forward()
	ss.mu.Unlock()
	lc.srvOut.sock = sc.sys
	_, err := lc.srvOut.Write(buf) // what the socket does not take into lc.toServer
	if cancel {
		ss.cancelSent() // after the request, which the turn's end sends
	}
	// The read buffer, now empty, is kept until the transaction ends
	// (relayAnswer): a transaction of several statements takes it from
	// the pool once, not at each (a sync.Pool Get and Put, about 4% of
	// pgmux's user-space instructions under TPC-B). Idle clients still
	// hold none.
	ss.rd.DiscardBuffered(len(buf))
	if err != nil {
		ss.mu.Lock()
		sc.torn = true
		ss.mu.Unlock()
		err = errServerCrashed
	}
	return p.awaitAnswer(ss, sc, err)
}

// awaitAnswer waits in the loop for the answer to what send wrote, or ejects
// the session: after err (its end), or to write what the server's socket did
// not take.
func (p *parker) awaitAnswer(ss *session, sc *serverConn, err error) exit {
	if err != nil {
		ss.lc.endErr = err
		return eject
	}
	if len(ss.lc.toServer) > 0 || !p.watchServer(ss, sc) {
		return eject
	}
	return stay
}

// sendMapped is send for messages that name prepared statements: each goes
// through forward, as on the goroutine path, into a server writer that does
// not block.
func (p *parker) sendMapped(ss *session, sc *serverConn) exit {
	lc := ss.lc
	lc.srvOut.sock = sc.sys
	lc.plain = false
	sc.bw.Reset(&lc.srvOut)
	var err error
	for err == nil && ss.rd.Buffered() > 0 {
		var typ byte
		var n int
		if typ, n, err = ss.rd.Next(); err == nil {
			err = ss.forward(typ, n)
		}
	}
	if err == nil && sc.bw.Flush() != nil {
		err = errServerCrashed
	}
	sc.bw.Reset(sc.sys)
	return p.awaitAnswer(ss, sc, err) // the read buffer kept, as in send
}

// watchServer makes the loop relay sc's answers to ss. A server's socket is
// added to a loop's epoll set, edge-triggered, and stays while that loop
// serves it: no epoll_ctl per transaction. Its events while no session of
// the loop holds it are ignored. One loop watches a server at a time: a
// server that comes to a session of another loop (the pools are shared) is
// taken out of the first loop's set first.
func (p *parker) watchServer(ss *session, sc *serverConn) bool {
	if sc.loop != p {
		if sc.loop != nil {
			sc.loop.dropServer(sc)
		}
		p.mu.Lock()
		token, slot := p.newTokenLocked(srvBit)
		ev := syscall.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET}
		*(*uint64)(unsafe.Pointer(&ev.Fd)) = token
		if syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, sc.fd, &ev) != nil {
			p.freeLocked(token)
			p.mu.Unlock()
			return false
		}
		slot.sc = sc
		sc.loopTok, sc.loop = token, p
		p.mu.Unlock()
	}
	sc.loopOwner, ss.lc.srv = ss, sc
	return true
}

// unwatchServer ends the loop's relaying for the session's server, before
// it may go back to the pool.
func (p *parker) unwatchServer(ss *session) {
	if sc := ss.lc.srv; sc != nil {
		sc.loopOwner, ss.lc.srv = nil, nil
	}
}

// dropServer takes sc, which no session of p holds, out of p's epoll set,
// for another loop to watch it: p's events for it, those in the batch it is
// serving included, find no slot from then on.
func (p *parker) dropServer(sc *serverConn) {
	p.mu.Lock()
	p.freeLocked(sc.loopTok)
	syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, sc.fd, nil)
	p.mu.Unlock()
	sc.loopTok, sc.loop = 0, nil
}

// forgetServer drops a closed server's registration (closing its socket took
// it out of the epoll set).
func (p *parker) forgetServer(token uint64) {
	p.mu.Lock()
	p.freeLocked(token)
	p.mu.Unlock()
}

// serverReady is an event on a session's server socket: its answer relayed
// as far as it has come, through relayMessage as the goroutine path's
// relayServer does. sc is the server the loop relays for ss (its
// loopOwner), so the session's: taken from the event, not through the
// lease (three pointers more to follow, each a likely cache miss on a core
// the backends share). hup: the event said the server hung up or failed.
func (p *parker) serverReady(ss *session, sc *serverConn, hup bool) exit {
	lc := ss.lc
	switch ph := ss.getPhase(); {
	case ph == core.PhaseGranted:
		return p.syncAnswered(ss, sc, hup)
	case ph != core.PhaseActive:
		return stay
	case ss.Acct.Owed() == 0:
		if hup {
			// The server of a transaction left open has gone while
			// its client is idle (killed, or idle_in_transaction_
			// session_timeout): the client is told now, as PgBouncer
			// does, not at its next query.
			ss.mu.Lock()
			sc.torn = true
			ss.mu.Unlock()
			lc.endErr = errServerCrashed
			return eject
		}
		return stay
	}
	for more := true; more; {
		var err error
		if more, err = p.fill(sc, hup); err != nil {
			return eject // EOF, an error, a message larger than the buffer: the goroutine path's to tell
		}
		if done, e := p.relayAnswer(ss, sc); done {
			return e
		}
		if len(lc.spill) > 0 {
			return eject // the client reads slowly: a goroutine waits for it, the server read no faster
		}
	}
	return stay
}

// fill reads what sc's socket holds into sc.rd for the loop, and reports
// whether to read again before the next event. Edge-triggered, the loop
// reads until a read comes back short (the socket had no more) or would
// block. After a hang-up it reads on to the end of file: no later edge would
// come for it, and the loop would wait for ever on a server that has gone
// (its last words, a FATAL error say, read and the end of file left unseen).
// err is the end of file, a failure, or a message larger than the buffer.
func (p *parker) fill(sc *serverConn, hup bool) (more bool, err error) {
	n, free, err := p.read(sc.sys, &sc.rd)
	switch {
	case err == rawio.ErrWouldBlock:
		return false, nil
	case err != nil:
		return false, err
	}
	return n == free || hup, nil
}

// awaitClient arms the timeout of the session's wait for its client's next
// query (idle, or idle in a transaction), as readyLocked set it.
func (p *parker) awaitClient(ss *session) {
	ss.mu.Lock()
	d := ss.deadline
	ss.mu.Unlock()
	if d.IsZero() {
		return // no timeout (armTimerLocked would do nothing)
	}
	p.mu.Lock()
	p.armTimerLocked(ss, d)
	p.mu.Unlock()
}

// relayAnswer relays the whole messages sc.rd holds, and reports whether the
// loop is done relaying sc's answer to ss, and how the session leaves it.
func (p *parker) relayAnswer(ss *session, sc *serverConn) (done bool, e exit) {
	lc := ss.lc
	for sc.rd.Complete() {
		typ := sc.rd.BufferedBytes()[0]
		if typ == 'Z' {
			p.unwatchServer(ss) // it may go back to the pool now
		}
		switch ss.relayMessage(sc, ss.Mapping && !lc.plain) {
		case stepReleased:
			ss.rd.Release() // the transaction is over (see send)
			if len(lc.spill) > 0 || ss.bw != nil {
				return true, eject
			}
			p.awaitClient(ss)
			return true, stay
		case stepEnded:
			return true, eject
		}
		if sc.CopyIn {
			return true, eject // COPY FROM STDIN: the goroutine path's
		}
		if typ == 'Z' && ss.Acct.Owed() == 0 {
			// The server is kept (a transaction left open): wait for
			// the client's next query with it, still watching the
			// server, whose hang-up meanwhile ends the session
			// (core.AwaitsClient).
			if ss.bw.Flush(); len(lc.spill) > 0 || !p.watchServer(ss, sc) {
				return true, eject
			}
			p.awaitClient(ss)
			return true, stay
		}
		if typ == 'Z' && !p.watchServer(ss, sc) {
			return true, eject
		}
	}
	return false, stay
}
