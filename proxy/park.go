package proxy

import (
	"runtime/debug"
	"sync"
	"syscall"
	"time"
)

// Idle clients are parked: a client connection in transaction mode that has
// been idle for a sweep interval or two gives up its goroutine (and so its
// stack) and waits in the parker's epoll set instead, with nothing but its
// session state held. When it speaks again (or hangs up, or must be closed),
// a new goroutine takes the session up where it stopped. A busy client never
// parks, so the relay path is unchanged; the price is paid once per idle
// spell: a sweep's look, an epoll registration and a goroutine start.

// parkSweep is how often idle sessions are looked for; a session idle for a
// whole sweep interval is parked, so after one to two intervals of idleness.
const parkSweep = time.Second

// freeAfterParked is how many sessions must have parked since memory was last
// handed back to the operating system before it is again (their stacks are
// otherwise kept by the runtime for a while).
const freeAfterParked = 1000

// parker holds parked sessions.
type parker struct {
	mu     sync.Mutex
	epfd   int // -1 until started, or if epoll failed
	parked map[uint64]*session
	next   uint64
}

func newParker() *parker {
	return &parker{epfd: -1, parked: make(map[uint64]*session)}
}

// startLocked creates the epoll set and its goroutine on first use.
func (p *parker) startLocked() bool {
	if p.epfd >= 0 {
		return true
	}
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return false
	}
	p.epfd = fd
	go p.loop(fd)
	return true
}

// park adds ss to the epoll set and reports whether it did; from then on the
// caller must not touch ss, which another goroutine may already be serving.
// ss.mu is held by the caller.
func (p *parker) park(ss *session) bool {
	sc, ok := ss.conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.startLocked() {
		return false
	}
	p.next++
	token := p.next
	ok = false
	raw.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
			Fd: int32(token), Pad: int32(token >> 32)}
		ok = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev) == nil
		if ok {
			ss.parkedFd = int(fd)
		}
	})
	if !ok {
		return false
	}
	ss.parkToken = token
	p.parked[token] = ss
	if !ss.deadline.IsZero() {
		// Its idle timeout still runs: wake it then, to be closed.
		ss.parkTimer = time.AfterFunc(time.Until(ss.deadline), ss.wake)
	}
	return true
}

// unpark takes ss out of the epoll set if it is parked, and reports whether
// it was: the caller then resumes it.
func (p *parker) unpark(ss *session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.takeLocked(ss.parkToken) != nil
}

// takeLocked takes the session parked under token out of the epoll set and
// returns it, or nil if none is.
func (p *parker) takeLocked(token uint64) *session {
	ss, ok := p.parked[token]
	if !ok {
		return nil
	}
	delete(p.parked, token)
	if ss.parkTimer != nil {
		ss.parkTimer.Stop()
		ss.parkTimer = nil
	}
	syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, ss.parkedFd, nil)
	ss.parkToken, ss.parkedFd = 0, -1
	return ss
}

// count returns how many sessions are parked.
func (p *parker) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}

func (p *parker) loop(epfd int) {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(epfd, events, -1)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			p.mu.Lock()
			ss := p.takeLocked(token)
			p.mu.Unlock()
			if ss != nil {
				go ss.resume()
			}
		}
	}
}

// sweep asks sessions idle since the last sweep to park, until the server
// shuts down.
func (s *Server) sweep() {
	t := time.NewTicker(parkSweep)
	defer t.Stop()
	freedAt := 0
	var idle []*session
	for {
		select {
		case <-s.doneCh:
			return
		case <-t.C:
		}
		idle = idle[:0]
		s.mu.Lock()
		for ss := range s.sessions {
			if clientState(ss.state.Load()) != stateIdle {
				continue
			}
			// sweepSeen is the sweep's own: the activity count it last saw.
			if a := ss.activity.Load(); a != ss.sweepSeen {
				ss.sweepSeen = a
				continue
			}
			idle = append(idle, ss)
		}
		s.mu.Unlock()
		for _, ss := range idle {
			ss.requestPark()
		}
		switch n := s.parker.count(); {
		case n-freedAt >= freeAfterParked:
			debug.FreeOSMemory() // the parked sessions' stacks
			freedAt = n
		case n < freedAt:
			freedAt = n
		}
	}
}

// requestPark wakes the session's goroutine, waiting for its client with no
// server, to park (see tryPark).
func (ss *session) requestPark() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.lease != nil || ss.binding || ss.draining || ss.parkReq || ss.mode != ModeTransaction {
		return
	}
	ss.parkReq = true
	ss.conn.SetReadDeadline(pastDeadline)
}

// tryPark runs in the session goroutine after a client read timed out. It
// reports whether the session was parked (the goroutine must then return
// without touching the session), or false when the timeout was not a request
// to park or the session cannot park now, with the client's deadline put back.
func (ss *session) tryPark() (requested, parked bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if !ss.parkReq {
		return false, false
	}
	ss.parkReq = false
	if ss.lease == nil && !ss.draining && ss.rd.Buffered() == 0 && ss.bw == nil {
		ss.rd.Release()
		if ss.srv.parker.park(ss) {
			return true, true
		}
	}
	ss.conn.SetReadDeadline(ss.deadline)
	return true, false
}

// wake resumes a parked session so that it sees what has changed (a drain,
// a kill, its idle timeout).
func (ss *session) wake() {
	if ss.srv.parker.unpark(ss) {
		go ss.resume()
	}
}

// resume serves a parked session again, in a goroutine of its own.
func (ss *session) resume() {
	ss.mu.Lock()
	ss.conn.SetReadDeadline(ss.deadline) // replaces the park request's; one already past fires at once
	ss.mu.Unlock()
	ss.serveAndClose(nil)
}
