package tracing

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgmux/pgmux/internal/otlp"
)

// TestRecordDrops: Record never waits; past the queue's bound a
// transaction's spans are dropped and counted, and what was queued is
// exported.
func TestRecordDrops(t *testing.T) {
	recv, err := otlp.Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	reg := prometheus.NewRegistry()
	tr, err := New(context.Background(), Options{Endpoint: recv.URL, SampleRatio: 1, Queue: 2, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixNano()
	tx := Tx{WaitStart: now, Granted: now + 1000, Sent: now + 2000, End: now + 5000, Database: "db", ServerAddr: "127.0.0.1:5432"}
	const n = 1000
	start := time.Now()
	for range n {
		tr.Record(&tx)
	}
	took := time.Since(start)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	dropped := testutil.ToFloat64(tr.dropped.WithLabelValues("queue"))
	exported := testutil.ToFloat64(tr.exported)
	got := len(recv.Spans())
	t.Logf("%d transactions recorded in %s: %g spans dropped, %g exported, %d received", n, took, dropped, exported, got)
	if dropped < 3*(n-10) || float64(got) != exported || dropped+exported != 3*n {
		t.Fatalf("dropped %g, exported %g, received %d of %d spans", dropped, exported, got, 3*n)
	}
}

// TestNewRefuses: a bad protocol or ratio is an error naming it.
func TestNewRefuses(t *testing.T) {
	for _, o := range []Options{{Endpoint: "127.0.0.1:1", Protocol: "udp"}, {Endpoint: "127.0.0.1:1", SampleRatio: 2}} {
		if _, err := New(context.Background(), o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// TestSampler: parent-based by default, the ratio for roots, and the
// standard environment variables.
func TestSampler(t *testing.T) {
	sampledParent, _ := Traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	unsampledParent, _ := Traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
	count := func(s sampler) int {
		n := 0
		for i := range 10000 {
			var tid [16]byte
			binary.BigEndian.PutUint64(tid[8:], uint64(i)*0x9E3779B97F4A7C15) // spread over the range
			if s.sampled(tid, trace.SpanContext{}) {
				n++
			}
		}
		return n
	}
	s, err := newSampler(0.25)
	if err != nil {
		t.Fatal(err)
	}
	if n := count(s); n < 2300 || n > 2700 {
		t.Errorf("ratio 0.25 sampled %d of 10000 roots", n)
	}
	if !s.sampled(sampledParent.TraceID(), sampledParent) || s.sampled(unsampledParent.TraceID(), unsampledParent) {
		t.Error("the parent's flag not followed")
	}
	t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
	if s, _ := newSampler(1); s.sampled(sampledParent.TraceID(), sampledParent) || count(s) != 0 {
		t.Error("always_off sampled")
	}
	t.Setenv("OTEL_TRACES_SAMPLER", "traceidratio")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
	if s, _ := newSampler(1); count(s) < 4700 || count(s) > 5300 {
		t.Errorf("traceidratio 0.5 sampled %d of 10000", count(s))
	}
	t.Setenv("OTEL_TRACES_SAMPLER", "nonsense")
	if _, err := newSampler(1); err == nil {
		t.Error("an unknown sampler accepted")
	}
}
