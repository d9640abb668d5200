package pool

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeConn stands for a server connection: the pool only closes it.
type fakeConn struct {
	id     int
	closed atomic.Bool
}

func (c *fakeConn) Close() error { c.closed.Store(true); return nil }

type dialer struct {
	n     atomic.Int32
	mu    sync.Mutex
	conns []*fakeConn
	fail  atomic.Bool
	delay time.Duration
}

func (d *dialer) dial(ctx context.Context) (*fakeConn, error) {
	if d.delay > 0 {
		select {
		case <-time.After(d.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if d.fail.Load() {
		return nil, errors.New("refused")
	}
	c := &fakeConn{id: int(d.n.Add(1))}
	d.mu.Lock()
	d.conns = append(d.conns, c)
	d.mu.Unlock()
	return c, nil
}

func newPool(t *testing.T, d *dialer, edit func(*Config[*fakeConn])) *Pool[*fakeConn] {
	t.Helper()
	cfg := Config[*fakeConn]{Dial: d.dial, MaxSize: 2, ReapInterval: 20 * time.Millisecond}
	if edit != nil {
		edit(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func TestBoundAndReuse(t *testing.T) {
	d := &dialer{}
	p := newPool(t, d, nil)
	ctx := context.Background()
	a, _ := p.Acquire(ctx)
	b, _ := p.Acquire(ctx)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third acquire on a pool of 2: %v", err)
	}
	if _, err := p.AcquireWithin(ctx, 50*time.Millisecond); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("third acquire on a pool of 2, with a wait timeout: %v", err)
	}
	first := a.Conn()
	a.Release()
	c, err := p.Acquire(ctx)
	if err != nil || c.Conn() != first {
		t.Fatalf("released connection not reused: %v", err)
	}
	b.Destroy()
	c.Release()
	if got := d.n.Load(); got != 2 {
		t.Fatalf("dialed %d times", got)
	}
	// Destroy closes in the background.
	waitFor(t, func() bool { s := p.Stats(); return s.Total == 1 && s.Idle == 1 })
}

func TestIdleTimeoutAndMinSize(t *testing.T) {
	d := &dialer{}
	p := newPool(t, d, func(c *Config[*fakeConn]) {
		c.MaxSize, c.MinSize, c.IdleTimeout = 4, 1, 100*time.Millisecond
	})
	ctx := context.Background()
	var leases []*Lease[*fakeConn]
	for range 4 {
		l, err := p.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	for _, l := range leases {
		l.Release()
	}
	waitFor(t, func() bool { return p.Stats().Total == 1 })
	// The pool forgets a connection before it closes it in the background:
	// wait for the closes, then check none beyond the three went.
	closed := func() int {
		d.mu.Lock()
		defer d.mu.Unlock()
		n := 0
		for _, c := range d.conns {
			if c.closed.Load() {
				n++
			}
		}
		return n
	}
	waitFor(t, func() bool { return closed() >= 3 })
	time.Sleep(50 * time.Millisecond) // two reaper ticks
	if n, total := closed(), p.Stats().Total; n != 3 || total != 1 {
		t.Fatalf("%d connections closed and %d left, want 3 and 1", n, total)
	}
}

func TestMinSizeFilled(t *testing.T) {
	d := &dialer{}
	p := newPool(t, d, func(c *Config[*fakeConn]) { c.MaxSize, c.MinSize = 5, 3 })
	waitFor(t, func() bool { return p.Stats().Total == 3 })
}

func TestLifetime(t *testing.T) {
	d := &dialer{}
	p := newPool(t, d, func(c *Config[*fakeConn]) { c.MaxLifetime = 50 * time.Millisecond })
	ctx := context.Background()
	l, _ := p.Acquire(ctx)
	old := l.Conn()
	time.Sleep(80 * time.Millisecond)
	l.Release() // too old: closed (in the background) instead of pooled
	waitFor(t, old.closed.Load)
	l, _ = p.Acquire(ctx)
	if l.Conn() == old {
		t.Fatal("got the expired connection back")
	}
	l.Release()
}

// TestSetLimits: limits changed on a pool in use (a reload) apply to the
// connections it has: a lower idle timeout closes them down to the new
// minimum, a higher minimum dials up to it, a shorter lifetime closes one
// when it is released.
func TestSetLimits(t *testing.T) {
	d := &dialer{}
	p := newPool(t, d, func(c *Config[*fakeConn]) { c.MaxSize = 4 })
	for _, l := range acquireN(t, p, 3) {
		l.Release()
	}
	time.Sleep(60 * time.Millisecond) // reaper ticks with no limit in force
	if n := p.Stats().Total; n != 3 {
		t.Fatalf("%d connections before any limit, want 3", n)
	}
	p.SetLimits(1, 30*time.Millisecond, 0)
	waitFor(t, func() bool { return p.Stats().Total == 1 })
	p.SetLimits(9, 0, 0) // more than MaxSize: as many as it allows
	waitFor(t, func() bool { return p.Stats().Total == 4 })
	p.SetLimits(0, 0, 20*time.Millisecond)
	l, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	old := l.Conn()
	time.Sleep(40 * time.Millisecond)
	l.Release()
	waitFor(t, old.closed.Load)
}

// TestCancelledAcquireKeepsDial: a waiter that gives up does not cancel the
// dial it started; the connection lands in the pool.
func TestCancelledAcquireKeepsDial(t *testing.T) {
	d := &dialer{delay: 100 * time.Millisecond}
	p := newPool(t, d, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(ctx); err == nil {
		t.Fatal("acquire finished before the dial")
	}
	waitFor(t, func() bool { return p.Stats().Idle == 1 })
}

func TestDialErrorAndClose(t *testing.T) {
	d := &dialer{}
	d.fail.Store(true)
	p := newPool(t, d, nil)
	if _, err := p.Acquire(context.Background()); err == nil || err.Error() != "refused" {
		t.Fatalf("want the dial error, got %v", err)
	}
	p.Close()
	p.Close() // idempotent
	if _, err := p.Acquire(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// fullPool returns a pool of one connection and the lease that holds it.
func fullPool(t *testing.T, d *dialer) (*Pool[*fakeConn], *Lease[*fakeConn]) {
	t.Helper()
	p := newPool(t, d, func(c *Config[*fakeConn]) { c.MaxSize = 1 })
	held, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p, held
}

// leaseAsync acquires from p in the background, waiting up to 5 s, and
// hands over the lease (nil on failure).
func leaseAsync(t *testing.T, p *Pool[*fakeConn]) <-chan *Lease[*fakeConn] {
	got := make(chan *Lease[*fakeConn], 1)
	go func() {
		l, err := p.AcquireWithin(context.Background(), 5*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	return got
}

// acquireAsync acquires from p in the background, gives the connection
// straight back, and reports how the acquire ended.
func acquireAsync(p *Pool[*fakeConn], ctx context.Context, timeout time.Duration) <-chan error {
	res := make(chan error, 1)
	go func() {
		l, err := p.AcquireWithin(ctx, timeout)
		if err == nil {
			l.Release()
		}
		res <- err
	}()
	return res
}

// waitFor waits up to 3 s for cond.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 3s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHandOffInOrder: with the pool full, released connections go to the
// waiters first come first served, straight from hand to hand.
func TestHandOffInOrder(t *testing.T) {
	d := &dialer{}
	p, held := fullPool(t, d)
	ctx := context.Background()
	const n = 5
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := p.Acquire(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			if l.IdleDuration() != 0 {
				t.Errorf("a handed-over connection was idle %s", l.IdleDuration())
			}
			l.Release()
		}()
		waitFor(t, func() bool { return p.Stats().Waiting == int32(i+1) })
	}
	held.Release()
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("waiter %d served in place %d", got, want)
		}
		want++
	}
	if d.n.Load() != 1 {
		t.Fatalf("dialed %d times for one connection", d.n.Load())
	}
}

// TestWaitTimeout: a waiter gives up after its own timeout; the others keep
// their place and are served later.
func TestWaitTimeout(t *testing.T) {
	d := &dialer{}
	p, held := fullPool(t, d)
	ctx := context.Background()
	patient := acquireAsync(p, ctx, 10*time.Second)
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	start := time.Now()
	if _, err := p.AcquireWithin(ctx, 100*time.Millisecond); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("want ErrWaitTimeout, got %v", err)
	}
	if took := time.Since(start); took < 100*time.Millisecond || took > 2*time.Second {
		t.Fatalf("a 100ms wait took %s", took)
	}
	if w := p.Stats().Waiting; w != 1 {
		t.Fatalf("%d waiting after the timeout, want the patient one", w)
	}
	held.Release()
	if err := <-patient; err != nil {
		t.Fatalf("patient waiter: %v", err)
	}
}

// TestCancelledWaiter: a waiter whose context ends leaves the queue, and a
// connection released at the same moment is not lost.
func TestCancelledWaiter(t *testing.T) {
	d := &dialer{}
	p := newPool(t, d, func(c *Config[*fakeConn]) { c.MaxSize = 1 })
	for range 50 {
		held, err := p.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		res := acquireAsync(p, ctx, 0)
		waitFor(t, func() bool { return p.Stats().Waiting == 1 })
		go cancel()
		held.Release() // races with the cancel: either way the connection survives
		<-res
		waitFor(t, func() bool { s := p.Stats(); return s.Idle == 1 && s.Waiting == 0 })
	}
	if d.n.Load() != 1 {
		t.Fatalf("dialed %d times", d.n.Load())
	}
}

// TestWaiterGetsNewConnection: a connection destroyed, or released past its
// lifetime, while a caller waits is closed rather than handed over; its
// place is free at once and the waiter gets a new connection.
func TestWaiterGetsNewConnection(t *testing.T) {
	for name, end := range map[string]func(*Lease[*fakeConn]){
		"destroyed": (*Lease[*fakeConn]).Destroy,
		"expired":   func(l *Lease[*fakeConn]) { time.Sleep(80 * time.Millisecond); l.Release() },
	} {
		t.Run(name, func(t *testing.T) {
			d := &dialer{}
			p := newPool(t, d, func(c *Config[*fakeConn]) { c.MaxSize, c.MaxLifetime = 1, 50*time.Millisecond })
			held, err := p.Acquire(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			got := leaseAsync(t, p)
			waitFor(t, func() bool { return p.Stats().Waiting == 1 })
			old := held.Conn()
			end(held)
			l := <-got
			if l == nil || l.Conn() == old {
				t.Fatal("the waiter did not get a new connection")
			}
			waitFor(t, old.closed.Load)
			l.Release()
		})
	}
}

// TestCloseFailsWaiters: Close wakes every waiter with ErrClosed.
func TestCloseFailsWaiters(t *testing.T) {
	d := &dialer{}
	p, held := fullPool(t, d)
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := p.Acquire(context.Background())
			errs <- err
		}()
	}
	waitFor(t, func() bool { return p.Stats().Waiting == 3 })
	go p.Close()
	for range 3 {
		if err := <-errs; !errors.Is(err, ErrClosed) {
			t.Fatalf("waiter woken with %v", err)
		}
	}
	held.Release()
}

// TestStress: many callers over a small pool, some giving up, some
// destroying; the pool never exceeds its size and ends with every
// connection back.
func TestStress(t *testing.T) {
	d := &dialer{}
	p := newPool(t, d, func(c *Config[*fakeConn]) { c.MaxSize = 3 })
	var held atomic.Int32
	var wg sync.WaitGroup
	for g := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%7)*time.Millisecond+time.Microsecond)
				l, err := p.Acquire(ctx)
				cancel()
				if err != nil {
					continue
				}
				if n := held.Add(1); n > 3 {
					t.Errorf("%d connections held at once from a pool of 3", n)
				}
				held.Add(-1)
				if (g+i)%17 == 0 {
					l.Destroy()
				} else {
					l.Release()
				}
			}
		}()
	}
	wg.Wait()
	waitFor(t, func() bool { s := p.Stats(); return s.Acquired == 0 && s.Waiting == 0 && s.Total <= 3 })
}

