package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/pgmux/pgmux/admin"
	"github.com/pgmux/pgmux/stats"
)

const opsConfig = `
listen: 127.0.0.1:LISTEN_PORT
admin_listen: 127.0.0.1:ADMIN_PORT
auth_type: trust
admin_users: [postgres]
stats_users: [watcher]
shutdown_timeout: 20s
databases:
  statsdb:  {host: 127.0.0.1, port: PG_PORT, pool_size: 10}
  smalldb:  {host: 127.0.0.1, port: PG_PORT, pool_size: 1}
`

func connectTo(t testing.TB, p *pgmuxProc, db string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(p.dsn(cluster.SuperUserName(), db))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// runTransactions runs clients × each transactions (BEGIN, a query, COMMIT)
// against db through p.
func runTransactions(t *testing.T, p *pgmuxProc, db string, clients, each int, query string) {
	t.Helper()
	var g errgroup.Group
	for range clients {
		g.Go(func() error {
			conn := connectTo(t, p, db)
			defer conn.Close(context.Background())
			for range each {
				if err := pgx.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
					_, err := tx.Exec(context.Background(), query)
					return err
				}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

func poolOf(t *testing.T, r admin.Report, db string) stats.Pool {
	t.Helper()
	for _, p := range r.Pools {
		if p.Database == db {
			return p
		}
	}
	t.Fatalf("no pool for %s in %+v", db, r.Pools)
	return stats.Pool{}
}

// metricValue reads one sample of a Prometheus text page.
func metricValue(t *testing.T, p *pgmuxProc, name, labels string) float64 {
	t.Helper()
	resp, err := p.admin("GET", "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name+"{"+labels+"}") + ` (\S+)$`)
	m := re.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s{%s} in /metrics", name, labels)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// TestStatsAndMetrics: transaction and query counts in /stats and /metrics
// match what the clients did, and the wait-time percentiles rise when the
// pool is too small for its clients.
func TestStatsAndMetrics(t *testing.T) {
	for _, db := range []string{"statsdb", "smalldb"} {
		if err := needPG(t).CreateDatabase(db); err != nil {
			t.Fatal(err)
		}
	}
	p := startPgmux(t, opsConfig)
	const clients, each = 20, 25
	runTransactions(t, p, "statsdb", clients, each, "SELECT 1")
	var r admin.Report
	if code := p.adminJSON(t, "GET", "/stats", &r); code != 200 {
		t.Fatalf("/stats: %d", code)
	}
	st := poolOf(t, r, "statsdb")
	if st.Transactions != clients*each {
		t.Fatalf("/stats counts %d transactions; the clients ran %d", st.Transactions, clients*each)
	}
	if st.Queries < 3*clients*each {
		t.Fatalf("/stats counts %d queries for %d transactions of 3 statements", st.Queries, clients*each)
	}
	labels := fmt.Sprintf(`database="statsdb",user="%s"`, cluster.SuperUserName())
	if v := metricValue(t, p, "pgmux_transactions_total", labels); v != clients*each {
		t.Fatalf("/metrics counts %g transactions; the clients ran %d", v, clients*each)
	}
	if v := metricValue(t, p, "pgmux_client_wait_seconds_count", labels); v < clients*each {
		t.Fatalf("/metrics has %g wait observations for %d transactions", v, clients*each)
	}
	roomy := st.WaitTime

	// The same load on a pool of one server, each transaction holding it a while.
	runTransactions(t, p, "smalldb", clients, 5, "SELECT pg_sleep(0.005)")
	p.adminJSON(t, "GET", "/stats", &r)
	tight := poolOf(t, r, "smalldb").WaitTime
	t.Logf("wait for a server, pool of 10: P50 %.2fms P99 %.2fms; pool of 1: P50 %.2fms P99 %.2fms",
		roomy.P50*1e3, roomy.P99*1e3, tight.P50*1e3, tight.P99*1e3)
	if tight.P99 <= roomy.P99 || tight.P99 < 0.02 {
		t.Fatalf("wait P99 did not rise with a pool too small: %.4fs vs %.4fs", tight.P99, roomy.P99)
	}
	if r.Totals.Transactions != clients*each+clients*5 {
		t.Fatalf("totals: %d transactions", r.Totals.Transactions)
	}
	// The other endpoints answer.
	var clientsList []stats.Client
	var servers []stats.Server
	if p.adminJSON(t, "GET", "/clients", &clientsList) != 200 || p.adminJSON(t, "GET", "/servers", &servers) != 200 || len(servers) == 0 {
		t.Fatalf("/clients, /servers: %d clients, %d servers", len(clientsList), len(servers))
	}
	var cfg map[string]any
	if p.adminJSON(t, "GET", "/config", &cfg) != 200 || cfg["listen"] == nil {
		t.Fatalf("/config: %v", cfg)
	}
	if p.adminJSON(t, "GET", "/readyz", nil) != 200 {
		t.Fatal("/readyz not ready")
	}
}

// TestConsole: psql on the virtual database pgmux gets PgBouncer's SHOW
// commands with PgBouncer's column names; a stats user cannot PAUSE.
func TestConsole(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql not installed")
	}
	if err := needPG(t).CreateDatabase("statsdb"); err != nil {
		t.Fatal(err)
	}
	p := startPgmux(t, opsConfig)
	conn := connectTo(t, p, "statsdb")
	conn.Exec(context.Background(), "SELECT 1")
	defer conn.Close(context.Background())
	show := func(user, db, cmd string) (string, error) {
		out, err := exec.Command(psql, fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s", p.port, user, db), "-AXc", cmd).CombinedOutput()
		return string(out), err
	}
	want := map[string]string{
		"SHOW POOLS": "database|user|cl_active|cl_waiting|cl_active_cancel_req|cl_waiting_cancel_req|sv_active|sv_active_cancel|sv_being_canceled|sv_idle|sv_used|sv_tested|sv_login|maxwait|maxwait_us|pool_mode|load_balance_hosts",
		"SHOW STATS": "database|total_server_assignment_count|total_xact_count|total_query_count|total_received|total_sent|total_xact_time|total_query_time|total_wait_time|total_client_parse_count|total_server_parse_count|total_bind_count|avg_server_assignment_count|avg_xact_count|avg_query_count|avg_recv|avg_sent|avg_xact_time|avg_query_time|avg_wait_time|avg_client_parse_count|avg_server_parse_count|avg_bind_count",
	}
	for cmd, header := range want {
		for _, db := range []string{"pgmux", "pgbouncer"} {
			out, err := show(cluster.SuperUserName(), db, cmd)
			if err != nil {
				t.Fatalf("psql -d %s -c %q: %v\n%s", db, cmd, err, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if lines[0] != header {
				t.Fatalf("%s header:\n got %s\nwant %s", cmd, lines[0], header)
			}
			if !strings.Contains(out, "\nstatsdb|") {
				t.Fatalf("%s has no row for statsdb:\n%s", cmd, out)
			}
		}
	}
	for _, cmd := range []string{"SHOW CLIENTS", "SHOW SERVERS", "SHOW DATABASES", "SHOW CONFIG", "SHOW VERSION"} {
		if out, err := show("watcher", "pgmux", cmd); err != nil {
			t.Fatalf("%s as a stats user: %v\n%s", cmd, err, out)
		}
	}
	if out, err := show("watcher", "pgmux", "PAUSE"); err == nil || !strings.Contains(out, "admin_users") {
		t.Fatalf("PAUSE by a stats user: %v\n%s", err, out)
	}
	if out, err := show("stranger", "pgmux", "SHOW POOLS"); err == nil {
		t.Fatalf("a user in neither list got in:\n%s", out)
	}
	if out, err := show(cluster.SuperUserName(), "pgmux", "PAUSE; RESUME"); err != nil {
		t.Fatalf("PAUSE; RESUME: %v\n%s", err, out)
	}
}

// loopClients runs n clients doing transactions until stop is closed, each
// on its own connection, and returns how many transactions they finished and
// the first error.
func loopClients(t *testing.T, p *pgmuxProc, db string, n int, stop chan struct{}) func() (int64, error) {
	var done atomic.Int64
	var g errgroup.Group
	for range n {
		g.Go(func() error {
			conn := connectTo(t, p, db)
			defer conn.Close(context.Background())
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				if err := pgx.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
					_, err := tx.Exec(context.Background(), "SELECT pg_sleep(0.001)")
					return err
				}); err != nil {
					return err
				}
				done.Add(1)
			}
		})
	}
	return func() (int64, error) { err := g.Wait(); return done.Load(), err }
}

// TestReload: under load, a reload changes a pool's size with no client
// error; a broken file is refused and the old configuration keeps serving.
func TestReload(t *testing.T) {
	if err := needPG(t).CreateDatabase("reloaddb"); err != nil {
		t.Fatal(err)
	}
	cfg := func(size string) string {
		return strings.Replace(opsConfig, "  smalldb:", "  reloaddb: {host: 127.0.0.1, port: PG_PORT, pool_size: "+size+"}\n  smalldb:", 1)
	}
	p := startPgmux(t, cfg("2"))
	stop := make(chan struct{})
	wait := loopClients(t, p, "reloaddb", 20, stop)
	time.Sleep(500 * time.Millisecond)
	p.writeConfig(t, cfg("6"))
	if code := p.adminJSON(t, "POST", "/reload", nil); code != 200 {
		t.Fatalf("reload: %d", code)
	}
	time.Sleep(500 * time.Millisecond)
	var r admin.Report
	p.adminJSON(t, "GET", "/stats", &r)
	if size := poolOf(t, r, "reloaddb").PoolSize; size != 6 {
		t.Fatalf("pool size after reload: %d", size)
	}
	// SIGHUP with a broken file: refused, the old configuration stays.
	p.writeConfig(t, cfg("6")+"pool_mode: sometimes\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	if code := p.adminJSON(t, "POST", "/reload", nil); code != 422 {
		t.Fatalf("reload of a broken file answered %d", code)
	}
	time.Sleep(300 * time.Millisecond)
	var c map[string]any
	p.adminJSON(t, "GET", "/config", &c)
	if c["pool_mode"] != "transaction" {
		t.Fatalf("configuration in force after a refused reload: pool_mode %v", c["pool_mode"])
	}
	if !strings.Contains(p.out.String(), "configuration refused") {
		t.Fatalf("no log line for the refused file:\n%s", p.out.String())
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	n, err := wait()
	if err != nil {
		t.Fatalf("a client failed across the reloads: %v", err)
	}
	t.Logf("%d transactions across two reloads, no error", n)
}

// TestDrainLosesNothing: SIGTERM while 100 clients run transactions in a
// loop. Every COMMIT acknowledged is in the database, none is missing, and
// no client sees an error inside a transaction: they are closed between
// transactions.
func TestDrainLosesNothing(t *testing.T) {
	const db = "draindb"
	if err := needPG(t).CreateDatabase(db); err != nil {
		t.Fatal(err)
	}
	if err := needPG(t).Exec(db, "CREATE TABLE ledger (client int, seq int, PRIMARY KEY (client, seq))"); err != nil {
		t.Fatal(err)
	}
	p := startPgmux(t, strings.Replace(opsConfig, "  smalldb:", "  draindb: {host: 127.0.0.1, port: PG_PORT, pool_size: 10}\n  smalldb:", 1))
	acked := make([][]int, 100)
	var midTx atomic.Int64
	var g errgroup.Group
	var started sync.WaitGroup
	for c := range 100 {
		started.Add(1)
		g.Go(func() error {
			conn := connectTo(t, p, db)
			defer conn.Close(context.Background())
			started.Done()
			ctx := context.Background()
			for seq := 0; ; seq++ {
				tx, err := conn.Begin(ctx)
				if err != nil {
					return nil // closed between transactions: expected
				}
				if _, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1, $2)", c, seq); err != nil {
					midTx.Add(1)
					return fmt.Errorf("client %d: error inside a transaction: %w", c, err)
				}
				if err := tx.Commit(ctx); err != nil {
					midTx.Add(1)
					return fmt.Errorf("client %d: commit failed: %w", c, err)
				}
				acked[c] = append(acked[c], seq)
			}
		})
	}
	started.Wait()
	time.Sleep(time.Second)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("pgmux exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("pgmux did not exit")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, cluster.SuperDSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, "SELECT client, seq FROM ledger")
	inDB := map[[2]int]bool{}
	var cl, sq int
	pgx.ForEachRow(rows, []any{&cl, &sq}, func() error { inDB[[2]int{cl, sq}] = true; return nil })
	total := 0
	for c, seqs := range acked {
		for _, s := range seqs {
			total++
			if !inDB[[2]int{c, s}] {
				t.Errorf("client %d seq %d acknowledged but missing", c, s)
			}
		}
	}
	if len(inDB) != total {
		t.Errorf("%d rows in the database, %d acknowledged", len(inDB), total)
	}
	t.Logf("%d transactions acknowledged before the drain, all in the database", total)
}

// TestRollingRestart: a second pgmux takes the port over (SO_REUSEPORT)
// while the first drains; pgbench -C across the switch and a pool of pgx
// clients that reconnect when closed between transactions see no failure.
func TestRollingRestart(t *testing.T) {
	// With net.ipv4.tcp_migrate_req (Linux 5.14+), connections queued on the
	// listener that closes move to the one that stays instead of being reset.
	const migrate = "/proc/sys/net/ipv4/tcp_migrate_req"
	old, err := os.ReadFile(migrate)
	if err == nil {
		err = os.WriteFile(migrate, []byte("1"), 0)
	}
	if err != nil {
		t.Skipf("a lossless handover needs net.ipv4.tcp_migrate_req=1 (Linux 5.14+), which cannot be set here: %v", err)
	}
	t.Cleanup(func() { os.WriteFile(migrate, old, 0) })
	const db = "rollingdb"
	if err := needPG(t).CreateDatabase(db); err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(opsConfig, "  smalldb:", "  rollingdb: {host: 127.0.0.1, port: PG_PORT, pool_size: 10}\n  smalldb:", 1)
	first := startPgmux(t, cfg)

	pgbench := "pgbench"
	if _, err := exec.LookPath(pgbench); err != nil {
		t.Fatal("pgbench not installed")
	}
	script := t.TempDir() + "/select.sql"
	os.WriteFile(script, []byte("SELECT 1;\n"), 0o644)
	bench := exec.Command(pgbench, "-h", "127.0.0.1", "-p", strconv.Itoa(first.port), "-U", cluster.SuperUserName(),
		"-C", "-c", "8", "-j", "2", "-T", "5", "-n", "-f", script, db)
	bench.Env = append(os.Environ(), "PGSSLMODE=disable")
	var benchOut syncBuffer
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}

	// pgx clients that reconnect when closed between transactions.
	var reconnects, txs atomic.Int64
	stop := make(chan struct{})
	var g errgroup.Group
	for range 10 {
		g.Go(func() error {
			ctx := context.Background()
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(ctx)
				}
			}()
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				if conn == nil || conn.IsClosed() {
					c, err := pgx.Connect(ctx, first.dsn(cluster.SuperUserName(), db))
					if err != nil {
						return fmt.Errorf("reconnect: %w", err)
					}
					conn = c
				}
				tx, err := conn.Begin(ctx)
				if err != nil {
					if closedBetweenTransactions(err) {
						conn.Close(ctx)
						conn = nil
						reconnects.Add(1)
						continue
					}
					return fmt.Errorf("begin: %w", err)
				}
				if _, err := tx.Exec(ctx, "SELECT pg_sleep(0.002)"); err != nil {
					return fmt.Errorf("inside a transaction: %w", err)
				}
				if err := tx.Commit(ctx); err != nil {
					return fmt.Errorf("commit: %w", err)
				}
				txs.Add(1)
			}
		})
	}

	time.Sleep(1500 * time.Millisecond)
	second := startPgmuxOn(t, cfg, first.port) // same client port
	first.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-first.exited:
		first.exited <- nil
	case <-time.After(25 * time.Second):
		t.Fatal("the first pgmux did not finish draining")
	}
	time.Sleep(time.Second)
	close(stop)
	if err := g.Wait(); err != nil {
		t.Fatalf("pgx clients: %v", err)
	}
	if err := bench.Wait(); err != nil {
		t.Fatalf("pgbench -C: %v\n%s", err, benchOut.String())
	}
	out := benchOut.String()
	failed := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(out)
	processed := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out)
	if failed == nil || failed[1] != "0" || processed == nil || processed[1] == "0" {
		t.Fatalf("pgbench -C across the restart:\n%s", out)
	}
	var r admin.Report
	second.adminJSON(t, "GET", "/stats", &r)
	t.Logf("pgbench -C: %s transactions, none failed; pgx clients: %d transactions, %d reconnects; the new pgmux served %d transactions",
		processed[1], txs.Load(), reconnects.Load(), r.Totals.Transactions)
	if r.Totals.Transactions == 0 {
		t.Fatal("the second pgmux served nothing")
	}
}

