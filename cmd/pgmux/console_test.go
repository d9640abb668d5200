package main

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/lib/pq" // pgbouncer_exporter's driver
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgmux/pgmux/internal/pgtest"
)

// consoleRows runs a console command through pgx and returns its rows as
// maps from column name to text (NULL as "NULL").
func consoleRows(t *testing.T, conn *pgx.Conn, cmd string) []map[string]string {
	t.Helper()
	rows, err := conn.Query(context.Background(), cmd, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	defer rows.Close()
	var out []map[string]string
	for rows.Next() {
		vals := rows.RawValues()
		m := map[string]string{}
		for i, fd := range rows.FieldDescriptions() {
			if vals[i] == nil {
				m[fd.Name] = "NULL"
			} else {
				m[fd.Name] = string(vals[i])
			}
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return out
}

// rowWhere returns the first row whose column k is v.
func rowWhere(t *testing.T, rows []map[string]string, k, v string) map[string]string {
	t.Helper()
	for _, r := range rows {
		if r[k] == v {
			return r
		}
	}
	t.Fatalf("no row with %s = %s in %v", k, v, rows)
	return nil
}

// TestConsoleValues: the console's SHOW commands report what clients are
// doing: one client in a transaction, one idle after eleven, the pools,
// clients, servers and their links, the counts and the lists.
func TestConsoleValues(t *testing.T) {
	if err := needPG(t).CreateDatabase("valdb"); err != nil {
		t.Fatal(err)
	}
	p := startPgmux(t, strings.Replace(opsConfig, "databases:", "peer_id: 1\npeers: {2: {host: 10.0.0.2, port: 6433}}\ndatabases:\n  valdb: {host: 127.0.0.1, port: PG_PORT, pool_size: 4}", 1))
	ctx := context.Background()
	cfg, _ := pgx.ParseConfig(p.dsn(cluster.SuperUserName(), "valdb") + " application_name=holder")
	holder, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	idle := connectTo(t, p, "valdb")
	defer idle.Close(ctx)
	for range 11 {
		if _, err := idle.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var pid uint32
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	con := connectTo(t, p, "pgbouncer")
	defer con.Close(ctx)

	pool := rowWhere(t, consoleRows(t, con, "SHOW POOLS"), "database", "valdb")
	if pool["cl_active"] != "2" || pool["cl_waiting"] != "0" || pool["sv_active"] != "1" || pool["pool_mode"] != "transaction" {
		t.Errorf("SHOW POOLS: %v", pool)
	}
	clients := consoleRows(t, con, "SHOW CLIENTS")
	h := rowWhere(t, clients, "application_name", "holder")
	if h["state"] != "active" || h["database"] != "valdb" || h["link"] == "" || h["type"] != "C" || h["port"] == "0" || h["local_port"] != strconv.Itoa(p.port) {
		t.Errorf("SHOW CLIENTS, the client in a transaction: %v", h)
	}
	server := rowWhere(t, consoleRows(t, con, "SHOW SERVERS"), "remote_pid", fmt.Sprint(pid))
	if server["state"] != "active" || server["link"] != h["ptr"] || server["application_name"] != "holder" || server["id"] != h["link"] {
		t.Errorf("SHOW SERVERS, the server of the transaction: %v; its client %v", server, h)
	}
	totals := rowWhere(t, consoleRows(t, con, "SHOW STATS_TOTALS"), "database", "valdb")
	if n, _ := strconv.Atoi(totals["xact_count"]); n < 11 {
		t.Errorf("SHOW STATS_TOTALS: %v, want at least 11 transactions", totals)
	}
	if n, _ := strconv.Atoi(totals["server_assignment_count"]); n < 12 {
		t.Errorf("SHOW STATS_TOTALS: %v, want at least 12 assignments", totals)
	}
	db := rowWhere(t, consoleRows(t, con, "SHOW DATABASES"), "name", "valdb")
	if db["current_client_connections"] != "2" || db["pool_size"] != "4" || db["paused"] != "0" || db["disabled"] != "0" || db["force_user"] != "NULL" {
		t.Errorf("SHOW DATABASES: %v", db)
	}
	lists := map[string]string{}
	for _, r := range consoleRows(t, con, "SHOW LISTS") {
		lists[r["list"]] = r["items"]
	}
	if n, _ := strconv.Atoi(lists["used_clients"]); n < 2 || lists["databases"] != "3" || lists["peers"] != "1" {
		t.Errorf("SHOW LISTS: %v", lists)
	}
	user := rowWhere(t, consoleRows(t, con, "SHOW USERS"), "name", cluster.SuperUserName())
	if n, _ := strconv.Atoi(user["current_client_connections"]); n < 2 {
		t.Errorf("SHOW USERS: %v", user)
	}
	state := map[string]string{}
	for _, r := range consoleRows(t, con, "SHOW STATE") {
		state[r["key"]] = r["value"]
	}
	if state["active"] != "yes" || state["paused"] != "no" {
		t.Errorf("SHOW STATE: %v", state)
	}
	fds := consoleRows(t, con, "SHOW FDS")
	if len(fds) < 3 {
		t.Errorf("SHOW FDS: %d rows, want the two clients and a server at least", len(fds))
	}
	if peers := consoleRows(t, con, "SHOW PEERS"); len(peers) != 1 || peers[0]["peer_id"] != "2" || peers[0]["host"] != "10.0.0.2" || peers[0]["port"] != "6433" {
		t.Errorf("SHOW PEERS: %v", peers)
	}
	for _, cmd := range []string{"SHOW STATS", "SHOW STATS_AVERAGES", "SHOW TOTALS", "SHOW SOCKETS", "SHOW ACTIVE_SOCKETS", "SHOW MEM",
		"SHOW PEER_POOLS", "SHOW DNS_HOSTS", "SHOW DNS_ZONES", "SHOW CONFIG", "SHOW VERSION"} {
		consoleRows(t, con, cmd)
	}
}

// startBusyPool starts pgmux with database db (pool size 4), in which one
// client is in a transaction and idle more are between transactions, until
// the test ends.
func startBusyPool(t *testing.T, db string, idle int) *pgmuxProc {
	t.Helper()
	if err := needPG(t).CreateDatabase(db); err != nil {
		t.Fatal(err)
	}
	p := startPgmux(t, strings.Replace(opsConfig, "databases:", "databases:\n  "+db+": {host: 127.0.0.1, port: PG_PORT, pool_size: 4}", 1))
	ctx := context.Background()
	busy := connectTo(t, p, db)
	t.Cleanup(func() { busy.Close(ctx) })
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	for range idle {
		c := connectTo(t, p, db)
		t.Cleanup(func() { c.Close(ctx) })
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// pgbouncerExporterVersion is the prometheus-community/pgbouncer_exporter
// that TestPgBouncerExporter runs.
const pgbouncerExporterVersion = "v0.12.1"

// TestPgBouncerExporter: pgbouncer_exporter, installed with go install,
// scrapes pgmux's console with no error and reports the pool, client and
// server counts /stats reports. Where the Go module proxy refuses the
// exporter, PGMUX_PGBOUNCER_EXPORTER names a binary built from its source.
func TestPgBouncerExporter(t *testing.T) {
	dir := filepath.Join(os.TempDir(), "pgmux-test-bin", "pgbouncer_exporter-"+pgbouncerExporterVersion)
	bin := filepath.Join(dir, "pgbouncer_exporter")
	if b := os.Getenv("PGMUX_PGBOUNCER_EXPORTER"); b != "" {
		bin = b
	}
	if _, err := os.Stat(bin); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		install := exec.CommandContext(ctx, "go", "install", "github.com/prometheus-community/pgbouncer_exporter@"+pgbouncerExporterVersion)
		install.Env = append(os.Environ(), "GOBIN="+dir)
		if out, err := install.CombinedOutput(); err != nil {
			if strings.Contains(string(out), "403 Forbidden") {
				// This machine's Go module proxy does not serve it;
				// TestConsoleThroughLibPQ makes its queries meanwhile.
				t.Skipf("the Go module proxy refuses pgbouncer_exporter (set PGMUX_PGBOUNCER_EXPORTER to a binary built from its source):\n%s", out)
			}
			t.Fatalf("go install pgbouncer_exporter: %v\n%s", err, out)
		}
	}
	p := startBusyPool(t, "expdb", 2)

	port, _ := pgtest.FreePort()
	var out syncBuffer
	exp := exec.Command(bin, fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port),
		fmt.Sprintf("--pgBouncer.connectionString=postgres://%s@127.0.0.1:%d/pgbouncer?sslmode=disable", cluster.SuperUserName(), p.port))
	exp.Stdout, exp.Stderr = &out, &out
	if err := exp.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { exp.Process.Kill(); exp.Wait() }()
	var families map[string]*dto.MetricFamily
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
		if err == nil {
			parser := expfmt.NewTextParser(model.UTF8Validation)
			families, err = parser.TextToMetricFamilies(resp.Body)
			resp.Body.Close()
			if err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics from pgbouncer_exporter: %v\n%s", err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if strings.Contains(out.String(), "error") || strings.Contains(out.String(), "level=WARN") {
		t.Errorf("pgbouncer_exporter logged an error:\n%s", out.String())
	}
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		f := families[name]
		if f == nil {
			t.Fatalf("no %s in the exporter's metrics:\n%s", name, out.String())
		}
	metrics:
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue metrics
				}
			}
			if m.Gauge != nil {
				return m.Gauge.GetValue()
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Untyped.GetValue()
		}
		t.Fatalf("no %s with %v", name, labels)
		return 0
	}
	if v := value("pgbouncer_up", nil); v != 1 {
		t.Fatalf("pgbouncer_up %v\n%s", v, out.String())
	}
	var st struct {
		Pools []struct {
			Database       string `json:"database"`
			User           string `json:"user"`
			ClientsActive  int    `json:"clients_active"`
			ClientsIdle    int    `json:"clients_idle"`
			ClientsWaiting int    `json:"clients_waiting"`
			ServersActive  int    `json:"servers_active"`
			ServersIdle    int    `json:"servers_idle"`
			PoolSize       int    `json:"pool_size"`
		} `json:"pools"`
	}
	p.adminJSON(t, "GET", "/stats", &st)
	checked := 0
	for _, pl := range st.Pools {
		if pl.Database != "expdb" {
			continue
		}
		l := map[string]string{"database": pl.Database, "user": pl.User}
		for name, want := range map[string]int{
			"pgbouncer_pools_client_active_connections":  pl.ClientsActive + pl.ClientsIdle, // PgBouncer's cl_active counts the idle too
			"pgbouncer_pools_client_waiting_connections": pl.ClientsWaiting,
			"pgbouncer_pools_server_active_connections":  pl.ServersActive,
			"pgbouncer_pools_server_idle_connections":    pl.ServersIdle,
		} {
			got := value(name, l)
			if got != float64(want) {
				t.Errorf("%s %v, /stats says %d", name, got, want)
			}
			t.Logf("%s %v, /stats %d", name, got, want)
		}
		if pl.ClientsActive != 1 || pl.ClientsIdle != 2 {
			t.Errorf("/stats: %d active and %d idle clients, want 1 and 2", pl.ClientsActive, pl.ClientsIdle)
		}
		if got := value("pgbouncer_databases_pool_size", map[string]string{"name": "expdb"}); got != float64(pl.PoolSize) {
			t.Errorf("pgbouncer_databases_pool_size %v, want %d", got, pl.PoolSize)
		}
		checked++
	}
	if checked != 1 {
		t.Fatalf("/stats has %d pools for expdb", checked)
	}
	if got := value("pgbouncer_client_connections", map[string]string{"database": "expdb", "state": "active"}); got != 1 {
		t.Errorf("pgbouncer_client_connections active %v, want 1", got)
	}
}

// TestConsoleThroughLibPQ makes the queries pgbouncer_exporter makes, through
// lib/pq and database/sql as it does, and checks that each value has a Go
// type its conversions take (labels: string, int64 or NULL; metrics: a
// number, or bytes that parse as one, or NULL), and that the pool counts
// are /stats's.
func TestConsoleThroughLibPQ(t *testing.T) {
	p := startBusyPool(t, "pqdb", 1)
	db, err := sql.Open("postgres", fmt.Sprintf("postgres://%s@127.0.0.1:%d/pgbouncer?sslmode=disable", cluster.SuperUserName(), p.port))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	query := func(q string) ([]string, [][]any) {
		t.Helper()
		rows, err := db.Query(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		var out [][]any
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			out = append(out, vals)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return cols, out
	}
	number := func(v any) (float64, bool) {
		switch v := v.(type) {
		case int64:
			return float64(v), true
		case float64:
			return v, true
		case []byte:
			f, err := strconv.ParseFloat(string(v), 64)
			return f, err == nil
		case string:
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		case nil:
			return 0, true
		}
		return 0, false
	}
	labels := map[string]bool{"database": true, "user": true, "name": true, "host": true, "port": true, "force_user": true,
		"pool_mode": true, "state": true, "application_name": true}
	for _, q := range []string{"SHOW STATS", "SHOW STATS_TOTALS", "SHOW POOLS", "SHOW DATABASES"} {
		cols, rows := query(q)
		for _, r := range rows {
			for i, v := range r {
				switch {
				case labels[cols[i]]:
					switch v.(type) {
					case string, int64, nil:
					default:
						t.Errorf("%s: label %s is a %T", q, cols[i], v)
					}
				case cols[i] == "load_balance_hosts":
				default:
					if _, ok := number(v); !ok {
						t.Errorf("%s: %s = %v (%T) is not a number", q, cols[i], v, v)
					}
				}
			}
		}
	}
	_, lists := query("SHOW LISTS")
	for _, r := range lists {
		if _, ok := r[0].(string); !ok {
			t.Errorf("SHOW LISTS: name %T", r[0])
		}
		if _, ok := number(r[1]); !ok {
			t.Errorf("SHOW LISTS %v: %T", r[0], r[1])
		}
	}
	if cols, _ := query("SHOW CONFIG"); len(cols) != 4 {
		t.Errorf("SHOW CONFIG: %d columns", len(cols))
	}
	_, config := query("SHOW CONFIG")
	for _, r := range config {
		if r[0] == "max_client_conn" {
			if _, ok := number(r[1]); !ok {
				t.Errorf("max_client_conn %v", r[1])
			}
		}
	}
	if cols, rows := query("SHOW VERSION"); len(cols) != 1 || cols[0] != "version" || len(rows) != 1 {
		t.Errorf("SHOW VERSION: %v %v", cols, rows)
	}
	cols, clients := query("SHOW CLIENTS")
	for _, want := range []string{"database", "user", "state", "application_name"} {
		if !slices.Contains(cols, want) {
			t.Errorf("SHOW CLIENTS has no %s", want)
		}
	}
	if len(clients) < 2 {
		t.Errorf("SHOW CLIENTS: %d rows", len(clients))
	}

	var st struct {
		Pools []struct {
			Database       string `json:"database"`
			ClientsActive  int    `json:"clients_active"`
			ClientsIdle    int    `json:"clients_idle"`
			ClientsWaiting int    `json:"clients_waiting"`
			ServersActive  int    `json:"servers_active"`
			ServersIdle    int    `json:"servers_idle"`
		} `json:"pools"`
	}
	p.adminJSON(t, "GET", "/stats", &st)
	cols, pools := query("SHOW POOLS")
	at := func(r []any, col string) float64 {
		f, _ := number(r[slices.Index(cols, col)])
		return f
	}
	for _, pl := range st.Pools {
		if pl.Database != "pqdb" {
			continue
		}
		if pl.ClientsActive != 1 || pl.ClientsIdle != 1 {
			t.Errorf("/stats: %d active and %d idle clients, want 1 and 1", pl.ClientsActive, pl.ClientsIdle)
		}
		for _, r := range pools {
			if r[0] != "pqdb" {
				continue
			}
			if at(r, "cl_active") != float64(pl.ClientsActive+pl.ClientsIdle) || at(r, "cl_waiting") != float64(pl.ClientsWaiting) ||
				at(r, "sv_active") != float64(pl.ServersActive) || at(r, "sv_idle") != float64(pl.ServersIdle) {
				t.Errorf("SHOW POOLS %v; /stats %+v", r, pl)
			}
		}
	}
}