// BenchmarkAcquireRelease is the pool under transaction pooling: callers
// take a connection, hold it for a moment and give it back, over a pool of
// 20.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, callers := range []int{10, 100} {
		b.Run(fmt.Sprintf("size=20/callers=%d", callers), func(b *testing.B) {
			d := &dialer{}
			p, err := New(Config[*fakeConn]{Dial: d.dial, MaxSize: 20})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			b.ReportAllocs()
			b.SetParallelism((callers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					l, err := p.AcquireWithin(context.Background(), time.Minute)
					if err != nil {
						b.Error(err)
						return
					}
					runtime.Gosched()
					l.Release()
				}
			})
		})
	}
}

// TestDialErrorsReachEveryWaiter: with the server refusing, each waiter of
// a pool of one gets a dial of its own and its error, none is left waiting.
func TestDialErrorsReachEveryWaiter(t *testing.T) {
	d := &dialer{delay: 20 * time.Millisecond}
	d.fail.Store(true)
	p := newPool(t, d, func(c *Config[*fakeConn]) { c.MaxSize = 1 })
	var errs []<-chan error
	for range 4 {
		errs = append(errs, acquireAsync(p, context.Background(), time.Minute))
	}
	for _, ch := range errs {
		select {
		case err := <-ch:
			if err == nil || err.Error() != "refused" {
				t.Fatalf("want the dial error, got %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a waiter was left waiting after failed dials")
		}
	}
}

// TestGiveBackAfterClose: leases given back while and after the pool closes
// (a pool replaced by a reload closes while its servers are still lent) are
// closed, and Close returns once they are back.
func TestGiveBackAfterClose(t *testing.T) {
	d := &dialer{}
	p := newPool(t, d, func(c *Config[*fakeConn]) { c.MaxSize = 4 })
	leases := acquireN(t, p, 4)
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	for i, l := range leases {
		if i%2 == 0 {
			l.Destroy()
		} else {
			l.Release()
		}
	}
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not return once every lease was back")
	}
	waitFor(t, func() bool {
		for _, c := range d.conns {
			if !c.closed.Load() {
				return false
			}
		}
		return true
	})
}

