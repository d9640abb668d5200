package proxy

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Answers the client must get while it still writes, or after it has gone:
// a hang-up during a long query, a Flush with no Sync, a pipeline both ways.

// TestSlowQueryClientGone: a client that hangs up during a long query, before
// and after its answer has been awaited for a while, leaves its server cancelled and
// back in the pool (of one) for the next client.
func TestSlowQueryClientGone(t *testing.T) {
	const dbName = "slow_query_gone"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1 })
	for _, after := range []time.Duration{50 * time.Millisecond, 750 * time.Millisecond} {
		c := loggedInTo(t, p, dbName)
		c.sendAll(t, &pgproto3.Query{String: "SELECT pg_sleep(30)"})
		time.Sleep(after)
		c.Close()

		start := time.Now()
		next := p.connect(t, dbName, pgx.QueryExecModeSimpleProtocol)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var one int
		err := next.QueryRow(ctx, "SELECT 1").Scan(&one)
		cancel()
		if err != nil || one != 1 {
			t.Fatalf("hang-up after %s: next client: %v", after, err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("hang-up after %s: next client served after %s", after, took)
		}
		if n := countBackends(t, dbName, "query LIKE '%pg_sleep%' AND state = 'active'"); n != 0 {
			t.Fatalf("hang-up after %s: %d backends still sleeping", after, n)
		}
		next.Close(context.Background())
	}
}

// TestFlushWithoutSync: a client that sends Flush and waits for the answers
// before it sends anything more gets them.
func TestFlushWithoutSync(t *testing.T) {
	p := startProxy(t, nil)
	c := loggedInTo(t, p, "postgres")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.fe.Send(&pgproto3.Parse{Query: "SELECT $1::int + 1"})
	c.fe.Send(&pgproto3.Describe{ObjectType: 'S'})
	c.sendAll(t, &pgproto3.Flush{})
	for _, want := range []string{"*pgproto3.ParseComplete", "*pgproto3.ParameterDescription", "*pgproto3.RowDescription"} {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("waiting for %s after Flush: %v", want, err)
		}
		if got := fmt.Sprintf("%T", msg); got != want {
			t.Fatalf("after Flush: got %s, want %s", got, want)
		}
	}
	c.fe.Send(&pgproto3.Bind{Parameters: [][]byte{[]byte("41")}})
	c.fe.Send(&pgproto3.Execute{})
	c.sendAll(t, &pgproto3.Sync{})
	var got string
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := msg.(*pgproto3.DataRow); ok {
			got = string(d.Values[0])
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if got != "42" {
		t.Fatalf("got %q, want 42", got)
	}
}

// TestPipelineBothWays: a client that writes a long pipeline while it reads
// the answers (as libpq's and pgx's pipeline modes do), with more each way
// than socket buffers hold, is not left waiting.
func TestPipelineBothWays(t *testing.T) {
	p := startProxy(t, nil)
	c := loggedInTo(t, p, "postgres")
	const n = 3000 // × 4 KB each way: 12 MB
	c.SetDeadline(time.Now().Add(60 * time.Second))
	q := "SELECT repeat('x', 4000) /* " + strings.Repeat("p", 4000) + " */"
	msg, _ := (&pgproto3.Query{String: q}).Encode(nil)
	werr := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			if _, err := c.Write(msg); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	for i := 0; i < n; i++ {
		if err := c.untilReady(); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
}

// TestSlowReaderBoundedMemory: ten clients that ask for a 3 GB result and
// do not read it make pgmux hold a bounded amount, not the results: a
// server is read no faster than its client takes the answer. When they
// leave, their servers come back and the memory goes. One client then reads
// a whole result.
func TestSlowReaderBoundedMemory(t *testing.T) {
	const dbName = "slow_readers"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 12 })
	heap := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	// A set-returning function in the select list streams its rows: the
	// server makes them only as fast as they are read.
	query := func(rows int) *pgproto3.Query {
		return &pgproto3.Query{String: fmt.Sprintf("SELECT repeat('x', 1000) FROM (SELECT generate_series(1, %d)) s", rows)}
	}
	before := heap()
	var readers []*rawClient
	for range 10 {
		c := loggedInTo(t, p, dbName)
		if p.options().RelayLoop && runtime.GOOS == "linux" {
			p.loopServes(t, c)
		}
		c.sendAll(t, query(3_000_000))
		readers = append(readers, c)
	}
	time.Sleep(3 * time.Second) // the servers write all they can meanwhile
	grown := heap() - before
	t.Logf("heap grew by %d KiB for ten clients that do not read", grown>>10)
	if grown > 64<<20 {
		t.Fatalf("pgmux's heap grew by %d MiB for ten clients that do not read", grown>>20)
	}
	for _, c := range readers {
		c.Close()
	}
	waitFor(t, 10*time.Second, func() bool {
		return countBackends(t, dbName, "state = 'active' AND query LIKE '%generate_series%'") == 0
	})
	if left := heap() - before; left > 8<<20 {
		t.Fatalf("%d MiB still held after the clients left", left>>20)
	}

	c := loggedIn(t, p)
	const rows = 100_000
	c.sendAll(t, query(rows))
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	n := 0
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("after %d rows: %v", n, err)
		}
		if _, ok := msg.(*pgproto3.DataRow); ok {
			n++
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if n != rows {
		t.Fatalf("%d rows, want %d", n, rows)
	}
}
