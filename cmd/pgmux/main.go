// Command pgmux is a PostgreSQL connection pooler.
//
//	pgmux --config pgmux.yaml [--listen 127.0.0.1:6432 ...]
//
// Every key of the file can also be set by an environment variable
// PGMUX_<KEY> and by a flag --<key-with-dashes>; flags win over the
// environment, which wins over the file.
//
// Signals: SIGHUP reloads the configuration (a bad one is refused and the
// old one stays); SIGTERM and SIGINT drain: readiness fails, the listener
// closes, clients are closed as their transactions end, and after
// shutdown_timeout whatever is left. The listener uses SO_REUSEPORT, so a
// new pgmux can take the address while the old one drains.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"

	"github.com/pgmux/pgmux/admin"
	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/config"
	"github.com/pgmux/pgmux/hba"
	"github.com/pgmux/pgmux/proxy"
	"github.com/pgmux/pgmux/tlsconf"
	"github.com/pgmux/pgmux/tracing"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "pgmux:", err)
		os.Exit(1)
	}
}

// app holds what reload changes.
type app struct {
	path string
	fs   *pflag.FlagSet
	log  *zap.Logger
	srv  *proxy.Server
	reg  *prometheus.Registry
	// tracer exports pgmux's spans; nil with tracing off. Made once at
	// start: a reload does not change the tracing section.
	tracer *tracing.Tracer

	mu  sync.Mutex // guards cfg
	cfg *config.Config

	drain func()
}

