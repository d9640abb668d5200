package console

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/stats"
)

// The SHOW commands, with PgBouncer 1.25's columns: their names, and their
// types as PgBouncer declares them, one letter a column: s text, i int4,
// q int8, N numeric, T a time as text, b bytea.

// null stands for SQL NULL among a row's values.
const null = "\x00NULL"

// result encodes a result set whose columns are names, of the types spec
// gives.
func result(spec string, names []string, rows [][]string) []byte {
	if len(spec) != len(names) {
		panic(fmt.Sprintf("console: %d types for %d columns", len(spec), len(names)))
	}
	rd := pgproto3.RowDescription{}
	for i, n := range names {
		oid, size := uint32(25), int16(-1) // text
		switch spec[i] {
		case 'i':
			oid, size = 23, 4
		case 'q':
			oid, size = 20, 8
		case 'N':
			oid = 1700
		case 'b':
			oid = 17
		}
		rd.Fields = append(rd.Fields, pgproto3.FieldDescription{Name: []byte(n), DataTypeOID: oid, DataTypeSize: size, TypeModifier: -1})
	}
	out, _ := rd.Encode(nil)
	for _, r := range rows {
		dr := pgproto3.DataRow{}
		for _, v := range r {
			if v == null {
				dr.Values = append(dr.Values, nil)
			} else {
				dr.Values = append(dr.Values, []byte(v))
			}
		}
		out, _ = dr.Encode(out)
	}
	return append(out, protocol.CommandComplete("SHOW")...)
}

func itoa[T ~int | ~int32 | ~int64 | ~uint32 | ~uint64](v T) string {
	return strconv.FormatInt(int64(v), 10)
}

