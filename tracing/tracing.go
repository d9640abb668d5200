// Package tracing exports pgmux's own spans through OpenTelemetry: for each
// transaction a pgmux.transaction span with a pgmux.pool_wait child (time
// queued for a server) and a pgmux.server child (first message sent to
// ReadyForQuery), whose parent is the trace context the client sent in a SQL
// comment or its application_name (Traceparent).
//
// The relay only fills a Tx and hands it to Record, which takes a lock and
// copies it into a bounded queue: no span is built, no clock read and
// nothing allocated on the relay path. A goroutine of the Tracer's builds
// the spans, and the SDK's batch processor exports them. When the exporter
// falls behind, the queue drops whole transactions and counts their spans
// (pgmux_trace_spans_dropped_total) rather than slow a client down.
//
// tracing knows nothing of sessions, pools or the wire: it must never
// import proxy, pool, protocol or config.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
)

// Options configure a Tracer.
type Options struct {
	// Endpoint is the OTLP collector: a URL (http://collector:4318 for
	// http, to which /v1/traces is added unless it ends so;
	// http://collector:4317 for grpc; a host:port is taken as
	// http://host:port). Empty: the OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT
	// environment variable.
	Endpoint string
	// Protocol is "http" (OTLP/HTTP with protobuf) or "grpc"; empty: http,
	// or OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL's grpc.
	Protocol string
	// SampleRatio is the share of transactions without a parent that are
	// traced; one with a parent follows its parent's sampled flag.
	// OTEL_TRACES_SAMPLER, when set, decides instead.
	SampleRatio float64
	// ServiceName is the service.name of pgmux's spans, unless
	// OTEL_SERVICE_NAME says otherwise.
	ServiceName string
	// IncludeQuery puts the text of a transaction's first statement in its
	// span (db.query.text); off, no query text or parameter is exported.
	IncludeQuery bool
	// Queue is how many transactions wait for the exporter at most; 0:
	// DefaultQueue.
	Queue int
	// Registerer receives the span counters; nil: none.
	Registerer prometheus.Registerer
	Logger     *zap.Logger
}

// DefaultQueue is Options.Queue's default: at 30,000 transactions a second
// (about what one core relays), a quarter of a second of them.
const DefaultQueue = 8192

// Enabled reports whether o turns tracing on: an endpoint in o or in the
// standard environment variables, and OTEL_SDK_DISABLED not true.
func Enabled(o Options) bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	return o.Endpoint != "" || os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Tx is what the relay notes of one transaction. Times are Unix
// nanoseconds.
type Tx struct {
	Parent             trace.SpanContext // from the client; invalid if none
	WaitStart, Granted int64             // the wait for a server; 0 if the transaction did not wait
	Sent               int64             // its first message written to the server
	End                int64             // its last ReadyForQuery relayed to the client
	Statements         int               // Syncs and Queries
	SQLState           string            // the first error's, if any
	Query              string            // the first statement, with IncludeQuery
	Database, User     string
	Mode               string // pool mode
	ServerAddr         string // host:port, or a Unix socket's path
	ServerPID          uint32
}

// Tracer takes transactions from the relay and exports their spans.
type Tracer struct {
	opts     Options
	log      *zap.Logger
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer

	mu    sync.Mutex
	queue []Tx // under mu: waiting for the builder
	max   int

	stop    chan struct{}
	stopped chan struct{}

	exported prometheus.Counter
	dropped  *prometheus.CounterVec // by reason: queue (the exporter fell behind) or export (it failed)
}

// flushEvery is how often the builder takes the queue: the relay never
// wakes it.
const flushEvery = 100 * time.Millisecond