// TestAcquireAsync: a caller that cannot block gets an idle connection at
// once, or its place in the queue: its callback gets a released connection
// in turn with blocking waiters, or the wait timeout; a cancelled place
// leaves the queue, and a connection handed over as it is cancelled is not
// lost.
func TestAcquireAsync(t *testing.T) {
	d := &dialer{}
	p, held := fullPool(t, d)
	got := make(chan *Lease[*fakeConn], 1)
	errs := make(chan error, 1)
	cb := func(l *Lease[*fakeConn], err error) {
		if err != nil {
			errs <- err
			return
		}
		got <- l
	}
	wt := NewWaiter(cb)
	l, err := p.AcquireAsync(wt, 0)
	if l != nil || err != nil || !wt.w.queued {
		t.Fatalf("full pool: got lease %v, err %v, queued %v", l, err, wt.w.queued)
	}
	blocking := acquireAsync(p, context.Background(), 0) // queued after the callback
	waitFor(t, func() bool { return p.Stats().Waiting == 2 })
	held.Release()
	var first *Lease[*fakeConn]
	select {
	case first = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the queued callback got nothing")
	}
	if p.CancelWait(wt) {
		t.Fatal("CancelWait found a wait already served")
	}
	first.Release()
	if err := <-blocking; err != nil {
		t.Fatalf("blocking waiter after the callback: %v", err)
	}
	waitFor(t, func() bool { return p.Stats().Idle == 1 })

	// An idle connection comes back at once.
	l, err = p.AcquireAsync(wt, 0)
	if l == nil || err != nil {
		t.Fatalf("idle pool: lease %v, err %v", l, err)
	}
	// The wait timeout reaches the callback.
	if _, err := p.AcquireAsync(wt, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, ErrWaitTimeout) {
			t.Fatalf("want ErrWaitTimeout, got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no timeout reached the callback")
	}
	// A cancelled wait leaves the queue and gets nothing.
	// The same Waiter serves one wait after another.
	p.AcquireAsync(wt, 0) //nolint:errcheck // the pool is open
	if !p.CancelWait(wt) || p.Stats().Waiting != 0 {
		t.Fatalf("cancel: waiting %d", p.Stats().Waiting)
	}
	l.Release()
	select {
	case <-got:
		t.Fatal("a cancelled wait got a connection")
	case <-time.After(50 * time.Millisecond):
	}
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("idle %d after the release, want 1", s.Idle)
	}
}