func bool01(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// usec is d in microseconds, as PgBouncer's times are.
func usec(d time.Duration) string { return itoa(int64(d / time.Microsecond)) }

// timeText is a time as PgBouncer writes one, or NULL for none.
func timeText(t time.Time) string {
	if t.IsZero() {
		return null
	}
	return t.Format("2006-01-02 15:04:05 MST")
}

func splitAddr(a string) (string, string) {
	h, p, err := net.SplitHostPort(a)
	if err != nil {
		return a, "0" // a Unix socket
	}
	return h, p
}

// byDatabase sums the pools of each database, in name order.
func byDatabase(pools []stats.Pool) []stats.Pool {
	sums := map[string]*stats.Pool{}
	var names []string
	for _, p := range pools {
		a := sums[p.Database]
		if a == nil {
			a = &stats.Pool{Database: p.Database}
			sums[p.Database] = a
			names = append(names, p.Database)
		}
		a.Add(p)
	}
	slices.Sort(names)
	out := make([]stats.Pool, 0, len(names))
	for _, n := range names {
		out = append(out, *sums[n])
	}
	return out
}

// totals are a pool's cumulative counts, in SHOW STATS_TOTALS's order.
func totals(p stats.Pool) []string {
	return []string{itoa(p.ServerAssignments), itoa(p.Transactions), itoa(p.Queries), itoa(p.BytesReceived), itoa(p.BytesSent),
		usec(p.TotalTransactionTime), usec(p.TotalQueryTime), usec(p.TotalWaitTime),
		itoa(p.ClientParses), itoa(p.ServerParses), itoa(p.Binds)}
}

// averages are its averages over the latest stats period, as PgBouncer
// computes them: counts a second, and times a transaction, a query and an
// assignment.
func averages(p stats.Pool) []string {
	per := p.Period
	rate := func(n int64) string {
		if per.Seconds <= 0 {
			return "0"
		}
		return itoa(int64(float64(n) / per.Seconds))
	}
	each := func(d time.Duration, n int64) string {
		if n <= 0 {
			return "0"
		}
		return usec(d / time.Duration(n))
	}
	return []string{rate(per.ServerAssignments), rate(per.Transactions), rate(per.Queries), rate(per.BytesReceived), rate(per.BytesSent),
		each(per.TransactionTime, per.Transactions), each(per.QueryTime, per.Queries), each(per.WaitTime, per.ServerAssignments),
		rate(per.ClientParses), rate(per.ServerParses), rate(per.Binds)}
}

var countNames = []string{"server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent",
	"xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count"}

func showStats(src Source) []byte {
	names := []string{"database",
		"total_server_assignment_count", "total_xact_count", "total_query_count", "total_received", "total_sent",
		"total_xact_time", "total_query_time", "total_wait_time", "total_client_parse_count", "total_server_parse_count", "total_bind_count",
		"avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent",
		"avg_xact_time", "avg_query_time", "avg_wait_time", "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"}
	var rows [][]string
	for _, p := range byDatabase(src.Pools()) {
		rows = append(rows, append(append([]string{p.Database}, totals(p)...), averages(p)...))
	}
	return result("sNNNNNNNNNNNNNNNNNNNNNN", names, rows)
}

func showStatsTotals(src Source) []byte {
	var rows [][]string
	for _, p := range byDatabase(src.Pools()) {
		rows = append(rows, append([]string{p.Database}, totals(p)...))
	}
	return result("sNNNNNNNNNNN", append([]string{"database"}, countNames...), rows)
}

func showStatsAverages(src Source) []byte {
	names := append([]string{"database"}, countNames[:8]...)
	names = append(names, "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count")
	var rows [][]string
	for _, p := range byDatabase(src.Pools()) {
		rows = append(rows, append([]string{p.Database}, averages(p)...))
	}
	return result("sNNNNNNNNNNN", names, rows)
}

func showTotals(src Source) []byte {
	var all stats.Pool
	for _, p := range src.Pools() {
		all.Add(p)
	}
	keys := []string{"server_assignment_count", "xact_count", "query_count", "client_bytes", "server_bytes",
		"xact_time", "query_time", "wait_time", "ps_client_parse_count", "ps_server_parse_count", "ps_bind_count"}
	var rows [][]string
	for i, v := range totals(all) {
		rows = append(rows, []string{"total_" + keys[i], v})
	}
	for i, v := range averages(all) {
		rows = append(rows, []string{"avg_" + keys[i], v})
	}
	return result("sN", []string{"name", "value"}, rows)
}

func showPools(src Source) []byte {
	names := []string{"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
		"sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
		"maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"}
	var rows [][]string
	for _, p := range src.Pools() {
		// cl_active counts clients linked to a server or idle, as
		// PgBouncer's does.
		rows = append(rows, []string{p.Database, p.User, itoa(p.ClientsActive + p.ClientsIdle), itoa(p.ClientsWaiting), "0", "0",
			itoa(p.ServersActive), "0", "0", itoa(p.ServersIdle), "0", "0", itoa(p.ServersConnecting),
			itoa(int64(p.MaxWait / time.Second)), itoa(int64(p.MaxWait%time.Second) / 1000), p.PoolMode, null})
	}
	return result("ssiiiiiiiiiiiiiss", names, rows)
}

func showPeerPools(Source) []byte {
	return result("iiiii", []string{"peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active_cancel", "sv_login"}, nil)
}

// showPeers: pool_size is 0, as pgmux opens a connection for each cancel it
// sends on rather than keeping a pool for them.
func showPeers(src Source) []byte {
	var rows [][]string
	for _, p := range src.Peers() {
		rows = append(rows, []string{itoa(p.ID), p.Host, itoa(p.Port), "0"})
	}
	return result("isii", []string{"peer_id", "host", "port", "pool_size"}, rows)
}

// socketNames are SHOW CLIENTS's and SHOW SERVERS's columns; SHOW SOCKETS
// adds debugNames.
var (
	socketNames = []string{"type", "user", "database", "replication", "state", "addr", "port", "local_addr", "local_port",
		"connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr", "link", "remote_pid", "tls",
		"application_name", "prepared_statements", "id"}
	debugNames = []string{"recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail", "send_avail"}
)

const (
	socketSpec = "ssssssisiTTiiississii"
	debugSpec  = "iiiiiii"
)

// clientRows are SHOW CLIENTS's rows; servers, by process ID, give each
// linked client its server's id.
func clientRows(src Source, servers map[uint32]stats.Server) [][]string {
	var rows [][]string
	now := time.Now()
	for _, c := range src.Clients() {
		if c.State == "login" || c.State == "closed" {
			continue
		}
		host, port := splitAddr(c.Addr)
		lhost, lport := splitAddr(c.LocalAddr)
		wait := time.Duration(0)
		if !c.WaitingSince.IsZero() {
			wait = now.Sub(c.WaitingSince)
		}
		link := ""
		if sv, ok := servers[c.ServerPID]; ok && c.ServerPID != 0 {
			link = itoa(sv.ID)
		}
		req := c.RequestTime
		if req.IsZero() {
			req = c.ConnectTime
		}
		rows = append(rows, []string{"C", c.User, c.Database, "none", c.State, host, port, lhost, lport,
			timeText(c.ConnectTime), timeText(req), itoa(int64(wait / time.Second)), itoa(int64(wait%time.Second) / 1000), "0",
			itoa(c.ID), link, "0", c.TLS, c.ApplicationName, itoa(c.Prepared), itoa(c.ID)})
	}
	return rows
}

// serverRows are SHOW SERVERS's rows; clients, by their server's process
// ID, give each linked server its client.
func serverRows(src Source, clients map[uint32]stats.Client) [][]string {
	var rows [][]string
	for _, sv := range src.Servers() {
		host, port := splitAddr(sv.Addr)
		lhost, lport := splitAddr(sv.LocalAddr)
		link, app := "", ""
		req := sv.ConnectTime
		if c, ok := clients[sv.PID]; ok {
			link, app = itoa(c.ID), c.ApplicationName
			if !c.RequestTime.IsZero() {
				req = c.RequestTime
			}
		}
		rows = append(rows, []string{"S", sv.User, sv.Database, "none", sv.State, host, port, lhost, lport,
			timeText(sv.ConnectTime), timeText(req), "0", "0", "0",
			itoa(sv.ID), link, itoa(sv.PID), sv.TLS, app, itoa(sv.Prepared), itoa(sv.ID)})
	}
	return rows
}

// links pairs clients and servers by the server's process ID.
func links(src Source) (map[uint32]stats.Server, map[uint32]stats.Client) {
	servers, clients := map[uint32]stats.Server{}, map[uint32]stats.Client{}
	for _, sv := range src.Servers() {
		servers[sv.PID] = sv
	}
	for _, c := range src.Clients() {
		if c.ServerPID != 0 {
			clients[c.ServerPID] = c
		}
	}
	return servers, clients
}

func showClients(src Source) []byte {
	servers, _ := links(src)
	return result(socketSpec, socketNames, clientRows(src, servers))
}

func showServers(src Source) []byte {
	_, clients := links(src)
	return result(socketSpec, socketNames, serverRows(src, clients))
}

// showSockets is SHOW SOCKETS (active: SHOW ACTIVE_SOCKETS, without the idle
// ones): clients and servers, with PgBouncer's buffer positions, which
// pgmux has not (0).
func showSockets(src Source, active bool) []byte {
	servers, clients := links(src)
	var rows [][]string
	for _, r := range append(clientRows(src, servers), serverRows(src, clients)...) {
		if active && r[4] == "idle" {
			continue
		}
		rows = append(rows, append(r, "0", "0", "0", "0", "0", "0", "0"))
	}
	return result(socketSpec+debugSpec, append(slices.Clone(socketNames), debugNames...), rows)
}

func showLists(src Source) []byte {
	pools := src.Pools()
	users := map[string]bool{}
	for _, u := range src.AuthUsers() {
		users[u] = true
	}
	for _, p := range pools {
		users[p.User] = true
	}
	used, login := 0, 0
	for _, c := range src.Clients() {
		switch c.State {
		case "login":
			login++
		case "closed":
		default:
			used++
		}
	}
	rows := [][]string{
		{"databases", itoa(len(src.Databases()))}, {"users", itoa(len(users))}, {"peers", itoa(len(src.Peers()))}, {"pools", itoa(len(pools))},
		{"peer_pools", "0"}, {"free_clients", "0"}, {"used_clients", itoa(used)}, {"login_clients", itoa(login)},
		{"free_servers", "0"}, {"used_servers", itoa(len(src.Servers()))},
		{"dns_names", "0"}, {"dns_zones", "0"}, {"dns_queries", "0"}, {"dns_pending", "0"},
	}
	return result("si", []string{"list", "items"}, rows)
}

func showUsers(src Source) []byte {
	servers, clients := map[string]int{}, map[string]int{}
	for _, sv := range src.Servers() {
		servers[sv.User]++
	}
	for _, c := range src.Clients() {
		if c.User != "" {
			clients[c.User]++
		}
	}
	names := slices.Clone(src.AuthUsers())
	own := src.PerUser()
	for u := range own {
		if !slices.Contains(names, u) {
			names = append(names, u)
		}
	}
	for _, m := range []map[string]int{servers, clients} {
		for u := range m {
			if !slices.Contains(names, u) {
				names = append(names, u)
			}
		}
	}
	slices.Sort(names)
	var rows [][]string
	for _, u := range names {
		set := func(n int) string {
			if n == 0 {
				return null
			}
			return itoa(n)
		}
		o := own[u]
		mode, maxConn := null, src.MaxUserConnections()
		if o.PoolMode != "" {
			mode = o.PoolMode
		}
		if o.MaxConnections != 0 {
			maxConn = o.MaxConnections
		}
		rows = append(rows, []string{u, set(o.PoolSize), set(o.ReservePoolSize), mode, itoa(maxConn), itoa(servers[u]), "0", itoa(clients[u])})
	}
	return result("ssssiiii", []string{"name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
		"current_connections", "max_user_client_connections", "current_client_connections"}, rows)
}

func showDatabases(src Source) []byte {
	names := []string{"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size", "reserve_pool_size",
		"server_lifetime", "pool_mode", "load_balance_hosts", "max_connections", "current_connections",
		"max_client_connections", "current_client_connections", "paused", "disabled"}
	clients := map[string]int{}
	for _, c := range src.Clients() {
		if c.Database != "" {
			clients[c.Database]++
		}
	}
	all := src.Paused()
	var rows [][]string
	for _, d := range src.Databases() {
		user, mode := d.User, d.PoolMode
		if user == "" {
			user = null
		}
		if mode == "" {
			mode = null
		}
		rows = append(rows, []string{d.Name, d.Host, itoa(d.Port), d.DBName, user, itoa(d.PoolSize), itoa(d.MinPoolSize), itoa(d.ReservePoolSize),
			itoa(int64(d.ServerLifetime / time.Second)), mode, null, itoa(d.MaxConnections), itoa(d.Current), "0", itoa(clients[d.Name]),
			bool01(all || d.Paused), bool01(d.Disabled)})
	}
	return result("ssissiiiissiiiiii", names, rows)
}

// showFDs is SHOW FDS: the descriptors of clients and servers, for a look;
// pgmux hands over by SO_REUSEPORT and a drain, not by passing them.
func showFDs(src Source) []byte {
	names := []string{"fd", "task", "user", "database", "addr", "port", "cancel", "link", "client_encoding", "std_strings",
		"datestyle", "timezone", "password", "scram_client_key", "scram_server_key"}
	var rows [][]string
	for _, c := range src.Clients() {
		if c.FD < 0 || c.State == "login" || c.State == "closed" {
			continue
		}
		host, port := splitAddr(c.Addr)
		rows = append(rows, []string{itoa(c.FD), "client", c.User, c.Database, host, port, "0", "0", null, null, null, null, null, null, null})
	}
	for _, sv := range src.Servers() {
		if sv.FD < 0 {
			continue
		}
		host, port := splitAddr(sv.Addr)
		rows = append(rows, []string{itoa(sv.FD), "server", sv.User, sv.Database, host, port, "0", "0", null, null, null, null, null, null, null})
	}
	return result("issssiqisssssbb", names, rows)
}

func showMem(src Source) []byte {
	var rows [][]string
	for _, m := range src.Mem() {
		rows = append(rows, []string{m.Name, itoa(m.Size), itoa(m.Used), itoa(m.Free), itoa(m.Size * (m.Used + m.Free))})
	}
	return result("siiii", []string{"name", "size", "used", "free", "memtotal"}, rows)
}

func showState(src Source) []byte {
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	suspended := src.Suspended()
	paused := src.Paused() && !suspended
	return result("ss", []string{"key", "value"}, [][]string{{"active", yes(!paused && !suspended)}, {"paused", yes(paused)},
		{"suspended", yes(suspended)}})
}
