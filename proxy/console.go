package proxy

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/stats"
)

// The admin console: a client that logs in to the virtual database "pgmux"
// (or "pgbouncer") as one of admin_users or stats_users gets PgBouncer's
// SHOW commands, with PgBouncer's column names where the concept matches, so
// that tools written for PgBouncer read it. Admin users can also PAUSE,
// RESUME, RELOAD and SHUTDOWN.

// Version is pgmux's version, as SHOW VERSION and server_version report it.
const Version = "pgmux 0.1.0"

// consoleDatabase reports whether name is the admin console.
func consoleDatabase(name string) bool { return name == "pgmux" || name == "pgbouncer" }

// console runs a console session after the startup packet.
func (ss *session) console(user string) error {
	o := ss.srv.options()
	admin := slices.Contains(o.AdminUsers, user)
	if !admin && !slices.Contains(o.StatsUsers, user) {
		return protocol.Fatal(protocol.CodeInvalidAuthorization, fmt.Sprintf("user %q may not use the admin console (admin_users, stats_users)", user))
	}
	if err := ss.authenticate(user); err != nil {
		return err
	}
	buf := make([]byte, 0, 256)
	for _, p := range [][2]string{{"client_encoding", "UTF8"}, {"server_encoding", "UTF8"}, {"server_version", Version},
		{"standard_conforming_strings", "on"}, {"DateStyle", "ISO"}, {"integer_datetimes", "on"}} {
		buf, _ = (&pgproto3.ParameterStatus{Name: p[0], Value: p[1]}).Encode(buf)
	}
	buf = append(buf, 'Z', 0, 0, 0, 5, 'I')
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
		var out []byte
		switch typ {
		case 'X':
			return errQuiet
		case 'Q':
			out = ss.consoleQuery(strings.TrimRight(string(body), "\x00"), admin)
			out = append(out, 'Z', 0, 0, 0, 5, 'I')
		case 'S':
			out = append(out, 'Z', 0, 0, 0, 5, 'I')
		case 'H':
		default:
			out = protocol.Error(protocol.CodeFeatureNotSupported, "the admin console takes simple queries only").AppendTo(nil)
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

// consoleQuery answers one console command (several, separated by ';').
func (ss *session) consoleQuery(q string, admin bool) []byte {
	var out []byte
	any := false
	for _, cmd := range strings.Split(q, ";") {
		words := strings.Fields(strings.ToUpper(cmd))
		if len(words) == 0 {
			continue
		}
		any = true
		res, err := ss.consoleCommand(words, admin)
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

func (ss *session) consoleCommand(words []string, admin bool) ([]byte, *protocol.PgError) {
	s := ss.srv
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
			return ss.srv.showPools(), nil
		case "STATS":
			return ss.srv.showStats(), nil
		case "CLIENTS":
			return ss.srv.showClients(), nil
		case "SERVERS":
			return ss.srv.showServers(), nil
		case "DATABASES":
			return ss.srv.showDatabases(), nil
		case "CONFIG":
			rows := [][]string{}
			if f := s.options().ConfigRows; f != nil {
				rows = f()
			}
			return table([]string{"key", "value", "default", "changeable"}, nil, rows, "SHOW"), nil
		case "VERSION":
			return table([]string{"version"}, nil, [][]string{{Version}}, "SHOW"), nil
		}
	case "PAUSE":
		if err := needAdmin(); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.Pause(ctx); err != nil {
			return nil, protocol.Error(protocol.CodeQueryCanceled, err.Error())
		}
		return protocol.CommandComplete("PAUSE"), nil
	case "RESUME":
		if err := needAdmin(); err != nil {
			return nil, err
		}
		s.Resume()
		return protocol.CommandComplete("RESUME"), nil
	case "RELOAD":
		if err := needAdmin(); err != nil {
			return nil, err
		}
		if f := s.options().OnReload; f != nil {
			if err := f(); err != nil {
				return nil, protocol.Error("F0000", "reload refused: "+err.Error())
			}
		}
		return protocol.CommandComplete("RELOAD"), nil
	case "SHUTDOWN":
		if err := needAdmin(); err != nil {
			return nil, err
		}
		if f := s.options().OnShutdown; f != nil {
			f()
		}
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

func (s *Server) showPools() []byte {
	cols := []string{"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
		"sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
		"maxwait", "maxwait_us", "pool_mode"}
	num := []bool{false, false, true, true, true, true, true, true, true, true, true, true, true, true, true, false}
	var rows [][]string
	for _, p := range s.Pools() {
		rows = append(rows, []string{p.Database, p.User, itoa(p.ClientsActive), itoa(p.ClientsWaiting), "0", "0",
			itoa(p.ServersActive), "0", "0", itoa(p.ServersIdle), "0", "0", itoa(p.ServersConnecting),
			itoa(int64(p.MaxWait / time.Second)), itoa(int64(p.MaxWait%time.Second) / 1000), p.PoolMode})
	}
	return table(cols, num, rows, "SHOW")
}

func (s *Server) showStats() []byte {
	cols := []string{"database", "total_server_assignment_count", "total_xact_count", "total_query_count",
		"total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
		"avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time"}
	num := make([]bool, len(cols))
	for i := 1; i < len(num); i++ {
		num[i] = true
	}
	byDB := map[string]*stats.Pool{}
	var names []string
	for _, p := range s.Pools() {
		a := byDB[p.Database]
		if a == nil {
			a = &stats.Pool{Database: p.Database}
			byDB[p.Database] = a
			names = append(names, p.Database)
		}
		a.Add(p)
	}
	slices.Sort(names)
	up := max(time.Since(s.started).Seconds(), 1)
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

func (s *Server) showClients() []byte {
	var rows [][]string
	for _, c := range s.Clients() {
		host, port := splitAddr(c.Addr)
		state := map[string]string{"idle": "idle", "waiting": "waiting", "active": "active", "login": "login"}[c.State]
		rows = append(rows, []string{"C", c.User, c.Database, state, host, port, "", "",
			c.ConnectTime.Format("2006-01-02 15:04:05 MST"), "", "0", "0", "0", itoa(int64(c.ID)), itoa(int64(c.ServerPID)), "0", "", c.ApplicationName})
	}
	return table(connCols, nil, rows, "SHOW")
}

func (s *Server) showServers() []byte {
	var rows [][]string
	for _, sv := range s.Servers() {
		host, port := splitAddr(sv.Addr)
		rows = append(rows, []string{"S", sv.User, sv.Database, sv.State, host, port, "", "",
			sv.ConnectTime.Format("2006-01-02 15:04:05 MST"), "", "0", "0", "0", "", "", itoa(int64(sv.PID)), "", ""})
	}
	return table(connCols, nil, rows, "SHOW")
}

func (s *Server) showDatabases() []byte {
	cols := []string{"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size", "reserve_pool",
		"pool_mode", "max_connections", "current_connections", "paused", "disabled"}
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
	paused := "0"
	if s.Paused() {
		paused = "1"
	}
	var rows [][]string
	for _, name := range names {
		d, ok := o.Databases(name)
		if !ok {
			continue
		}
		rows = append(rows, []string{name, d.Host, itoa(d.Port), d.DBName, d.User, itoa(d.PoolSize), itoa(o.MinPoolSize), "0",
			d.PoolMode, "0", itoa(current[name]), paused, "0"})
	}
	return table(cols, nil, rows, "SHOW")
}
