// Package console answers the admin console's commands: a client that logs
// in to the virtual database "pgmux" (or "pgbouncer") as one of admin_users
// or stats_users gets PgBouncer's SHOW commands, with PgBouncer's column
// names where the concept matches, so that tools written for PgBouncer read
// it; admin users can also PAUSE, RESUME, RELOAD and SHUTDOWN. It turns a
// query into the messages that answer it; logging in and carrying the
// messages is the proxy's session's.
//
// It reads and acts on the proxy through Source, which it declares, and must
// never import the proxy, the pools, the configuration or a logger.
package console

import (
	"context"
	"net"
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
	Started() time.Time
	Paused() bool
	Pause(ctx context.Context) error
	Resume()
	Reload() error
	Shutdown()
}

// Database is a row of SHOW DATABASES.
type Database struct {
	Name, Host, DBName, User, PoolMode string
	Port, PoolSize, MinPoolSize        int
	Current                            int // server connections open or opening
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
		switch words[1] {
		case "POOLS":
			return showPools(src), nil
		case "STATS":
			return showStats(src), nil
		case "CLIENTS":
			return showClients(src), nil
		case "SERVERS":
			return showServers(src), nil
		case "DATABASES":
			return showDatabases(src), nil
		case "CONFIG":
			return table([]string{"key", "value", "default", "changeable"}, nil, src.ConfigRows(), "SHOW"), nil
		case "VERSION":
			return table([]string{"version"}, nil, [][]string{{Version}}, "SHOW"), nil
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
		" (SHOW POOLS|STATS|CLIENTS|SERVERS|DATABASES|CONFIG|VERSION, PAUSE, RESUME, RELOAD, SHUTDOWN)")
}

// table encodes a result set of text columns (or int8 where numeric says so).
func table(cols []string, numeric []bool, rows [][]string, tag string) []byte {
	rd := pgproto3.RowDescription{}
	for i, c := range cols {
		oid := uint32(25) // text
		if numeric != nil && numeric[i] {
			oid = 20 // int8
		}
		rd.Fields = append(rd.Fields, pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: oid, DataTypeSize: -1, TypeModifier: -1})
	}
	out, _ := rd.Encode(nil)
	for _, r := range rows {
		dr := pgproto3.DataRow{}
		for _, v := range r {
			dr.Values = append(dr.Values, []byte(v))
		}
		out, _ = dr.Encode(out)
	}
	return append(out, protocol.CommandComplete(tag+" "+strconv.Itoa(len(rows)))...)
}

func itoa[T ~int | ~int64](v T) string { return strconv.FormatInt(int64(v), 10) }

func showPools(src Source) []byte {
	cols := []string{"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
		"sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
		"maxwait", "maxwait_us", "pool_mode"}
	num := []bool{false, false, true, true, true, true, true, true, true, true, true, true, true, true, true, false}
	var rows [][]string
	for _, p := range src.Pools() {
		rows = append(rows, []string{p.Database, p.User, itoa(p.ClientsActive), itoa(p.ClientsWaiting), "0", "0",
			itoa(p.ServersActive), "0", "0", itoa(p.ServersIdle), "0", "0", itoa(p.ServersConnecting),
			itoa(int64(p.MaxWait / time.Second)), itoa(int64(p.MaxWait%time.Second) / 1000), p.PoolMode})
	}
	return table(cols, num, rows, "SHOW")
}

func showStats(src Source) []byte {
	cols := []string{"database", "total_server_assignment_count", "total_xact_count", "total_query_count",
		"total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
		"avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time"}
	num := make([]bool, len(cols))
	for i := 1; i < len(num); i++ {
		num[i] = true
	}
	byDB := map[string]*stats.Pool{}
	var names []string
	for _, p := range src.Pools() {
		a := byDB[p.Database]
		if a == nil {
			a = &stats.Pool{Database: p.Database}
			byDB[p.Database] = a
			names = append(names, p.Database)
		}
		a.Add(p)
	}
	slices.Sort(names)
	up := max(time.Since(src.Started()).Seconds(), 1)
	per := func(total time.Duration, n int64) string {
		if n == 0 {
			return "0"
		}
		return itoa(int64(total/time.Microsecond) / n)
	}
	var rows [][]string
	for _, name := range names {
		a := byDB[name]
		rows = append(rows, []string{name, itoa(a.Transactions), itoa(a.Transactions), itoa(a.Queries),
			itoa(a.BytesReceived), itoa(a.BytesSent),
			itoa(int64(a.TotalTransactionTime / time.Microsecond)), itoa(int64(a.TotalQueryTime / time.Microsecond)),
			itoa(int64(a.TotalWaitTime / time.Microsecond)),
			itoa(int64(float64(a.Transactions) / up)), itoa(int64(float64(a.Queries) / up)),
			itoa(int64(float64(a.BytesReceived) / up)), itoa(int64(float64(a.BytesSent) / up)),
			per(a.TotalTransactionTime, a.Transactions), per(a.TotalQueryTime, a.Queries), per(a.TotalWaitTime, a.Transactions)})
	}
	return table(cols, num, rows, "SHOW")
}

var connCols = []string{"type", "user", "database", "state", "addr", "port", "local_addr", "local_port",
	"connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr", "link", "remote_pid", "tls", "application_name"}

func splitAddr(a string) (string, string) {
	h, p, err := net.SplitHostPort(a)
	if err != nil {
		return a, ""
	}
	return h, p
}

func showClients(src Source) []byte {
	var rows [][]string
	for _, c := range src.Clients() {
		host, port := splitAddr(c.Addr)
		state := map[string]string{"idle": "idle", "waiting": "waiting", "active": "active", "login": "login"}[c.State]
		rows = append(rows, []string{"C", c.User, c.Database, state, host, port, "", "",
			c.ConnectTime.Format("2006-01-02 15:04:05 MST"), "", "0", "0", "0", itoa(int64(c.ID)), itoa(int64(c.ServerPID)), "0", "", c.ApplicationName})
	}
	return table(connCols, nil, rows, "SHOW")
}

func showServers(src Source) []byte {
	var rows [][]string
	for _, sv := range src.Servers() {
		host, port := splitAddr(sv.Addr)
		rows = append(rows, []string{"S", sv.User, sv.Database, sv.State, host, port, "", "",
			sv.ConnectTime.Format("2006-01-02 15:04:05 MST"), "", "0", "0", "0", "", "", itoa(int64(sv.PID)), "", ""})
	}
	return table(connCols, nil, rows, "SHOW")
}

func showDatabases(src Source) []byte {
	cols := []string{"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size", "reserve_pool",
		"pool_mode", "max_connections", "current_connections", "paused", "disabled"}
	paused := "0"
	if src.Paused() {
		paused = "1"
	}
	var rows [][]string
	for _, d := range src.Databases() {
		rows = append(rows, []string{d.Name, d.Host, itoa(d.Port), d.DBName, d.User, itoa(d.PoolSize), itoa(d.MinPoolSize), "0",
			d.PoolMode, "0", itoa(d.Current), paused, "0"})
	}
	return table(cols, nil, rows, "SHOW")
}
