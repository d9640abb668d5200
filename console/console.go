// Package console answers the admin console's commands: a client that logs
// in to the virtual database "pgmux" (or "pgbouncer") as one of admin_users
// or stats_users gets every SHOW command of PgBouncer 1.25, with its column
// names and types (show.go), so that tools written for PgBouncer read it;
// admin users can also PAUSE, RESUME, DISABLE, ENABLE, KILL, KILL_CLIENT,
// RECONNECT, WAIT_CLOSE, SUSPEND, RELOAD and SHUTDOWN, with a database
// argument where PgBouncer takes one. It turns a
// query into the messages that answer it; logging in and carrying the
// messages is the proxy's session's.
//
// It reads and acts on the proxy through Source, which it declares, and must
// never import the proxy, the pools, the configuration or a logger.
package console

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/stats"
)

// Version is pgmux's version, as SHOW VERSION and server_version report it.
const Version = "pgmux 0.1.0"

// IsDatabase reports whether a client asking for the database name asks for
// the console.
func IsDatabase(name string) bool { return name == "pgmux" || name == "pgbouncer" }

// Source is what the console reads and acts on.
type Source interface {
	Pools() []stats.Pool
	Clients() []stats.Client
	Servers() []stats.Server
	Databases() []Database  // those configured or with a pool, by name
	ConfigRows() [][]string // key, value, default, changeable
	AuthUsers() []string    // the users of the auth file
	MaxUserConnections() int
	PerUser() map[string]User // users' own settings (PgBouncer's [users])
	Mem() []Mem               // what client and server connections hold
	Peers() []Peer            // by peer id
	Started() time.Time
	Paused() bool    // the whole server
	Suspended() bool // SUSPEND
	// What the commands do, as PgBouncer's; db "" is every database.
	Pause(ctx context.Context, db string) error
	Resume(db string) error
	Disable(db string, disable bool) error
	Kill(db string) error
	KillClient(id uint64) error
	Reconnect(db string) error
	WaitClose(ctx context.Context, db string) error
	Suspend(ctx context.Context) error
	Reload() error
	Shutdown()
}

// Peer is a row of SHOW PEERS: another instance cancels are sent on to.
type Peer struct {
	ID   int
	Host string
	Port int
}

// Database is a row of SHOW DATABASES.
type Database struct {
	Name, Host, DBName, User, PoolMode string // PoolMode empty: the default's
	Port, PoolSize, MinPoolSize        int
	ServerLifetime                     time.Duration
	ReservePoolSize, MaxConnections    int // 0: none, no bound
	Current                            int // server connections open or opening
	Paused, Disabled                   bool
}

// User is a user's own pool settings, for SHOW USERS; zero values are not
// set.
type User struct {
	PoolMode                                  string
	PoolSize, ReservePoolSize, MaxConnections int
}

// Mem is a row of SHOW MEM: a kind of object pgmux keeps, its size in
// bytes, how many are in use and how many are kept free.
type Mem struct {
	Name             string
	Size, Used, Free int
}

// ParameterStatus is what a console session is shown at login, before its
// first ReadyForQuery.
func ParameterStatus() []byte {
	buf := make([]byte, 0, 256)
	for _, p := range [][2]string{{"client_encoding", "UTF8"}, {"server_encoding", "UTF8"}, {"server_version", Version},
		{"standard_conforming_strings", "on"}, {"DateStyle", "ISO"}, {"integer_datetimes", "on"}} {
		buf, _ = (&pgproto3.ParameterStatus{Name: p[0], Value: p[1]}).Encode(buf)
	}
	return buf
}

// Access says whether user may use the console, and whether as an admin
// (admin_users, every command) or to read only (stats_users, SHOW).
func Access(user string, admins, stats []string) (admin bool, err *protocol.PgError) {
	if slices.Contains(admins, user) {
		return true, nil
	}
	if slices.Contains(stats, user) {
		return false, nil
	}
	return false, protocol.Fatal(protocol.CodeInvalidAuthorization, fmt.Sprintf("user %q may not use the admin console (admin_users, stats_users)", user))
}

// Reply is the answer to a console client's message of type typ with body:
// to a simple Query its Answer and ReadyForQuery, to a Sync ReadyForQuery,
// to a Flush nothing, to anything else an error; leave: it was Terminate.
func Reply(src Source, typ byte, body []byte, admin bool) (out []byte, leave bool) {
	switch typ {
	case 'X':
		return nil, true
	case 'Q':
		out = Answer(src, strings.TrimRight(string(body), "\x00"), admin)
	case 'S':
	case 'H':
		return nil, false
	default:
		return protocol.Error(protocol.CodeFeatureNotSupported, "the admin console takes simple queries only").AppendTo(nil), false
	}
	return append(out, 'Z', 0, 0, 0, 5, 'I'), false
}

// Answer returns what answers a console query q (several commands may be
// separated by ';'), asked by an admin user or not: each command's rows and
// CommandComplete, up to the first error, which ends it; an
// EmptyQueryResponse if it held none. The caller sends ReadyForQuery after.
func Answer(src Source, q string, admin bool) []byte {
	var out []byte
	any := false
	for _, c := range strings.Split(q, ";") {
		words := strings.Fields(c)
		if len(words) == 0 {
			continue
		}
		any = true
		res, err := command(src, words, admin)
		if err != nil {
			return append(out, err.AppendTo(nil)...)
		}
		out = append(out, res...)
	}
	if !any {
		out = append(out, 'I', 0, 0, 0, 4) // EmptyQueryResponse
	}
	return out
}

// controlTimeout bounds the commands that wait: PAUSE, SUSPEND and
// WAIT_CLOSE.
const controlTimeout = time.Minute

