package proxy

import (
	"context"
	"slices"
	"time"
	"unsafe"

	"github.com/pgmux/pgmux/console"
	"github.com/pgmux/pgmux/protocol"
)

// console runs a console session (package console) after the startup
// packet.
func (ss *session) console(user, dbName string, cbind []byte) error {
	o := ss.srv.options()
	admin, refused := console.Access(user, o.AdminUsers, o.StatsUsers)
	if refused != nil {
		return refused
	}
	if _, err := ss.authenticate(user, dbName, cbind); err != nil {
		return err
	}
	buf := append(console.ParameterStatus(), 'Z', 0, 0, 0, 5, 'I')
	ss.bw.Write(buf)
	if err := ss.bw.Flush(); err != nil {
		return errQuiet
	}
	ss.conn.SetDeadline(time.Time{})
	ss.dbName, ss.user = "pgmux", user
	for {
		typ, n, err := ss.rd.Next()
		if err != nil {
			return clientReadError(err, "timeout")
		}
		body, err := ss.rd.Body(n)
		if err != nil {
			return clientReadError(err, "timeout")
		}
		out, leave := console.Reply(consoleSource{ss.srv}, typ, body, admin)
		if leave {
			return errQuiet
		}
		ss.bw.Write(out)
		if err := ss.bw.Flush(); err != nil {
			return errQuiet
		}
		if ss.srv.draining.Load() {
			return protocol.Fatal(protocol.CodeAdminShutdown, "pgmux is shutting down")
		}
	}
}

// consoleSource is the Server as the console reads it.
type consoleSource struct{ *Server }

var _ console.Source = consoleSource{}

func (s consoleSource) Started() time.Time { return s.started }

// Pause is PAUSE: the whole server's, or db's.
func (s consoleSource) Pause(ctx context.Context, db string) error {
	if db == "" {
		return s.Server.Pause(ctx)
	}
	return s.PauseDB(ctx, db)
}

func (s consoleSource) Resume(db string) error                { return s.ResumeDB(db) }
func (s consoleSource) Disable(db string, disable bool) error { return s.DisableDB(db, disable) }
func (s consoleSource) Kill(db string) error                  { return s.KillDB(db) }

func (s consoleSource) ConfigRows() [][]string {
	if f := s.options().ConfigRows; f != nil {
		return f()
	}
	return [][]string{}
}

func (s consoleSource) Reload() error {
	if f := s.options().OnReload; f != nil {
		return f()
	}
	return nil
}

func (s consoleSource) Shutdown() {
	if f := s.options().OnShutdown; f != nil {
		f()
	}
}

// PerUser reports the users' own settings.
func (s consoleSource) PerUser() map[string]console.User {
	out := map[string]console.User{}
	for name, u := range s.options().PerUser {
		out[name] = console.User{PoolMode: u.PoolMode, PoolSize: u.PoolSize, ReservePoolSize: u.ReservePoolSize, MaxConnections: u.MaxUserConnections}
	}
	return out
}

// MaxUserConnections is max_user_connections.
func (s consoleSource) MaxUserConnections() int { return s.options().MaxUserConnections }

// AuthUsers lists the users of the auth file.
func (s consoleSource) AuthUsers() []string {
	users := s.options().Users
	out := make([]string, 0, len(users))
	for u := range users {
		out = append(out, u)
	}
	return out
}

// Peers lists the peers, by id.
func (s consoleSource) Peers() []console.Peer {
	var out []console.Peer
	for id, p := range s.options().Peers {
		out = append(out, console.Peer{ID: id, Host: p.Host, Port: p.Port})
	}
	slices.SortFunc(out, func(a, b console.Peer) int { return a.ID - b.ID })
	return out
}

// Mem reports the objects pgmux keeps a client, a server and a pool by.
func (s consoleSource) Mem() []console.Mem {
	s.mu.Lock()
	clients, pools := len(s.sessions), len(s.pools)
	s.mu.Unlock()
	return []console.Mem{
		{Name: "client", Size: int(unsafe.Sizeof(session{})), Used: clients},
		{Name: "server", Size: int(unsafe.Sizeof(serverConn{})), Used: len(s.Servers())},
		{Name: "pool", Size: int(unsafe.Sizeof(dbPool{})), Used: pools},
	}
}

// Databases lists the databases configured to be checked for readiness or
// with a pool, by name, with their server connections.
func (s consoleSource) Databases() []console.Database {
	o := s.options()
	current := map[string]int{}
	for _, p := range s.Pools() {
		current[p.Database] += p.ServersActive + p.ServersIdle + p.ServersConnecting
	}
	names := slices.Clone(o.ReadyDatabases)
	for name := range current {
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var out []console.Database
	for _, name := range names {
		d, ok := o.Databases(name)
		if !ok {
			continue
		}
		paused, disabled := s.DatabaseState(name)
		out = append(out, console.Database{Name: name, Host: d.Host, Port: d.Port, DBName: d.DBName, User: d.User,
			PoolSize: d.PoolSize, MinPoolSize: o.MinPoolSize, PoolMode: d.PoolMode, ServerLifetime: o.ServerLifetime, Current: current[name],
			ReservePoolSize: d.ReservePoolSize, MaxConnections: d.MaxDBConnections,
			Paused: paused, Disabled: disabled})
	}
	return out
}
