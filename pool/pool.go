// Package pool keeps the backend connections of one (database, user) pair:
// it bounds their number, hands them out to one holder at a time, and retires
// them when they have been idle or alive too long. It knows nothing of the
// wire protocol: connections are made by a Dial function and only need to be
// closable.
//
// A caller that finds no idle connection queues, first come first served,
// and a released connection goes straight from the releaser to the longest
// waiter without passing through the idle stack. In transaction pooling
// nearly every acquire waits once the pool is busy, so this is the hot path:
// it costs a mutex, a list link and one channel send per transaction, with no
// context, timer or semaphore per wait (one timer per pool serves every
// waiter's deadline), and taking an idle connection reads no clock.
//
// Why not puddle (jackc/puddle/v2), which pgx's pool is built on: measured
// side by side in one run (go test -bench, a pool of 20, callers that
// acquire, yield and release, 6 rounds each), an acquire and release took
// 663-731 ns and no allocation here against puddle's 1,466-1,576 ns and 5
// allocations with 10 callers, 495-1,410 ns against 2,923-3,492 ns and 7
// allocations with 100: puddle waits on a semaphore and needs a context with
// the wait's deadline per acquire. And the event loops cannot block: they
// queue with AcquireAsync and are called back, which puddle has no way to
// do. puddle once only made and counted the connections here, which this
// package counts anyway; it was dropped rather than kept for that.
//
// It must never import the wire protocol (pgproto3, protocol), the proxy,
// metrics or the configuration.
package pool

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Conn is a backend connection as the pool sees it.
type Conn interface {
	Close() error
}

// Config sets up a Pool. Dial must honour ctx, which carries the connect
// timeout.
type Config[T Conn] struct {
	Dial           func(ctx context.Context) (T, error)
	MaxSize        int32         // connections at most; at least 1
	MinSize        int32         // connections kept open even when idle (see SetLimits)
	ConnectTimeout time.Duration // per dial; 0 means none
	IdleTimeout    time.Duration // close connections idle longer; 0 means never (see SetLimits)
	MaxLifetime    time.Duration // close connections older, when next released or idle; 0 means never (see SetLimits)
	ReapInterval   time.Duration // how often idle connections are checked; default 1s
	// ReserveSize more connections may be made for a caller that has
	// waited ReserveTimeout, as PgBouncer's reserve_pool_size; they are
	// closed when given back with no one waiting.
	ReserveSize    int32
	ReserveTimeout time.Duration
	// Limits bound this pool's connections together with other pools'.
	Limits []*Limit
	// LoginRetry: after a failed dial, the callers that need a new
	// connection get its error at once, without another dial, for this
	// long (PgBouncer's server_login_retry); 0 tries again at once.
	LoginRetry time.Duration
}

var (
	// ErrClosed is returned by Acquire once the pool is closed.
	ErrClosed = errors.New("pool closed")
	// ErrWaitTimeout is returned by AcquireWithin when no connection came
	// within the time allowed.
	ErrWaitTimeout = errors.New("timed out waiting for a connection")
)

// Pool is a bounded set of connections. Its methods are safe for concurrent use.
type Pool[T Conn] struct {
	cfg    Config[T]
	stopCh chan struct{}
	done   sync.WaitGroup // the reaper, dials and closes started by the pool
	once   sync.Once

	mu      sync.Mutex // guards following
	waiters waitList[T]
	// idle is the idle stack, last given back on top: the busiest
	// connections stay in use and the others grow idle long enough for
	// IdleTimeout.
	idle    []*entry[T]
	size    int32 // connections open or being dialed
	dialing int32 // dials under way
	closed  bool
	timer   *time.Timer // fires at the earliest waiter deadline
	timerAt int64       // when timer fires (Unix ns), or 0 when stopped
	// After a failed dial, with LoginRetry: until when further dials are
	// not tried (Unix ns), and the failure their callers get.
	failUntil int64
	failErr   error
	// The limits a reload may change (SetLimits); Config's are the first.
	minSize     int32
	idleTimeout time.Duration
	maxLifetime atomic.Int64 // a time.Duration; read at every release, outside mu
}

