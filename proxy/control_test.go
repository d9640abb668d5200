package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/console"
)

// TestPauseHoldsNewTransactions: while the server is paused (PgBouncer's
// PAUSE) a client that starts a transaction waits, whether the relay loop
// or its goroutine reads the query, and Resume lets it go on.
func TestPauseHoldsNewTransactions(t *testing.T) {
	p := startProxy(t, nil)
	c := loggedIn(t, p)
	// The first query brings the server's settings in line on the goroutine
	// path; with the loop on, the next ones are read by the loop.
	runSteps(t, []clientStep{{c, "SELECT 1"}, {c, "SELECT 1"}})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if !p.Paused() {
		t.Fatal("Paused() false after Pause")
	}
	done := make(chan error, 1)
	go func() { done <- c.query("SELECT 1") }()
	select {
	case err := <-done:
		t.Fatalf("a query ran while paused (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	p.Resume()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("query after Resume: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the query was still held 5 s after Resume")
	}
	if p.Paused() {
		t.Fatal("Paused() true after Resume")
	}
}

// TestCancelWhilePaused: a request waiting for RESUME is cancelled as one
// waiting for a server is: 57014 at once, and the client goes on after
// Resume.
func TestCancelWhilePaused(t *testing.T) {
	p := startProxy(t, nil)
	c := loggedInTo(t, p, "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Resume()
	c.sendAll(t, &pgproto3.Query{String: "SELECT 1"})
	time.Sleep(200 * time.Millisecond)
	if err := c.sendCancel(p.addr); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if err := c.untilReady(); sqlstate(err) != "57014" {
		t.Fatalf("the paused client got %v, want 57014", err)
	}
	p.Resume()
	if v, err := c.value("SELECT 7"); err != nil || v != "7" {
		t.Fatalf("after Resume: %q, %v", v, err)
	}
}

// consoleDo runs an admin console command against the proxy, as an admin
// user's, and fails the test on an error.
func consoleDo(t *testing.T, p *testProxy, cmd string) {
	t.Helper()
	for _, m := range readBackend(t, console.Answer(consoleSource{p.Server}, cmd, true)) {
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("%s: %s %s", cmd, e.Code, e.Message)
		}
	}
}

// readBackend decodes backend messages.
func readBackend(t *testing.T, b []byte) []pgproto3.BackendMessage {
	t.Helper()
	fe := pgproto3.NewFrontend(bytes.NewReader(b), nil)
	var out []pgproto3.BackendMessage
	for {
		m, err := fe.Receive()
		if err != nil {
			return out
		}
		switch m := m.(type) {
		case *pgproto3.ErrorResponse:
			c := *m
			out = append(out, &c)
		default:
			out = append(out, m)
		}
	}
}

// waits reports whether run is still blocked after a while, and then
// returns a function that waits for its end.
func waits(t *testing.T, run func() error) (blocked bool, end func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- run() }()
	select {
	case err := <-done:
		return false, func() error { return err }
	case <-time.After(300 * time.Millisecond):
		return true, func() error {
			select {
			case err := <-done:
				return err
			case <-time.After(5 * time.Second):
				return errors.New("still blocked 5 s later")
			}
		}
	}
}

// TestConsolePerDatabase: PAUSE, KILL, RECONNECT, WAIT_CLOSE, DISABLE and
// KILL_CLIENT act on the database they name and no other, as PgBouncer's.
func TestConsolePerDatabase(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 2 })
	ctx := context.Background()
	a := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	b := p.connect(t, "template1", pgx.QueryExecModeCacheStatement)
	exec := func(c *pgx.Conn) func() error {
		return func() error { _, err := c.Exec(ctx, "SELECT 1"); return err }
	}
	for _, c := range []*pgx.Conn{a, b} {
		if err := exec(c)(); err != nil {
			t.Fatal(err)
		}
	}

	// PAUSE template1: postgres goes on, template1 waits for RESUME.
	consoleDo(t, p, "PAUSE template1")
	if err := exec(a)(); err != nil {
		t.Fatalf("postgres while template1 is paused: %v", err)
	}
	blocked, end := waits(t, exec(b))
	if !blocked {
		t.Fatal("template1 served while paused")
	}
	consoleDo(t, p, "RESUME template1")
	if err := end(); err != nil {
		t.Fatalf("template1 after RESUME: %v", err)
	}

	// KILL template1: its clients are dropped, postgres's are not, and a
	// new template1 client waits until RESUME.
	consoleDo(t, p, "KILL template1")
	if err := exec(b)(); err == nil {
		t.Fatal("a template1 client survived KILL template1")
	}
	if err := exec(a)(); err != nil {
		t.Fatalf("postgres after KILL template1: %v", err)
	}
	b2 := p.connect(t, "template1", pgx.QueryExecModeCacheStatement)
	blocked, end = waits(t, exec(b2))
	if !blocked {
		t.Fatal("a new template1 client served after KILL, before RESUME")
	}
	consoleDo(t, p, "RESUME")
	if err := end(); err != nil {
		t.Fatalf("template1 after RESUME: %v", err)
	}

	// RECONNECT postgres: a transaction under way keeps its server to its
	// end; after it, the next transaction has a new one.
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var before, during, after uint32
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&before); err != nil {
		t.Fatal(err)
	}
	olds := map[uint32]bool{}
	for _, sv := range p.Servers() {
		if sv.Database == "postgres" {
			olds[sv.PID] = true
		}
	}
	consoleDo(t, p, "RECONNECT postgres")
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&during); err != nil || during != before {
		t.Fatalf("the transaction's server changed under it: %d, %d, %v", before, during, err)
	}
	blocked, end = waits(t, func() error {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return p.WaitClose(wctx, "postgres")
	})
	if !blocked {
		t.Fatal("WAIT_CLOSE returned with a server of the old pool still lent")
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := end(); err != nil {
		t.Fatalf("WAIT_CLOSE after the transaction: %v", err)
	}
	if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&after); err != nil || olds[after] {
		t.Fatalf("after RECONNECT a server of the old pool served: %d (old %v), %v", after, olds, err)
	}

	// DISABLE postgres: new clients are refused with 55000, others go on.
	consoleDo(t, p, "DISABLE postgres")
	_, err = pgx.Connect(ctx, p.dsn(cluster.SuperUserName(), "", "postgres"))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "55000" {
		t.Fatalf("a new client of a disabled database: %v", err)
	}
	if err := exec(a)(); err != nil {
		t.Fatalf("a client of a disabled database: %v", err)
	}
	consoleDo(t, p, "ENABLE postgres")
	p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)

	// KILL_CLIENT drops that client only.
	var id uint64
	for _, c := range p.Clients() {
		if c.Database == "template1" && c.State != "closed" {
			id = c.ID
		}
	}
	consoleDo(t, p, fmt.Sprintf("KILL_CLIENT %d", id))
	if err := exec(b2)(); err == nil {
		t.Fatal("the client survived KILL_CLIENT")
	}
	if err := exec(a)(); err != nil {
		t.Fatalf("another client after KILL_CLIENT: %v", err)
	}
}

