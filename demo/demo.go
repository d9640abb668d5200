// Package demo is the demo API that runs a high-load web backend's patterns
// through pgmux: a product catalog read aside from Redis (pipelined
// multi-gets, invalidation on write), an audit log whose events are batched
// into multi-row INSERTs, money transfers under SELECT … FOR UPDATE with a
// lock timeout and idempotency keys, and a rate limit per API key shared
// through Redis. It talks to PostgreSQL with pgxpool, in pgx's default
// statement-cache mode, through whatever address it is given (pgmux).
package demo

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
)

// Config sets up the demo API.
type Config struct {
	DatabaseURL string // through pgmux
	RedisURL    string
	Logger      *zap.Logger
	Registerer  prometheus.Registerer // nil: a registry of its own

	MaxConns       int32         // pgxpool size
	Products       int           // seeded products
	Accounts       int           // seeded accounts
	InitialBalance int64         // per seeded account, in cents
	CacheTTL       time.Duration // product cache entries
	BatchSize      int           // events per INSERT at most
	FlushInterval  time.Duration // longest an event waits for its batch
	EventBuffer    int           // events held before POST /events answers 429
	LockTimeout    time.Duration // lock_timeout of a transfer
	TransferTries  int           // attempts of a transfer on 55P03/40P01/40001
	RateLimit      int           // requests per API key per window; 0 means none
	RateWindow     time.Duration
	// OTLPEndpoint, if set, is the OTLP/HTTP collector (a base URL) the
	// demo's traces go to (tracing.go).
	OTLPEndpoint string
	// Collector, if set, is served at GET /debug/latency-split.
	Collector *Collector
}

// Defaults fills unset fields of c.
func (c *Config) Defaults() {
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.MaxConns == 0 {
		c.MaxConns = 50
	}
	if c.Products == 0 {
		c.Products = 1000
	}
	if c.Accounts == 0 {
		c.Accounts = 100
	}
	if c.InitialBalance == 0 {
		c.InitialBalance = 100_000
	}
	if c.CacheTTL == 0 {
		c.CacheTTL = time.Minute
	}
	if c.BatchSize == 0 {
		c.BatchSize = 500
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = 50 * time.Millisecond
	}
	if c.EventBuffer == 0 {
		c.EventBuffer = 20_000
	}
	if c.LockTimeout == 0 {
		c.LockTimeout = 2 * time.Second
	}
	if c.TransferTries == 0 {
		c.TransferTries = 5
	}
	if c.RateWindow == 0 {
		c.RateWindow = time.Second
	}
}

// Server is the demo API.
type Server struct {
	cfg     Config
	log     *zap.Logger
	db      *pgxpool.Pool
	rdb     *redis.Client
	metrics *metrics
	events  *eventBuffer
	mux     *http.ServeMux
	tp      *sdktrace.TracerProvider // nil: no tracing
	tracer  trace.Tracer

	closeOnce sync.Once
}

// New connects to PostgreSQL and Redis, creates and seeds the schema
// (idempotently) and starts the event flusher. Callers MUST call Close.
func New(ctx context.Context, cfg Config) (*Server, error) {
	cfg.Defaults()
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("database url: %w", err)
	}
	pcfg.MaxConns = cfg.MaxConns
	ropt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	ropt.PoolSize = int(cfg.MaxConns) * 2
	s := &Server{cfg: cfg, log: cfg.Logger.Named("demo"), rdb: redis.NewClient(ropt)}
	if cfg.OTLPEndpoint != "" {
		if s.tp, err = newTracing(ctx, cfg.OTLPEndpoint); err != nil {
			s.rdb.Close()
			return nil, fmt.Errorf("tracing: %w", err)
		}
		s.tracer = s.tp.Tracer("github.com/pgmux/pgmux/demo")
		if err := s.instrument(pcfg.ConnConfig, s.rdb); err != nil {
			s.rdb.Close()
			return nil, fmt.Errorf("tracing: %w", err)
		}
	}
	if s.db, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		s.rdb.Close()
		return nil, err
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s.metrics = newMetrics(reg)
	if err := s.migrate(ctx); err != nil {
		s.db.Close()
		s.rdb.Close()
		return nil, err
	}
	s.events = newEventBuffer(s)
	s.routes()
	return s, nil
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler { return s.mux }

