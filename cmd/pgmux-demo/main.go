// Command pgmux-demo serves the demo API (package demo) against PostgreSQL,
// through pgmux, and Redis.
//
//	pgmux-demo --database-url postgres://app@127.0.0.1:6432/demo --redis-url redis://127.0.0.1:6379/0
//
// On SIGTERM or SIGINT it stops accepting, finishes the requests under way,
// writes every accepted event and closes its pools.
//
// With --collector it traces its requests (package demo's tracing.go) into
// a collector of its own, which pgmux may export to as well, and reports at
// GET /debug/latency-split where each route's slowest requests spent their
// time.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pgmux/pgmux/demo"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "pgmux-demo:", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg demo.Config
	listen := flag.String("listen", "127.0.0.1:8080", "HTTP address")
	flag.StringVar(&cfg.DatabaseURL, "database-url", "postgres://postgres@127.0.0.1:6432/demo?sslmode=disable", "PostgreSQL, through pgmux")
	flag.StringVar(&cfg.RedisURL, "redis-url", "redis://127.0.0.1:6379/0", "Redis")
	maxConns := flag.Int("max-conns", 50, "pgxpool size")
	flag.IntVar(&cfg.Products, "products", 1000, "products to seed")
	flag.IntVar(&cfg.Accounts, "accounts", 100, "accounts to seed")
	flag.Int64Var(&cfg.InitialBalance, "initial-balance", 100_000, "balance of each seeded account, in cents")
	flag.DurationVar(&cfg.CacheTTL, "cache-ttl", time.Minute, "product cache TTL")
	flag.IntVar(&cfg.BatchSize, "batch-size", 500, "events per INSERT at most")
	flag.DurationVar(&cfg.FlushInterval, "flush-interval", 50*time.Millisecond, "longest an event waits for its batch")
	flag.IntVar(&cfg.EventBuffer, "event-buffer", 20_000, "events held before POST /events answers 429")
	flag.DurationVar(&cfg.LockTimeout, "lock-timeout", 2*time.Second, "lock_timeout of a transfer")
	flag.IntVar(&cfg.RateLimit, "rate-limit", 0, "requests per API key per window (0: no limit)")
	flag.DurationVar(&cfg.RateWindow, "rate-window", time.Second, "rate-limit window")
	flag.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", "", "OTLP/HTTP collector for the demo's traces (a base URL); empty: none, or the in-process collector")
	collector := flag.String("collector", "", "run an in-process OTLP/HTTP trace collector on this address (pgmux's tracing.otlp_endpoint can point at it); GET /debug/latency-split reports where the slowest requests' time went")
	flag.Parse()
	cfg.MaxConns = int32(*maxConns)

	log, err := zap.NewProduction()
	if err != nil {
		return err
	}
	defer log.Sync()
	cfg.Logger = log
	if *collector != "" {
		if cfg.Collector, err = demo.StartCollector(*collector); err != nil {
			return fmt.Errorf("collector: %w", err)
		}
		defer cfg.Collector.Close()
		if cfg.OTLPEndpoint == "" {
			cfg.OTLPEndpoint = cfg.Collector.URL()
		}
		log.Info("trace collector listening", zap.String("url", cfg.Collector.URL()))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	api, err := demo.New(sctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		api.Close()
		return err
	}
	srv := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Info("demo API listening", zap.String("addr", ln.Addr().String()))
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(ln) }()
	select {
	case err := <-errCh:
		api.Close()
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("http shutdown", zap.Error(err))
	}
	return api.Close()
}
