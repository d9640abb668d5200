package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/hosts"
)

// Pause stops lending servers, as PgBouncer's PAUSE: transactions under way
// go on, a client that starts a new one waits until Resume. It returns when
// no client holds a server, or with ctx's error.
func (s *Server) Pause(ctx context.Context) error {
	s.pauseAll()
	s.log.Info("paused")
	return s.waitIdle(ctx, "")
}

// pauseAll stops lending servers to anyone.
func (s *Server) pauseAll() {
	s.mu.Lock()
	if !s.paused.Load() {
		s.paused.Store(true)
		s.resumeCh = make(chan struct{})
	}
	s.mu.Unlock()
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

// waitResumed blocks a session that needs a server while the server, or
// its database (dbc, if not nil), is paused.
func (s *Server) waitResumed(ctx context.Context, dbc *dbControl) error {
	for {
		if !s.paused.Load() && (dbc == nil || !dbc.paused.Load()) {
			return nil // the common case, without the server's lock
		}
		s.mu.Lock()
		ch := s.resumeCh
		if !s.paused.Load() {
			ch = dbc.resumeCh
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
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
		if seen[db.Host] {
			continue
		}
		seen[db.Host] = true
		// Ready when one of its hosts takes a connection.
		var err error
		for _, h := range hosts.Split(db.Host) {
			d := onHost(db, h)
			network, addr := d.serverAddr()
			var c net.Conn
			if c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr); err == nil {
				c.Close()
				break
			}
		}
		if err != nil {
			return fmt.Errorf("database %s: %w", name, err)
		}
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
	prevOpts := s.options()
	if opts.Logger == nil {
		opts.Logger = prevOpts.Logger
	}
	s.opts.Store(&opts)
	pools := s.poolList()
	for _, p := range pools {
		name := cmp.Or(p.readsOf, p.key.database)
		db, ok := opts.Databases(name)
		if !ok {
			continue // removed: its clients finish; new ones get 3D000
		}
		db = routed(db, p.readsOf != "")
		db, maxUser := opts.forUser(db, p.key.user)
		_, prevMaxUser := prevOpts.forUser(db, p.key.user)
		p.mu.Lock()
		old := p.db
		p.db.PoolMode = db.PoolMode
		p.db.ServerTLS = db.ServerTLS // new dials use the certificates reloaded
		p.mu.Unlock()
		sameLimits := db.ReservePoolSize == old.ReservePoolSize && db.MaxDBConnections == old.MaxDBConnections &&
			maxUser == prevMaxUser && opts.ReservePoolTimeout == prevOpts.ReservePoolTimeout
		if db.Host == old.Host && db.Port == old.Port && db.DBName == old.DBName && db.PoolSize == old.PoolSize && db.Password == old.Password && sameLimits {
			// The pool stays: the limits are its to change (a new pool
			// takes them from opts).
			p.pool.Load().SetLimits(int32(opts.MinPoolSize), opts.ServerIdleTimeout, opts.ServerLifetime)
			continue
		}
		if err := s.replacePool(p, db, &opts); err != nil {
			s.log.Error("reload pool", zap.String("database", p.key.database), zap.Error(err))
			continue
		}
		s.log.Info("pool replaced", zap.String("database", p.key.database), zap.String("user", p.key.user),
			zap.Int("pool_size", db.PoolSize))
	}
}

// replacePool gives p a new pool of servers for db: new transactions take
// servers from it, and the old one closes each of its servers as it comes
// back (p.closing counts them until then).
func (s *Server) replacePool(p *dbPool, db Database, opts *Options) error {
	pl, err := s.newPoolFor(p, db, p.key.user, credFor(opts, db, p.key.user))
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.db = db
	p.params = nil // learn them again from the new servers
	p.mu.Unlock()
	prev := p.pool.Swap(pl)
	p.closing.Add(1)
	go func() {
		defer p.closing.Done()
		prev.Close() // closes the idle servers, and each lent one when it is given back
		for st := prev.Stats(); st.Acquired+st.Constructing > 0; st = prev.Stats() {
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return nil
}

// The console's commands for one database (or, with the name empty, for
// every one), as PgBouncer's: PAUSE db, RESUME db, DISABLE, ENABLE, KILL,
// KILL_CLIENT, RECONNECT, WAIT_CLOSE and SUSPEND.

// dbControl is what those commands have put on one database.
type dbControl struct {
	paused   atomic.Bool   // written under the Server's mu, with resumeCh
	disabled atomic.Bool   // new clients are refused
	resumeCh chan struct{} // under the Server's mu: closed while not paused
}

// control returns the commands' state for database name, making it.
func (s *Server) control(name string) *dbControl {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.controlLocked(name)
}

func (s *Server) controlLocked(name string) *dbControl {
	c := s.dbc[name]
	if c == nil {
		c = &dbControl{resumeCh: make(chan struct{})}
		close(c.resumeCh)
		s.dbc[name] = c
	}
	return c
}

// knownDatabase reports whether name is a database clients may ask for.
func (s *Server) knownDatabase(name string) error {
	if _, ok := s.options().Databases(name); !ok {
		return fmt.Errorf("no such database: %s", name)
	}
	return nil
}

// PauseDB pauses database name as Pause pauses them all, and returns when
// none of its clients holds a server, or with ctx's error.
func (s *Server) PauseDB(ctx context.Context, name string) error {
	if err := s.knownDatabase(name); err != nil {
		return err
	}
	s.pauseDB(name)
	s.log.Info("paused", zap.String("database", name))
	return s.waitIdle(ctx, name)
}

func (s *Server) pauseDB(name string) {
	s.mu.Lock()
	c := s.controlLocked(name)
	if !c.paused.Load() {
		c.paused.Store(true)
		c.resumeCh = make(chan struct{})
	}
	s.mu.Unlock()
}

// waitIdle returns when no client of database name (every database if
// empty) holds a server, or with ctx's error.
func (s *Server) waitIdle(ctx context.Context, name string) error {
	for {
		active := 0
		for _, p := range s.Pools() {
			if name == "" || p.Database == name {
				active += p.ClientsActive
			}
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

// ResumeDB undoes PauseDB, KILL and SUSPEND for database name; with the
// name empty, for every database and the whole server.
func (s *Server) ResumeDB(name string) error {
	if name != "" {
		if err := s.knownDatabase(name); err != nil {
			return err
		}
	}
	s.mu.Lock()
	for n, c := range s.dbc {
		if (name == "" || n == name) && c.paused.Load() {
			c.paused.Store(false)
			close(c.resumeCh)
		}
	}
	if name == "" {
		s.suspended.Store(false)
	}
	s.mu.Unlock()
	if name == "" {
		s.Resume()
	} else {
		s.log.Info("resumed", zap.String("database", name))
	}
	return nil
}

// DisableDB makes database name refuse new clients (enable false), or take
// them again.
func (s *Server) DisableDB(name string, disable bool) error {
	if err := s.knownDatabase(name); err != nil {
		return err
	}
	s.control(name).disabled.Store(disable)
	return nil
}

// KillDB drops every client of database name (every database if empty) and
// its servers at once; new clients wait, as after PAUSE, until RESUME.
func (s *Server) KillDB(name string) error {
	if name != "" {
		if err := s.knownDatabase(name); err != nil {
			return err
		}
		s.pauseDB(name)
	} else {
		s.pauseAll()
	}
	s.mu.Lock()
	var kill []*session
	for ss := range s.sessions {
		if ss.pool != nil && (name == "" || ss.dbName == name) && ss.getPhase() != core.PhaseLogin {
			kill = append(kill, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range kill {
		ss.kill()
	}
	s.log.Info("killed", zap.String("database", name), zap.Int("clients", len(kill)))
	return s.replacePools(name)
}

// replacePools replaces the pools of database name (every database's if
// empty) with pools of new servers (replacePool).
func (s *Server) replacePools(name string) error {
	opts := s.options()
	for _, p := range s.poolList() {
		if name == "" || p.key.database == name || p.readsOf == name {
			p.mu.Lock()
			db := p.db
			p.mu.Unlock()
			if err := s.replacePool(p, db, opts); err != nil {
				return err
			}
		}
	}
	return nil
}

// KillClient drops the client whose id (SHOW CLIENTS's id) is given.
func (s *Server) KillClient(id uint64) error {
	s.mu.Lock()
	var found *session
	for ss := range s.sessions {
		if ss.id == id {
			found = ss
		}
	}
	s.mu.Unlock()
	if found == nil {
		return fmt.Errorf("no such client: %d", id)
	}
	found.kill()
	return nil
}

// Reconnect closes every server of database name (every database if
// empty) once its transaction ends: its pools are replaced, and the old
// ones close their servers as they come back.
func (s *Server) Reconnect(name string) error {
	if name != "" {
		if err := s.knownDatabase(name); err != nil {
			return err
		}
	}
	return s.replacePools(name)
}

// WaitClose returns when the servers that RECONNECT, KILL or a reload left
// to close (database name's, or every database's) are closed, or with
// ctx's error.
func (s *Server) WaitClose(ctx context.Context, name string) error {
	if name != "" {
		if err := s.knownDatabase(name); err != nil {
			return err
		}
	}
	done := make(chan struct{})
	go func() {
		for _, p := range s.poolList() {
			if name == "" || p.key.database == name || p.readsOf == name {
				p.closing.Wait()
			}
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Suspend pauses the whole server and reports it suspended (SHOW STATE):
// pgmux has no online restart by passing sockets, which PgBouncer's SUSPEND
// prepares; it hands over by SO_REUSEPORT and a drain instead.
func (s *Server) Suspend(ctx context.Context) error {
	s.suspended.Store(true)
	return s.Pause(ctx)
}

// Suspended reports whether SUSPEND is in force.
func (s *Server) Suspended() bool { return s.suspended.Load() }

// DatabaseState reports whether database name is paused and disabled.
func (s *Server) DatabaseState(name string) (paused, disabled bool) {
	s.mu.Lock()
	c := s.dbc[name]
	s.mu.Unlock()
	if c == nil {
		return false, false
	}
	return c.paused.Load(), c.disabled.Load()
}
