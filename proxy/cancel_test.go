package proxy

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sync/errgroup"
)

// TestCancel cancels one client's pg_sleep(30) while other clients of the
// same pool run queries: the sleeper gets 57014 within 2 s, nobody else is
// cancelled.
func TestCancel(t *testing.T) {
	for _, poolMode := range []string{ModeTransaction, ModeSession} {
		t.Run(poolMode, func(t *testing.T) {
			p := startProxy(t, func(o *Options, db *Database) { db.PoolMode = poolMode; db.PoolSize = 4 })
			ctx := context.Background()
			sleeper := p.connect(t, "postgres", pgx.QueryExecModeExec)
			others := make([]*pgx.Conn, 3)
			for i := range others {
				others[i] = p.connect(t, "postgres", pgx.QueryExecModeExec)
			}

			var g errgroup.Group
			stop := make(chan struct{})
			for i, c := range others {
				g.Go(func() error {
					for n := 0; ; n++ {
						select {
						case <-stop:
							return nil
						default:
						}
						var v int
						if err := c.QueryRow(ctx, "SELECT $1::int FROM pg_sleep(0.02)", n).Scan(&v); err != nil {
							return fmt.Errorf("other client %d query %d: %w", i, n, err)
						}
					}
				})
			}

			errCh := make(chan error, 1)
			began := time.Now()
			go func() {
				_, err := sleeper.Exec(ctx, "SELECT pg_sleep(30)")
				errCh <- err
			}()
			time.Sleep(300 * time.Millisecond)
			cancelAt := time.Now()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := sleeper.PgConn().CancelRequest(cctx); err != nil {
				t.Fatalf("cancel request: %v", err)
			}
			cancel()
			var err error
			select {
			case err = <-errCh:
			case <-time.After(5 * time.Second):
				t.Fatal("pg_sleep(30) not cancelled within 5 s")
			}
			took := time.Since(cancelAt)
			if code := sqlstate(err); code != "57014" {
				t.Fatalf("want 57014, got %v after %s", err, time.Since(began))
			}
			if took > 2*time.Second {
				t.Fatalf("cancel took %s", took)
			}
			t.Logf("cancelled %s after the request", took.Round(time.Millisecond))
			time.Sleep(200 * time.Millisecond) // let the others run on after the cancel
			close(stop)
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
			// The cancelled client goes on.
			var v int
			if err := sleeper.QueryRow(ctx, "SELECT 5").Scan(&v); err != nil || v != 5 {
				t.Fatalf("after cancel: %v", err)
			}
		})
	}
}

// TestCancelStorm sends thousands of CancelRequests a few milliseconds after
// queries start, from clients that hang up at once, while a healthy client
// runs queries on the same pool: the healthy client sees no error and no
// backend is left in a transaction.
func TestCancelStorm(t *testing.T) {
	const dbName = "cancel_storm"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 5 })
	ctx := context.Background()
	healthy := p.connect(t, dbName, pgx.QueryExecModeExec)

	var stop atomic.Bool
	var healthyQueries atomic.Int64
	healthyErr := make(chan error, 1)
	go func() {
		for n := 0; !stop.Load(); n++ {
			var v int
			if err := healthy.QueryRow(ctx, "SELECT $1::int FROM pg_sleep(0.003)", n).Scan(&v); err != nil || v != n {
				healthyErr <- fmt.Errorf("healthy query %d: got %d, %w", n, v, err)
				return
			}
			healthyQueries.Add(1)
		}
		healthyErr <- nil
	}()

	const total, parallel = 2000, 40
	var sent atomic.Int64
	var wg sync.WaitGroup
	work := make(chan int)
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				c := dialRaw(t, p.addr)
				if err := c.startup(cluster.SuperUserName(), dbName); err != nil {
					t.Errorf("storm client %d: %v", i, err)
					c.Close()
					continue
				}
				c.fe.Send(&pgproto3.Query{String: "SELECT pg_sleep(0.05)"})
				c.fe.Flush()
				time.Sleep(time.Duration(i%4) * time.Millisecond)
				if err := c.sendCancel(p.addr); err == nil {
					sent.Add(1)
				}
				c.Close() // hang up without waiting for anything
			}
		}()
	}
	for i := range total {
		work <- i
	}
	close(work)
	wg.Wait()
	stop.Store(true)
	if err := <-healthyErr; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d cancels sent; the healthy client ran %d queries meanwhile", sent.Load(), healthyQueries.Load())
	if healthyQueries.Load() == 0 {
		t.Fatal("the healthy client ran no query")
	}
	waitNoIdleInTransaction(t, dbName)
	// The pool still serves.
	var v int
	if err := healthy.QueryRow(ctx, "SELECT 9").Scan(&v); err != nil || v != 9 {
		t.Fatalf("after the storm: %v", err)
	}
}