// New creates a pool and starts its reaper. Callers MUST call Close.
func New[T Conn](cfg Config[T]) (*Pool[T], error) {
	if cfg.MaxSize < 1 {
		return nil, errors.New("pool max size must be at least 1")
	}
	if cfg.ReapInterval <= 0 {
		cfg.ReapInterval = time.Second
	}
	pl := &Pool[T]{cfg: cfg, stopCh: make(chan struct{}), idle: make([]*entry[T], 0, cfg.MaxSize)}
	pl.SetLimits(cfg.MinSize, cfg.IdleTimeout, cfg.MaxLifetime)
	pl.timer = time.AfterFunc(time.Hour, pl.expire)
	pl.timer.Stop()
	for _, l := range cfg.Limits {
		l.join(pl)
	}
	pl.done.Add(1)
	go pl.reap()
	return pl, nil
}

// entry is a connection and the one Lease that stands for it, so that leasing it allocates nothing (a lease
// per transaction was an allocation per transaction).
type entry[T Conn] struct {
	conn   T
	lease  Lease[T]
	born   time.Duration // when it was made (Now)
	idleAt time.Duration // when it last went into the idle stack (Now)
}

// epoch is the origin of Now.
var epoch = time.Now()

// Now is the pool's clock: the monotonic clock as a duration since the
// process started, one clock read where time.Now makes two. ReleaseAt and
// IdleDurationAt take its readings, for a caller that has one at hand.
func Now() time.Duration { return time.Since(epoch) }

// Lease is a connection held by one caller until Release or Destroy. Each
// connection has one Lease, reused from holder to holder: a caller must not
// touch it after Release or Destroy.
type Lease[T Conn] struct {
	e *entry[T]
	p *Pool[T]
	// handed: the connection came straight from another holder, so it was
	// not idle at all.
	handed bool
}

// Conn returns the leased connection.
func (l *Lease[T]) Conn() T { return l.e.conn }

// IdleDuration is how long the connection sat in the pool before this lease.
func (l *Lease[T]) IdleDuration() time.Duration { return l.IdleDurationAt(Now()) }

// IdleDurationAt is IdleDuration as of now, a reading of Now.
func (l *Lease[T]) IdleDurationAt(now time.Duration) time.Duration {
	if l.handed {
		return 0
	}
	return now - l.e.idleAt
}

// Release gives a clean connection back: to the longest waiter if there is
// one, else to the idle stack. A connection past its lifetime is closed
// instead.
func (l *Lease[T]) Release() { l.ReleaseAt(Now()) }

// ReleaseAt is Release as of now, a recent reading of Now: the connection's
// idle time counts from it.
func (l *Lease[T]) ReleaseAt(now time.Duration) {
	p, e := l.p, l.e
	if life := time.Duration(p.maxLifetime.Load()); life > 0 && now-e.born > life {
		l.Destroy()
		return
	}
	p.mu.Lock()
	if w := p.waiters.pop(); w != nil {
		p.mu.Unlock()
		l.handed = true
		w.deliver(handoff[T]{lease: l})
		return
	}
	if p.closed || p.size > p.cfg.MaxSize || len(p.cfg.Limits) > 0 && p.wanted() {
		// Closed; a reserve connection no one waits for; or one another
		// pool under a limit needs the room of.
		p.mu.Unlock()
		l.Destroy()
		return
	}
	// Under p.mu, so that a caller that found no idle connection and queued
	// cannot miss this one.
	e.idleAt = now
	p.idle = append(p.idle, e)
	p.mu.Unlock()
}

// Destroy closes a connection that must not be reused. Its place in the pool
// is free at once; a waiter gets a new connection.
func (l *Lease[T]) Destroy() {
	p, c := l.p, l.e.conn
	p.mu.Lock()
	p.size--
	p.giveLimits(1)
	// Close waits for the closes started before it, not for those of leases
	// given back after it (a pool replaced by a reload), which would race
	// with its Wait.
	counted := !p.closed
	if counted {
		p.done.Add(1)
	}
	p.serveLocked()
	p.mu.Unlock()
	go func() {
		if counted {
			defer p.done.Done()
		}
		c.Close()
	}()
}

// Acquire waits for a connection until ctx ends. Cancelling ctx does not
// cancel a dial already under way: that connection then goes to the pool.
func (p *Pool[T]) Acquire(ctx context.Context) (*Lease[T], error) {
	return p.AcquireWithin(ctx, 0)
}

