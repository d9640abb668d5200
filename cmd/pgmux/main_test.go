package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/internal/pgtest"
)

var (
	cluster *pgtest.Cluster
	binPath string // pgmux built from this package
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if testing.Short() {
			return m.Run()
		}
		var err error
		cluster, err = pgtest.Start()
		if err != nil {
			fmt.Fprintln(os.Stderr, "start PostgreSQL:", err)
			return 1
		}
		defer cluster.Close()
		dir, err := os.MkdirTemp("", "pgmux-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binPath = filepath.Join(dir, "pgmux")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// pgmuxProc is a pgmux process started by a test.
type pgmuxProc struct {
	cmd       *exec.Cmd
	path      string
	port      int
	adminPort int
	token     string
	ssl       string // the clients' sslmode and its companions; disable if empty
	out       *syncBuffer
	exited    chan error
}

// syncBuffer is a bytes.Buffer safe for the process's output copier and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// writeConfig (re)writes the process's configuration file.
func (p *pgmuxProc) writeConfig(t *testing.T, config string) {
	t.Helper()
	config = strings.NewReplacer("LISTEN_PORT", fmt.Sprint(p.port), "ADMIN_PORT", fmt.Sprint(p.adminPort),
		"PG_PORT", fmt.Sprint(cluster.Port)).Replace(config)
	if i := strings.Index(config, "admin_token: "); i >= 0 {
		p.token = strings.TrimSpace(strings.SplitN(config[i+len("admin_token: "):], "\n", 2)[0])
	}
	if err := os.WriteFile(p.path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
}

// admin calls the admin API with the process's token.
func (p *pgmuxProc) admin(method, path string) (*http.Response, error) {
	req, _ := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", p.adminPort, path), nil)
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	return http.DefaultClient.Do(req)
}

// adminJSON calls the admin API and decodes its answer into v.
func (p *pgmuxProc) adminJSON(t *testing.T, method, path string, v any) int {
	t.Helper()
	resp, err := p.admin(method, path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

// startPgmux writes config (with LISTEN_PORT, ADMIN_PORT and PG_PORT filled
// in) and runs pgmux with it until it listens.
func startPgmux(t *testing.T, config string) *pgmuxProc {
	t.Helper()
	port, _ := pgtest.FreePort()
	return startPgmuxOn(t, config, port)
}

// startPgmuxOn is startPgmux on a given client port.
func startPgmuxOn(t *testing.T, config string, port int) *pgmuxProc {
	t.Helper()
	return startPgmuxFile(t, config, port, "pgmux.yaml")
}

// startPgmuxFile is startPgmuxOn with the configuration in a file of that
// name (a .ini is PgBouncer's format), and the admin port given by flag.
func startPgmuxFile(t *testing.T, config string, port int, name string) *pgmuxProc {
	t.Helper()
	if cluster == nil {
		t.Skip("needs PostgreSQL (not started under -short)")
	}
	adminPort, _ := pgtest.FreePort()
	p := &pgmuxProc{port: port, adminPort: adminPort, out: &syncBuffer{}, exited: make(chan error, 1)}
	p.path = filepath.Join(t.TempDir(), name)
	p.writeConfig(t, config)
	p.cmd = exec.Command(binPath, "--config", p.path, "--log-level", "warn", "--admin-listen", fmt.Sprintf("127.0.0.1:%d", adminPort))
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("pgmux output:\n%s", p.out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := p.admin("GET", "/healthz")
		if err == nil {
			resp.Body.Close()
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
				c.Close()
				return p
			}
		}
		select {
		case err := <-p.exited:
			t.Fatalf("pgmux exited: %v\n%s", err, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgmux did not start listening\n%s", p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// needPG skips a test under -short, where no server is started.
func needPG(t testing.TB) *pgtest.Cluster {
	t.Helper()
	if cluster == nil {
		t.Skip("needs PostgreSQL (not started under -short)")
	}
	return cluster
}

func (p *pgmuxProc) dsn(user, database string) string {
	ssl := p.ssl
	if ssl == "" {
		ssl = "disable"
	}
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=%s", p.port, user, database, ssl)
}

const baseConfig = `
listen: 127.0.0.1:LISTEN_PORT
admin_listen: 127.0.0.1:ADMIN_PORT
auth_type: trust
default_pool_size: 5
shutdown_timeout: 10s
databases:
  "*":
    host: 127.0.0.1
    port: PG_PORT
`

// TestRunConfigServesPsql starts pgmux with the configuration `make run`
// uses (pointed at the test's server) and runs psql through it.
func TestRunConfigServesPsql(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql not installed (apt-get install -y postgresql-client)")
	}
	cfg, err := os.ReadFile("../../testdata/pgmux.yaml")
	if err != nil {
		t.Fatal(err)
	}
	config := strings.NewReplacer("6432", "LISTEN_PORT", "9127", "ADMIN_PORT", "5432", "PG_PORT").Replace(string(cfg))
	p := startPgmux(t, config)
	out, err := exec.Command(psql, p.dsn(cluster.SuperUserName(), "postgres"), "-AtXc", "SELECT 'through ' || 'pgmux', current_setting('application_name')").CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "through pgmux|psql" {
		t.Fatalf("psql printed %q", got)
	}
}

// TestMaxClientConn holds max_client_conn (10,000) clients open and checks
// that the next one is refused with 53300, then that a freed slot is taken.
func TestMaxClientConn(t *testing.T) {
	const limit = 10000
	p := startPgmux(t, baseConfig+"max_client_conn: 10000\n")
	addr := fmt.Sprintf("127.0.0.1:%d", p.port)
	user := cluster.SuperUserName()

	conns := make([]net.Conn, limit)
	var wg sync.WaitGroup
	errs := make(chan error, limit)
	next := make(chan int)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := login(addr, user)
				if err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					continue
				}
				conns[i] = c
			}
		}()
	}
	for i := range limit {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for err := range errs {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, p.dsn(user, "postgres"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
		t.Fatalf("client %d: want 53300, got %v", limit+1, err)
	}
	t.Logf("client %d refused: %s", limit+1, pgErr.Message)
	// One leaves; a new one gets in.
	conns[0].Close()
	conns[0] = nil
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, p.dsn(user, "postgres"))
		if err == nil {
			conn.Close(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after one client left: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// login opens a client connection and reads up to ReadyForQuery.
func login(addr, user string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": user, "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		c.Close()
		return nil, err
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			c.Close()
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			c.Close()
			return nil, fmt.Errorf("%s: %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			c.SetDeadline(time.Time{})
			return c, nil
		}
	}
}

// TestSIGTERM: on SIGTERM pgmux stops accepting, closes an idle client at
// once with 57P01, lets a client inside a transaction commit, then closes it
// too, and exits 0.
func TestSIGTERM(t *testing.T) {
	if err := needPG(t).CreateDatabase("sigterm"); err != nil {
		t.Fatal(err)
	}
	if err := needPG(t).Exec("sigterm", "CREATE TABLE t (v int)"); err != nil {
		t.Fatal(err)
	}
	p := startPgmux(t, baseConfig)
	ctx := context.Background()
	connect := func() *pgx.Conn {
		cfg, _ := pgx.ParseConfig(p.dsn(cluster.SuperUserName(), "sigterm"))
		cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	idle, busy := connect(), connect()
	defer idle.Close(ctx)
	defer busy.Close(ctx)
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	// The idle client is closed with 57P01.
	deadline := time.Now().Add(5 * time.Second)
	for !idle.IsClosed() {
		_, err := idle.Exec(ctx, "SELECT 1")
		if err != nil {
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
				t.Fatalf("idle client: want 57P01, got %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("idle client still served after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// New clients are refused.
	time.Sleep(100 * time.Millisecond)
	if c, err := pgx.Connect(ctx, p.dsn(cluster.SuperUserName(), "sigterm")); err == nil {
		c.Close(ctx)
		t.Fatal("a new client was accepted after SIGTERM")
	}
	// The transaction goes on and commits.
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatalf("open transaction after SIGTERM: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit after SIGTERM: %v", err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("pgmux exit: %v\n%s", err, p.out.String())
		}
		p.exited <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("pgmux did not exit after its last transaction")
	}
	var n int
	conn, err := pgx.Connect(ctx, cluster.SuperDSN("sigterm"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 2 {
		t.Fatalf("want the 2 committed rows, got %d, %v", n, err)
	}
}

// TestAdminPortBusy: with admin_listen taken, pgmux exits non-zero without
// having said it listens, and its client port never takes a connection.
func TestAdminPortBusy(t *testing.T) {
	needPG(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port, _ := pgtest.FreePort()
	p := &pgmuxProc{port: port, adminPort: busy.Addr().(*net.TCPAddr).Port}
	p.path = filepath.Join(t.TempDir(), "pgmux.yaml")
	p.writeConfig(t, baseConfig)
	cmd := exec.Command(binPath, "--config", p.path)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		select {
		case err := <-exited:
			if err == nil {
				t.Fatalf("pgmux exited 0 with its admin port busy\n%s", out.String())
			}
			if !strings.Contains(out.String(), "admin_listen") {
				t.Fatalf("pgmux did not say which port was busy:\n%s", out.String())
			}
			if strings.Contains(out.String(), `"listening"`) {
				t.Fatalf("pgmux said it was listening:\n%s", out.String())
			}
			return
		case <-time.After(5 * time.Millisecond):
		}
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			cmd.Process.Kill()
			t.Fatal("the client port took a connection while the admin port was busy")
		}
	}
}

// TestSlowReadersRSS: ten clients that ask for a 3 GB result each and never
// read it grow pgmux's resident memory by less than 64 MB, and it stays
// there after they leave.
func TestSlowReadersRSS(t *testing.T) {
	p := startPgmux(t, strings.Replace(baseConfig, "default_pool_size: 5", "default_pool_size: 12", 1))
	addr := fmt.Sprintf("127.0.0.1:%d", p.port)
	rss := func() int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
		if err != nil {
			t.Skipf("no /proc: %v", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
		t.Fatal("no VmRSS")
		return 0
	}
	// Warm: the pool's servers, one client through the relay.
	c0, err := login(addr, cluster.SuperUserName())
	if err != nil {
		t.Fatal(err)
	}
	c0.Close()
	before := rss()
	query, _ := (&pgproto3.Query{String: "SELECT repeat('x', 1000) FROM (SELECT generate_series(1, 3000000)) s"}).Encode(nil)
	var clients []net.Conn
	for range 10 {
		c, err := login(addr, cluster.SuperUserName())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(query); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	time.Sleep(3 * time.Second)
	during := rss()
	for _, c := range clients {
		c.Close()
	}
	time.Sleep(2 * time.Second)
	after := rss()
	t.Logf("pgmux RSS: %d MiB before, %d MiB with ten clients not reading, %d MiB after they left", before>>20, during>>20, after>>20)
	if during-before >= 64<<20 || after-before >= 64<<20 {
		t.Fatalf("RSS grew by %d MiB (%d MiB after they left)", (during-before)>>20, (after-before)>>20)
	}
}

// TestUnixSocket: with unix_socket_dir, psql reaches pgmux through
// host=<dir>, in both pool modes; a second pgmux on the same port takes the
// socket over, and the first one's drain leaves it in place.
func TestUnixSocket(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql not installed (apt-get install -y postgresql-client)")
	}
	dir := t.TempDir()
	config := strings.Replace(baseConfig, "databases:", "unix_socket_dir: "+dir+`
databases:
  tx: {host: 127.0.0.1, port: PG_PORT, dbname: postgres, pool_mode: transaction}
  sess: {host: 127.0.0.1, port: PG_PORT, dbname: postgres, pool_mode: session}`, 1)
	p := startPgmux(t, config)
	query := func(db string) string {
		t.Helper()
		out, err := exec.Command(psql, "-h", dir, "-p", fmt.Sprint(p.port), "-U", cluster.SuperUserName(), "-d", db,
			"-AtXc", "SELECT 'over ' || 'the socket'").CombinedOutput()
		if err != nil {
			t.Fatalf("psql -h %s -d %s: %v\n%s", dir, db, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, db := range []string{"tx", "sess"} {
		if got := query(db); got != "over the socket" {
			t.Fatalf("%s: psql printed %q", db, got)
		}
	}
	startPgmuxOn(t, config, p.port) // the next one
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		p.exited <- err // for the cleanup's wait
	case <-time.After(15 * time.Second):
		t.Fatal("the first pgmux did not exit")
	}
	if got := query("tx"); got != "over the socket" {
		t.Fatalf("after the first pgmux left: psql printed %q", got)
	}
}
