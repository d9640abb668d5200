package proxy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// settingsOf returns statement_timeout and app.tenant as conn sees them.
func settingsOf(t *testing.T, conn *pgx.Conn) (timeout, tenant string) {
	t.Helper()
	if err := conn.QueryRow(context.Background(), "SELECT current_setting('statement_timeout'), coalesce(current_setting('app.tenant', true), '')").Scan(&timeout, &tenant); err != nil {
		t.Fatal(err)
	}
	return timeout, tenant
}

// TestSettingsFollowTheirClient: in transaction mode with a pool of two, a
// client's SET stays its own, whichever server it gets, and reaches no
// other client; the same for a custom setting, RESET ALL, and a SET rolled
// back. Simple and extended protocol.
func TestSettingsFollowTheirClient(t *testing.T) {
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 2 })
			ctx := context.Background()
			a := p.connect(t, "postgres", mode)
			others := make([]*pgx.Conn, 10)
			for i := range others {
				others[i] = p.connect(t, "postgres", mode)
			}
			// check runs every other client once, then a, twice over,
			// so that a gets each of the two servers.
			check := func(what, timeout, tenant string) {
				t.Helper()
				for round := 0; round < 2; round++ {
					for i, o := range others {
						if got, gotTenant := settingsOf(t, o); got != "0" || gotTenant != "" {
							t.Fatalf("%s: client %d sees statement_timeout %q, app.tenant %q: another client's", what, i, got, gotTenant)
						}
					}
					if got, gotTenant := settingsOf(t, a); got != timeout || gotTenant != tenant {
						t.Fatalf("%s: the client sees statement_timeout %q, app.tenant %q; want %q, %q", what, got, gotTenant, timeout, tenant)
					}
				}
			}
			exec := func(sql string) {
				t.Helper()
				if _, err := a.Exec(ctx, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			exec("SET statement_timeout = '7s'")
			check("after SET", "7s", "")
			exec("SET app.tenant = 'x'")
			check("after SET of a custom setting", "7s", "x")
			tx, err := a.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SET statement_timeout = '9s'"); err != nil {
				t.Fatal(err)
			}
			tx.Rollback(ctx)
			check("after a SET rolled back", "7s", "x")
			tx, err = a.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = '11s'"); err != nil {
				t.Fatal(err)
			}
			tx.Commit(ctx)
			check("after SET LOCAL", "7s", "x")
			exec("RESET ALL")
			check("after RESET ALL", "0", "")
			exec("BEGIN; SET statement_timeout = '5s'; COMMIT")
			check("after a SET in a committed transaction", "5s", "")
		})
	}
}

// TestSessionStatePins: in transaction mode, a client that takes a session
// advisory lock or makes a temporary table keeps its server (pinned, and
// counted); nothing of it reaches another client, and a client killed
// while holding the lock leaves it held by no one.
func TestSessionStatePins(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 2 })
	ctx := context.Background()
	a := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	b := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	if _, err := a.Exec(ctx, "CREATE TEMP TABLE pinned_tmp (x int)"); err != nil {
		t.Fatal(err)
	}
	var locked bool
	if err := a.QueryRow(ctx, "SELECT pg_try_advisory_lock(4242)").Scan(&locked); err != nil || !locked {
		t.Fatalf("lock: %v %v", locked, err)
	}
	if ps := p.Pools(); ps[0].ClientsPinned != 1 || ps[0].ServersActive != 1 {
		// a is idle, but its server is its own: lent, not available.
		t.Fatalf("pinned clients: %d, servers lent: %d; want 1 and 1", ps[0].ClientsPinned, ps[0].ServersActive)
	}
	for i := 0; i < 10; i++ {
		if _, err := a.Exec(ctx, "INSERT INTO pinned_tmp VALUES ($1)", i); err != nil {
			t.Fatalf("the pinned client's own temp table: %v", err)
		}
		_, err := b.Exec(ctx, "SELECT * FROM pinned_tmp")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
			t.Fatalf("another client sees the temp table: %v", err)
		}
		if err := b.QueryRow(ctx, "SELECT pg_try_advisory_lock(4242)").Scan(&locked); err != nil || locked {
			t.Fatalf("another client got the lock a holds: %v %v", locked, err)
		}
	}
	a.PgConn().Conn().Close() // killed
	deadline := time.Now().Add(time.Second)
	for {
		if err := b.QueryRow(ctx, "SELECT pg_try_advisory_lock(4242)").Scan(&locked); err != nil {
			t.Fatal(err)
		}
		if locked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the killed client's advisory lock is still held after a second")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// a is gone; b, which took the lock with pg_try_advisory_lock, is
	// pinned in turn, until it leaves.
	waitFor(t, 2*time.Second, func() bool { return p.Pools()[0].ClientsPinned == 1 })
	b.Close(ctx)
	waitFor(t, 2*time.Second, func() bool { return p.Pools()[0].ClientsPinned == 0 })
}