// TestIdleAcquireAllocs: taking an idle connection and giving it back, the
// path of every transaction while the pool has idle connections, allocates
// nothing, and the lease handed out stands for the connection taken.
func TestIdleAcquireAllocs(t *testing.T) {
	// No reaper pass: it takes the idle stack for a moment, and an acquire
	// then would queue.
	p := newPool(t, &dialer{}, func(c *Config[*fakeConn]) { c.MaxSize, c.ReapInterval = 1, time.Hour })
	held, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := held.Conn()
	held.Release()
	wt := NewWaiter(func(*Lease[*fakeConn], error) { t.Error("an idle connection was there: no wait") })
	allocs := testing.AllocsPerRun(100, func() {
		l, err := p.AcquireAsync(wt, time.Minute)
		if l == nil || err != nil {
			t.Fatalf("idle pool: lease %v, err %v", l, err)
		}
		if l.Conn() != c {
			t.Fatal("the lease is not the idle connection's")
		}
		l.Release()
		if l, err = p.AcquireWithin(context.Background(), time.Minute); err != nil {
			t.Fatal(err)
		}
		l.Release()
	})
	if allocs != 0 {
		t.Errorf("%v allocations an acquire and release, want 0", allocs)
	}
	if s := p.Stats(); s.Idle != 1 || s.Acquired != 0 {
		t.Errorf("after the releases: %+v, want the connection idle", s)
	}
}

