//go:build linux

package proxy

import (
	"syscall"
	"unsafe"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/rawio"
)

// At a wake-up with more than one socket to read, the loop makes the reads
// its events will ask for with one io_uring call before it serves them (as
// sendQueue does for the turn's sends): a server's answer for a session the
// loop relays for, an idle client's next request. What is read goes into
// the socket's reader at once, as a read of the handler's own would have;
// the handler then takes the result (read) instead of calling the
// kernel. A handler that does not come to read (the session ejected
// meanwhile, say) leaves the bytes in the reader, where whoever serves the
// session next finds them; its result is dropped at the end of the turn.

// readAhead is one read made ahead.
type readAhead struct {
	s    *rawio.Conn
	rd   *protocol.Reader
	buf  []byte // the reader's free space the read went into
	free int
	res  int32 // the count read, or -errno; rawio.ResUnknown if not made
	// taken: its handler took the result (read), or it was given up
	// (settleAhead). Only an entry not taken still marks its socket: a
	// server's socket, once its result is taken, may pass to another
	// loop within the turn, which alone may touch its mark then.
	taken bool
}

// readAhead reads ahead for evs, the events of a wake-up, if more than one
// of them is to be read and the ring allows it.
func (p *parker) readAhead(evs []syscall.EpollEvent) {
	ring := p.sendq.ring
	if ring == nil || len(evs) < 2 {
		return
	}
	loop := p.srv.options().RelayLoop
	p.mu.Lock()
	for _, ev := range evs {
		token := *(*uint64)(unsafe.Pointer(&ev.Fd))
		s := p.slotLocked(token)
		switch {
		case token == 0 || s == nil:
		case token&srvBit != 0:
			// serverReady reads it (fill) if the loop relays its answer
			// or waits for its settings.
			if sc := s.sc; sc != nil && sc.loopOwner != nil {
				if ph := sc.loopOwner.getPhase(); ph == core.PhaseActive || ph == core.PhaseGranted {
					p.addAhead(sc.sys, &sc.rd)
				}
			}
		case loop && s.ss != nil && core.AwaitsClient(s.ss.getPhase(), &s.ss.Acct):
			p.addAhead(s.ss.lc.cs, s.ss.rd) // clientReady reads it
		}
	}
	if len(p.ahead) < 2 {
		p.mu.Unlock()
		p.dropAhead() // one read: the handler's own system call
		return
	}
	p.aheads++
	p.mu.Unlock()
	ops := p.sendq.ops[:0]
	for _, a := range p.ahead {
		ops = append(ops, rawio.RecvOp(a.s.Fd(), a.buf))
	}
	ring.Do(ops, true)
	for i := range ops {
		a := &p.ahead[i]
		a.res = ops[i].Res
		ops[i] = rawio.Op{}
		if a.res == rawio.ResUnknown {
			a.s.Ahead, a.taken = 0, true // not made: the handler reads itself
			continue
		}
		if a.res > 0 {
			// Into the reader, as the handler's FillFrom would have put
			// it: the same free space, nothing having touched the
			// reader since addAhead.
			a.rd.Filled(int(a.res))
		}
	}
	p.sendq.ops = ops[:0]
}

// addAhead notes a read of s into rd's free space, unless rd is full (the
// handler's read says so) or s has one already.
func (p *parker) addAhead(s *rawio.Conn, rd *protocol.Reader) {
	if s == nil || s.Ahead != 0 {
		return
	}
	buf := rd.Free()
	if len(buf) == 0 {
		return
	}
	p.ahead = append(p.ahead, readAhead{s: s, rd: rd, buf: buf, free: len(buf), res: rawio.ResUnknown})
	s.Ahead = int32(len(p.ahead))
}

// read fills rd from s for a handler of the loop: with the read made ahead
// for s at this wake-up if there was one, else with a read now. It returns
// what FillFrom(s.TryRead) would have, n bytes now in rd or the error, and
// free, the space rd had: a read that filled it may have left more.
func (p *parker) read(s *rawio.Conn, rd *protocol.Reader) (n, free int, err error) {
	if s.Ahead == 0 {
		free = rd.Size() - rd.Buffered()
		n, err = rd.FillFrom(s.TryRead)
		return n, free, err
	}
	a := &p.ahead[s.Ahead-1]
	s.Ahead, a.taken = 0, true
	n, err = rawio.Result(a.res)
	return n, a.free, err
}

// settleAhead gives up s's read ahead, if it has one: what it read is in
// its reader already. The loop calls it before a socket it read ahead may
// leave the loop otherwise than through read (an eject).
func (p *parker) settleAhead(s *rawio.Conn) {
	if s != nil && s.Ahead != 0 {
		p.ahead[s.Ahead-1].taken = true
		s.Ahead = 0
	}
}

// dropAhead forgets the wake-up's reads ahead, taken or not.
func (p *parker) dropAhead() {
	for i := range p.ahead {
		if !p.ahead[i].taken {
			p.ahead[i].s.Ahead = 0
		}
		p.ahead[i] = readAhead{}
	}
	p.ahead = p.ahead[:0]
}