// TestReservePool: with a pool of one and a reserve of one, a client that
// has waited reserve_pool_timeout gets a second server, a third waits for
// one given back, and the reserve server is closed when no one waits.
func TestReservePool(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) {
		db.PoolSize, db.ReservePoolSize, o.ReservePoolTimeout = 1, 1, 300*time.Millisecond
	})
	ctx := context.Background()
	holder := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	b := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	c := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	start := time.Now()
	btx, err := b.Begin(ctx) // its BEGIN waits for a server
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 250*time.Millisecond || waited > 3*time.Second {
		t.Fatalf("served from the reserve after %s, want about reserve_pool_timeout (300ms)", waited)
	}
	blocked, end := waits(t, func() error { _, err := c.Exec(ctx, "SELECT 1"); return err })
	if !blocked {
		t.Fatal("a third client served past pool_size + reserve_pool_size")
	}
	if st := p.Pools()[0]; st.ServersActive != 2 {
		t.Fatalf("%d servers lent, want 2", st.ServersActive)
	}
	if err := btx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := end(); err != nil {
		t.Fatalf("the third client: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, func() bool {
		st := p.Pools()[0]
		return st.ServersActive+st.ServersIdle == 1
	})
}

// TestServerLimitsAcrossPools: max_user_connections bounds the servers of
// one user's pools on two databases, and max_db_connections those of two
// users' pools on one database; a pool at the bound takes the place of
// another's idle server, and waits while they are all in use.
func TestServerLimitsAcrossPools(t *testing.T) {
	c := limitedRole(t)
	for _, tc := range []struct {
		name          string
		edit          func(o *Options, db *Database)
		first, second [2]string // database and user of each side
	}{
		{"max_user_connections", func(o *Options, db *Database) { db.PoolSize, o.MaxUserConnections = 2, 2 },
			[2]string{"postgres", cluster.SuperUserName()}, [2]string{"template1", cluster.SuperUserName()}},
		{"max_db_connections", func(o *Options, db *Database) { db.PoolSize, db.MaxDBConnections = 2, 2 },
			[2]string{"postgres", cluster.SuperUserName()}, [2]string{"postgres", "limited"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, func(o *Options, db *Database) {
				tc.edit(o, db)
				db.Host = c.SocketDir() // trusts the second user
			})
			ctx := context.Background()
			conn := func(side [2]string) *pgx.Conn {
				cn, err := pgx.Connect(ctx, p.dsn(side[1], "", side[0]))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { cn.Close(ctx) })
				return cn
			}
			a1, a2, b := conn(tc.first), conn(tc.first), conn(tc.second)
			t1, _ := a1.Begin(ctx)
			t2, _ := a2.Begin(ctx)
			for _, tx := range []pgx.Tx{t1, t2} {
				if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
					t.Fatal(err)
				}
			}
			blocked, end := waits(t, func() error { _, err := b.Exec(ctx, "SELECT 1"); return err })
			if !blocked {
				t.Fatal("served past the bound while both servers are in use")
			}
			if err := t1.Commit(ctx); err != nil { // its server goes idle: b's pool has it closed
				t.Fatal(err)
			}
			if err := end(); err != nil {
				t.Fatalf("after a server went idle: %v", err)
			}
			total := 0
			for _, sv := range p.Servers() {
				if sv.State != "listen" {
					total++
				}
			}
			if total > 2 {
				t.Fatalf("%d servers open, bound 2", total)
			}
			t2.Commit(ctx)
		})
	}
}