func run(args []string) error {
	if len(args) > 0 && args[0] == "probe" {
		return probe(args[1:])
	}
	if len(args) > 0 && args[0] == "convert" {
		return convert(args[1:], os.Stdout)
	}
	fs := config.Flags()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	path, _ := fs.GetString("config")
	cfg, notes, err := config.LoadNotes(path, fs)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	defer log.Sync()
	logNotes(log, notes, cfg)
	applySchedSlice(log, cfg.SchedSlice)

	a := &app{path: path, fs: fs, log: log, cfg: cfg, reg: prometheus.NewRegistry()}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if topts := tracingOptions(cfg.Tracing, log, a.reg); tracing.Enabled(topts) {
		if a.tracer, err = tracing.New(context.Background(), topts); err != nil {
			return fmt.Errorf("tracing: %w", err)
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			a.tracer.Shutdown(ctx)
		}()
		log.Info("tracing", zap.String("otlp_endpoint", cfg.Tracing.OTLPEndpoint), zap.Float64("sample_ratio", cfg.Tracing.SampleRatio))
	}
	opts, err := a.proxyOptions(cfg)
	if err != nil {
		return err
	}
	a.srv = proxy.New(opts)
	// Both ports bound before either is served: a busy admin port ends
	// pgmux before any client has been taken in.
	var aln net.Listener
	if cfg.AdminListen != "" {
		if aln, err = listen(cfg.AdminListen, net.KeepAliveConfig{}); err != nil {
			return fmt.Errorf("admin_listen: %w", err)
		}
		defer aln.Close()
	}
	var lns []net.Listener // listen's addresses, then the Unix socket
	for _, addr := range cfg.ListenAddrs() {
		ln, err := listen(addr, cfg.KeepAlive())
		if err != nil {
			return err
		}
		defer ln.Close()
		log.Info("listening", zap.String("addr", ln.Addr().String()), zap.String("pool_mode", cfg.PoolMode))
		lns = append(lns, ln)
	}
	ln := lns[0]
	if cfg.Pidfile != "" {
		if err := os.WriteFile(cfg.Pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return fmt.Errorf("pidfile: %w", err)
		}
		defer os.Remove(cfg.Pidfile)
	}
	var uln net.Listener
	if cfg.UnixSocketDir != "" {
		mode, _ := strconv.ParseUint(cfg.UnixSocketMode, 8, 32) // checked by Validate
		var unlink func()
		if uln, unlink, err = listenUnix(cfg.UnixSocketDir, ln.Addr().(*net.TCPAddr).Port, os.FileMode(mode)); err != nil {
			ln.Close()
			return fmt.Errorf("unix_socket_dir: %w", err)
		}
		defer unlink()
		log.Info("listening", zap.String("addr", uln.Addr().String()))
		lns = append(lns, uln)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, a.drain = context.WithCancel(ctx)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	g, gctx := errgroup.WithContext(ctx)
	for _, l := range lns {
		g.Go(func() error {
			if err := a.srv.Serve(l); !errors.Is(err, proxy.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	var adminSrv *http.Server
	if cfg.AdminListen != "" {
		adminSrv = &http.Server{Handler: admin.Handler(admin.Options{
			Source:   a.srv,
			Control:  a,
			Config:   a.redactedConfig,
			Gatherer: a.reg,
			Token:    cfg.AdminToken,
			Pprof:    os.Getenv("PGMUX_PPROF") == "1",
		})}
		g.Go(func() error {
			if err := adminSrv.Serve(aln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-hup:
				a.Reload()
			}
		}
	})
	g.Go(func() error {
		<-gctx.Done()
		timeout := a.config().ShutdownTimeout
		log.Info("draining", zap.Duration("shutdown_timeout", timeout))
		sctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		err := a.srv.Shutdown(sctx)
		if adminSrv != nil {
			// Shutdown, not Close: a request under way (POST /drain
			// itself, whose handler starts the drain before it answers)
			// gets its answer; Close cut it off, and `pgmux probe --post
			// .../drain` failed one time in ten. Bounded: a client that
			// holds a request open must not keep pgmux from exiting.
			actx, acancel := context.WithTimeout(context.Background(), adminShutdownTimeout)
			if adminSrv.Shutdown(actx) != nil {
				adminSrv.Close()
			}
			acancel()
		}
		if errors.Is(err, context.DeadlineExceeded) {
			log.Warn("shutdown_timeout reached; closed remaining clients")
		}
		log.Info("stopped")
		return nil
	})
	return g.Wait()
}

// adminShutdownTimeout bounds how long the admin API's requests under way
// may take to finish once pgmux has drained.
const adminShutdownTimeout = 2 * time.Second

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

func (a *app) config() *config.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

func (a *app) redactedConfig() any {
	c := a.config().Redacted()
	return c.Map()
}

// Reload reads the configuration again and puts it in force; a bad one is
// refused, logged, and the one in force stays.
func (a *app) Reload() error {
	cfg, notes, err := config.LoadNotes(a.path, a.fs)
	if err == nil {
		logNotes(a.log, notes, cfg)
		var opts proxy.Options
		if opts, err = a.proxyOptions(cfg); err == nil {
			a.srv.Update(opts)
			a.mu.Lock()
			old := a.cfg
			a.cfg = cfg
			a.mu.Unlock()
			if cfg.SchedSlice != old.SchedSlice {
				applySchedSlice(a.log, cfg.SchedSlice)
			}
			if cfg.Loops != old.Loops {
				a.log.Warn("loops takes effect at the next start", zap.Int("loops", old.Loops), zap.Int("new", cfg.Loops))
			}
			if cfg.Tracing != old.Tracing {
				a.log.Warn("the tracing section takes effect at the next start")
			}
			if cfg.PeerID != old.PeerID {
				a.log.Warn("peer_id takes effect at the next start", zap.Int("peer_id", old.PeerID), zap.Int("new", cfg.PeerID))
			}
			a.log.Info("configuration reloaded", zap.String("config", a.path))
			return nil
		}
	}
	a.log.Error("configuration refused; the previous one stays in force", zap.String("config", a.path), zap.Error(err))
	return err
}

// The admin API's Control.
func (a *app) Ready(ctx context.Context) error { return a.srv.Ready(ctx) }
func (a *app) Pause(ctx context.Context) error { return a.srv.Pause(ctx) }
func (a *app) Resume()                         { a.srv.Resume() }
func (a *app) Drain()                          { a.drain() }

var _ admin.Control = (*app)(nil)

// proxyOptions turns the configuration into the proxy's options.
func (a *app) proxyOptions(cfg *config.Config) (proxy.Options, error) {
	users := map[string]auth.Secret{}
	var err error
	if cfg.AuthFile != "" {
		if users, err = parseFile("auth_file", cfg.AuthFile, auth.ParseUserlist); err != nil {
			return proxy.Options{}, err
		}
	}
	var rules hba.Rules
	if cfg.AuthType == "hba" {
		if rules, err = parseFile("auth_hba_file", cfg.AuthHBAFile, hba.Parse); err != nil {
			return proxy.Options{}, err
		}
	}
	authQuery := ""
	if cfg.AuthUser != "" {
		authQuery = cfg.AuthQuery // as PgBouncer: auth_query runs only with an auth_user
	}
	clientTLS, err := tlsconf.ForClients(cfg.ClientTLS())
	if err != nil {
		return proxy.Options{}, err
	}
	// Each database's server TLS built once here, not at each login.
	serverTLS := map[string]*tlsconf.Servers{}
	for name := range cfg.Databases {
		if serverTLS[name], err = tlsconf.ForServers(cfg.ServerTLS(name)); err != nil {
			return proxy.Options{}, err
		}
	}
	return proxy.Options{
		Logger: a.log,
		Databases: func(name string) (proxy.Database, bool) {
			d, ok := cfg.Resolved(name)
			tls := serverTLS[name]
			if _, own := cfg.Databases[name]; !own {
				tls = serverTLS["*"]
			}
			return proxy.Database{Host: d.Host, Port: d.Port, DBName: d.DBName, User: d.User, Password: d.Password,
				PoolMode: d.PoolMode, PoolSize: d.PoolSize, ReservePoolSize: d.ReservePoolSize, MaxDBConnections: d.MaxDBConnections,
				Role: d.Role, LoadBalanceHosts: d.LoadBalanceHosts, MaxReplicaLag: d.MaxReplicaLag, RouteReads: d.RouteReads,
				ServerTLS: tls, KeepAlive: cfg.KeepAlive()}, ok
		},
		AuthType:                cfg.AuthType,
		HBA:                     rules,
		Users:                   users,
		ClientTLS:               clientTLS,
		AuthUser:                cfg.AuthUser,
		AuthQuery:               authQuery,
		AuthDBName:              cfg.AuthDBName,
		MaxClientConn:           cfg.MaxClientConn,
		MinPoolSize:             cfg.MinPoolSize,
		ReservePoolTimeout:      cfg.ReservePoolTimeout,
		ServerLoginRetry:        cfg.ServerLoginRetry,
		ServerCheckQuery:        cfg.ServerCheckQuery,
		ServerCheckDelay:        cfg.ServerCheckDelay,
		MaxUserConnections:      cfg.MaxUserConnections,
		MaxPacketSize:           cfg.MaxPacketSize,
		QueryWaitTimeout:        cfg.QueryWaitTimeout,
		ServerConnectTimeout:    cfg.ServerConnectTimeout,
		ServerIdleTimeout:       cfg.ServerIdleTimeout,
		ServerLifetime:          cfg.ServerLifetime,
		ClientIdleTimeout:       cfg.ClientIdleTimeout,
		ClientLoginTimeout:      cfg.ClientLoginTimeout,
		IdleTransactionTimeout:  cfg.IdleTransactionTimeout,
		QueryTimeout:            cfg.QueryTimeout,
		HostCheckInterval:       cfg.HostCheckInterval,
		ReadAfterWriteWindow:    cfg.ReadAfterWriteWindow,
		ServerResetQuery:        cfg.ServerResetQuery,
		MaxPreparedStatements:   cfg.MaxPreparedStatements,
		NotifyQueueBytes:        cfg.NotifyQueueBytes,
		PerUser:                 perUser(cfg.Users),
		LogConnections:          cfg.LogConnections,
		LogDisconnections:       cfg.LogDisconnections,
		IgnoreStartupParameters: cfg.IgnoreStartupParams,
		AppNameAddHost:          cfg.AppNameAddHost,
		StatsPeriod:             cfg.StatsPeriod,
		Tracer:                  a.tracer,
		PeerID:                  cfg.PeerID,
		Peers:                   peers(cfg.PeerAddrs()),
		PeerAddrs:               peersDNS(cfg),
		NoSessionStateLook:      !cfg.TrackSessionState,
		RelayLoop:               cfg.RelayLoop,
		NoIOURing:               !cfg.IOURing,
		Loops:                   cfg.Loops,
		Registerer:              a.reg,
		ReadyDatabases:          cfg.ReadyDatabases(),
		AdminUsers:              cfg.AdminUsers,
		StatsUsers:              cfg.StatsUsers,
		OnReload:                a.Reload,
		OnShutdown:              func() { a.drain() },
		ConfigRows:              a.configRows,
	}, nil
}

// peers is the peers section as the proxy takes it.
func peers(in map[int]config.Peer) map[int]proxy.Peer {
	out := make(map[int]proxy.Peer, len(in))
	for id, p := range in {
		out[id] = proxy.Peer{Host: p.Host, Port: p.Port}
	}
	return out
}

// peersDNS finds the peers at peers_dns, or is nil without it.
func peersDNS(cfg *config.Config) func(context.Context) ([]string, error) {
	if cfg.PeersDNS == "" {
		return nil
	}
	name, port := cfg.PeersDNSAddr()
	return func(ctx context.Context) ([]string, error) {
		ips, err := net.DefaultResolver.LookupHost(ctx, name)
		if err != nil {
			return nil, err
		}
		out := make([]string, len(ips))
		for i, ip := range ips {
			out[i] = net.JoinHostPort(ip, port)
		}
		return out, nil
	}
}

// tracingOptions is the tracing section as package tracing takes it.
func tracingOptions(t config.Tracing, log *zap.Logger, reg prometheus.Registerer) tracing.Options {
	return tracing.Options{Endpoint: t.OTLPEndpoint, Protocol: t.Protocol, SampleRatio: t.SampleRatio,
		ServiceName: t.ServiceName, IncludeQuery: t.IncludeQuery, Registerer: reg, Logger: log}
}

// parseFile parses the file at path, the value of key, with parse; its
// errors name the key.
func parseFile[T any](key, path string, parse func(io.Reader) (T, error)) (T, error) {
	var zero T
	f, err := os.Open(path)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", key, err)
	}
	defer f.Close()
	v, err := parse(f)
	if err != nil {
		return zero, fmt.Errorf("%s %s: %w", key, path, err)
	}
	return v, nil
}

// configRows answers the console's SHOW CONFIG.
func (a *app) configRows() [][]string {
	cur := a.config().Redacted()
	m := cur.Map()
	def := config.Default()
	d := def.Map()
	keys := make([]string, 0, len(m))
	for k := range m {
		if k != "databases" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	rows := make([][]string, 0, len(keys))
	for _, k := range keys {
		rows = append(rows, []string{k, fmt.Sprint(m[k]), fmt.Sprint(d[k]), "yes"})
	}
	return rows
}

// keepAliveOff is the ListenConfig's KeepAlive for ka: -1, off, when
// tcp_keepalive is (config.KeepAlive), else 0 for ka's.
func keepAliveOff(ka net.KeepAliveConfig) time.Duration {
	if !ka.Enable && ka.Idle < 0 {
		return -1
	}
	return 0
}

// perUser is the users section as the proxy takes it.
func perUser(users map[string]config.User) map[string]proxy.UserSettings {
	out := make(map[string]proxy.UserSettings, len(users))
	for name, u := range users {
		out[name] = proxy.UserSettings{PoolMode: u.PoolMode, PoolSize: u.PoolSize, ReservePoolSize: u.ReservePoolSize,
			MaxUserConnections: u.MaxUserConnections}
	}
	return out
}

// logNotes logs what pgmux says of a PgBouncer file's keys, one warning
// each, and that no database is configured.
func logNotes(log *zap.Logger, notes []config.Note, cfg *config.Config) {
	for _, n := range notes {
		log.Warn("pgbouncer.ini: "+n.Text, zap.String("key", n.Key), zap.String("at", n.At))
	}
	if len(cfg.Databases) == 0 {
		log.Warn("no database is configured: every client gets 3D000 until a reload adds one")
	}
}

// convert is `pgmux convert pgbouncer.ini`: the equivalent YAML, with a
// comment for each key mapped other than one to one or not honoured.
func convert(args []string, out io.Writer) error {
	if len(args) != 1 {
		return errors.New("usage: pgmux convert pgbouncer.ini")
	}
	y, err := config.Convert(args[0])
	if err != nil {
		return err
	}
	_, err = out.Write(y)
	return err
}

// probe is `pgmux probe [--post] URL`: a request to pgmux's admin API for
// exec probes and hooks in images without curl. It sends PGMUX_ADMIN_TOKEN as
// the bearer token when set, and fails unless the answer is 2xx.
func probe(args []string) error {
	method := http.MethodGet
	if len(args) > 0 && args[0] == "--post" {
		method, args = http.MethodPost, args[1:]
	}
	if len(args) != 1 {
		return errors.New("usage: pgmux probe [--post] URL")
	}
	req, err := http.NewRequest(method, args[0], nil)
	if err != nil {
		return err
	}
	if tok := os.Getenv("PGMUX_ADMIN_TOKEN"); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s", method, args[0], resp.Status)
	}
	return nil
}
