package proxy

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// TestSessionModeResets checks that a SET made by a session-mode client is
// gone for the next client of the same backend (server_reset_query).
func TestSessionModeResets(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolMode = ModeSession; db.PoolSize = 1 })
	ctx := context.Background()
	first := p.connect(t, "postgres", pgx.QueryExecModeExec)
	var pid1 int
	if err := first.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid1); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Exec(ctx, "SET statement_timeout = '12345ms'"); err != nil {
		t.Fatal(err)
	}
	var v string
	if err := first.QueryRow(ctx, "SHOW statement_timeout").Scan(&v); err != nil || v != "12345ms" {
		t.Fatalf("SET not applied: %q %v", v, err)
	}
	first.Close(ctx)

	second := p.connect(t, "postgres", pgx.QueryExecModeExec)
	var pid2 int
	if err := second.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid2); err != nil {
		t.Fatal(err)
	}
	if pid1 != pid2 {
		t.Fatalf("pool of 1 gave another backend (%d, then %d): the test proves nothing", pid1, pid2)
	}
	if err := second.QueryRow(ctx, "SHOW statement_timeout").Scan(&v); err != nil || v != "0" {
		t.Fatalf("the previous client's SET leaked: statement_timeout = %q (%v)", v, err)
	}
}

// TestStartupParamsFollowClient runs clients with different startup
// application_name (and TimeZone and search_path for some) on a pool of 2 in
// transaction mode: each always sees its own settings, whichever backend
// serves it.
func TestStartupParamsFollowClient(t *testing.T) {
	if err := needPG(t).CreateDatabase("params"); err != nil {
		t.Fatal(err)
	}
	if err := needPG(t).Exec("params", "CREATE SCHEMA s1; CREATE SCHEMA s2"); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 2 })
	ctx := context.Background()
	direct, err := pgx.Connect(ctx, cluster.SuperDSN("params"))
	if err != nil {
		t.Fatal(err)
	}
	var defaultTZ string
	direct.QueryRow(ctx, "SHOW TimeZone").Scan(&defaultTZ)
	direct.Close(ctx)
	type want struct{ app, tz, path string }
	clients := 8
	var g errgroup.Group
	pids := make(map[int]bool)
	pidCh := make(chan int, 1000)
	for i := range clients {
		w := want{app: fmt.Sprintf("client-%d", i), tz: defaultTZ, path: `"$user", public`}
		cfg, err := pgx.ParseConfig(p.dsn(cluster.SuperUserName(), "", "params"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
		cfg.RuntimeParams["application_name"] = w.app
		if i%2 == 1 {
			w.tz, w.path = "Asia/Tokyo", "s1, s2"
			cfg.RuntimeParams["timezone"] = w.tz
			cfg.RuntimeParams["search_path"] = w.path
		}
		g.Go(func() error {
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			if got := conn.PgConn().ParameterStatus("application_name"); got != w.app {
				return fmt.Errorf("%s: ParameterStatus application_name at login = %q", w.app, got)
			}
			// The server's spelling, and the client's value for it.
			if got := conn.PgConn().ParameterStatus("TimeZone"); got != w.tz {
				return fmt.Errorf("%s: ParameterStatus TimeZone at login = %q, want %q", w.app, got, w.tz)
			}
			if got := conn.PgConn().ParameterStatus("server_version"); got == "" {
				return fmt.Errorf("%s: no ParameterStatus server_version at login", w.app)
			}
			for n := range 30 {
				var app, tz, path string
				var pid int
				if err := conn.QueryRow(ctx, "SELECT current_setting('application_name'), current_setting('TimeZone'), current_setting('search_path'), pg_backend_pid()").Scan(&app, &tz, &path, &pid); err != nil {
					return err
				}
				if app != w.app || tz != w.tz || path != w.path {
					return fmt.Errorf("%s query %d on backend %d: got app=%q tz=%q search_path=%q, want %+v", w.app, n, pid, app, tz, path, w)
				}
				pidCh <- pid
				time.Sleep(time.Millisecond)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	close(pidCh)
	for pid := range pidCh {
		pids[pid] = true
	}
	if len(pids) < 2 {
		t.Fatalf("all queries ran on %d backend(s): the test proves nothing", len(pids))
	}
}

// TestSetFollowsClient: in transaction mode a client's SET of a reported
// setting outside a transaction follows it to other backends, and does not
// leak to other clients.
func TestSetFollowsClient(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1 })
	ctx := context.Background()
	a := p.connect(t, "postgres", pgx.QueryExecModeExec)
	b := p.connect(t, "postgres", pgx.QueryExecModeExec)
	if _, err := a.Exec(ctx, "SET application_name = 'changed-by-a'"); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := b.QueryRow(ctx, "SHOW application_name").Scan(&got); err != nil || got != "" {
		t.Fatalf("b sees application_name %q (%v): a's SET leaked", got, err)
	}
	if err := a.QueryRow(ctx, "SHOW application_name").Scan(&got); err != nil || got != "changed-by-a" {
		t.Fatalf("a sees application_name %q (%v)", got, err)
	}
}