// Close flushes every accepted event, then closes the pools. Stop the HTTP
// server first (http.Server.Shutdown) so that no event arrives meanwhile.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		err = s.events.close()
		s.db.Close()
		s.rdb.Close()
		if s.tp != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s.tp.Shutdown(ctx) // exports what is left
		}
	})
	return err
}

func (s *Server) migrate(ctx context.Context) error {
	const schema = `
CREATE TABLE IF NOT EXISTS products (
	id          bigint PRIMARY KEY,
	name        text NOT NULL,
	price_cents bigint NOT NULL,
	version     bigint NOT NULL DEFAULT 1,
	updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS events (
	id         bigserial PRIMARY KEY,
	kind       text NOT NULL,
	payload    text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS accounts (
	id      bigint PRIMARY KEY,
	balance bigint NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS transfers (
	idempotency_key text PRIMARY KEY,
	from_id         bigint NOT NULL,
	to_id           bigint NOT NULL,
	amount          bigint NOT NULL,
	created_at      timestamptz NOT NULL DEFAULT now()
);`
	if _, err := s.db.Exec(ctx, schema); err != nil {
		return fmt.Errorf("create schema: %w", err)
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO products (id, name, price_cents)
		SELECT g, 'product ' || g, 100 + g FROM generate_series(1, $1::int) g ON CONFLICT (id) DO NOTHING`, s.cfg.Products); err != nil {
		return fmt.Errorf("seed products: %w", err)
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO accounts (id, balance)
		SELECT g, $2::bigint FROM generate_series(1, $1::int) g ON CONFLICT (id) DO NOTHING`, s.cfg.Accounts, s.cfg.InitialBalance); err != nil {
		return fmt.Errorf("seed accounts: %w", err)
	}
	return nil
}

func (s *Server) routes() {
	m := http.NewServeMux()
	s.mux = m
	for _, r := range []struct {
		pattern, name string
		h             func(w http.ResponseWriter, r *http.Request) error
	}{
		{"GET /products/{id}", "get_product", s.getProduct},
		{"GET /products", "get_products", s.getProducts},
		{"PUT /products/{id}", "put_product", s.putProduct},
		{"POST /events", "post_event", s.postEvent},
		{"POST /transfers", "post_transfer", s.postTransfer},
	} {
		m.Handle(r.pattern, s.handler(r.pattern, s.api(r.name, r.h)))
	}
	if s.cfg.Collector != nil {
		m.HandleFunc("GET /debug/latency-split", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, s.cfg.Collector.Split()) })
	}
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	m.HandleFunc("GET /readyz", s.readyz)
	m.Handle("GET /metrics", s.metrics.handler())
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.db.Ping(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "postgres: " + err.Error()})
		return
	}
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "redis: " + err.Error()})
		return
	}
	writeJSON(w, 200, map[string]string{"status": "ready"})
}

// httpError is an error with the status a handler answers.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errStatus(status int, format string, args ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

// api wraps a handler: rate limit, timing by route, and errors as JSON.
func (s *Server) api(route string, h func(w http.ResponseWriter, r *http.Request) error) http.Handler {
	hist := s.metrics.duration.WithLabelValues(route)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		err := s.rateLimit(r)
		if err == nil {
			err = h(w, r)
		}
		if err != nil {
			var he *httpError
			status := http.StatusInternalServerError
			if errors.As(err, &he) {
				status = he.status
			} else {
				s.log.Warn("request failed", zap.String("route", route), zap.Error(err))
			}
			s.metrics.errors.WithLabelValues(route, fmt.Sprint(status)).Inc()
			writeJSON(w, status, map[string]string{"error": err.Error()})
		}
		hist.Observe(time.Since(start).Seconds())
	})
}