// closedBetweenTransactions reports an error that means the server side
// closed the connection before the transaction began: 57P01, or a closed
// connection.
func closedBetweenTransactions(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "57P01"
	}
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || strings.Contains(err.Error(), "closed")
}

// TestAdminToken: with admin_token set, every endpoint answers 401 without
// it; /config never shows a password.
func TestAdminToken(t *testing.T) {
	p := startPgmux(t, opsConfig+"admin_token: s3cret-token\n")
	p.writeConfig(t, strings.Replace(opsConfig, "statsdb:  {host: 127.0.0.1, port: PG_PORT, pool_size: 10}",
		"statsdb:  {host: 127.0.0.1, port: PG_PORT, pool_size: 10, password: topsecret-pw}", 1)+"admin_token: s3cret-token\n")
	if code := p.adminJSON(t, "POST", "/reload", nil); code != 200 {
		t.Fatalf("reload with the token: %d", code)
	}
	token := p.token
	p.token = ""
	for _, ep := range []string{"GET /healthz", "GET /readyz", "GET /stats", "GET /pools", "GET /clients", "GET /servers",
		"GET /config", "GET /metrics", "POST /pause", "POST /resume", "POST /reload", "POST /drain"} {
		method, path, _ := strings.Cut(ep, " ")
		resp, err := p.admin(method, path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("%s without the token: %d", ep, resp.StatusCode)
		}
	}
	p.token = token
	resp, err := p.admin("GET", "/config")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Contains(string(b), "topsecret-pw") || strings.Contains(string(b), "s3cret-token") {
		t.Fatalf("/config (%d) shows a secret:\n%s", resp.StatusCode, b)
	}
	if !strings.Contains(string(b), "(redacted)") {
		t.Fatalf("/config does not show the password as redacted:\n%s", b)
	}
}

// TestProbe: `pgmux probe` succeeds on a 2xx answer and fails otherwise; it
// sends PGMUX_ADMIN_TOKEN; --post drains.
func TestProbe(t *testing.T) {
	p := startPgmux(t, opsConfig+"admin_token: probe-token\n")
	url := fmt.Sprintf("http://127.0.0.1:%d", p.adminPort)
	probe := func(token string, args ...string) error {
		cmd := exec.Command(binPath, append([]string{"probe"}, args...)...)
		cmd.Env = append(os.Environ(), "PGMUX_ADMIN_TOKEN="+token)
		return cmd.Run()
	}
	if err := probe("probe-token", url+"/healthz"); err != nil {
		t.Fatalf("healthz: %v", err)
	}
	if err := probe("wrong", url+"/healthz"); err == nil {
		t.Fatal("probe with a wrong token succeeded")
	}
	if err := probe("probe-token", url+"/readyz"); err != nil {
		t.Fatalf("readyz: %v", err)
	}
	if err := probe("probe-token", "--post", url+"/drain"); err != nil {
		t.Fatalf("drain: %v", err)
	}
	select {
	case <-p.exited:
		p.exited <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("pgmux did not stop after /drain")
	}
}
