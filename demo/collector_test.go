package demo

import (
	"math"
	"testing"
	"time"

	"github.com/pgmux/pgmux/internal/otlp"
)

// TestCollectorSplit: a request's time split between Redis (overlapping
// spans counted once), pgmux's pool wait, PostgreSQL and the rest, and the
// P99 taken per route.
func TestCollectorSplit(t *testing.T) {
	c := &Collector{pending: map[string]*pendingTrace{}}
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	span := func(trace, id, parent, name, scope string, from, to int) otlp.Span {
		return otlp.Span{TraceID: trace, SpanID: id, ParentSpanID: parent, Name: name, InstrumentationScope: scope, Start: ms(from), End: ms(to)}
	}
	// 99 fast requests and one slow one on a route: the slow one is the P99.
	for i := range 99 {
		id := string(rune('a'+i%26)) + string(rune('a'+i/26))
		c.add([]otlp.Span{span(id, "r", "", "GET /x", "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", 0, 10)})
	}
	// pgmux's spans first, in a batch of their own, as they come.
	c.add([]otlp.Span{
		span("slow", "w", "q", "pgmux.pool_wait", "github.com/pgmux/pgmux", 30, 40),
		span("slow", "s", "q", "pgmux.server", "github.com/pgmux/pgmux", 40, 80),
	})
	c.add([]otlp.Span{
		span("slow", "r", "", "GET /x", "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", 0, 100),
		span("slow", "k1", "r", "get", "github.com/redis/go-redis/extra/redisotel", 10, 20),
		span("slow", "k2", "r", "pipeline", "github.com/redis/go-redis/extra/redisotel", 15, 25),
		span("slow", "q", "r", "SELECT", "github.com/pgmux/pgmux/demo", 28, 85),
		span("slow", "late", "r", "pgmux.server", "github.com/pgmux/pgmux", 95, 120), // past the request: clipped
	})
	// Roots that are no request: the event flusher's query, and a
	// transaction of pgmux's without a parent.
	c.add([]otlp.Span{span("orphan", "i", "", "INSERT", "github.com/pgmux/pgmux/demo", 0, 5),
		span("own", "t", "", "pgmux.transaction", "github.com/pgmux/pgmux", 0, 5)})
	got := c.Split()
	if len(got) != 1 {
		t.Fatalf("routes %+v", got)
	}
	r := got[0]
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	if r.Route != "GET /x" || r.Requests != 100 || r.Slowest != 1 || r.P99Ms != 100 ||
		!near(r.Redis, 0.15) || !near(r.PoolWait, 0.10) || !near(r.Postgres, 0.45) || !near(r.App, 0.30) {
		t.Fatalf("split %+v", r)
	}
}
