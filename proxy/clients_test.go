package proxy

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"
)

var execModes = []pgx.QueryExecMode{
	pgx.QueryExecModeSimpleProtocol,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeCacheDescribe,
}

// TestPgxThroughProxy runs pgx in both pool modes and every exec mode that
// needs no prepared-statement mapping: queries, COPY in and out of 1,000
// rows, and an error inside a transaction followed by ROLLBACK.
func TestPgxThroughProxy(t *testing.T) {
	for _, poolMode := range []string{ModeTransaction, ModeSession} {
		t.Run(poolMode, func(t *testing.T) {
			dbName := "pgx_" + poolMode
			if err := needPG(t).CreateDatabase(dbName); err != nil {
				t.Fatal(err)
			}
			p := startProxy(t, func(o *Options, db *Database) { db.PoolMode = poolMode })
			ctx := context.Background()
			setup := p.connect(t, dbName, pgx.QueryExecModeSimpleProtocol)
			if _, err := setup.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)`); err != nil {
				t.Fatal(err)
			}
			for _, mode := range execModes {
				t.Run(mode.String(), func(t *testing.T) {
					conn := p.connect(t, dbName, mode)
					var sum int
					var s string
					if err := conn.QueryRow(ctx, "SELECT $1::int + $2::int, $3::text", 40, 2, "x").Scan(&sum, &s); err != nil || sum != 42 || s != "x" {
						t.Fatalf("query: %d %q %v", sum, s, err)
					}
					rows, _ := conn.Query(ctx, "SELECT g FROM generate_series(1, 500) g")
					got, err := pgx.CollectRows(rows, pgx.RowTo[int32])
					if err != nil || len(got) != 500 || got[499] != 500 {
						t.Fatalf("500 rows: %d rows, %v", len(got), err)
					}
					// An error inside a transaction, then ROLLBACK.
					tx, err := conn.Begin(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := tx.Exec(ctx, "SELECT 1/0"); sqlstate(err) != "22012" {
						t.Fatalf("want division_by_zero, got %v", err)
					}
					if _, err := tx.Exec(ctx, "SELECT 1"); sqlstate(err) != "25P02" {
						t.Fatalf("want in_failed_sql_transaction, got %v", err)
					}
					if err := tx.Rollback(ctx); err != nil {
						t.Fatalf("rollback: %v", err)
					}
					if err := conn.QueryRow(ctx, "SELECT 7").Scan(&sum); err != nil || sum != 7 {
						t.Fatalf("after rollback: %v", err)
					}
				})
			}

			// COPY 1,000 rows in with CopyFrom, then out with COPY TO STDOUT.
			conn := p.connect(t, dbName, pgx.QueryExecModeExec)
			rows := make([][]any, 1000)
			for i := range rows {
				rows[i] = []any{i + 1, fmt.Sprintf("item-%d", i+1), fmt.Sprintf("%d.50", i)}
			}
			copied, err := conn.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "name", "price"}, pgx.CopyFromRows(rows))
			if err != nil || copied != 1000 {
				t.Fatalf("copy in: %d rows, %v", copied, err)
			}
			var buf bytes.Buffer
			tag, err := conn.PgConn().CopyTo(ctx, &buf, "COPY items TO STDOUT")
			if err != nil || tag.RowsAffected() != 1000 {
				t.Fatalf("copy out: %v %v", tag, err)
			}
			lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
			if len(lines) != 1000 || lines[999] != "1000\titem-1000\t999.50" {
				t.Fatalf("copy out: %d lines, last %q", len(lines), lines[len(lines)-1])
			}
			// Notices and notifications reach the client.
			cfg, _ := pgx.ParseConfig(p.dsn(cluster.SuperUserName(), "", dbName))
			cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
			notices := make(chan string, 1)
			cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices <- n.Message }
			nconn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer nconn.Close(ctx)
			if _, err := nconn.Exec(ctx, "DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$"); err != nil {
				t.Fatal(err)
			}
			if got := <-notices; got != "hello from the server" {
				t.Fatalf("notice: %q", got)
			}
			// A listener's own notification arrives at its commit, on the
			// server it holds, in either mode.
			tx, err := nconn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tx.Exec(ctx, "LISTEN pgmux_test")
			tx.Exec(ctx, "NOTIFY pgmux_test, 'payload'")
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			n, err := nconn.WaitForNotification(wctx)
			wcancel()
			if err != nil || n.Channel != "pgmux_test" || n.Payload != "payload" {
				t.Fatalf("notification: %+v %v", n, err)
			}
			nconn.Exec(ctx, "UNLISTEN *")

			// A COPY IN that the client fails is rolled back and the session goes on.
			_, err = conn.PgConn().CopyFrom(ctx, &failingReader{data: "2001\tx\t1\n"}, "COPY items FROM STDIN")
			if err == nil {
				t.Fatal("copy with a failing reader succeeded")
			}
			var count int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&count); err != nil || count != 1000 {
				t.Fatalf("after failed copy: %d rows, %v", count, err)
			}
		})
	}
}

type failingReader struct {
	data string
	done bool
}

func (r *failingReader) Read(p []byte) (int, error) {
	if !r.done {
		r.done = true
		return copy(p, r.data), nil
	}
	return 0, fmt.Errorf("client gave up")
}

// TestManyClientsSmallPool runs 500 concurrent clients on a pool of 10, in
// each pool mode, and checks from the server itself that no more than 10
// backends serve the database meanwhile.
func TestManyClientsSmallPool(t *testing.T) {
	for _, poolMode := range []string{ModeTransaction, ModeSession} {
		t.Run(poolMode, func(t *testing.T) { manyClients(t, poolMode) })
	}
}

func manyClients(t *testing.T, poolMode string) {
	dbName, clients := "many_clients_"+poolMode, 500
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolMode = poolMode })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	watch, err := pgx.Connect(ctx, cluster.SuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(ctx)

	var maxBackends atomic.Int64
	stop := make(chan struct{})
	var watched sync.WaitGroup
	watched.Add(1)
	go func() {
		defer watched.Done()
		for {
			var n int64
			if err := watch.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", dbName).Scan(&n); err == nil && n > maxBackends.Load() {
				maxBackends.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	g, gctx := errgroup.WithContext(ctx)
	start := make(chan struct{})
	for i := range clients {
		g.Go(func() error {
			cfg, _ := pgx.ParseConfig(p.dsn(cluster.SuperUserName(), "", dbName))
			cfg.DefaultQueryExecMode = execModes[i%len(execModes)]
			conn, err := pgx.ConnectConfig(gctx, cfg)
			if err != nil {
				return fmt.Errorf("client %d connect: %w", i, err)
			}
			defer conn.Close(context.Background())
			<-start
			for j := range 5 {
				var got int
				if err := conn.QueryRow(gctx, "SELECT $1::int FROM pg_sleep(0.002)", i*10+j).Scan(&got); err != nil || got != i*10+j {
					return fmt.Errorf("client %d query %d: %d, %w", i, j, got, err)
				}
				tx, err := conn.Begin(gctx)
				if err != nil {
					return fmt.Errorf("client %d begin: %w", i, err)
				}
				if _, err := tx.Exec(gctx, "SELECT pg_sleep(0.001)"); err != nil {
					return fmt.Errorf("client %d in tx: %w", i, err)
				}
				if err := tx.Commit(gctx); err != nil {
					return fmt.Errorf("client %d commit: %w", i, err)
				}
			}
			return nil
		})
	}
	close(start)
	err = g.Wait()
	close(stop)
	watched.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if m := maxBackends.Load(); m > 10 || m == 0 {
		t.Fatalf("pg_stat_activity showed up to %d backends for the database; want 1..10", m)
	} else {
		t.Logf("%d clients served by at most %d backends", clients, m)
	}
}
