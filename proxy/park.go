package proxy

import (
	"runtime/debug"
	"time"

	"github.com/pgmux/pgmux/core"
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

// sweep asks sessions idle since the last sweep to park, until the server
// shuts down.
func (s *Server) sweep() {
	t := time.NewTicker(parkSweep)
	defer t.Stop()
	freedAt := 0
	periodAt := time.Now()
	var idle, active []*session
	for {
		var now time.Time
		select {
		case <-s.doneCh:
			return
		case now = <-t.C:
		}
		if d := s.options().StatsPeriod; d > 0 && now.Sub(periodAt) >= d {
			periodAt = now
			s.statsTick(now)
		}
		idle, active = idle[:0], active[:0]
		limit := s.options().QueryTimeout
		s.mu.Lock()
		for ss := range s.sessions {
			switch ss.getPhase() {
			case core.PhaseActive:
				if limit > 0 {
					active = append(active, ss)
				}
				continue
			case core.PhaseIdle:
			default:
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
		for _, ss := range active {
			ss.expireQuery(now.UnixNano(), limit)
		}
		switch n := s.parked(); {
		case n-freedAt >= freeAfterParked:
			debug.FreeOSMemory() // the parked sessions' stacks
			freedAt = n
		case n < freedAt:
			freedAt = n
		}
	}
}

// statsTick ends a stats period for every pool (SHOW STATS's averages).
func (s *Server) statsTick(now time.Time) {
	for _, p := range s.poolList() {
		p.statsTick(now)
	}
}

// parked returns how many sessions are in the event loops.
func (s *Server) parked() int {
	n := 0
	for _, p := range s.loops {
		n += p.count()
	}
	return n
}

// requestPark wakes the session's goroutine, waiting for its client with no
// server, to park (see tryPark).
func (ss *session) requestPark() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.lease != nil || ss.Waiting() || ss.draining || ss.parkReq || ss.mode != ModeTransaction || ss.inLoop.Load() || !ss.loopable() {
		return
	}
	ss.parkReq = true
	ss.conn.SetReadDeadline(pastDeadline)
}

// dropParkReqLocked drops a park request made while the session was idle:
// it is not idle any more, and the request's past read deadline must not
// fail the reads (and the hang-up check) of its transaction. It reports
// whether there was one.
func (ss *session) dropParkReqLocked() bool {
	if !ss.parkReq {
		return false
	}
	ss.parkReq = false
	ss.conn.SetReadDeadline(ss.deadline)
	return true
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
	if ss.mayParkLocked() {
		ss.rd.Release()
		ss.PS.Park() // no array kept through an idle spell
		if ss.loop.park(ss) {
			return true, true
		}
	}
	ss.conn.SetReadDeadline(ss.deadline)
	return true, false
}

// wake resumes a parked session so that it sees what has changed (a drain,
// a kill, its idle timeout). The loop does it: it may be serving the session.
func (ss *session) wake() {
	ss.loop.post(loopMsg{ss: ss, wake: true})
}

// resume serves a parked session again, in a goroutine of its own.
func (ss *session) resume() {
	ss.mu.Lock()
	ss.conn.SetReadDeadline(ss.deadline) // replaces the park request's; one already past fires at once
	ss.mu.Unlock()
	ss.serveAndClose(nil)
}