// waitNoIdleInTransaction waits up to 2 s for the database to have no
// backend idle in a transaction.
func waitNoIdleInTransaction(t *testing.T, dbName string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := countBackends(t, dbName, "state LIKE 'idle in transaction%'")
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d backends idle in transaction", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServerUnixSocket: a database whose host is a directory is reached
// through the server's Unix socket there, as libpq and PgBouncer read it:
// for queries, for the cancels pgmux forwards and for the readiness check.
func TestServerUnixSocket(t *testing.T) {
	dir := needPG(t).SocketDir()
	if dir == "" {
		t.Skip("PGMUX_TEST_DSN's server: its socket directory is not known")
	}
	p := startProxy(t, func(o *Options, db *Database) {
		db.Host = dir
		o.ReadyDatabases = []string{"postgres"}
	})
	ctx := context.Background()
	if err := p.Ready(ctx); err != nil {
		t.Fatalf("ready: %v", err)
	}
	conn := p.connect(t, "postgres", pgx.QueryExecModeExec)
	var addr *string // NULL over a Unix socket
	if err := conn.QueryRow(ctx, "SELECT inet_server_addr()::text").Scan(&addr); err != nil {
		t.Fatal(err)
	}
	if addr != nil {
		t.Fatalf("the server sees a TCP connection from %s", *addr)
	}
	errCh := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(30)")
		errCh <- err
	}()
	time.Sleep(300 * time.Millisecond)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := conn.PgConn().CancelRequest(cctx); err != nil {
		t.Fatalf("cancel request: %v", err)
	}
	select {
	case err := <-errCh:
		if code := sqlstate(err); code != "57014" {
			t.Fatalf("want 57014, got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pg_sleep(30) not cancelled within 5 s")
	}

	// Ready fails, naming the database, once nothing listens there.
	bad := startProxy(t, func(o *Options, db *Database) {
		db.Host = t.TempDir()
		o.ReadyDatabases = []string{"postgres"}
	})
	if err := bad.Ready(ctx); err == nil || !strings.Contains(err.Error(), "database postgres") {
		t.Fatalf("ready with no socket in the directory: %v", err)
	}
}

// TestCancelWhileWaiting: a cancel that comes while the client's request
// waits for a server (a pool of one, held by another client) stops the
// request: the client gets 57014 at once, the request never runs, and the
// client goes on. Simple and extended protocol.
func TestCancelWhileWaiting(t *testing.T) {
	const dbName = "cancel_waiting"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1; o.QueryWaitTimeout = 20 * time.Second })
	for _, extended := range []bool{false, true} {
		holder := loggedInTo(t, p, dbName)
		holder.sendAll(t, &pgproto3.Query{String: "SELECT pg_sleep(1.5)"})
		time.Sleep(200 * time.Millisecond) // the holder has the pool's server

		waiter := loggedInTo(t, p, dbName)
		const marker = "SELECT 'cancelled_while_waiting', pg_sleep(0)"
		if extended {
			waiter.fe.Send(&pgproto3.Parse{Query: marker})
			waiter.fe.Send(&pgproto3.Bind{})
			waiter.fe.Send(&pgproto3.Execute{})
			waiter.fe.Send(&pgproto3.Sync{})
		} else {
			waiter.fe.Send(&pgproto3.Query{String: marker})
		}
		if err := waiter.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // queued behind the holder
		cancelAt := time.Now()
		if err := waiter.sendCancel(p.addr); err != nil {
			t.Fatal(err)
		}
		waiter.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := waiter.untilReady(); sqlstate(err) != "57014" {
			t.Fatalf("extended %v: the waiting client got %v, want 57014", extended, err)
		}
		if took := time.Since(cancelAt); took > time.Second {
			t.Fatalf("extended %v: cancelled after %s, while the holder still held the server", extended, took)
		}
		if err := holder.untilReady(); err != nil {
			t.Fatalf("holder: %v", err)
		}
		// The request never ran, and the client goes on.
		if n := countBackends(t, dbName, "query LIKE '%cancelled_while_waiting%'"); n != 0 {
			t.Fatalf("extended %v: the cancelled request ran on %d backends", extended, n)
		}
		if v, err := waiter.value("SELECT 7"); err != nil || v != "7" {
			t.Fatalf("extended %v: after the cancel: %q, %v", extended, v, err)
		}
		holder.Close()
		waiter.Close()
	}
}