// AcquireWithin is Acquire that waits at most timeout (0: no bound besides
// ctx) and then fails with ErrWaitTimeout.
func (p *Pool[T]) AcquireWithin(ctx context.Context, timeout time.Duration) (*Lease[T], error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if l := p.takeIdleLocked(); l != nil {
		p.mu.Unlock()
		return l, nil
	}
	w := getWaiter[T]()
	w.deadline = 0
	if timeout > 0 {
		w.deadline = time.Now().Add(timeout).UnixNano()
		p.armLocked(w.deadline)
	}
	p.queueLocked(w)
	p.mu.Unlock()

	select {
	case h := <-w.ch:
		putWaiter(w)
		return h.lease, h.err
	case <-ctx.Done():
	}
	p.mu.Lock()
	if w.queued {
		p.waiters.remove(w)
		p.mu.Unlock()
		putWaiter(w)
		return nil, ctx.Err()
	}
	p.mu.Unlock()
	// Taken off the queue by someone now sending it a connection or an error.
	h := <-w.ch
	putWaiter(w)
	if h.lease != nil {
		h.lease.Release() // to the next waiter
	}
	return nil, ctx.Err()
}

// A Waiter is a caller's place in the queue for AcquireAsync. It is made
// once, with the callback its waits end with, and serves one wait at a
// time: a caller that waits every transaction does not allocate a place
// each time.
type Waiter[T Conn] struct{ w waiter[T] }

// NewWaiter makes a Waiter whose waits end with a call of fn (see
// AcquireAsync).
func NewWaiter[T Conn](fn func(*Lease[T], error)) *Waiter[T] {
	return &Waiter[T]{w: waiter[T]{fn: fn}}
}

// AcquireAsync is AcquireWithin for a caller that cannot block: it returns
// an idle connection at once if there is one; if not, it queues wt and
// returns nil, and wt's callback is called later, exactly once, with a
// connection or the error (ErrWaitTimeout after timeout, if not 0). The
// callback may be called with the pool's lock held, from whichever
// goroutine gives the connection back: it must only take note and return,
// never call into the pool. wt must not be waiting already: it may wait
// again once its callback has been called or CancelWait took it out.
func (p *Pool[T]) AcquireAsync(wt *Waiter[T], timeout time.Duration) (*Lease[T], error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	if l := p.takeIdleLocked(); l != nil {
		return l, nil
	}
	w := &wt.w
	if w.queued {
		panic("pool: AcquireAsync with a Waiter already waiting")
	}
	w.deadline = 0
	if timeout > 0 {
		w.deadline = time.Now().Add(timeout).UnixNano()
		p.armLocked(w.deadline)
	}
	p.queueLocked(w)
	return nil, nil
}

// queueLocked queues w and starts a dial for it if there is room. With a
// reserve, a caller that will have to wait is timed, and the timer set for
// when its wait reaches ReserveTimeout.
func (p *Pool[T]) queueLocked(w *waiter[T]) {
	w.queuedAt = 0
	if p.cfg.ReserveSize > 0 && p.size >= p.cfg.MaxSize && len(p.idle) == 0 {
		w.queuedAt = time.Now().UnixNano()
		p.armLocked(w.queuedAt + int64(p.cfg.ReserveTimeout))
	}
	p.waiters.push(w)
	p.serveLocked() // a dial for it, if there is room
}

// CancelWait takes wt out of the queue and reports whether it was there;
// if not, its callback has been or is being called (or it was not waiting).
func (p *Pool[T]) CancelWait(wt *Waiter[T]) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !wt.w.queued {
		return false
	}
	p.waiters.remove(&wt.w)
	return true
}

// takeIdleLocked leases an idle connection, if there is one.
func (p *Pool[T]) takeIdleLocked() *Lease[T] {
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	e := p.idle[n-1]
	p.idle[n-1] = nil
	p.idle = p.idle[:n-1]
	return leaseOf(e)
}

// leaseOf returns the Lease of a connection just taken from the idle stack.
func leaseOf[T Conn](e *entry[T]) *Lease[T] {
	l := &e.lease
	l.handed = false
	return l
}

// serveLocked gives idle connections to waiters, then starts dials for
// waiters that no dial under way will serve, as far as the size allows.
func (p *Pool[T]) serveLocked() {
	for p.waiters.len > 0 {
		l := p.takeIdleLocked()
		if l == nil {
			break
		}
		p.waiters.pop().deliver(handoff[T]{lease: l})
	}
	if p.closed {
		return
	}
	if p.failUntil != 0 && p.waiters.len > p.dialing && p.size < p.cfg.MaxSize {
		if time.Now().UnixNano() < p.failUntil {
			// The server failed a moment ago: those that need a new
			// connection are told so, not made to wait for another try.
			for p.waiters.len > p.dialing {
				p.waiters.pop().deliver(handoff[T]{err: p.failErr})
			}
			return
		}
		p.failUntil, p.failErr = 0, nil
	}
	for p.waiters.len > p.dialing && p.size < p.sizeLimitLocked() {
		if !p.startDialLocked() {
			return // a Limit is full: retried when it has room
		}
		go p.dial() //nolint:errcheck // a failure goes to the waiter
	}
}