// TestAcquireAsyncAllocs: the relay loop's way through a busy pool (queue
// with its Waiter, get the connection a holder gives back, give it back to
// the next) allocates nothing, as it runs once a transaction under load.
func TestAcquireAsyncAllocs(t *testing.T) {
	p, held := fullPool(t, &dialer{})
	var got *Lease[*fakeConn]
	wt := NewWaiter(func(l *Lease[*fakeConn], err error) {
		if err != nil {
			t.Error(err)
		}
		got = l
	})
	allocs := testing.AllocsPerRun(100, func() {
		if l, err := p.AcquireAsync(wt, time.Minute); l != nil || err != nil {
			t.Fatalf("full pool: lease %v, err %v", l, err)
		}
		held.Release()
		if got == nil {
			t.Fatal("the released connection did not reach the waiter")
		}
		held, got = got, nil
	})
	if allocs != 0 {
		t.Errorf("%v allocations a wait, want 0", allocs)
	}
	held.Release()
}

// TestIdleStack: the idle stack is the pool's own. The connection given back
// last is taken first (the busiest stay in use, the others grow idle), the
// counts follow, and Close closes the idle ones before it returns.
func TestIdleStack(t *testing.T) {
	d := &dialer{}
	p := newPool(t, d, func(c *Config[*fakeConn]) { c.MaxSize = 3; c.ReapInterval = time.Hour })
	ls := acquireN(t, p, 3)
	if s := p.Stats(); s.Total != 3 || s.Acquired != 3 || s.Idle != 0 {
		t.Fatalf("all held: %+v", s)
	}
	first, last := ls[0].Conn(), ls[2].Conn()
	ls[0].Release()
	ls[2].Release()
	if s := p.Stats(); s.Total != 3 || s.Acquired != 1 || s.Idle != 2 {
		t.Fatalf("two back: %+v", s)
	}
	l, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if l.Conn() != last {
		t.Fatalf("got connection %d, want the last given back (%d)", l.Conn().id, last.id)
	}
	if l.IdleDuration() < 0 || l.IdleDuration() > time.Second {
		t.Fatalf("idle duration %v", l.IdleDuration())
	}
	l.Release()
	ls[1].Release()
	p.Close()
	for _, c := range d.conns {
		if !c.closed.Load() {
			t.Fatalf("connection %d still open after Close (first %d)", c.id, first.id)
		}
	}
	if s := p.Stats(); s.Total != 0 || s.Idle != 0 {
		t.Fatalf("after Close: %+v", s)
	}
}

