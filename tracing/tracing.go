// Package tracing exports pgmux's own spans through OpenTelemetry: for each
// transaction a pgmux.transaction span with a pgmux.pool_wait child (time
// queued for a server) and a pgmux.server child (first message sent to
// ReadyForQuery), whose parent is the trace context the client sent in a SQL
// comment or its application_name (Traceparent).
//
// The relay only fills a Tx and hands it to Record, which takes a lock and
// copies it into a bounded queue: no span is built, no clock read and
// nothing allocated on the relay path. A goroutine of the Tracer's takes the
// queue ten times a second, samples, builds the spans in OTLP's own types
// and uploads them through the official OTLP exporters' clients (HTTP or
// gRPC, which read the OTEL_EXPORTER_OTLP_* variables and retry). When the
// collector falls behind, the queue drops whole transactions and counts
// their spans (pgmux_trace_spans_dropped_total) rather than slow a client.
//
// Why not the SDK's tracer and batch processor: they build each span as a
// live object (locks, attribute sets, a snapshot for the exporter) and
// convert it again for the wire. With every transaction traced, make
// profile counted 125,929 user-space instructions per -S transaction
// through them, against 5,657 untraced, most of it allocation and garbage
// collection; spans built straight into OTLP's types, with a pool's
// attributes made once, cost what docs/tracing.md shows. The sampler
// follows OpenTelemetry's (parentbased_traceidratio, OTEL_TRACES_SAMPLER).
//
// tracing knows nothing of sessions, pools or the wire: it must never
// import proxy, pool, protocol or config.
package tracing

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
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
	opts   Options
	log    *zap.Logger
	client otlptrace.Client
	sample sampler

	mu    sync.Mutex
	queue []Tx // under mu: waiting for the builder
	max   int

	stop    chan struct{}
	stopped chan struct{}

	exported prometheus.Counter
	dropped  *prometheus.CounterVec // by reason: queue (the exporter fell behind) or export (it failed)

	// The builder's.
	resource *resourcepb.Resource
	scope    *commonpb.InstrumentationScope
	attrs    map[string][]*commonpb.KeyValue // a pool's and a server's attributes, made once
}

// flushEvery is how often the builder takes the queue: the relay never
// wakes it.
const flushEvery = 100 * time.Millisecond

// maxUpload is the most transactions one export request carries.
const maxUpload = 1024

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
	sample, err := newSampler(o.SampleRatio)
	if err != nil {
		return nil, err
	}
	t := &Tracer{opts: o, log: o.Logger, max: o.Queue, sample: sample, stop: make(chan struct{}), stopped: make(chan struct{}),
		exported: prometheus.NewCounter(prometheus.CounterOpts{Name: "pgmux_trace_spans_exported_total",
			Help: "Spans the OTLP collector took."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_trace_spans_dropped_total",
			Help: "Spans not exported: reason queue when the exporter fell behind, export when the collector failed."}, []string{"reason"}),
		scope: &commonpb.InstrumentationScope{Name: "github.com/pgmux/pgmux"},
		attrs: map[string][]*commonpb.KeyValue{},
	}
	if t.client, err = newClient(o); err != nil {
		return nil, err
	}
	res, err := resource.New(ctx, resource.WithAttributes(semconv.ServiceName(o.ServiceName)), resource.WithFromEnv())
	if err != nil {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	t.resource = &resourcepb.Resource{}
	for _, kv := range res.Attributes() {
		t.resource.Attributes = append(t.resource.Attributes, keyValue(string(kv.Key), kv.Value.Emit()))
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{t.exported, t.dropped} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	t.dropped.WithLabelValues("queue")
	t.dropped.WithLabelValues("export")
	if err := t.client.Start(ctx); err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	go t.run()
	return t, nil
}

// newClient makes the OTLP client o asks for: the official exporters'
// transports, which read the OTEL_EXPORTER_OTLP_* variables, retry, and
// compress as told.
func newClient(o Options) (otlptrace.Client, error) {
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
		return otlptracehttp.NewClient(opts...), nil
	case "grpc":
		opts := []otlptracegrpc.Option{otlptracegrpc.WithTimeout(5 * time.Second),
			otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: true, InitialInterval: 500 * time.Millisecond, MaxInterval: 5 * time.Second, MaxElapsedTime: 15 * time.Second})}
		if url != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(url))
		}
		return otlptracegrpc.NewClient(opts...), nil
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

// run builds and uploads the queued transactions' spans until Shutdown.
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
		for len(batch) > 0 {
			n := min(len(batch), maxUpload)
			t.upload(batch[:n])
			clear(batch[:n]) // the strings they hold
			batch = batch[n:]
		}
		batch = batch[:0:cap(batch)]
		if stopping {
			return
		}
	}
}

