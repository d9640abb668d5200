package proxy

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sync/errgroup"
)

// TestRefusalFlood: two thousand clients refused at login (a database that
// does not exist) are each told why and counted in the metrics, and write a
// handful of log lines, not one each.
func TestRefusalFlood(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	reg := prometheus.NewRegistry()
	p := startProxy(t, func(o *Options, db *Database) { o.Logger = zap.New(core); o.Registerer = reg })
	const flood = 2000
	var g errgroup.Group
	g.SetLimit(20)
	for range flood {
		g.Go(func() error {
			c := dialRaw(t, p.addr)
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if err := c.startup(cluster.SuperUserName(), "nosuchdb"); sqlstate(err) != "3D000" {
				t.Errorf("want 3D000, got %v", err)
			}
			return nil
		})
	}
	g.Wait()
	if n := testutil.ToFloat64(p.metrics.refusals.WithLabelValues("3D000")); n != flood {
		t.Fatalf("pgmux_client_refusals_total{sqlstate=\"3D000\"} = %v, want %d", n, flood)
	}
	if n := logs.Len(); n >= 100 {
		t.Fatalf("%d log lines for %d refused clients", n, flood)
	}
	t.Logf("%d log lines for %d refused clients", logs.Len(), flood)
}

func TestLogLimit(t *testing.T) {
	l := logLimit{every: time.Second}
	at := time.Unix(1000, 0)
	for i, step := range []struct {
		after time.Duration
		key   string
		ok    bool
		held  int
	}{
		{0, "a", true, 0},
		{100 * time.Millisecond, "a", false, 0},
		{100 * time.Millisecond, "b", true, 0}, // each key its own
		{100 * time.Millisecond, "a", false, 0},
		{time.Second, "a", true, 2},
		{time.Second, "a", true, 0},
	} {
		at = at.Add(step.after)
		if ok, held := l.allow(step.key, at); ok != step.ok || held != step.held {
			t.Fatalf("step %d: %v %d, want %v %d", i, ok, held, step.ok, step.held)
		}
	}
}