// acquireN acquires n connections from p, failing the test on an error.
func acquireN(t *testing.T, p *Pool[*fakeConn], n int) []*Lease[*fakeConn] {
	t.Helper()
	var ls []*Lease[*fakeConn]
	for range n {
		l, err := p.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls
}

// TestReserve: a caller that has waited ReserveTimeout gets a connection
// past MaxSize, up to ReserveSize more; one that waits less does not; a
// reserve connection given back with no one waiting is closed.
func TestReserve(t *testing.T) {
	d := &dialer{}
	p := newPool(t, d, func(c *Config[*fakeConn]) {
		c.MaxSize, c.ReserveSize, c.ReserveTimeout = 1, 1, 100*time.Millisecond
	})
	ctx := context.Background()
	held, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got := make(chan *Lease[*fakeConn], 2)
	for range 2 {
		go func() {
			l, err := p.Acquire(ctx)
			if err != nil {
				t.Error(err)
			}
			got <- l
		}()
	}
	first := <-got
	if waited := time.Since(start); waited < 90*time.Millisecond || waited > time.Second {
		t.Fatalf("a waiter was served after %s, want about ReserveTimeout", waited)
	}
	if st := p.Stats(); st.Total != 2 {
		t.Fatalf("%d connections, want MaxSize 1 and the reserve's 1", st.Total)
	}
	select {
	case <-got:
		t.Fatal("a second waiter got a connection past MaxSize + ReserveSize")
	case <-time.After(200 * time.Millisecond):
	}
	first.Release() // to the other waiter
	second := <-got
	second.Release() // no one waits: back to MaxSize
	held.Release()
	if st := p.Stats(); st.Total != 1 || st.Idle != 1 {
		t.Fatalf("after the wait: %+v, want one idle connection", st)
	}
}

// TestLimitAcrossPools: a Limit bounds two pools together; a pool that needs
// a connection while the other holds the limit's last ones idle gets one
// when the other closes an idle one, and one in use when it is destroyed.
func TestLimitAcrossPools(t *testing.T) {
	lim := NewLimit(2)
	da, db := &dialer{}, &dialer{}
	a := newPool(t, da, func(c *Config[*fakeConn]) { c.MaxSize, c.Limits = 2, []*Limit{lim} })
	b := newPool(t, db, func(c *Config[*fakeConn]) { c.MaxSize, c.Limits = 2, []*Limit{lim} })
	ctx := context.Background()
	a1, _ := a.Acquire(ctx)
	a2, _ := a.Acquire(ctx)
	if lim.Count() != 2 {
		t.Fatalf("limit counts %d", lim.Count())
	}
	wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if _, err := b.Acquire(wctx); err == nil {
		t.Fatal("b got a connection past the limit")
	}
	cancel()
	// a's connection goes idle: b's wait has it closed and takes its place.
	a1.Release()
	wctx, cancel = context.WithTimeout(ctx, 2*time.Second)
	b1, err := b.Acquire(wctx)
	cancel()
	if err != nil {
		t.Fatalf("b, with an idle connection of a's to close: %v", err)
	}
	if st := a.Stats(); st.Total != 1 || lim.Count() != 2 {
		t.Fatalf("a %+v, limit %d", st, lim.Count())
	}
	// One in use elsewhere is not taken; when it is destroyed, room comes.
	done := make(chan error, 1)
	go func() {
		l, err := b.Acquire(ctx)
		if err == nil {
			l.Release()
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("b got a second connection while a holds one in use: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	a2.Destroy()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("b was not served when a's connection was destroyed")
	}
	b1.Release()
	if lim.Count() > 2 {
		t.Fatalf("limit counts %d", lim.Count())
	}
}

// TestLoginRetry: after a failed dial, callers that need a connection get
// its error at once, with no dial, for LoginRetry; then the pool dials
// again.
func TestLoginRetry(t *testing.T) {
	d := &dialer{}
	var dials atomic.Int32
	p := newPool(t, d, func(c *Config[*fakeConn]) {
		c.LoginRetry = 300 * time.Millisecond
		c.Dial = func(ctx context.Context) (*fakeConn, error) { dials.Add(1); return d.dial(ctx) }
	})
	ctx := context.Background()
	d.fail.Store(true)
	if _, err := p.Acquire(ctx); err == nil {
		t.Fatal("a dial that failed gave a connection")
	}
	d.fail.Store(false) // the server is back, but the pool does not know
	start := time.Now()
	if _, err := p.Acquire(ctx); err == nil || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("within LoginRetry: %v after %s, want the failure at once", err, time.Since(start))
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials within LoginRetry, want 1", n)
	}
	time.Sleep(350 * time.Millisecond)
	l, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("after LoginRetry: %v", err)
	}
	l.Release()
}
