package demo

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgmux/pgmux/internal/otlp"
	"github.com/pgmux/pgmux/proxy"
	"github.com/pgmux/pgmux/tracing"
)

// startTracedPgmux starts a pgmux in transaction mode whose spans go to
// endpoint, and returns its port and a function that exports what it
// holds and stops it.
func startTracedPgmux(t *testing.T, endpoint string) (int, func()) {
	t.Helper()
	tr, err := tracing.New(context.Background(), tracing.Options{Endpoint: endpoint, SampleRatio: 1})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := proxy.New(pgmuxOptions(tr))
	go srv.Serve(ln)
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		tr.Shutdown(ctx)
	}
	t.Cleanup(stop)
	return ln.Addr().(*net.TCPAddr).Port, stop
}

// TestTraceTransfer: a POST /transfers is one trace holding the request's
// HTTP span, its database transaction's span with the query spans under
// it, and pgmux's pgmux.transaction span under the same transaction span,
// with its pool_wait and server children inside it. A GET /products that
// misses the cache has Redis spans and a query span with pgmux's
// transaction under it.
func TestTraceTransfer(t *testing.T) {
	if cluster == nil {
		t.Skip("needs PostgreSQL and Redis (not started under -short)")
	}
	recv, err := otlp.Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	port, stopPgmux := startTracedPgmux(t, recv.URL)
	d := newDemo(t, "demo_traced", true, func(c *Config) {
		c.OTLPEndpoint = recv.URL
		c.DatabaseURL = fmt.Sprintf("postgres://%s@127.0.0.1:%d/demo_traced?sslmode=disable", cluster.SuperUserName(), port)
	})
	if status, body := d.do(t, "POST", "/transfers", TransferRequest{From: 1, To: 2, AmountCents: 5, IdempotencyKey: "traced-1"}); status != 200 {
		t.Fatalf("transfer: %d %s", status, body)
	}
	if status, body := d.do(t, "GET", "/products?ids=3,4", nil); status != 200 {
		t.Fatalf("products: %d %s", status, body)
	}
	d.close() // exports the demo's spans
	stopPgmux()
	spans := recv.Spans()

	byID := map[string]otlp.Span{}
	for _, s := range spans {
		byID[s.SpanID] = s
	}
	request := func(name string) otlp.Span {
		t.Helper()
		for _, s := range spans {
			if s.Name == name && isRequest(s) {
				return s
			}
		}
		t.Fatalf("no %s span among %d", name, len(spans))
		return otlp.Span{}
	}
	children := func(parent otlp.Span, name string) []otlp.Span {
		var out []otlp.Span
		for _, s := range spans {
			if s.ParentSpanID == parent.SpanID && s.TraceID == parent.TraceID && (name == "" || s.Name == name) {
				out = append(out, s)
			}
		}
		return out
	}
	within := func(inner, outer otlp.Span) {
		t.Helper()
		if inner.Start.Before(outer.Start) || inner.End.After(outer.End) {
			t.Errorf("%s %v..%v not within %s %v..%v", inner.Name, inner.Start, inner.End, outer.Name, outer.Start, outer.End)
		}
	}
	// checkPgmux: one pgmux.transaction under parent, its two children
	// inside it, one after the other; it returns the transaction span.
	checkPgmux := func(parent otlp.Span, statements string) otlp.Span {
		t.Helper()
		txs := children(parent, "pgmux.transaction")
		if len(txs) != 1 {
			t.Fatalf("%d pgmux.transaction spans under %s", len(txs), parent.Name)
		}
		tx := txs[0]
		within(tx, parent)
		waits, servers := children(tx, "pgmux.pool_wait"), children(tx, "pgmux.server")
		if len(waits) != 1 || len(servers) != 1 {
			t.Fatalf("pgmux.transaction has %d pool_wait and %d server spans", len(waits), len(servers))
		}
		within(waits[0], tx)
		within(servers[0], tx)
		if waits[0].End.After(servers[0].Start) || waits[0].Duration()+servers[0].Duration() > tx.Duration() {
			t.Errorf("pool_wait %v..%v and server %v..%v overlap or outlast the transaction", waits[0].Start, waits[0].End, servers[0].Start, servers[0].End)
		}
		if tx.Service != "pgmux" || tx.Attrs["pgmux.statements"] != statements {
			t.Errorf("pgmux.transaction of service %q, %s statements, want %s", tx.Service, tx.Attrs["pgmux.statements"], statements)
		}
		t.Logf("under %s (%s): pgmux.transaction %s = pool_wait %s + server %s + relaying", parent.Name, parent.Duration(),
			tx.Duration(), waits[0].Duration(), servers[0].Duration())
		return tx
	}

	// The transfer.
	post := request("POST /transfers")
	dbtx := children(post, "db.transaction")
	if len(dbtx) != 1 {
		t.Fatalf("%d db.transaction spans under POST /transfers", len(dbtx))
	}
	within(dbtx[0], post)
	var queries []otlp.Span
	for _, q := range children(dbtx[0], "") {
		if q.Service == "pgmux-demo" {
			queries = append(queries, q)
			within(q, dbtx[0])
		}
	}
	slices.SortFunc(queries, func(a, b otlp.Span) int { return a.Start.Compare(b.Start) })
	var ops []string
	for _, q := range queries {
		ops = append(ops, q.Name)
	}
	if want := []string{"BEGIN", "SET", "INSERT", "SELECT", "UPDATE", "UPDATE", "COMMIT"}; !slices.Equal(ops, want) {
		t.Errorf("query spans under db.transaction: %v, want %v", ops, want)
	}
	checkPgmux(dbtx[0], "7")

	// The products: Redis, then a query with pgmux under it.
	get := request("GET /products")
	redis := 0
	for _, s := range children(get, "") {
		if strings.Contains(s.InstrumentationScope, "redis") {
			redis++
		}
	}
	selects := children(get, "SELECT")
	if redis == 0 || len(selects) != 1 {
		t.Fatalf("GET /products: %d Redis spans, %d query spans", redis, len(selects))
	}
	checkPgmux(selects[0], "1")
}