// TestCancelQueuedCrowd: thirty clients queued behind a pool of one each
// cancel their pg_sleep(10): every one gets 57014 within a second of its
// cancel, and no sleep runs.
func TestCancelQueuedCrowd(t *testing.T) {
	const dbName = "cancel_crowd"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1; o.QueryWaitTimeout = 30 * time.Second })
	holder := loggedInTo(t, p, dbName)
	holder.sendAll(t, &pgproto3.Query{String: "SELECT pg_sleep(3)"})
	time.Sleep(200 * time.Millisecond)
	clients := make([]*rawClient, 30)
	for i := range clients {
		c := loggedInTo(t, p, dbName)
		c.sendAll(t, &pgproto3.Query{String: "SELECT pg_sleep(10)"})
		clients[i] = c
	}
	time.Sleep(200 * time.Millisecond)
	var g errgroup.Group
	for i, c := range clients {
		g.Go(func() error {
			at := time.Now()
			if err := c.sendCancel(p.addr); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if err := c.untilReady(); sqlstate(err) != "57014" {
				return fmt.Errorf("client %d got %v, want 57014", i, err)
			}
			if took := time.Since(at); took > time.Second {
				return fmt.Errorf("client %d cancelled after %s", i, took)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := holder.untilReady(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if n := countBackends(t, dbName, "query = 'SELECT pg_sleep(10)'"); n != 0 {
		t.Fatalf("%d queued sleeps ran", n)
	}
}

// TestSessionModeBackendKey: in session mode a client is told its server's
// own process id, so that pg_backend_pid() matches and terminating that
// process from elsewhere ends the client's connection; cancel still goes
// through pgmux.
func TestSessionModeBackendKey(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolMode = ModeSession })
	ctx := context.Background()
	conn := p.connect(t, "postgres", pgx.QueryExecModeExec)
	var pid uint32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if got := conn.PgConn().PID(); got != pid {
		t.Fatalf("the client was told process id %d; its server's is %d", got, pid)
	}
	// Cancel, through pgmux, with the key the client was given.
	errCh := make(chan error, 1)
	go func() { _, err := conn.Exec(ctx, "SELECT pg_sleep(30)"); errCh <- err }()
	time.Sleep(300 * time.Millisecond)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := conn.PgConn().CancelRequest(cctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errCh:
		if sqlstate(err) != "57014" {
			t.Fatalf("after the cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not cancelled")
	}
	terminateBackend(t, pid)
	qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
	defer qcancel()
	if err := conn.Ping(qctx); err == nil {
		t.Fatal("a ping passed on a connection whose server was terminated")
	}
	waitFor(t, 5*time.Second, func() bool { return conn.IsClosed() })
}
