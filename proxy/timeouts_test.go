package proxy

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestTimeouts: each timeout ends the client with an ErrorResponse that
// names it, and with its own SQLSTATE.
func TestTimeouts(t *testing.T) {
	ctx := context.Background()
	t.Run("query_wait_timeout", func(t *testing.T) {
		p := startProxy(t, func(o *Options, db *Database) { o.QueryWaitTimeout = 300 * time.Millisecond; db.PoolSize = 1 })
		holder := p.connect(t, "postgres", pgx.QueryExecModeExec)
		tx, err := holder.Begin(ctx) // holds the only server
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		waiter := p.connect(t, "postgres", pgx.QueryExecModeExec)
		start := time.Now()
		_, err = waiter.Exec(ctx, "SELECT 1")
		if code := sqlstate(err); code != "53300" {
			t.Fatalf("want 53300, got %v", err)
		}
		if took := time.Since(start); took < 250*time.Millisecond || took > 3*time.Second {
			t.Fatalf("failed after %s with a 300ms query_wait_timeout", took)
		}
		tx.Rollback(ctx)
	})
	t.Run("client_idle_timeout", func(t *testing.T) {
		p := startProxy(t, func(o *Options, db *Database) { o.ClientIdleTimeout = 300 * time.Millisecond })
		c := dialRaw(t, p.addr)
		if err := c.startup(cluster.SuperUserName(), "postgres"); err != nil {
			t.Fatal(err)
		}
		if err := c.query("SELECT 1"); err != nil { // activity moves the deadline on
			t.Fatal(err)
		}
		c.expectFatal(t, "57P05")
	})
	t.Run("idle_transaction_timeout", func(t *testing.T) {
		const dbName = "idle_tx"
		if err := needPG(t).CreateDatabase(dbName); err != nil {
			t.Fatal(err)
		}
		p := startProxy(t, func(o *Options, db *Database) { o.IdleTransactionTimeout = 300 * time.Millisecond })
		c := dialRaw(t, p.addr)
		if err := c.startup(cluster.SuperUserName(), dbName); err != nil {
			t.Fatal(err)
		}
		if err := c.query("BEGIN"); err != nil {
			t.Fatal(err)
		}
		c.expectFatal(t, "25P03")
		waitNoIdleInTransaction(t, dbName)
		// Idle outside a transaction is not affected.
		c2 := dialRaw(t, p.addr)
		if err := c2.startup(cluster.SuperUserName(), dbName); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		if err := c2.query("SELECT 1"); err != nil {
			t.Fatalf("idle outside a transaction: %v", err)
		}
	})
	t.Run("query_timeout", func(t *testing.T) {
		const dbName = "query_timeout"
		if err := needPG(t).CreateDatabase(dbName); err != nil {
			t.Fatal(err)
		}
		p := startProxy(t, func(o *Options, db *Database) {
			o.QueryTimeout = time.Second
			db.PoolSize = 1
		})
		// Each statement within the limit, the transaction past it, and
		// time idle in it: all served.
		c := p.connect(t, dbName, pgx.QueryExecModeExec)
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := tx.Exec(ctx, "SELECT pg_sleep(0.5)"); err != nil {
				t.Fatalf("a statement within query_timeout: %v", err)
			}
		}
		time.Sleep(1500 * time.Millisecond)
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("a transaction idle past query_timeout: %v", err)
		}
		start := time.Now()
		_, err = c.Exec(ctx, "SELECT pg_sleep(30)")
		took := time.Since(start)
		if code := sqlstate(err); code != "57014" || !strings.Contains(err.Error(), "query_timeout") {
			t.Fatalf("want 57014 naming query_timeout, got %v", err)
		}
		if took < time.Second || took > 4*time.Second {
			t.Fatalf("failed after %s with a 1s query_timeout", took)
		}
		t.Logf("pg_sleep(30) ended after %s: %v", took.Round(time.Millisecond), err)
		// The backend was cancelled, not left sleeping, and the next
		// client gets a server.
		deadline := time.Now().Add(2 * time.Second)
		for countBackends(t, dbName, "query LIKE '%pg_sleep(30)%'") > 0 {
			if time.Now().After(deadline) {
				t.Fatal("the timed-out query still runs on its backend")
			}
			time.Sleep(50 * time.Millisecond)
		}
		other := p.connect(t, dbName, pgx.QueryExecModeExec)
		if _, err := other.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("after a query_timeout: %v", err)
		}
	})
	t.Run("server_connect_timeout", func(t *testing.T) {
		// A "server" that accepts and never answers.
		silent, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		go func() {
			for {
				c, err := silent.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		port := silent.Addr().(*net.TCPAddr).Port
		p := startProxy(t, func(o *Options, db *Database) {
			o.ServerConnectTimeout = 300 * time.Millisecond
			db.Port = port
		})
		start := time.Now()
		c := dialRaw(t, p.addr)
		err = c.startup(cluster.SuperUserName(), "postgres")
		if code := sqlstate(err); code != "08006" {
			t.Fatalf("want 08006, got %v", err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("failed after %s with a 300ms server_connect_timeout", took)
		}
	})
	t.Run("a server that refuses connections", func(t *testing.T) {
		closed, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := closed.Addr().(*net.TCPAddr).Port
		closed.Close()
		p := startProxy(t, func(o *Options, db *Database) { db.Port = port })
		c := dialRaw(t, p.addr)
		err = c.startup(cluster.SuperUserName(), "postgres")
		if code := sqlstate(err); code != "08006" {
			t.Fatalf("want 08006, got %v", err)
		}
		if msg := err.Error(); strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, strconv.Itoa(port)) {
			t.Fatalf("the client is told the server's address: %q", msg)
		}
	})
	t.Run("server_idle_timeout and min_pool_size", func(t *testing.T) {
		const dbName = "server_idle"
		if err := needPG(t).CreateDatabase(dbName); err != nil {
			t.Fatal(err)
		}
		p := startProxy(t, func(o *Options, db *Database) {
			o.ServerIdleTimeout = 500 * time.Millisecond
			o.MinPoolSize = 1
			db.PoolSize = 4
		})
		conns := make([]*pgx.Conn, 4)
		for i := range conns {
			conns[i] = p.connect(t, dbName, pgx.QueryExecModeExec)
		}
		// Four transactions at once open four servers.
		txs := make([]pgx.Tx, 4)
		for i, c := range conns {
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tx.Exec(ctx, "SELECT 1")
			txs[i] = tx
		}
		for _, tx := range txs {
			tx.Commit(ctx)
		}
		if n := countBackends(t, dbName, "true"); n != 4 {
			t.Fatalf("want 4 backends, have %d", n)
		}
		waitBackends(t, dbName, 1, "idle servers closed down to min_pool_size")
	})
}

// waitBackends waits up to 5 s for dbName to have want backends.
func waitBackends(t *testing.T, dbName string, want int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for countBackends(t, dbName, "true") != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: want %d backends, have %d", what, want, countBackends(t, dbName, "true"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestShutdown: Shutdown closes idle clients at once, lets a transaction
// finish, and when its context ends closes what is left.
func TestShutdown(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	idle := dialRaw(t, p.addr)
	if err := idle.startup(cluster.SuperUserName(), "postgres"); err != nil {
		t.Fatal(err)
	}
	stuck := p.connect(t, "postgres", pgx.QueryExecModeExec)
	tx, err := stuck.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx.Exec(ctx, "SELECT 1")
	sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Shutdown(sctx) }()
	idle.expectFatal(t, "57P01")
	select {
	case err := <-done:
		if err != context.DeadlineExceeded {
			t.Fatalf("Shutdown with a transaction left open: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after its context ended")
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("the open transaction survived the forced shutdown")
	}
}

// TestReloadPoolLimits: a reload's server_idle_timeout, min_pool_size and
// server_lifetime apply to the pools already open, not only to pools made
// after it.
func TestReloadPoolLimits(t *testing.T) {
	const dbName = "reload_limits"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 4 })
	a := p.connect(t, dbName, pgx.QueryExecModeExec)
	b := p.connect(t, dbName, pgx.QueryExecModeExec)
	ta, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ta.Exec(ctx, "SELECT 1")
	tb.Exec(ctx, "SELECT 1")
	ta.Commit(ctx)
	tb.Commit(ctx)
	if n := countBackends(t, dbName, "true"); n != 2 {
		t.Fatalf("want 2 backends, have %d", n)
	}
	backendPid := func() int {
		t.Helper()
		var pid int
		if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return pid
	}

	o := *p.options()
	o.ServerIdleTimeout = 300 * time.Millisecond
	o.MinPoolSize = 1
	p.Update(o)
	waitBackends(t, dbName, 1, "server_idle_timeout lowered to 300ms, min_pool_size 1")

	o.ServerIdleTimeout = time.Minute
	o.MinPoolSize = 3
	p.Update(o)
	waitBackends(t, dbName, 3, "min_pool_size raised to 3")

	before := backendPid()
	o.ServerLifetime = 300 * time.Millisecond
	p.Update(o)
	time.Sleep(time.Second)
	if after := backendPid(); after == before {
		t.Fatalf("server_lifetime lowered to 300ms: backend %d still served after 1s", after)
	}
}