// New starts a Tracer. Callers MUST call Shutdown.
func New(ctx context.Context, o Options) (*Tracer, error) {
	if o.SampleRatio < 0 || o.SampleRatio > 1 {
		return nil, fmt.Errorf("sample_ratio %v is not between 0 and 1", o.SampleRatio)
	}
	if o.Queue <= 0 {
		o.Queue = DefaultQueue
	}
	if o.ServiceName == "" {
		o.ServiceName = "pgmux"
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	t := &Tracer{opts: o, log: o.Logger, max: o.Queue, stop: make(chan struct{}), stopped: make(chan struct{}),
		exported: prometheus.NewCounter(prometheus.CounterOpts{Name: "pgmux_trace_spans_exported_total",
			Help: "Spans the OTLP collector took."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_trace_spans_dropped_total",
			Help: "Spans not exported: reason queue when the exporter fell behind, export when the collector failed."}, []string{"reason"}),
	}
	exp, err := newExporter(ctx, o)
	if err != nil {
		return nil, err
	}
	res, err := resource.New(ctx, resource.WithAttributes(semconv.ServiceName(o.ServiceName)), resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	popts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		// Blocking: a full batch queue holds the builder back, and the
		// relay's queue drops and counts (Record).
		sdktrace.WithBatcher(&countingExporter{SpanExporter: exp, t: t}, sdktrace.WithBlocking(), sdktrace.WithBatchTimeout(time.Second)),
	}
	if os.Getenv("OTEL_TRACES_SAMPLER") == "" {
		popts = append(popts, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(o.SampleRatio))))
	}
	t.provider = sdktrace.NewTracerProvider(popts...)
	t.tracer = t.provider.Tracer("github.com/pgmux/pgmux")
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{t.exported, t.dropped} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	t.dropped.WithLabelValues("queue")
	t.dropped.WithLabelValues("export")
	// The SDK's own reports (a failed export among them, which
	// countingExporter logs once a minute) at debug level, not on stderr.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { o.Logger.Debug("opentelemetry", zap.Error(err)) }))
	go t.run()
	return t, nil
}

// newExporter makes the OTLP exporter o asks for.
func newExporter(ctx context.Context, o Options) (sdktrace.SpanExporter, error) {
	proto := o.Protocol
	if proto == "" {
		proto = strings.TrimPrefix(cmpEnv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"), "http/")
	}
	url := o.Endpoint
	if url != "" && !strings.Contains(url, "://") {
		url = "http://" + url
	}
	// Give up a batch within 15 s of a collector that does not answer:
	// the next ones queue behind it meanwhile.
	switch proto {
	case "", "http", "protobuf":
		opts := []otlptracehttp.Option{otlptracehttp.WithTimeout(5 * time.Second),
			otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: true, InitialInterval: 500 * time.Millisecond, MaxInterval: 5 * time.Second, MaxElapsedTime: 15 * time.Second})}
		if url != "" {
			// A base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: the signal's path
			// is added unless it is there.
			if !strings.HasSuffix(url, "/v1/traces") {
				url = strings.TrimSuffix(url, "/") + "/v1/traces"
			}
			opts = append(opts, otlptracehttp.WithEndpointURL(url))
		}
		return otlptracehttp.New(ctx, opts...)
	case "grpc":
		opts := []otlptracegrpc.Option{otlptracegrpc.WithTimeout(5 * time.Second),
			otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: true, InitialInterval: 500 * time.Millisecond, MaxInterval: 5 * time.Second, MaxElapsedTime: 15 * time.Second})}
		if url != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(url))
		}
		return otlptracegrpc.New(ctx, opts...)
	}
	return nil, fmt.Errorf("tracing protocol %q is not http or grpc", proto)
}

// cmpEnv returns the first of the environment variables names that is set.
func cmpEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// IncludeQuery reports whether a Tx should carry its first statement.
func (t *Tracer) IncludeQuery() bool { return t.opts.IncludeQuery }

// Record hands tx to the exporter, or drops it, counted, when the queue is
// full. It does not block.
func (t *Tracer) Record(tx *Tx) {
	t.mu.Lock()
	if len(t.queue) >= t.max {
		t.mu.Unlock()
		t.dropped.WithLabelValues("queue").Add(float64(spans(tx)))
		return
	}
	t.queue = append(t.queue, *tx)
	t.mu.Unlock()
}

