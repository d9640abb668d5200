package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmux/pgmux/internal/otlp"
	"github.com/pgmux/pgmux/internal/pgtest"
)

// TestTracingConfig: the tracing section, or the standard OTEL_*
// environment without it, sends pgmux's spans to the collector, under the
// service name given.
func TestTracingConfig(t *testing.T) {
	needPG(t)
	ctx := context.Background()
	for _, c := range []struct {
		name, section string
		env           map[string]string
		service       string
	}{
		{name: "section", section: "tracing:\n  otlp_endpoint: RECV\n  service_name: pgmux-test\n", service: "pgmux-test"},
		{name: "environment", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "RECV", "OTEL_SERVICE_NAME": "pgmux-env"}, service: "pgmux-env"},
	} {
		t.Run(c.name, func(t *testing.T) {
			recv, err := otlp.Listen("127.0.0.1:0", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer recv.Close()
			for k, v := range c.env {
				if v == "RECV" {
					v = recv.URL
				}
				t.Setenv(k, v)
			}
			section := ""
			if c.section != "" {
				section = strings.ReplaceAll(c.section, "RECV", recv.URL)
			}
			p := startPgmux(t, baseConfig+section)
			conn, err := pgx.Connect(ctx, p.dsn(cluster.SuperUserName(), "postgres"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			const tid = "0af7651916cd43dd8448eb211c80319c"
			if _, err := conn.Exec(ctx, "SELECT 1 /*traceparent='00-"+tid+"-b7ad6b7169203331-01'*/"); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				for _, s := range recv.Spans() {
					if s.TraceID == tid && s.Name == "pgmux.transaction" {
						if s.Service != c.service || s.ParentSpanID != "b7ad6b7169203331" {
							t.Fatalf("span of service %q under %s, want %q under b7ad6b7169203331", s.Service, s.ParentSpanID, c.service)
						}
						return
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("no pgmux.transaction span for trace %s in %d spans", tid, len(recv.Spans()))
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// TestTracingUnreachableCollector: with no collector listening, every
// transaction is served, and the spans that could not wait are dropped and
// counted in /metrics.
func TestTracingUnreachableCollector(t *testing.T) {
	needPG(t)
	port, _ := pgtest.FreePort() // nothing listens there
	p := startPgmux(t, baseConfig+fmt.Sprintf("tracing:\n  otlp_endpoint: http://127.0.0.1:%d\n  sample_ratio: 1\n", port))
	ctx := context.Background()
	const clients, each = 10, 1500
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	start := time.Now()
	for range clients {
		conn, err := pgx.Connect(ctx, p.dsn(cluster.SuperUserName(), "postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		wg.Go(func() {
			for range each {
				if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if failed > 0 {
		t.Fatalf("%d of %d transactions failed with the collector unreachable", failed, clients*each)
	}
	var queue, export float64
	deadline := time.Now().Add(5 * time.Second)
	for {
		queue = metricValue(t, p, "pgmux_trace_spans_dropped_total", `reason="queue"`)
		export = metricValue(t, p, "pgmux_trace_spans_dropped_total", `reason="export"`)
		if queue+export > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d transactions in %s (%.0f a second), all served; spans dropped: %g (queue full), %g (export failed)",
		clients*each, took.Round(time.Millisecond), float64(clients*each)/took.Seconds(), queue, export)
	if queue+export == 0 {
		t.Fatal("no dropped span counted in /metrics")
	}
}