// command answers one command: its first word in any case, a database name
// after it as written (or quoted).
func command(src Source, words []string, admin bool) ([]byte, *protocol.PgError) {
	verb := strings.ToUpper(words[0])
	if verb == "SHOW" {
		if len(words) == 2 {
			if show := shows[strings.ToUpper(words[1])]; show != nil {
				return show(src), nil
			}
		}
		return nil, unknown(words)
	}
	ctl := controls[verb]
	if ctl.run == nil || len(words)-1 < ctl.args[0] || len(words)-1 > ctl.args[1] {
		return nil, unknown(words)
	}
	if !admin {
		return nil, protocol.Error("42501", "admin console: "+strings.ToLower(verb)+" needs one of admin_users")
	}
	arg := ""
	if len(words) > 1 {
		arg = strings.Trim(words[1], `"`)
	}
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	if err := ctl.run(ctx, src, arg); err != nil {
		var pe *protocol.PgError
		if errors.As(err, &pe) {
			return nil, pe
		}
		code := "3D000" // an unknown database or client: the only refusal most have
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			code = protocol.CodeQueryCanceled
		case verb == "RELOAD":
			code = "F0000"
		case verb == "KILL_CLIENT":
			code = "42704"
		}
		return nil, protocol.Error(code, strings.ToLower(verb)+": "+err.Error())
	}
	return protocol.CommandComplete(verb), nil
}

// controls are the commands that act, as PgBouncer's: how many arguments
// each takes (at least, at most), and what it does.
var controls = map[string]struct {
	args [2]int
	run  func(ctx context.Context, src Source, arg string) error
}{
	"PAUSE":  {[2]int{0, 1}, func(ctx context.Context, src Source, db string) error { return src.Pause(ctx, db) }},
	"RESUME": {[2]int{0, 1}, func(_ context.Context, src Source, db string) error { return src.Resume(db) }},
	"DISABLE": {[2]int{1, 1}, func(_ context.Context, src Source, db string) error {
		return src.Disable(db, true)
	}},
	"ENABLE": {[2]int{1, 1}, func(_ context.Context, src Source, db string) error {
		return src.Disable(db, false)
	}},
	"KILL": {[2]int{0, 1}, func(_ context.Context, src Source, db string) error { return src.Kill(db) }},
	"KILL_CLIENT": {[2]int{1, 1}, func(_ context.Context, src Source, id string) error {
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			return protocol.Error("22P02", fmt.Sprintf("kill_client: %q is not a client id (SHOW CLIENTS's id)", id))
		}
		return src.KillClient(n)
	}},
	"RECONNECT":  {[2]int{0, 1}, func(_ context.Context, src Source, db string) error { return src.Reconnect(db) }},
	"WAIT_CLOSE": {[2]int{0, 1}, func(ctx context.Context, src Source, db string) error { return src.WaitClose(ctx, db) }},
	"SUSPEND":    {[2]int{0, 0}, func(ctx context.Context, src Source, _ string) error { return src.Suspend(ctx) }},
	"RELOAD":     {[2]int{0, 0}, func(_ context.Context, src Source, _ string) error { return refused(src.Reload()) }},
	"SHUTDOWN": {[2]int{0, 1}, func(_ context.Context, src Source, mode string) error {
		// WAIT_FOR_SERVERS and WAIT_FOR_CLIENTS are what pgmux's
		// shutdown does anyway: it drains.
		if m := strings.ToUpper(mode); m != "" && m != "WAIT_FOR_SERVERS" && m != "WAIT_FOR_CLIENTS" {
			return protocol.Error("42601", fmt.Sprintf("shutdown: %q is not WAIT_FOR_SERVERS or WAIT_FOR_CLIENTS", mode))
		}
		src.Shutdown()
		return nil
	}},
}

// refused words a refused reload.
func refused(err error) error {
	if err != nil {
		return fmt.Errorf("reload refused: %w", err)
	}
	return nil
}

func unknown(words []string) *protocol.PgError {
	verbs := make([]string, 0, len(controls))
	for v := range controls {
		verbs = append(verbs, v)
	}
	slices.Sort(verbs)
	return protocol.Error("42601", "admin console: unknown command "+strings.Join(words, " ")+
		" (SHOW "+strings.Join(showNames(), "|")+"; "+strings.Join(verbs, ", ")+")")
}

// shows are the SHOW commands, by their argument.
var shows = map[string]func(Source) []byte{
	"STATS": showStats, "STATS_TOTALS": showStatsTotals, "STATS_AVERAGES": showStatsAverages, "TOTALS": showTotals,
	"SERVERS": showServers, "CLIENTS": showClients, "POOLS": showPools, "PEER_POOLS": showPeerPools, "LISTS": showLists,
	"USERS": showUsers, "DATABASES": showDatabases, "PEERS": showPeers, "FDS": showFDs,
	"SOCKETS":        func(s Source) []byte { return showSockets(s, false) },
	"ACTIVE_SOCKETS": func(s Source) []byte { return showSockets(s, true) },
	"CONFIG": func(s Source) []byte {
		return result("ssss", []string{"key", "value", "default", "changeable"}, s.ConfigRows())
	},
	"MEM":       showMem,
	"DNS_HOSTS": func(Source) []byte { return result("sqs", []string{"hostname", "ttl", "addrs"}, nil) },
	"DNS_ZONES": func(Source) []byte { return result("sqi", []string{"zonename", "serial", "count"}, nil) },
	"VERSION":   func(Source) []byte { return result("s", []string{"version"}, [][]string{{Version}}) },
	"STATE":     showState,
}

func showNames() []string {
	names := make([]string, 0, len(shows))
	for n := range shows {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