// upload sends the spans of the sampled transactions of batch in one
// request; a request that fails, retries included, is dropped and counted.
func (t *Tracer) upload(batch []Tx) {
	spans := make([]tracepb.Span, 0, 3*len(batch))
	for i := range batch {
		spans = t.appendSpans(spans, &batch[i])
	}
	if len(spans) == 0 {
		return
	}
	ptrs := make([]*tracepb.Span, len(spans))
	for i := range spans {
		ptrs[i] = &spans[i]
	}
	rs := []*tracepb.ResourceSpans{{Resource: t.resource, ScopeSpans: []*tracepb.ScopeSpans{{Scope: t.scope, Spans: ptrs}}}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	err := t.client.UploadTraces(ctx, rs)
	cancel()
	if err == nil {
		t.exported.Add(float64(len(spans)))
		return
	}
	t.dropped.WithLabelValues("export").Add(float64(len(spans)))
	t.log.Debug("tracing: spans not exported", zap.Int("spans", len(spans)), zap.Error(err))
}

// appendSpans appends tx's spans, if it is sampled.
func (t *Tracer) appendSpans(spans []tracepb.Span, tx *Tx) []tracepb.Span {
	var traceID [16]byte
	var parent []byte
	if tx.Parent.IsValid() {
		traceID = tx.Parent.TraceID()
		sid := tx.Parent.SpanID()
		parent = sid[:]
	} else {
		binary.BigEndian.PutUint64(traceID[:8], rand.Uint64())
		binary.BigEndian.PutUint64(traceID[8:], rand.Uint64())
	}
	if !t.sample.sampled(traceID, tx.Parent) {
		return spans
	}
	start := tx.Sent
	if tx.WaitStart != 0 {
		start = tx.WaitStart
	}
	txID := spanID()
	attrs := append(t.poolAttrs(tx), keyValue("pgmux.statements", int64(tx.Statements)))
	var status *tracepb.Status
	if tx.SQLState != "" {
		attrs = append(attrs, keyValue(string(semconv.DBResponseStatusCodeKey), tx.SQLState))
		status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: "SQLSTATE " + tx.SQLState}
	}
	if tx.Query != "" {
		attrs = append(attrs, keyValue(string(semconv.DBQueryTextKey), tx.Query))
	}
	spans = append(spans, tracepb.Span{TraceId: traceID[:], SpanId: txID, ParentSpanId: parent, Name: "pgmux.transaction",
		Kind: tracepb.Span_SPAN_KIND_SERVER, StartTimeUnixNano: uint64(start), EndTimeUnixNano: uint64(tx.End),
		Attributes: attrs, Status: status})
	if tx.WaitStart != 0 {
		spans = append(spans, tracepb.Span{TraceId: traceID[:], SpanId: spanID(), ParentSpanId: txID, Name: "pgmux.pool_wait",
			Kind: tracepb.Span_SPAN_KIND_INTERNAL, StartTimeUnixNano: uint64(tx.WaitStart), EndTimeUnixNano: uint64(tx.Granted)})
	}
	srvAttrs := append(t.serverAttrs(tx.ServerAddr), keyValue("pgmux.server_pid", int64(tx.ServerPID)))
	if tx.SQLState != "" {
		srvAttrs = append(srvAttrs, keyValue(string(semconv.DBResponseStatusCodeKey), tx.SQLState))
	}
	spans = append(spans, tracepb.Span{TraceId: traceID[:], SpanId: spanID(), ParentSpanId: txID, Name: "pgmux.server",
		Kind: tracepb.Span_SPAN_KIND_CLIENT, StartTimeUnixNano: uint64(tx.Sent), EndTimeUnixNano: uint64(tx.End),
		Attributes: srvAttrs, Status: status})
	return spans
}

// poolAttrs returns a copy of the attributes of tx's pool, made once per
// pool.
func (t *Tracer) poolAttrs(tx *Tx) []*commonpb.KeyValue {
	key := tx.Database + "\x00" + tx.User + "\x00" + tx.Mode
	a, ok := t.attrs[key]
	if !ok {
		a = []*commonpb.KeyValue{keyValue(string(semconv.DBSystemNameKey), "postgresql"), keyValue(string(semconv.DBNamespaceKey), tx.Database),
			keyValue("db.user", tx.User), keyValue("pgmux.pool_mode", tx.Mode)}
		t.remember(key, a)
	}
	return append(make([]*commonpb.KeyValue, 0, len(a)+3), a...)
}

// serverAttrs is poolAttrs for a server's address.
func (t *Tracer) serverAttrs(addr string) []*commonpb.KeyValue {
	key := "\x01" + addr
	a, ok := t.attrs[key]
	if !ok {
		host, port := splitAddr(addr)
		a = []*commonpb.KeyValue{keyValue(string(semconv.ServerAddressKey), host)}
		if port != 0 {
			a = append(a, keyValue(string(semconv.ServerPortKey), int64(port)))
		}
		t.remember(key, a)
	}
	return append(make([]*commonpb.KeyValue, 0, len(a)+2), a...)
}

// remember keeps a's attributes under key; past a bound (pools come and
// go with a wildcard database) it starts again.
func (t *Tracer) remember(key string, a []*commonpb.KeyValue) {
	if len(t.attrs) >= 4096 {
		clear(t.attrs)
	}
	t.attrs[key] = a
}

// keyValue is an attribute in OTLP's form.
func keyValue(key string, v any) *commonpb.KeyValue {
	av := &commonpb.AnyValue{}
	switch x := v.(type) {
	case string:
		av.Value = &commonpb.AnyValue_StringValue{StringValue: x}
	case int64:
		av.Value = &commonpb.AnyValue_IntValue{IntValue: x}
	case bool:
		av.Value = &commonpb.AnyValue_BoolValue{BoolValue: x}
	case float64:
		av.Value = &commonpb.AnyValue_DoubleValue{DoubleValue: x}
	default:
		av.Value = &commonpb.AnyValue_StringValue{StringValue: fmt.Sprint(x)}
	}
	return &commonpb.KeyValue{Key: key, Value: av}
}

// spanID is a random span id.
func spanID() []byte {
	var b [8]byte
	for b == [8]byte{} {
		binary.BigEndian.PutUint64(b[:], rand.Uint64())
	}
	return b[:]
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
	return t.client.Stop(ctx)
}
