package pool

import (
	"context"
	"errors"
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
	if _, err := p.TryAcquire(ctx); !errors.Is(err, ErrNotAvailable) {
		t.Fatalf("TryAcquire on a full pool: %v", err)
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
	closed := 0
	for _, c := range d.conns {
		if c.closed.Load() {
			closed++
		}
	}
	if closed != 3 {
		t.Fatalf("%d connections closed, want 3", closed)
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
