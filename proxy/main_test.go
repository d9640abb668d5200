package proxy

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/internal/pgtest"
)

// cluster is the PostgreSQL server every test in the package shares.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Short() {
		var err error
		cluster, err = pgtest.Start()
		if err != nil {
			fmt.Fprintln(os.Stderr, "start PostgreSQL:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if cluster != nil {
		cluster.Close()
	}
	closeTLSEnv()
	os.Exit(code)
}

// needPG skips a test under -short, where no server is started.
func needPG(t testing.TB) *pgtest.Cluster {
	t.Helper()
	if cluster == nil {
		t.Skip("needs PostgreSQL (not started under -short)")
	}
	return cluster
}

// testProxy is a pgmux Server on a loopback port.
type testProxy struct {
	*Server
	addr string
	port int
}

// startProxy runs a Server whose databases all point at the shared cluster
// (any name the client gives, as PgBouncer's "*"), with trust auth and a pool
// of 10, after edit has changed the options.
func startProxy(t testing.TB, edit func(o *Options, db *Database)) *testProxy {
	t.Helper()
	c := needPG(t)
	db := Database{Host: c.Host, Port: c.Port, PoolMode: ModeTransaction, PoolSize: 10}
	o := Options{
		Logger:                zaptest.NewLogger(t, zaptest.Level(zapLevelForTests())),
		AuthType:              "trust",
		Users:                 map[string]auth.Secret{},
		MaxClientConn:         10000,
		MaxPacketSize:         1 << 30,
		QueryWaitTimeout:      30 * time.Second,
		ServerConnectTimeout:  5 * time.Second,
		ServerIdleTimeout:     time.Minute,
		ServerLifetime:        time.Hour,
		ClientLoginTimeout:    10 * time.Second,
		ServerResetQuery:      "DISCARD ALL",
		MaxPreparedStatements: 200,
		RelayLoop:             os.Getenv("PGMUX_TEST_RELAY_LOOP") != "0",
		NoIOURing:             os.Getenv("PGMUX_TEST_IO_URING") == "0",
		Loops:                 testLoops(),
	}
	if edit != nil {
		edit(&o, &db)
	}
	if o.Databases == nil {
		o.Databases = func(name string) (Database, bool) {
			if name == "nosuchdb" {
				return Database{}, false
			}
			d := db
			d.DBName = name
			return d, true
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(o)
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &testProxy{Server: srv, addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port}
}

// dsn returns a connection string through the proxy.
func (p *testProxy) dsn(user, password, database string) string {
	s := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable", p.port, user, database)
	if password != "" {
		s += " password=" + password
	}
	return s
}

// connect opens a pgx connection through the proxy as the superuser.
func (p *testProxy) connect(t testing.TB, database string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(p.dsn(cluster.SuperUserName(), "", database))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect through pgmux: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// zapLevelForTests is Warn, or Debug when PGMUX_TEST_LOG is set.
func zapLevelForTests() zapcore.Level {
	if os.Getenv("PGMUX_TEST_LOG") != "" {
		return zapcore.DebugLevel
	}
	return zapcore.WarnLevel
}

// countBackends counts the server's backends for dbName whose row of
// pg_stat_activity also meets cond (SQL, "true" for all).
func countBackends(t testing.TB, dbName, cond string) int {
	t.Helper()
	var n int
	superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND "+cond, []any{dbName}, &n)
	return n
}

// superQuery runs sql with args on a connection of its own to the server,
// as its superuser, scanning its one row into dest.
func superQuery(t testing.TB, sql string, args []any, dest ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, cluster.SuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// testLoops is the event loops the tests' proxies run: PGMUX_TEST_LOOPS, or
// one per core.
func testLoops() int {
	n, _ := strconv.Atoi(os.Getenv("PGMUX_TEST_LOOPS"))
	return n
}

// terminateBackend ends the server process pid from a connection of its own,
// as an operator's pg_terminate_backend would.
func terminateBackend(t testing.TB, pid uint32) {
	t.Helper()
	var ok bool
	if superQuery(t, "SELECT pg_terminate_backend($1, 5000)", []any{int32(pid)}, &ok); !ok {
		t.Fatalf("server process %d not terminated", pid)
	}
}
