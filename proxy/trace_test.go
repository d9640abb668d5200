package proxy

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmux/pgmux/internal/otlp"
	"github.com/pgmux/pgmux/tracing"
)

// startTraced starts a proxy whose tracer exports to a receiver of the
// test's, and returns both; flush exports what is queued and returns the
// spans received.
func startTraced(t *testing.T, ratio float64, includeQuery bool, edit func(o *Options, db *Database)) (p *testProxy, flush func() []otlp.Span) {
	t.Helper()
	recv, err := otlp.Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { recv.Close() })
	tr, err := tracing.New(context.Background(), tracing.Options{Endpoint: recv.URL, SampleRatio: ratio, IncludeQuery: includeQuery})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	shutdown := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := tr.Shutdown(ctx); err != nil {
				t.Errorf("tracer shutdown: %v", err)
			}
		})
	}
	t.Cleanup(shutdown)
	p = startProxy(t, func(o *Options, db *Database) {
		o.Tracer = tr
		if edit != nil {
			edit(o, db)
		}
	})
	return p, func() []otlp.Span { shutdown(); return recv.Spans() }
}

// traceparent returns a sampled traceparent for trace and span ids made of
// the digit d, as sqlcommenter writes it in a comment.
func traceparent(d byte, sampled bool) (tid, sid, comment string) {
	tid, sid = string(bytesOf(d, 32)), string(bytesOf(d, 16))
	flags := "01"
	if !sampled {
		flags = "00"
	}
	return tid, sid, fmt.Sprintf("/*traceparent='00-%s-%s-%s'*/", tid, sid, flags)
}

func bytesOf(d byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = d
	}
	return b
}

// txSpans is a transaction's three spans, found by trace id.
type txSpans struct{ tx, wait, server otlp.Span }

func findTx(t *testing.T, spans []otlp.Span, traceID string) []txSpans {
	t.Helper()
	var out []txSpans
	for _, s := range spans {
		if s.TraceID != traceID || s.Name != "pgmux.transaction" {
			continue
		}
		ts := txSpans{tx: s}
		for _, c := range spans {
			if c.TraceID == traceID && c.ParentSpanID == s.SpanID {
				switch c.Name {
				case "pgmux.pool_wait":
					ts.wait = c
				case "pgmux.server":
					ts.server = c
				default:
					t.Errorf("unexpected child %q", c.Name)
				}
			}
		}
		out = append(out, ts)
	}
	return out
}

// checkNested: pool_wait and server lie within the transaction span, one
// after the other.
func (ts txSpans) checkNested(t *testing.T) {
	t.Helper()
	tx, w, s := ts.tx, ts.wait, ts.server
	if w.Name == "" || s.Name == "" {
		t.Fatalf("transaction %s lacks a child: wait %q, server %q", tx.SpanID, w.Name, s.Name)
	}
	if w.Start.Before(tx.Start) || w.End.After(s.Start) || s.End.After(tx.End) || s.Start.After(s.End) {
		t.Errorf("spans not nested: tx %v..%v wait %v..%v server %v..%v", tx.Start, tx.End, w.Start, w.End, s.Start, s.End)
	}
	if w.Duration()+s.Duration() > tx.Duration() {
		t.Errorf("pool_wait %s + server %s > transaction %s", w.Duration(), s.Duration(), tx.Duration())
	}
}

