package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"go.uber.org/zap"
)

// Pause stops lending servers, as PgBouncer's PAUSE: transactions under way
// go on, a client that starts a new one waits until Resume. It returns when
// no client holds a server, or with ctx's error.
func (s *Server) Pause(ctx context.Context) error {
	s.mu.Lock()
	if !s.paused.Load() {
		s.paused.Store(true)
		s.resumeCh = make(chan struct{})
	}
	s.mu.Unlock()
	s.log.Info("paused")
	for {
		active := 0
		for _, p := range s.Pools() {
			active += p.ClientsActive
		}
		if active == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pause: %d clients still in a transaction: %w", active, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Resume undoes Pause.
func (s *Server) Resume() {
	s.mu.Lock()
	if s.paused.Load() {
		s.paused.Store(false)
		close(s.resumeCh)
	}
	s.mu.Unlock()
	s.log.Info("resumed")
}

// Paused reports whether the server is paused.
func (s *Server) Paused() bool { return s.paused.Load() }

// waitResumed blocks a session that needs a server while the server is
// paused.
func (s *Server) waitResumed(ctx context.Context) error {
	if !s.paused.Load() {
		return nil // the common case, without the server's lock
	}
	s.mu.Lock()
	ch := s.resumeCh
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool { return s.draining.Load() }

// Ready reports whether pgmux should get traffic: it is not draining or
// paused, and every database in ReadyDatabases accepts connections.
func (s *Server) Ready(ctx context.Context) error {
	if s.draining.Load() {
		return errors.New("draining")
	}
	if s.Paused() {
		return errors.New("paused")
	}
	o := s.options()
	seen := map[string]bool{}
	for _, name := range o.ReadyDatabases {
		db, ok := o.Databases(name)
		if !ok {
			continue
		}
		network, addr := db.serverAddr()
		if seen[addr] {
			continue
		}
		seen[addr] = true
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return fmt.Errorf("database %s: %w", name, err)
		}
		c.Close()
	}
	return nil
}

// Update puts new options in force without dropping anyone: timeouts and
// limits apply from the next use (the pools' server_idle_timeout,
// server_lifetime and min_pool_size at their reaper's next look), users
// and databases from the next login, and a pool whose server address or
// size changed gets a new pool of servers; the old one closes as its
// servers come back.
func (s *Server) Update(opts Options) {
	opts.defaults()
	if opts.Logger == nil {
		opts.Logger = s.options().Logger
	}
	s.opts.Store(&opts)
	pools := s.poolList()
	for _, p := range pools {
		db, ok := opts.Databases(p.key.database)
		if !ok {
			continue // removed: its clients finish; new ones get 3D000
		}
		p.mu.Lock()
		old := p.db
		p.db.PoolMode = db.PoolMode
		p.db.ServerTLS = db.ServerTLS // new dials use the certificates reloaded
		p.mu.Unlock()
		if db.Host == old.Host && db.Port == old.Port && db.DBName == old.DBName && db.PoolSize == old.PoolSize && db.Password == old.Password {
			// The pool stays: the limits are its to change (a new pool
			// takes them from opts).
			p.pool.Load().SetLimits(int32(opts.MinPoolSize), opts.ServerIdleTimeout, opts.ServerLifetime)
			continue
		}
		pl, err := s.newPoolFor(p, db, p.key.user, credFor(&opts, db, p.key.user))
		if err != nil {
			s.log.Error("reload pool", zap.String("database", p.key.database), zap.Error(err))
			continue
		}
		p.mu.Lock()
		p.db = db
		p.params = nil // learn them again from the new servers
		p.mu.Unlock()
		prev := p.pool.Swap(pl)
		go prev.Close() // returns once its lent servers are back
		s.log.Info("pool replaced", zap.String("database", p.key.database), zap.String("user", p.key.user),
			zap.Int("pool_size", db.PoolSize))
	}
}
