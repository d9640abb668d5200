package proxy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgmux/pgmux/internal/pgtest"
)

// TestPgBouncerClientKeys: log_connections and log_disconnections log each
// login and logout; ignore_startup_parameters keeps a parameter off the
// client's servers; application_name_add_host shows them where the client
// is.
func TestPgBouncerClientKeys(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	p := startProxy(t, func(o *Options, db *Database) {
		o.Logger = zap.New(core)
		o.LogConnections, o.LogDisconnections, o.AppNameAddHost = true, true, true
		o.IgnoreStartupParameters = []string{"search_path"}
	})
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(p.dsn(cluster.SuperUserName(), "", "postgres") + " application_name=app search_path=nowhere")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var app, path string
	if err := conn.QueryRow(ctx, "SELECT current_setting('application_name'), current_setting('search_path')").Scan(&app, &path); err != nil {
		t.Fatal(err)
	}
	local := conn.PgConn().Conn().LocalAddr().String()
	if app != "app - "+local {
		t.Errorf("application_name on the server %q, want %q", app, "app - "+local)
	}
	if path == "nowhere" {
		t.Error("an ignored startup parameter reached the server")
	}
	conn.Close(ctx)
	waitFor(t, 2*time.Second, func() bool { return logs.FilterMessage("logout").Len() == 1 })
	login := logs.FilterMessage("login").All()
	if len(login) != 1 || !strings.Contains(login[0].ContextMap()["client_addr"].(string), "127.0.0.1") {
		t.Errorf("login lines: %v", login)
	}
}

// TestPerUserSettings: a user's own pool_mode and pool_size ([users]) win
// over its database's; another user keeps the database's.
func TestPerUserSettings(t *testing.T) {
	c := limitedRole(t)
	p := startProxy(t, func(o *Options, db *Database) {
		db.Host, db.PoolSize = c.SocketDir(), 4
		o.PerUser = map[string]UserSettings{"limited": {PoolMode: ModeSession, PoolSize: 1}}
	})
	ctx := context.Background()
	for _, user := range []string{"limited", cluster.SuperUserName()} {
		conn, err := pgx.Connect(ctx, p.dsn(user, "", "postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]string{}
	for _, pl := range p.Pools() {
		got[pl.User] = fmt.Sprintf("%s/%d", pl.PoolMode, pl.PoolSize)
	}
	if got["limited"] != "session/1" || got[cluster.SuperUserName()] != "transaction/4" {
		t.Fatalf("pools %v", got)
	}
}

// limitedRole makes the role "limited" on the tests' server, whose Unix
// socket trusts every user, and returns the server.
func limitedRole(t *testing.T) *pgtest.Cluster {
	t.Helper()
	c := needPG(t)
	if c.SocketDir() == "" {
		t.Skip("needs the tests' own server, whose socket trusts every user")
	}
	if err := c.Exec("postgres", "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'limited') THEN CREATE ROLE limited LOGIN; END IF; END$$"); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestServerCheckQuery: a server idle longer than server_check_delay runs
// server_check_query before it is lent, and one used more recently does
// not, whichever driver serves the client.
func TestServerCheckQuery(t *testing.T) {
	c := needPG(t)
	// Called once, so that last_value counts every nextval after.
	if err := c.Exec("postgres", "CREATE SEQUENCE IF NOT EXISTS pgmux_checks; SELECT nextval('pgmux_checks')"); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) {
		db.PoolSize = 1
		o.ServerCheckQuery, o.ServerCheckDelay = "SELECT nextval('pgmux_checks')", 300*time.Millisecond
	})
	ctx := context.Background()
	conn := p.connect(t, "postgres", pgx.QueryExecModeSimpleProtocol) // the event loop serves it
	checks := func() int64 {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT last_value FROM pgmux_checks").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := checks()
	for range 5 {
		checks() // back to back: no check
	}
	if n := checks(); n != before {
		t.Fatalf("%d checks on a server in constant use", n-before)
	}
	time.Sleep(500 * time.Millisecond)
	if n := checks(); n != before+1 {
		t.Fatalf("after an idle spell: %d checks, want 1", n-before)
	}
}