// sizeLimitLocked is how many connections the pool may have now: its size,
// and its reserve once the longest waiter has waited ReserveTimeout.
func (p *Pool[T]) sizeLimitLocked() int32 {
	if p.cfg.ReserveSize == 0 || p.size < p.cfg.MaxSize {
		return p.cfg.MaxSize
	}
	if h := p.waiters.head; h != nil && h.queuedAt != 0 && time.Now().UnixNano()-h.queuedAt >= int64(p.cfg.ReserveTimeout) {
		return p.cfg.MaxSize + p.cfg.ReserveSize
	}
	return p.cfg.MaxSize
}

// startDialLocked counts a dial about to start, if every Limit has room.
func (p *Pool[T]) startDialLocked() bool {
	if !p.takeLimits() {
		return false
	}
	p.dialing++
	p.size++
	p.done.Add(1)
	return true
}

// dial makes one connection into the idle stack and serves waiters with it;
// a failure is the error of the longest waiter.
func (p *Pool[T]) dial() error {
	defer p.done.Done()
	// Not the waiter's context: a waiter that gives up does not cancel the
	// dial, whose connection then goes to the next one.
	ctx := context.Background()
	if p.cfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		defer cancel()
	}
	c, err := p.cfg.Dial(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialing--
	if err != nil {
		p.size--
		p.giveLimits(1)
		if p.cfg.LoginRetry > 0 {
			p.failUntil, p.failErr = time.Now().Add(p.cfg.LoginRetry).UnixNano(), err
		}
		if w := p.waiters.pop(); w != nil {
			w.deliver(handoff[T]{err: err})
		}
		p.serveLocked() // the next waiter gets a dial of its own
		return err
	}
	if p.closed {
		p.size--
		p.giveLimits(1)
		go c.Close()
		return ErrClosed
	}
	now := Now()
	e := &entry[T]{conn: c, born: now, idleAt: now}
	e.lease.e, e.lease.p = e, p
	p.idle = append(p.idle, e)
	p.serveLocked()
	return nil
}

// armLocked makes the timer fire by at (Unix ns).
func (p *Pool[T]) armLocked(at int64) {
	if p.timerAt != 0 && p.timerAt <= at {
		return
	}
	p.timerAt = at
	p.timer.Reset(time.Until(time.Unix(0, at)))
}

// expire fails the waiters whose deadline has passed and re-arms the timer
// for the next one.
func (p *Pool[T]) expire() {
	now := time.Now().UnixNano()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.timerAt = 0
	next := int64(0)
	for w := p.waiters.head; w != nil; {
		nw := w.next
		switch {
		case w.deadline == 0:
		case w.deadline <= now:
			p.waiters.remove(w)
			w.deliver(handoff[T]{err: ErrWaitTimeout})
		case next == 0 || w.deadline < next:
			next = w.deadline
		}
		w = nw
	}
	if h := p.waiters.head; h != nil && h.queuedAt != 0 {
		if due := h.queuedAt + int64(p.cfg.ReserveTimeout); due <= now {
			p.serveLocked() // the reserve, for the longest waiter
		} else if next == 0 || due < next {
			next = due
		}
	}
	if next != 0 {
		p.armLocked(next)
	}
}

// Stats is a snapshot of a pool.
type Stats struct {
	Total, Idle, Acquired, Constructing, Max int32
	Waiting                                  int32 // callers queued for a connection
}

// Stats returns a snapshot of the pool's counters. Acquired counts
// connections held, including those handed from holder to holder.
func (p *Pool[T]) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	idle := int32(len(p.idle))
	return Stats{
		Total:        p.size,
		Idle:         idle,
		Acquired:     p.size - p.dialing - idle,
		Constructing: p.dialing,
		Max:          p.cfg.MaxSize,
		Waiting:      p.waiters.len,
	}
}

