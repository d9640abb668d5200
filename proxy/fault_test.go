package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestClientKilledHoldingLock kills a client in the middle of a transaction
// that holds a row lock: the next client of the pool gets the lock within
// 1 s, and no backend is left idle in transaction.
func TestClientKilledHoldingLock(t *testing.T) {
	const dbName = "killed_client"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	if err := needPG(t).Exec(dbName, "CREATE TABLE accounts (id int PRIMARY KEY, balance int); INSERT INTO accounts VALUES (1, 100)"); err != nil {
		t.Fatal(err)
	}
	for _, poolMode := range []string{ModeTransaction, ModeSession} {
		t.Run(poolMode, func(t *testing.T) {
			p := startProxy(t, func(o *Options, db *Database) { db.PoolMode = poolMode; db.PoolSize = 2 })
			ctx := context.Background()
			for _, midCopy := range []bool{false, true} {
				victim := p.connect(t, dbName, pgx.QueryExecModeExec)
				tx, err := victim.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				var bal int
				if err := tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = 1 FOR UPDATE").Scan(&bal); err != nil {
					t.Fatal(err)
				}
				if midCopy {
					// Leave it in the middle of a COPY IN as well.
					if _, err := tx.Exec(ctx, "CREATE TEMP TABLE scratch (x int)"); err != nil {
						t.Fatal(err)
					}
					msg, _ := (&pgproto3.Query{String: "COPY scratch FROM STDIN"}).Encode(nil)
					victim.PgConn().Conn().Write(msg)
					buf := make([]byte, 64)
					victim.PgConn().Conn().SetReadDeadline(time.Now().Add(5 * time.Second))
					if n, err := victim.PgConn().Conn().Read(buf); err != nil || buf[0] != 'G' {
						t.Fatalf("want CopyInResponse, got %q, %v", buf[:n], err)
					}
				}
				victim.PgConn().Conn().Close() // the client dies without a word

				next := p.connect(t, dbName, pgx.QueryExecModeExec)
				start := time.Now()
				tx2, err := next.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx2.Exec(ctx, "SET LOCAL lock_timeout = '1s'"); err != nil {
					t.Fatal(err)
				}
				if _, err := tx2.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1"); err != nil {
					t.Fatalf("midCopy=%v: lock not released: %v", midCopy, err)
				}
				if err := tx2.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				if took := time.Since(start); took > time.Second {
					t.Fatalf("lock taken after %s", took)
				}
				waitNoIdleInTransaction(t, dbName)
			}
		})
	}
}

// TestServerRestart restarts PostgreSQL under the proxy: clients whose
// server died get an error, broken backends are dropped, and new transactions
// succeed once the server is back.
func TestServerRestart(t *testing.T) {
	c := needPG(t)
	if c.External() {
		t.Skip("PGMUX_TEST_DSN server cannot be restarted")
	}
	const dbName = "restart"
	if err := c.CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 3 })
	ctx := context.Background()
	conns := make([]*pgx.Conn, 3)
	for i := range conns {
		conns[i] = p.connect(t, dbName, pgx.QueryExecModeExec)
		if _, err := conns[i].Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	// One client is inside a transaction when the server dies.
	tx, err := conns[0].Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(); err != nil { // immediate stop, then start
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a transaction survived the server's restart")
	}
	// The others held no server: their next transaction gets a fresh one,
	// the dead idle ones being found and dropped before they are lent.
	for i, conn := range conns[1:] {
		var v int
		if err := conn.QueryRow(ctx, "SELECT $1::int", i).Scan(&v); err != nil || v != i {
			t.Fatalf("client %d after restart: %v", i+1, err)
		}
	}
	fresh := p.connect(t, dbName, pgx.QueryExecModeExec)
	if _, err := fresh.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("new client after restart: %v", err)
	}
}
