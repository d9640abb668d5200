package tracing

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

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