// Close fails every waiter, closes idle connections now and each acquired
// one when it is given back, and stops the reaper. It is idempotent.
func (p *Pool[T]) Close() {
	p.once.Do(func() {
		p.mu.Lock()
		p.closed = true
		for w := p.waiters.pop(); w != nil; w = p.waiters.pop() {
			w.deliver(handoff[T]{err: ErrClosed})
		}
		p.timer.Stop()
		idle := p.idle
		p.idle = nil
		p.size -= int32(len(idle))
		p.giveLimits(int32(len(idle)))
		p.mu.Unlock()
		for _, l := range p.cfg.Limits {
			l.leave(p)
		}
		for _, e := range idle {
			e.conn.Close()
		}
		close(p.stopCh)
		p.done.Wait()
	})
}

func (p *Pool[T]) reap() {
	defer p.done.Done()
	t := time.NewTicker(p.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stopCh:
			return
		case <-t.C:
			p.reapOnce()
		}
	}
}

// SetLimits changes the limits a reload may change, for a pool in use: the
// connections kept open when idle (at most the pool's size), how long one
// may be idle and how long it may live (0 for no limit). The reaper applies
// them at its next look, a connection's lifetime also when it is next
// released.
func (p *Pool[T]) SetLimits(minSize int32, idleTimeout, maxLifetime time.Duration) {
	p.mu.Lock()
	p.minSize = min(minSize, p.cfg.MaxSize)
	p.idleTimeout = idleTimeout
	p.mu.Unlock()
	p.maxLifetime.Store(int64(maxLifetime))
}

// reapOnce closes idle connections past their idle timeout or lifetime, then
// tops the pool up to its minimum.
func (p *Pool[T]) reapOnce() {
	now := Now()
	var gone []*Lease[T]
	life := time.Duration(p.maxLifetime.Load())
	p.mu.Lock()
	total := p.size
	kept := p.idle[:0]
	for _, e := range p.idle { // the longest idle first
		tooIdle := p.idleTimeout > 0 && now-e.idleAt > p.idleTimeout && total > p.minSize
		tooOld := life > 0 && now-e.born > life
		if tooIdle || tooOld {
			gone = append(gone, leaseOf(e))
			total--
			continue
		}
		kept = append(kept, e)
	}
	clear(p.idle[len(kept):])
	p.idle = kept
	p.mu.Unlock()
	for _, l := range gone {
		l.Destroy()
	}
	for {
		p.mu.Lock()
		if p.closed || p.size >= p.minSize || p.failUntil > time.Now().UnixNano() || !p.startDialLocked() {
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		if p.dial() != nil {
			return // the server is unreachable; try again next tick
		}
	}
}

// handoff is what a waiter is woken with: a connection or an error.
type handoff[T Conn] struct {
	lease *Lease[T]
	err   error
}

// waiter is one caller queued for a connection.
type waiter[T Conn] struct {
	ch         chan handoff[T]        // buffered: a sender never blocks
	fn         func(*Lease[T], error) // AcquireAsync's, instead of ch
	deadline   int64                  // Unix ns, or 0 for none
	queuedAt   int64                  // Unix ns, when timed for the reserve; else 0
	prev, next *waiter[T]
	queued     bool
}

// deliver hands h to the waiter, which has left the queue.
func (w *waiter[T]) deliver(h handoff[T]) {
	if w.fn != nil {
		w.fn(h.lease, h.err)
		return
	}
	w.ch <- h
}

// waitList is a FIFO of waiters, linked through them so that one that gives
// up leaves from the middle without a search.
type waitList[T Conn] struct {
	head, tail *waiter[T]
	len        int32
}

func (q *waitList[T]) push(w *waiter[T]) {
	w.prev, w.next, w.queued = q.tail, nil, true
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.len++
}

func (q *waitList[T]) pop() *waiter[T] {
	w := q.head
	if w != nil {
		q.remove(w)
	}
	return w
}

func (q *waitList[T]) remove(w *waiter[T]) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.prev, w.next, w.queued = nil, nil, false
	q.len--
}

// waiters are recycled: one is needed per transaction under load.
var waiterPool sync.Pool

func getWaiter[T Conn]() *waiter[T] {
	if w, ok := waiterPool.Get().(*waiter[T]); ok {
		return w
	}
	return &waiter[T]{ch: make(chan handoff[T], 1)}
}

func putWaiter[T Conn](w *waiter[T]) {
	w.deadline = 0
	waiterPool.Put(w)
}