// spans is how many spans tx makes.
func spans(tx *Tx) int {
	if tx.WaitStart != 0 {
		return 3
	}
	return 2
}

// run builds the queued transactions' spans until Shutdown.
func (t *Tracer) run() {
	defer close(t.stopped)
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	var batch []Tx
	for {
		stopping := false
		select {
		case <-t.stop:
			stopping = true
		case <-tick.C:
		}
		t.mu.Lock()
		batch, t.queue = t.queue, batch[:0]
		t.mu.Unlock()
		for i := range batch {
			t.export(&batch[i])
		}
		clear(batch) // the strings it holds
		if stopping {
			return
		}
	}
}

// export builds tx's spans and ends them, for the batch processor.
func (t *Tracer) export(tx *Tx) {
	ctx := context.Background()
	if tx.Parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, tx.Parent)
	}
	start := tx.Sent
	if tx.WaitStart != 0 {
		start = tx.WaitStart
	}
	host, port := splitAddr(tx.ServerAddr)
	attrs := []attribute.KeyValue{
		semconv.DBSystemNamePostgreSQL,
		semconv.DBNamespace(tx.Database),
		attribute.String("db.user", tx.User),
		attribute.String("pgmux.pool_mode", tx.Mode),
		attribute.Int("pgmux.statements", tx.Statements),
	}
	if tx.Query != "" {
		attrs = append(attrs, semconv.DBQueryText(tx.Query))
	}
	ctx, span := t.tracer.Start(ctx, "pgmux.transaction", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithTimestamp(time.Unix(0, start)), trace.WithAttributes(attrs...))
	if !span.IsRecording() {
		return // not sampled
	}
	if tx.WaitStart != 0 {
		_, w := t.tracer.Start(ctx, "pgmux.pool_wait", trace.WithTimestamp(time.Unix(0, tx.WaitStart)))
		w.End(trace.WithTimestamp(time.Unix(0, tx.Granted)))
	}
	_, s := t.tracer.Start(ctx, "pgmux.server", trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(time.Unix(0, tx.Sent)),
		trace.WithAttributes(semconv.ServerAddress(host), attribute.Int64("pgmux.server_pid", int64(tx.ServerPID))))
	if port != 0 {
		s.SetAttributes(semconv.ServerPort(port))
	}
	if tx.SQLState != "" {
		span.SetAttributes(semconv.DBResponseStatusCode(tx.SQLState))
		span.SetStatus(codes.Error, "SQLSTATE "+tx.SQLState)
		s.SetAttributes(semconv.DBResponseStatusCode(tx.SQLState))
		s.SetStatus(codes.Error, "SQLSTATE "+tx.SQLState)
	}
	s.End(trace.WithTimestamp(time.Unix(0, tx.End)))
	span.End(trace.WithTimestamp(time.Unix(0, tx.End)))
}

// splitAddr splits host:port; a Unix socket's path has no port.
func splitAddr(addr string) (string, int) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, 0
	}
	port, _ := strconv.Atoi(p)
	return host, port
}

// Shutdown exports what is queued and stops the Tracer.
func (t *Tracer) Shutdown(ctx context.Context) error {
	close(t.stop)
	select {
	case <-t.stopped:
	case <-ctx.Done():
		return ctx.Err()
	}
	return t.provider.Shutdown(ctx)
}

// countingExporter counts what the collector took and what it refused.
type countingExporter struct {
	sdktrace.SpanExporter
	t *Tracer

	mu     sync.Mutex
	logged time.Time
}

func (e *countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	if err == nil {
		e.t.exported.Add(float64(len(spans)))
		return nil
	}
	e.t.dropped.WithLabelValues("export").Add(float64(len(spans)))
	e.mu.Lock()
	if now := time.Now(); now.Sub(e.logged) >= time.Minute && !errors.Is(err, context.Canceled) {
		e.logged = now
		e.t.log.Warn("tracing: spans not exported", zap.Int("spans", len(spans)), zap.Error(err))
	}
	e.mu.Unlock()
	return err
}
