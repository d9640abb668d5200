package proxy

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sync/errgroup"
)

// TestRefusalFlood: ten thousand clients refused at login (a database that
// does not exist) are each told why and counted in the metrics, and write a
// handful of log lines, not one each.
func TestRefusalFlood(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	reg := prometheus.NewRegistry()
	p := startProxy(t, func(o *Options, db *Database) { o.Logger = zap.New(core); o.Registerer = reg })
	const flood = 10000
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

// TestSilentSocketsLockNobodyOut: two thousand sockets that send nothing,
// with max_client_conn at 1,000, do not keep a client that logs in from
// being served at once; pgmux closes them after startupSilence.
func TestSilentSocketsLockNobodyOut(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { o.MaxClientConn = 1000 })
	silent := make([]net.Conn, 2000)
	for i := range silent {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatalf("socket %d: %v", i, err)
		}
		defer c.Close()
		silent[i] = c
	}
	waitFor(t, 5*time.Second, func() bool { return p.ClientCount() == len(silent) })
	start := time.Now()
	c := loggedIn(t, p)
	if v, err := c.value("SELECT 1"); err != nil || v != "1" {
		t.Fatalf("a client behind %d silent sockets: %q, %v", len(silent), v, err)
	}
	took := time.Since(start)
	if took > time.Second {
		t.Fatalf("served after %s", took)
	}
	t.Logf("logged in and served in %s behind %d silent sockets", took.Round(time.Millisecond), len(silent))
	// The silent ones are closed once startupSilence has passed.
	for _, s := range silent[:10] {
		s.SetReadDeadline(time.Now().Add(startupSilence + 3*time.Second))
		_, err := io.ReadAll(s) // a FATAL error, then the end
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("a silent socket still open %s after it connected", time.Since(start))
		}
	}
	waitFor(t, 5*time.Second, func() bool { return p.ClientCount() == 1 })
}

// TestRefusalSessionModeNoServer: in session mode a client waits for its
// server at login; one that gets none within query_wait_timeout is refused,
// told why and counted among the refusals, as any login that fails.
func TestRefusalSessionModeNoServer(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := startProxy(t, func(o *Options, db *Database) {
		o.Registerer, o.QueryWaitTimeout = reg, 300*time.Millisecond
		db.PoolMode, db.PoolSize = ModeSession, 1
	})
	holder := dialRaw(t, p.addr) // holds the pool's one server
	defer holder.Close()
	holder.SetDeadline(time.Now().Add(10 * time.Second))
	if err := holder.startup(cluster.SuperUserName(), "postgres"); err != nil {
		t.Fatal(err)
	}
	c := dialRaw(t, p.addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.startup(cluster.SuperUserName(), "postgres"); sqlstate(err) != "53300" {
		t.Fatalf("want 53300, got %v", err)
	}
	if n := testutil.ToFloat64(p.metrics.refusals.WithLabelValues("53300")); n != 1 {
		t.Fatalf("pgmux_client_refusals_total{sqlstate=\"53300\"} = %v, want 1", n)
	}
}
