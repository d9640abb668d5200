// Package console answers the admin console's commands: a client that logs
// in to the virtual database "pgmux" (or "pgbouncer") as one of admin_users
// or stats_users gets every SHOW command of PgBouncer 1.25, with its column
// names and types (show.go), so that tools written for PgBouncer read it;
// admin users can also PAUSE, RESUME, RELOAD and SHUTDOWN. It turns a
// query into the messages that answer it; logging in and carrying the
// messages is the proxy's session's.
//
// It reads and acts on the proxy through Source, which it declares, and must
// never import the proxy, the pools, the configuration or a logger.
package console

import (
	"context"
	"slices"
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
	Mem() []Mem             // what client and server connections hold
	Started() time.Time
	Paused() bool
	Pause(ctx context.Context) error
	Resume()
	Reload() error
	Shutdown()
}

// Database is a row of SHOW DATABASES.
type Database struct {
	Name, Host, DBName, User, PoolMode string // PoolMode empty: the default's
	Port, PoolSize, MinPoolSize        int
	ServerLifetime                     time.Duration
	Current                            int // server connections open or opening
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

// Answer returns what answers a console query q (several commands may be
// separated by ';'), asked by an admin user or not: each command's rows and
// CommandComplete, up to the first error, which ends it; an
// EmptyQueryResponse if it held none. The caller sends ReadyForQuery after.
func Answer(src Source, q string, admin bool) []byte {
	var out []byte
	any := false
	for _, c := range strings.Split(q, ";") {
		words := strings.Fields(strings.ToUpper(c))
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

func command(src Source, words []string, admin bool) ([]byte, *protocol.PgError) {
	needAdmin := func() *protocol.PgError {
		if admin {
			return nil
		}
		return protocol.Error("42501", "admin console: "+strings.ToLower(words[0])+" needs one of admin_users")
	}
	switch words[0] {
	case "SHOW":
		if len(words) < 2 {
			break
		}
		if show := shows[words[1]]; show != nil {
			return show(src), nil
		}
	case "PAUSE":
		if err := needAdmin(); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := src.Pause(ctx); err != nil {
			return nil, protocol.Error(protocol.CodeQueryCanceled, err.Error())
		}
		return protocol.CommandComplete("PAUSE"), nil
	case "RESUME":
		if err := needAdmin(); err != nil {
			return nil, err
		}
		src.Resume()
		return protocol.CommandComplete("RESUME"), nil
	case "RELOAD":
		if err := needAdmin(); err != nil {
			return nil, err
		}
		if err := src.Reload(); err != nil {
			return nil, protocol.Error("F0000", "reload refused: "+err.Error())
		}
		return protocol.CommandComplete("RELOAD"), nil
	case "SHUTDOWN":
		if err := needAdmin(); err != nil {
			return nil, err
		}
		src.Shutdown()
		return protocol.CommandComplete("SHUTDOWN"), nil
	}
	return nil, protocol.Error("42601", "admin console: unknown command "+strings.Join(words, " ")+
		" (SHOW "+strings.Join(showNames(), "|")+"; PAUSE, RESUME, RELOAD, SHUTDOWN)")
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
