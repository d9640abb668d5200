package proxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sync/errgroup"
)

// TestPgxStatementCache runs pgx with its default statement cache, 200
// concurrent clients on a pool of 5 in transaction mode, each running a few
// different queries in and out of transactions for several seconds.
func TestPgxStatementCache(t *testing.T) {
	const dbName = "stmt_cache"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	if err := needPG(t).Exec(dbName, "CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 100) g"); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 5 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stop := time.Now().Add(4 * time.Second)
	var queries atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for i := range 200 {
		g.Go(func() error {
			cfg, _ := pgx.ParseConfig(p.dsn(cluster.SuperUserName(), "", dbName))
			// The default: QueryExecModeCacheStatement.
			conn, err := pgx.ConnectConfig(gctx, cfg)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			r := rand.New(rand.NewPCG(uint64(i), 1))
			for n := 0; time.Now().Before(stop); n++ {
				k := r.IntN(100) + 1
				switch n % 4 {
				case 0:
					var v string
					if err := conn.QueryRow(gctx, "SELECT v FROM kv WHERE k = $1", k).Scan(&v); err != nil || v != "v"+strconv.Itoa(k) {
						return fmt.Errorf("client %d: select: %q %w", i, v, err)
					}
				case 1:
					var sum int
					if err := conn.QueryRow(gctx, "SELECT $1::int + $2::int", k, n).Scan(&sum); err != nil || sum != k+n {
						return fmt.Errorf("client %d: sum: %w", i, err)
					}
				case 2:
					tx, err := conn.Begin(gctx)
					if err != nil {
						return err
					}
					var v string
					if err := tx.QueryRow(gctx, "SELECT v FROM kv WHERE k = $1 FOR SHARE", k).Scan(&v); err != nil {
						return fmt.Errorf("client %d: in tx: %w", i, err)
					}
					var c int
					if err := tx.QueryRow(gctx, "SELECT count(*) FROM kv WHERE k <= $1", k).Scan(&c); err != nil || c != k {
						return fmt.Errorf("client %d: count in tx: %d %w", i, c, err)
					}
					if err := tx.Commit(gctx); err != nil {
						return err
					}
				case 3:
					rows, _ := conn.Query(gctx, "SELECT k FROM kv WHERE k BETWEEN $1 AND $2 ORDER BY k", k, k+4)
					ks, err := pgx.CollectRows(rows, pgx.RowTo[int32])
					if err != nil || len(ks) == 0 || ks[0] != int32(k) {
						return fmt.Errorf("client %d: range: %v %w", i, ks, err)
					}
				}
				queries.Add(1)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	st := p.Prepared()
	t.Logf("%d queries by 200 clients; statements prepared on servers %d, hits %d, misses %d", queries.Load(), st.Prepared, st.Hits, st.Misses)
	if st.Hits == 0 || st.Prepared == 0 {
		t.Fatalf("mapping counters did not move: %+v", st)
	}
	// Identical statements are shared: 5 servers need at most 5 × the 5
	// distinct statements (pgx's describe-only statements included), not one per client.
	if st.Prepared > 5*10 {
		t.Fatalf("%d statements prepared on 5 servers for a handful of distinct queries", st.Prepared)
	}
}

// TestPreparedPerBackend checks pg_prepared_statements on every backend:
// at most the number of distinct statements, and at most
// max_prepared_statements.
func TestPreparedPerBackend(t *testing.T) {
	for _, max := range []int{200, 2} {
		t.Run(fmt.Sprintf("max=%d", max), func(t *testing.T) {
			const poolSize, distinct = 3, 4
			p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = poolSize; o.MaxPreparedStatements = max })
			ctx := context.Background()
			var g errgroup.Group
			for i := range 30 {
				g.Go(func() error {
					conn := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
					for n := range 20 {
						q := fmt.Sprintf("SELECT %d + $1::int", (i+n)%distinct)
						var v int
						if err := conn.QueryRow(ctx, q, n).Scan(&v); err != nil || v != (i+n)%distinct+n {
							return fmt.Errorf("client %d: %d %w", i, v, err)
						}
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
			// Pin every backend with an open transaction and look.
			want := min(distinct, max)
			seen := map[int]bool{}
			for range poolSize {
				conn := p.connect(t, "postgres", pgx.QueryExecModeSimpleProtocol)
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(ctx)
				var pid, n int
				if err := tx.QueryRow(ctx, "SELECT pg_backend_pid(), count(*) FROM pg_prepared_statements WHERE name LIKE 'pgmux_%'").Scan(&pid, &n); err != nil {
					t.Fatal(err)
				}
				seen[pid] = true
				if n > want {
					t.Errorf("backend %d holds %d statements; want at most %d", pid, n, want)
				}
			}
			if len(seen) != poolSize {
				t.Fatalf("looked at %d distinct backends, want %d", len(seen), poolSize)
			}
			if st := p.Prepared(); max == 2 && st.Evictions == 0 {
				t.Fatalf("no eviction with max_prepared_statements=2: %+v", st)
			}
		})
	}
}

// TestSameNameDifferentQueries: two clients prepare the same name for
// different queries and each gets its own results.
func TestSameNameDifferentQueries(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1 })
	ctx := context.Background()
	a := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	b := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	if _, err := a.Prepare(ctx, "same", "SELECT 'from a'::text || $1::text"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prepare(ctx, "same", "SELECT 'from b'::text || $1::text || '!'"); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		var va, vb string
		if err := a.QueryRow(ctx, "same", strconv.Itoa(i)).Scan(&va); err != nil || va != fmt.Sprintf("from a%d", i) {
			t.Fatalf("a: %q %v", va, err)
		}
		if err := b.QueryRow(ctx, "same", strconv.Itoa(i)).Scan(&vb); err != nil || vb != fmt.Sprintf("from b%d!", i) {
			t.Fatalf("b: %q %v", vb, err)
		}
	}
}

// step is one exchange of a protocol script: messages sent, then every
// message read up to ReadyForQuery, summarised.
type step struct {
	name string
	msgs []pgproto3.FrontendMessage
}

// runScript runs the steps on a fresh connection to addr and returns, per
// step, what the server answered, one line per message.
func runScript(t *testing.T, addr, user string, steps []step) []string {
	t.Helper()
	c := dialRaw(t, addr)
	if err := c.startup(user, "postgres"); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range steps {
		for _, m := range s.msgs {
			c.fe.Send(m)
		}
		if err := c.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		// One ReadyForQuery answers each Sync and each Query.
		readies := 0
		for _, m := range s.msgs {
			switch m.(type) {
			case *pgproto3.Sync, *pgproto3.Query:
				readies++
			}
		}
		var lines []string
		for readies > 0 {
			msg, err := c.fe.Receive()
			if err != nil {
				t.Fatalf("step %s: %v", s.name, err)
			}
			switch m := msg.(type) {
			case *pgproto3.ErrorResponse:
				lines = append(lines, fmt.Sprintf("E %s %s", m.Code, m.Message))
			case *pgproto3.CommandComplete:
				lines = append(lines, "C "+string(m.CommandTag))
			case *pgproto3.DataRow:
				var vals []string
				for _, v := range m.Values {
					vals = append(vals, string(v))
				}
				lines = append(lines, "D "+strings.Join(vals, ","))
			case *pgproto3.RowDescription:
				var cols []string
				for _, f := range m.Fields {
					cols = append(cols, fmt.Sprintf("%s:%d", f.Name, f.DataTypeOID))
				}
				lines = append(lines, "T "+strings.Join(cols, ","))
			case *pgproto3.ParameterDescription:
				lines = append(lines, fmt.Sprint("t ", m.ParameterOIDs))
			case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
				continue
			default:
				lines = append(lines, fmt.Sprintf("%T", msg))
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				readies--
			}
		}
		out = append(out, s.name+": "+strings.Join(lines, " | "))
	}
	return out
}

// TestPreparedDifferential replays one script of named-statement traffic —
// Parse, re-Parse of a name in use, Bind and Describe of unknown names,
// Close, DEALLOCATE, DEALLOCATE ALL, DISCARD ALL, pipelines with errors —
// directly against PostgreSQL and through pgmux while another client keeps
// the pool's servers changing hands, and requires the same answers.
func TestPreparedDifferential(t *testing.T) {
	c := needPG(t)
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 2 })
	user := c.SuperUserName()
	parse := func(name, q string, oids ...uint32) *pgproto3.Parse {
		return &pgproto3.Parse{Name: name, Query: q, ParameterOIDs: oids}
	}
	bind := func(stmt string, args ...string) *pgproto3.Bind {
		var params [][]byte
		for _, a := range args {
			params = append(params, []byte(a))
		}
		return &pgproto3.Bind{PreparedStatement: stmt, Parameters: params}
	}
	exec := &pgproto3.Execute{}
	sync := &pgproto3.Sync{}
	q := func(s string) *pgproto3.Query { return &pgproto3.Query{String: s} }
	steps := []step{
		{"parse", []pgproto3.FrontendMessage{parse("s1", "SELECT 1 AS one"), sync}},
		{"reparse same name", []pgproto3.FrontendMessage{parse("s1", "SELECT 2 AS two"), sync}},
		{"reparse then bind in one pipeline", []pgproto3.FrontendMessage{parse("s1", "SELECT 3"), bind("s1"), exec, sync}},
		{"bind s1", []pgproto3.FrontendMessage{bind("s1"), exec, sync}},
		{"describe s1", []pgproto3.FrontendMessage{&pgproto3.Describe{ObjectType: 'S', Name: "s1"}, sync}},
		{"close s1", []pgproto3.FrontendMessage{&pgproto3.Close{ObjectType: 'S', Name: "s1"}, sync}},
		{"bind closed", []pgproto3.FrontendMessage{bind("s1"), exec, sync}},
		{"close unknown", []pgproto3.FrontendMessage{&pgproto3.Close{ObjectType: 'S', Name: "nope"}, sync}},
		{"parse s1 again, other query", []pgproto3.FrontendMessage{parse("s1", "SELECT $1::int * 10 AS tens", 23), bind("s1", "4"), exec, sync}},
		{"bind unknown", []pgproto3.FrontendMessage{bind("never"), exec, sync}},
		{"describe unknown", []pgproto3.FrontendMessage{&pgproto3.Describe{ObjectType: 'S', Name: "never"}, sync}},
		{"deallocate s1", []pgproto3.FrontendMessage{q("DEALLOCATE s1")}},
		{"deallocate s1 twice", []pgproto3.FrontendMessage{q("deallocate prepare s1")}},
		{"bind deallocated", []pgproto3.FrontendMessage{bind("s1", "1"), exec, sync}},
		{"two statements", []pgproto3.FrontendMessage{parse("a", "SELECT 'a'"), parse("B", "SELECT 'b'"), sync}},
		{"deallocate quoted", []pgproto3.FrontendMessage{q(`DEALLOCATE "B";`)}},
		{"a still there", []pgproto3.FrontendMessage{bind("a"), exec, bind("B"), exec, sync}},
		{"error skips the rest", []pgproto3.FrontendMessage{bind("a"), exec, parse("c", "SELECT 1/0"), bind("c"), exec, parse("d", "SELECT 'd'"), sync}},
		{"d was skipped", []pgproto3.FrontendMessage{bind("d"), exec, sync}},
		{"c exists", []pgproto3.FrontendMessage{bind("c"), exec, sync}},
		{"deallocate all", []pgproto3.FrontendMessage{q("DEALLOCATE ALL")}},
		{"a gone", []pgproto3.FrontendMessage{bind("a"), exec, sync}},
		{"in a transaction", []pgproto3.FrontendMessage{q("BEGIN"), parse("t", "SELECT 't'"), bind("t"), exec, sync}},
		{"deallocate in transaction", []pgproto3.FrontendMessage{q("DEALLOCATE t")}},
		{"t gone in transaction", []pgproto3.FrontendMessage{bind("t"), exec, sync}},
		{"rollback", []pgproto3.FrontendMessage{q("ROLLBACK")}},
		{"parse after rollback", []pgproto3.FrontendMessage{parse("u", "SELECT 'u'"), sync}},
		{"discard all", []pgproto3.FrontendMessage{q("DISCARD ALL")}},
		{"u gone", []pgproto3.FrontendMessage{bind("u"), exec, sync}},
		{"unnamed across syncs", []pgproto3.FrontendMessage{parse("", "SELECT 'unnamed'"), sync}},
		{"bind unnamed", []pgproto3.FrontendMessage{bind(""), exec, sync}},
	}
	direct := runScript(t, fmt.Sprintf("%s:%d", c.Host, c.Port), user, steps)

	// Keep the pool's two servers busy with another client, so the script
	// lands on either.
	stop := make(chan struct{})
	churn := make(chan error, 1)
	go func() {
		conn := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
		for i := 0; ; i++ {
			select {
			case <-stop:
				churn <- nil
				return
			default:
			}
			if _, err := conn.Exec(context.Background(), "SELECT pg_sleep(0.001), $1::int", i); err != nil {
				churn <- err
				return
			}
		}
	}()
	proxied := runScript(t, p.addr, user, steps)
	close(stop)
	if err := <-churn; err != nil {
		t.Fatal(err)
	}
	for i := range direct {
		if direct[i] != proxied[i] {
			t.Errorf("step %d differs:\n  postgres: %s\n  pgmux:    %s", i, direct[i], proxied[i])
		}
	}
	if testing.Verbose() {
		t.Log("\n" + strings.Join(proxied, "\n"))
	}
}

// TestPgbenchPrepared: pgbench -M prepared through transaction mode, the
// select-only script at 100 clients and TPC-B-like at 10, pool of 10.
func TestPgbenchPrepared(t *testing.T) {
	bin := pgbenchDB(t, "pgbench_prepared")
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 10 })
	t.Run("select-only 100 clients", func(t *testing.T) {
		runPgbench(t, bin, p, "pgbench_prepared", "-M", "prepared", "-S", "-c", "100")
	})
	t.Run("tpcb 10 clients", func(t *testing.T) {
		runPgbench(t, bin, p, "pgbench_prepared", "-M", "prepared", "-c", "10")
	})
}
