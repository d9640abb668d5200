package pool

import "sync"

// A Limit bounds the connections of several pools together, as PgBouncer's
// max_db_connections (the pools of one database) and max_user_connections
// (of one user) do. A pool that needs a connection the limit has no room
// for waits; it asks the other pools under the limit to close an idle one,
// and is told when any of them closes one.
type Limit struct {
	max int32

	mu      sync.Mutex
	n       int32
	pools   map[limitee]struct{} // the pools under it
	blocked map[limitee]bool     // pools that found it full, until room comes
}

// limitee is a pool as a Limit sees it.
type limitee interface {
	evictIdle() // close an idle connection, if it has one and no waiter
	retry()     // try again the dials the limit held back
}

// NewLimit makes a limit of max connections; 0 or less means none.
func NewLimit(max int32) *Limit {
	return &Limit{max: max, pools: map[limitee]struct{}{}, blocked: map[limitee]bool{}}
}

// SetMax changes the bound (0 or less: none), as a reload may.
func (l *Limit) SetMax(max int32) {
	l.mu.Lock()
	l.max = max
	l.mu.Unlock()
}

// Count returns the connections open under it.
func (l *Limit) Count() int32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

func (l *Limit) join(p limitee) {
	l.mu.Lock()
	l.pools[p] = struct{}{}
	l.mu.Unlock()
}

func (l *Limit) leave(p limitee) {
	l.mu.Lock()
	delete(l.pools, p)
	delete(l.blocked, p)
	l.mu.Unlock()
}

// take counts a connection about to be made, if there is room. A limit
// whose max is 0 counts without bounding: a reload may set one later.
func (l *Limit) take() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.n >= l.max {
		return false
	}
	l.n++
	return true
}

// give uncounts n connections closed (or not made), and tells the other
// pools there is room.
func (l *Limit) give(n int32, from limitee) {
	l.mu.Lock()
	l.n -= n
	full := l.max > 0 && l.n >= l.max
	var others []limitee
	if !full {
		for p := range l.blocked {
			if p != from {
				others = append(others, p)
			}
		}
		clear(l.blocked) // they say again if they find it full
	}
	l.mu.Unlock()
	for _, p := range others {
		go p.retry() // not under the caller's locks
	}
}

// full asks the other pools under the limit to close an idle connection,
// for from, which needs one.
func (l *Limit) full(from limitee) {
	l.mu.Lock()
	l.blocked[from] = true
	var others []limitee
	for p := range l.pools {
		if p != from {
			others = append(others, p)
		}
	}
	l.mu.Unlock()
	for _, p := range others {
		go p.evictIdle()
	}
}

// takeLimits counts a connection under every limit of the pool's, or under
// none, and asks the full one for room.
func (p *Pool[T]) takeLimits() bool {
	for i, l := range p.cfg.Limits {
		if !l.take() {
			for _, m := range p.cfg.Limits[:i] {
				m.give(1, p)
			}
			l.full(p)
			return false
		}
	}
	return true
}

// giveLimits uncounts n connections under every limit of the pool's.
func (p *Pool[T]) giveLimits(n int32) {
	if n == 0 {
		return
	}
	for _, l := range p.cfg.Limits {
		l.give(n, p)
	}
}

// wanted reports whether another pool waits for room under one of the
// pool's limits: a connection given back is then closed rather than kept
// idle.
func (p *Pool[T]) wanted() bool {
	for _, l := range p.cfg.Limits {
		l.mu.Lock()
		n := len(l.blocked)
		_, self := l.blocked[p]
		l.mu.Unlock()
		if n > 1 || n == 1 && !self {
			return true
		}
	}
	return false
}

// evictIdle closes the longest idle connection if no caller waits for one,
// to make room under a limit for another pool.
func (p *Pool[T]) evictIdle() {
	p.mu.Lock()
	if p.waiters.len > 0 || len(p.idle) == 0 || p.closed {
		p.mu.Unlock()
		return
	}
	e := p.idle[0]
	copy(p.idle, p.idle[1:])
	p.idle[len(p.idle)-1] = nil
	p.idle = p.idle[:len(p.idle)-1]
	p.mu.Unlock()
	leaseOf(e).Destroy()
}

// retry serves the waiters again, after a limit found room.
func (p *Pool[T]) retry() {
	p.mu.Lock()
	p.serveLocked()
	p.mu.Unlock()
}
