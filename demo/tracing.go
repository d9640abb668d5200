package demo

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// The demo's traces, with Config.OTLPEndpoint: a span for each HTTP request
// (otelhttp), one for each query (a pgx QueryTracer) and each Redis command
// or pipeline (redisotel), and one for each database transaction. Each
// statement carries its span's context to pgmux in a sqlcommenter comment
// (/*traceparent='…'*/), so that pgmux's pgmux.transaction spans are the
// children of the application's: a query's, or a transaction's, whose
// BEGIN carries it.

// newTracing makes the demo's tracer provider, exporting over OTLP/HTTP to
// endpoint (a base URL, /v1/traces added).
func newTracing(ctx context.Context, endpoint string) (*sdktrace.TracerProvider, error) {
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(strings.TrimSuffix(endpoint, "/")+"/v1/traces"))
	if err != nil {
		return nil, err
	}
	res, err := resource.New(ctx, resource.WithAttributes(semconv.ServiceName("pgmux-demo")))
	if err != nil {
		return nil, err
	}
	return sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(500*time.Millisecond), sdktrace.WithMaxQueueSize(1<<16))), nil
}

// instrument wires tracing into the pools' configurations: pgx's tracer,
// and the unnamed-statement mode, since a comment that changes with each
// statement would fill the statement cache with one-off entries.
func (s *Server) instrument(pcfg *pgx.ConnConfig, rdb *redis.Client) error {
	pcfg.Tracer = &queryTracer{t: s.tracer}
	pcfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	return redisotel.InstrumentTracing(rdb, redisotel.WithTracerProvider(s.tp))
}

// handler wraps a route's handler in its HTTP span, named pattern.
func (s *Server) handler(pattern string, h http.Handler) http.Handler {
	if s.tp == nil {
		return h
	}
	return otelhttp.NewHandler(h, pattern, otelhttp.WithTracerProvider(s.tp), otelhttp.WithPropagators(propagation.TraceContext{}))
}

// args returns a query's arguments, led by the comment writer when tracing
// is on (pgx takes a QueryRewriter as the first argument).
func (s *Server) args(a ...any) []any {
	if s.tp == nil {
		return a
	}
	return append([]any{sqlComment{}}, a...)
}

// inTx runs fn in a transaction, in a db.transaction span whose context its
// BEGIN carries to pgmux.
func (s *Server) inTx(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx) error) error {
	if s.tp == nil {
		return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error { return fn(ctx, tx) })
	}
	ctx, span := s.tracer.Start(ctx, "db.transaction", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(semconv.DBSystemNamePostgreSQL))
	defer span.End()
	err := pgx.BeginTxFunc(ctx, s.db, pgx.TxOptions{BeginQuery: "BEGIN " + comment(ctx)}, func(tx pgx.Tx) error { return fn(ctx, tx) })
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

// comment is the sqlcommenter comment carrying ctx's span, or "".
func comment(ctx context.Context) string {
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	if tp := c.Get("traceparent"); tp != "" {
		return "/*traceparent='" + tp + "'*/"
	}
	return ""
}

// sqlComment appends the query span's context to the statement. pgx calls
// it after its tracer has started the query's span.
type sqlComment struct{}

func (sqlComment) RewriteQuery(ctx context.Context, _ *pgx.Conn, sql string, args []any) (string, []any, error) {
	if c := comment(ctx); c != "" {
		sql += " " + c
	}
	return sql, args, nil
}

var _ pgx.QueryRewriter = sqlComment{}

// queryTracer is pgx's tracer: a span per query, named by its operation.
type queryTracer struct{ t trace.Tracer }

func (q *queryTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	op, _, _ := strings.Cut(strings.TrimSpace(data.SQL), " ")
	op = strings.ToUpper(op)
	ctx, _ = q.t.Start(ctx, op, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(semconv.DBSystemNamePostgreSQL, semconv.DBOperationName(op), semconv.DBQueryText(data.SQL)))
	return ctx
}

func (q *queryTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	span := trace.SpanFromContext(ctx)
	if data.Err != nil {
		span.RecordError(data.Err)
		span.SetStatus(codes.Error, data.Err.Error())
	}
	span.End()
}

var _ pgx.QueryTracer = (*queryTracer)(nil)
