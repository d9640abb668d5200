// Command pgmux is a PostgreSQL connection pooler.
//
//	pgmux --config pgmux.yaml [--listen 127.0.0.1:6432 ...]
//
// Every key of the file can also be set by an environment variable
// PGMUX_<KEY> and by a flag --<key-with-dashes>; flags win over the
// environment, which wins over the file.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"

	"github.com/pgmux/pgmux/admin"
	"github.com/pgmux/pgmux/config"
	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/proxy"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "pgmux:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := config.Flags()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	path, _ := fs.GetString("config")
	cfg, err := config.Load(path, fs)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	defer log.Sync()

	opts, err := proxyOptions(cfg, log)
	if err != nil {
		return err
	}
	srv := proxy.New(opts)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	log.Info("listening", zap.String("addr", ln.Addr().String()), zap.String("pool_mode", cfg.PoolMode))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, proxy.ErrServerClosed) {
			return err
		}
		return nil
	})
	var adminSrv *http.Server
	if cfg.AdminListen != "" {
		adminSrv = &http.Server{Addr: cfg.AdminListen, Handler: admin.Handler(srv)}
		aln, err := net.Listen("tcp", cfg.AdminListen)
		if err != nil {
			return fmt.Errorf("admin_listen: %w", err)
		}
		g.Go(func() error {
			if err := adminSrv.Serve(aln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", zap.Duration("shutdown_timeout", cfg.ShutdownTimeout))
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		err := srv.Shutdown(sctx)
		if adminSrv != nil {
			adminSrv.Close()
		}
		if errors.Is(err, context.DeadlineExceeded) {
			log.Warn("shutdown_timeout reached; closed remaining clients")
		}
		return nil
	})
	return g.Wait()
}

func newLogger(level string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.Set(level); err != nil {
		return nil, err
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil
	return zc.Build()
}

// proxyOptions turns the configuration into the proxy's options.
func proxyOptions(cfg *config.Config, log *zap.Logger) (proxy.Options, error) {
	users := map[string]protocol.Secret{}
	if cfg.AuthFile != "" {
		f, err := os.Open(cfg.AuthFile)
		if err != nil {
			return proxy.Options{}, fmt.Errorf("auth_file: %w", err)
		}
		users, err = protocol.ParseUserlist(f)
		f.Close()
		if err != nil {
			return proxy.Options{}, fmt.Errorf("auth_file %s: %w", cfg.AuthFile, err)
		}
	}
	return proxy.Options{
		Logger: log,
		Databases: func(name string) (proxy.Database, bool) {
			d, ok := cfg.Resolved(name)
			return proxy.Database(d), ok
		},
		AuthType:               cfg.AuthType,
		Users:                  users,
		MaxClientConn:          cfg.MaxClientConn,
		MinPoolSize:            cfg.MinPoolSize,
		MaxPacketSize:          cfg.MaxPacketSize,
		QueryWaitTimeout:       cfg.QueryWaitTimeout,
		ServerConnectTimeout:   cfg.ServerConnectTimeout,
		ServerIdleTimeout:      cfg.ServerIdleTimeout,
		ServerLifetime:         cfg.ServerLifetime,
		ClientIdleTimeout:      cfg.ClientIdleTimeout,
		ClientLoginTimeout:     cfg.ClientLoginTimeout,
		IdleTransactionTimeout: cfg.IdleTransactionTimeout,
		ServerResetQuery:       cfg.ServerResetQuery,
		MaxPreparedStatements:  cfg.MaxPreparedStatements,
	}, nil
}
