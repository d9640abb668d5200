// Package pool keeps the backend connections of one (database, user) pair:
// it bounds their number, hands them out to one holder at a time, and retires
// them when they have been idle or alive too long. It is built on puddle and
// knows nothing of the wire protocol: connections are made by a Dial function
// and only need to be closable.
package pool

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/puddle/v2"
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
	MinSize        int32         // connections kept open even when idle
	ConnectTimeout time.Duration // per dial; 0 means none
	IdleTimeout    time.Duration // close connections idle longer; 0 means never
	MaxLifetime    time.Duration // close connections older, when next released or idle; 0 means never
	ReapInterval   time.Duration // how often idle connections are checked; default 1s
}

// ErrClosed is returned by Acquire once the pool is closed.
var ErrClosed = errors.New("pool closed")

// Pool is a bounded set of connections. Its methods are safe for concurrent use.
type Pool[T Conn] struct {
	cfg    Config[T]
	p      *puddle.Pool[T]
	stopCh chan struct{}
	done   sync.WaitGroup
	once   sync.Once
}

// New creates a pool and starts its reaper. Callers MUST call Close.
func New[T Conn](cfg Config[T]) (*Pool[T], error) {
	if cfg.MaxSize < 1 {
		return nil, errors.New("pool max size must be at least 1")
	}
	if cfg.MinSize > cfg.MaxSize {
		cfg.MinSize = cfg.MaxSize
	}
	if cfg.ReapInterval <= 0 {
		cfg.ReapInterval = time.Second
	}
	pl := &Pool[T]{cfg: cfg, stopCh: make(chan struct{})}
	var err error
	pl.p, err = puddle.NewPool(&puddle.Config[T]{
		Constructor: func(ctx context.Context) (T, error) {
			if cfg.ConnectTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, cfg.ConnectTimeout)
				defer cancel()
			}
			return cfg.Dial(ctx)
		},
		Destructor: func(c T) { c.Close() },
		MaxSize:    cfg.MaxSize,
	})
	if err != nil {
		return nil, err
	}
	pl.done.Add(1)
	go pl.reap()
	return pl, nil
}

// Lease is a connection held by one caller until Release or Destroy.
type Lease[T Conn] struct {
	res *puddle.Resource[T]
	p   *Pool[T]
}

// Conn returns the leased connection.
func (l *Lease[T]) Conn() T { return l.res.Value() }

// IdleDuration is how long the connection sat in the pool before this lease.
func (l *Lease[T]) IdleDuration() time.Duration { return l.res.IdleDuration() }

// Release gives a clean connection back. A connection past its lifetime is
// closed instead.
func (l *Lease[T]) Release() {
	if l.p.cfg.MaxLifetime > 0 && time.Since(l.res.CreationTime()) > l.p.cfg.MaxLifetime {
		l.res.Destroy()
		return
	}
	l.res.Release()
}

// Destroy closes a connection that must not be reused.
func (l *Lease[T]) Destroy() { l.res.Destroy() }

// Acquire waits for a connection until ctx ends. Cancelling ctx does not
// cancel a dial already under way: that connection then goes to the pool.
func (p *Pool[T]) Acquire(ctx context.Context) (*Lease[T], error) {
	return p.lease(p.p.Acquire(ctx))
}

func (p *Pool[T]) lease(res *puddle.Resource[T], err error) (*Lease[T], error) {
	if err != nil {
		if errors.Is(err, puddle.ErrClosedPool) {
			return nil, ErrClosed
		}
		return nil, err
	}
	return &Lease[T]{res: res, p: p}, nil
}

// ErrNotAvailable is returned by TryAcquire when no connection is idle.
var ErrNotAvailable = puddle.ErrNotAvailable

// TryAcquire returns an idle connection without waiting, or ErrNotAvailable
// (when the pool has room, it then starts a new connection in the background).
func (p *Pool[T]) TryAcquire(ctx context.Context) (*Lease[T], error) {
	return p.lease(p.p.TryAcquire(ctx))
}

// Stats is a snapshot of a pool.
type Stats struct {
	Total, Idle, Acquired, Constructing, Max int32
	AcquireCount, EmptyAcquireCount          int64
	AcquireDuration                          time.Duration
	CanceledAcquireCount                     int64
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool[T]) Stats() Stats {
	s := p.p.Stat()
	return Stats{
		Total:                s.TotalResources(),
		Idle:                 s.IdleResources(),
		Acquired:             s.AcquiredResources(),
		Constructing:         s.ConstructingResources(),
		Max:                  s.MaxResources(),
		AcquireCount:         s.AcquireCount(),
		EmptyAcquireCount:    s.EmptyAcquireCount(),
		AcquireDuration:      s.AcquireDuration(),
		CanceledAcquireCount: s.CanceledAcquireCount(),
	}
}

// Close closes idle connections now and each acquired one when it is given
// back, and stops the reaper. It is idempotent.
func (p *Pool[T]) Close() {
	p.once.Do(func() {
		close(p.stopCh)
		p.done.Wait()
		p.p.Close()
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

// reapOnce closes idle connections past their idle timeout or lifetime, then
// tops the pool up to MinSize.
func (p *Pool[T]) reapOnce() {
	idle := p.p.AcquireAllIdle()
	total := p.p.Stat().TotalResources()
	for _, res := range idle {
		tooIdle := p.cfg.IdleTimeout > 0 && res.IdleDuration() > p.cfg.IdleTimeout && total > p.cfg.MinSize
		tooOld := p.cfg.MaxLifetime > 0 && time.Since(res.CreationTime()) > p.cfg.MaxLifetime
		if tooIdle || tooOld {
			res.Destroy()
			total--
			continue
		}
		res.ReleaseUnused()
	}
	for i := p.p.Stat().TotalResources(); i < p.cfg.MinSize; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), max(p.cfg.ConnectTimeout, time.Second))
		err := p.p.CreateResource(ctx)
		cancel()
		if err != nil {
			break // the server is unreachable; try again next tick
		}
	}
}