// TestTraceSpans: each transaction is a pgmux.transaction span with its
// pool_wait and server children, under the parent the client sent in a
// SQL comment (simple and extended protocol) or its application_name,
// with the attributes the issue asks and no query text unless asked.
func TestTraceSpans(t *testing.T) {
	ctx := context.Background()
	p, flush := startTraced(t, 1, false, nil)

	tid1, sid1, c1 := traceparent('1', true)
	ext := p.connect(t, "postgres", pgx.QueryExecModeExec) // extended: the comment is in the Parse
	if _, err := ext.Exec(ctx, "SELECT $1::int "+c1, 1); err != nil {
		t.Fatal(err)
	}
	tid2, sid2, c2 := traceparent('2', true)
	simple := p.connect(t, "postgres", pgx.QueryExecModeSimpleProtocol)
	if _, err := simple.Exec(ctx, c2+" SELECT 2"); err != nil { // anywhere in the statement
		t.Fatal(err)
	}
	// A transaction of four statements, one failing: its context comes
	// with the first.
	tid3, sid3, c3 := traceparent('3', true)
	for _, q := range []string{"BEGIN " + c3, "SELECT 1", "SELECT 1/0", "ROLLBACK"} {
		simple.Exec(ctx, q)
	}
	// Not sampled by its parent: no span.
	tid4, _, c4 := traceparent('4', false)
	if _, err := simple.Exec(ctx, "SELECT 4 "+c4); err != nil {
		t.Fatal(err)
	}
	// From application_name.
	tid5, sid5, _ := traceparent('5', true)
	cfg, err := pgx.ParseConfig(p.dsn(cluster.SuperUserName(), "", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "web traceparent=00-" + tid5 + "-" + sid5 + "-01"
	app, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	if _, err := app.Exec(ctx, "SELECT 5"); err != nil {
		t.Fatal(err)
	}
	// No context: a trace of its own.
	if _, err := simple.Exec(ctx, "SELECT 6"); err != nil {
		t.Fatal(err)
	}
	spans := flush()

	for _, c := range []struct {
		tid, parent string
		statements  string
	}{{tid1, sid1, "1"}, {tid2, sid2, "1"}, {tid3, sid3, "4"}, {tid5, sid5, "1"}} {
		txs := findTx(t, spans, c.tid)
		if len(txs) != 1 {
			t.Fatalf("trace %s: %d transactions, want 1 (of %d spans)", c.tid, len(txs), len(spans))
		}
		ts := txs[0]
		if ts.tx.ParentSpanID != c.parent {
			t.Errorf("trace %s: parent %s, want %s", c.tid, ts.tx.ParentSpanID, c.parent)
		}
		ts.checkNested(t)
		a := ts.tx.Attrs
		if a["db.namespace"] != "postgres" || a["db.user"] != cluster.SuperUserName() || a["pgmux.pool_mode"] != ModeTransaction ||
			a["pgmux.statements"] != c.statements || a["db.system.name"] != "postgresql" {
			t.Errorf("trace %s: attributes %v", c.tid, a)
		}
		if _, ok := a["db.query.text"]; ok {
			t.Errorf("query text exported without include_query: %v", a)
		}
		sa := ts.server.Attrs
		if sa["server.address"] == "" || sa["pgmux.server_pid"] == "" || sa["pgmux.server_pid"] == "0" {
			t.Errorf("server span attributes %v", sa)
		}
	}
	tx3 := findTx(t, spans, tid3)[0].tx
	if tx3.Attrs["db.response.status_code"] != "22012" || !tx3.StatusError {
		t.Errorf("failed transaction: attributes %v, error status %v", tx3.Attrs, tx3.StatusError)
	}
	if n := len(findTx(t, spans, tid4)); n != 0 {
		t.Errorf("%d transactions traced under an unsampled parent", n)
	}
	roots := 0
	for _, s := range spans {
		if s.Name == "pgmux.transaction" && s.ParentSpanID == "" {
			roots++
		}
	}
	if roots < 1 {
		t.Errorf("no transaction without a parent traced")
	}
	t.Logf("%d spans; a transaction's: %s (wait %s, server %s)", len(spans), findTx(t, spans, tid1)[0].tx.Duration(),
		findTx(t, spans, tid1)[0].wait.Duration(), findTx(t, spans, tid1)[0].server.Duration())
}

// TestTraceIncludeQuery: with include_query, the first statement's text.
func TestTraceIncludeQuery(t *testing.T) {
	p, flush := startTraced(t, 1, true, nil)
	tid, _, c := traceparent('7', true)
	conn := p.connect(t, "postgres", pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(context.Background(), "SELECT 7 "+c); err != nil {
		t.Fatal(err)
	}
	txs := findTx(t, flush(), tid)
	if len(txs) != 1 || txs[0].tx.Attrs["db.query.text"] != "SELECT 7 "+c {
		t.Fatalf("want the query's text, got %+v", txs)
	}
}

// TestTracePoolWait: with a pool of 1 and 20 clients, pool_wait spans show
// the queueing: their P99 is higher than with a pool of 20.
func TestTracePoolWait(t *testing.T) {
	p99 := map[int]time.Duration{}
	for _, size := range []int{1, 20} {
		p, flush := startTraced(t, 1, false, func(o *Options, db *Database) { db.PoolSize = size })
		// A first round dials the pool's servers, outside the trace
		// measured: the waits for a dial are not queueing.
		tid, _, c := traceparent('8', true)
		for _, q := range []string{"SELECT pg_sleep(0.001)", "SELECT pg_sleep(0.001) " + c} {
			var wg sync.WaitGroup
			for range 20 {
				conn := p.connect(t, "postgres", pgx.QueryExecModeSimpleProtocol)
				wg.Go(func() {
					for range 25 {
						if _, err := conn.Exec(context.Background(), q); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		}
		var waits []time.Duration
		for _, s := range flush() {
			if s.Name == "pgmux.pool_wait" && s.TraceID == tid {
				waits = append(waits, s.Duration())
			}
		}
		if len(waits) < 500 {
			t.Fatalf("pool of %d: %d pool_wait spans for 500 transactions", size, len(waits))
		}
		slices.Sort(waits)
		p99[size] = waits[len(waits)*99/100]
		t.Logf("pool of %d, 20 clients: %d pool_wait spans, P50 %s, P99 %s", size, len(waits), waits[len(waits)/2], p99[size])
	}
	if p99[1] <= p99[20] {
		t.Fatalf("pool_wait P99 with a pool of 1 (%s) not above a pool of 20's (%s)", p99[1], p99[20])
	}
}
