// Package config holds pgmux's one typed Config: its defaults, loading from a
// YAML file, PGMUX_* environment variables and command-line flags (viper),
// and validation. After Load the Config is read-only. Only cmd imports it;
// the other packages take their own option structs. It must never import
// the proxy, the pools or the core: cmd reads it and hands each package its
// options.
package config

import (
	"cmp"
	"fmt"
	"net"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/pgmux/pgmux/tlsconf"
)

// Config is pgmux's configuration. Keys follow PgBouncer's names where one exists.
type Config struct {
	Listen                 string              `mapstructure:"listen"` // host:port, or several separated by commas
	Pidfile                string              `mapstructure:"pidfile"`
	LogConnections         bool                `mapstructure:"log_connections"`
	LogDisconnections      bool                `mapstructure:"log_disconnections"`
	IgnoreStartupParams    []string            `mapstructure:"ignore_startup_parameters"`
	TrackExtraParameters   []string            `mapstructure:"track_extra_parameters"`
	AppNameAddHost         bool                `mapstructure:"application_name_add_host"`
	TCPKeepalive           bool                `mapstructure:"tcp_keepalive"`
	TCPKeepcnt             int                 `mapstructure:"tcp_keepcnt"`
	TCPKeepidle            time.Duration       `mapstructure:"tcp_keepidle"`
	TCPKeepintvl           time.Duration       `mapstructure:"tcp_keepintvl"`
	AdminListen            string              `mapstructure:"admin_listen"`
	UnixSocketDir          string              `mapstructure:"unix_socket_dir"`
	UnixSocketMode         string              `mapstructure:"unix_socket_mode"`
	AdminToken             string              `mapstructure:"admin_token"`
	AdminUsers             []string            `mapstructure:"admin_users"`
	StatsUsers             []string            `mapstructure:"stats_users"`
	PoolMode               string              `mapstructure:"pool_mode"`
	DefaultPoolSize        int                 `mapstructure:"default_pool_size"`
	MinPoolSize            int                 `mapstructure:"min_pool_size"`
	ReservePoolSize        int                 `mapstructure:"reserve_pool_size"`
	ReservePoolTimeout     time.Duration       `mapstructure:"reserve_pool_timeout"`
	ServerLoginRetry       time.Duration       `mapstructure:"server_login_retry"`
	ServerCheckQuery       string              `mapstructure:"server_check_query"`
	ServerCheckDelay       time.Duration       `mapstructure:"server_check_delay"`
	MaxDBConnections       int                 `mapstructure:"max_db_connections"`
	MaxUserConnections     int                 `mapstructure:"max_user_connections"`
	MaxClientConn          int                 `mapstructure:"max_client_conn"`
	AuthType               string              `mapstructure:"auth_type"`
	AuthFile               string              `mapstructure:"auth_file"`
	AuthHBAFile            string              `mapstructure:"auth_hba_file"`
	AuthUser               string              `mapstructure:"auth_user"`
	AuthQuery              string              `mapstructure:"auth_query"`
	AuthDBName             string              `mapstructure:"auth_dbname"`
	QueryWaitTimeout       time.Duration       `mapstructure:"query_wait_timeout"`
	ServerConnectTimeout   time.Duration       `mapstructure:"server_connect_timeout"`
	ServerIdleTimeout      time.Duration       `mapstructure:"server_idle_timeout"`
	ServerLifetime         time.Duration       `mapstructure:"server_lifetime"`
	ClientIdleTimeout      time.Duration       `mapstructure:"client_idle_timeout"`
	ClientLoginTimeout     time.Duration       `mapstructure:"client_login_timeout"`
	IdleTransactionTimeout time.Duration       `mapstructure:"idle_transaction_timeout"`
	QueryTimeout           time.Duration       `mapstructure:"query_timeout"`
	HostCheckInterval      time.Duration       `mapstructure:"host_check_interval"`
	ReadAfterWriteWindow   time.Duration       `mapstructure:"read_after_write_window"`
	ServerResetQuery       string              `mapstructure:"server_reset_query"`
	ShutdownTimeout        time.Duration       `mapstructure:"shutdown_timeout"`
	MaxPacketSize          int                 `mapstructure:"max_packet_size"`
	MaxPreparedStatements  int                 `mapstructure:"max_prepared_statements"`
	NotifyQueueBytes       int                 `mapstructure:"notify_queue_bytes"`
	StatsPeriod            time.Duration       `mapstructure:"stats_period"`
	TrackSessionState      bool                `mapstructure:"track_session_state"`
	RelayLoop              bool                `mapstructure:"relay_loop"`
	IOURing                bool                `mapstructure:"io_uring"`
	Loops                  int                 `mapstructure:"loops"` // 0: one per core the process may use
	SchedSlice             time.Duration       `mapstructure:"sched_slice"`
	LogLevel               string              `mapstructure:"log_level"`
	ClientTLSSSLMode       string              `mapstructure:"client_tls_sslmode"`
	ClientTLSCertFile      string              `mapstructure:"client_tls_cert_file"`
	ClientTLSKeyFile       string              `mapstructure:"client_tls_key_file"`
	ClientTLSCAFile        string              `mapstructure:"client_tls_ca_file"`
	ClientTLSProtocols     string              `mapstructure:"client_tls_protocols"`
	ClientTLSCiphers       string              `mapstructure:"client_tls_ciphers"`
	ServerTLSSSLMode       string              `mapstructure:"server_tls_sslmode"`
	ServerTLSCertFile      string              `mapstructure:"server_tls_cert_file"`
	ServerTLSKeyFile       string              `mapstructure:"server_tls_key_file"`
	ServerTLSCAFile        string              `mapstructure:"server_tls_ca_file"`
	ServerTLSProtocols     string              `mapstructure:"server_tls_protocols"`
	ServerTLSCiphers       string              `mapstructure:"server_tls_ciphers"`
	Databases              map[string]Database `mapstructure:"databases"`
	// Users are backend users' own pool settings, as PgBouncer's [users].
	Users map[string]User `mapstructure:"users"`
	// Tracing exports pgmux's spans through OpenTelemetry (package tracing).
	Tracing Tracing `mapstructure:"tracing"`
	// PeerID and Peers: PgBouncer's peering, cancels forwarded between
	// instances behind one load balancer. Peers are keyed by peer id.
	PeerID int             `mapstructure:"peer_id"`
	Peers  map[string]Peer `mapstructure:"peers"`
	// PeersDNS finds the peers instead: a name whose addresses are every
	// instance's (a Kubernetes headless Service), with :port if theirs is
	// not this one's listen port.
	PeersDNS string `mapstructure:"peers_dns"`
}

// Peer is one entry of the peers section: another pgmux's client address.
type Peer struct {
	Host string `mapstructure:"host"` // or, beginning with /, its Unix-socket directory
	Port int    `mapstructure:"port"`
}

// PeersDNSAddr is peers_dns as name and port, the port taken from the
// first listen address when not given.
func (c *Config) PeersDNSAddr() (name, port string) {
	if name, port, err := net.SplitHostPort(c.PeersDNS); err == nil {
		return name, port
	}
	_, port, _ = net.SplitHostPort(c.ListenAddrs()[0])
	return c.PeersDNS, port
}

// MaxPeerID is the largest peer id, as PgBouncer's.
const MaxPeerID = 16383

// PeerAddrs returns the peers by id, with PgBouncer's default port.
func (c *Config) PeerAddrs() map[int]Peer {
	out := make(map[int]Peer, len(c.Peers))
	for k, p := range c.Peers {
		id, _ := strconv.Atoi(k) // checked by Validate
		if p.Port == 0 {
			p.Port = 6432
		}
		out[id] = p
	}
	return out
}

// Tracing is the tracing section: off unless an OTLP endpoint is set here
// or in the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT.
type Tracing struct {
	OTLPEndpoint string  `mapstructure:"otlp_endpoint"`
	Protocol     string  `mapstructure:"protocol"` // http or grpc
	SampleRatio  float64 `mapstructure:"sample_ratio"`
	ServiceName  string  `mapstructure:"service_name"`
	IncludeQuery bool    `mapstructure:"include_query"`
}

// User is one entry of the users section: a backend user's pool settings,
// over its databases' (0 or empty: theirs).
type User struct {
	PoolMode           string `mapstructure:"pool_mode"`
	PoolSize           int    `mapstructure:"pool_size"`
	ReservePoolSize    int    `mapstructure:"reserve_pool_size"`
	MaxUserConnections int    `mapstructure:"max_user_connections"`
}

// Database is one entry of the databases section. The key "*" matches any
// database name a client asks for that has no entry of its own.
type Database struct {
	// Host is a host, or a Unix-socket directory if it begins with /; or
	// several, comma-separated or as a list, all on Port.
	Host     string `mapstructure:"host"`
	Port     int    `mapstructure:"port"`
	DBName   string `mapstructure:"dbname"`
	User     string `mapstructure:"user"`
	Password string `mapstructure:"password"`
	PoolMode string `mapstructure:"pool_mode"`
	PoolSize int    `mapstructure:"pool_size"`
	// ReservePoolSize and MaxDBConnections, over the top-level keys
	// (0: theirs).
	ReservePoolSize  int `mapstructure:"reserve_pool_size"`
	MaxDBConnections int `mapstructure:"max_db_connections"`
	// The server leg's TLS for this database, over the top-level keys.
	ServerTLSSSLMode  string `mapstructure:"server_tls_sslmode"`
	ServerTLSCertFile string `mapstructure:"server_tls_cert_file"`
	ServerTLSKeyFile  string `mapstructure:"server_tls_key_file"`
	ServerTLSCAFile   string `mapstructure:"server_tls_ca_file"`
	// With several hosts, or a role: which serve (primary, replica, any),
	// how connections spread over them (disable, round-robin, random) and
	// how far behind in replay a replica may be (0: any).
	Role             string        `mapstructure:"role"`
	LoadBalanceHosts string        `mapstructure:"load_balance_hosts"`
	MaxReplicaLag    time.Duration `mapstructure:"max_replica_lag"`
	// RouteReads sends read-only transactions to the replicas among the
	// hosts, the rest to the primary (transaction mode).
	RouteReads bool `mapstructure:"route_reads"`
}

// The scheduling slices Linux accepts for a task of the normal class
// (sched_setattr's sched_runtime, since Linux 6.12).
const (
	MinSchedSlice = 100 * time.Microsecond
	MaxSchedSlice = 100 * time.Millisecond
)

// Default returns the configuration used where nothing else is given.
func Default() Config {
	return Config{
		Listen:                "127.0.0.1:6432",
		LogConnections:        true,
		TCPKeepalive:          true,
		LogDisconnections:     true,
		TrackExtraParameters:  []string{"IntervalStyle"},
		UnixSocketMode:        "0777",
		AdminListen:           "127.0.0.1:9127",
		PoolMode:              "transaction",
		DefaultPoolSize:       20,
		ReservePoolTimeout:    5 * time.Second,
		ServerLoginRetry:      15 * time.Second,
		ServerCheckQuery:      "select 1",
		ServerCheckDelay:      30 * time.Second,
		MaxClientConn:         10000,
		AuthType:              "scram-sha-256",
		AuthQuery:             "SELECT usename, passwd FROM pg_shadow WHERE usename=$1",
		QueryWaitTimeout:      120 * time.Second,
		ServerConnectTimeout:  15 * time.Second,
		ServerIdleTimeout:     600 * time.Second,
		ServerLifetime:        3600 * time.Second,
		ClientLoginTimeout:    60 * time.Second,
		ServerResetQuery:      "DISCARD ALL",
		ShutdownTimeout:       30 * time.Second,
		HostCheckInterval:     time.Second,
		ReadAfterWriteWindow:  time.Second,
		MaxPacketSize:         1 << 30,
		MaxPreparedStatements: 200,
		NotifyQueueBytes:      1 << 20,
		StatsPeriod:           60 * time.Second,
		TrackSessionState:     true,
		RelayLoop:             true,
		IOURing:               true,
		SchedSlice:            MinSchedSlice,
		LogLevel:              "info",
		ClientTLSSSLMode:      "disable",
		ClientTLSProtocols:    "secure",
		ClientTLSCiphers:      "default",
		ServerTLSSSLMode:      "prefer",
		ServerTLSProtocols:    "secure",
		ServerTLSCiphers:      "default",
		// OpenTelemetry's default sampler keeps every trace; lower the
		// ratio for transactions without a sampled parent.
		Tracing: Tracing{Protocol: "http", SampleRatio: 1, ServiceName: "pgmux"},
	}
}

// MaxLoops bounds the loops key: more event loops than that would only
// share cores.
const MaxLoops = 256

// Flags returns the command-line flags that override the file: one per
// top-level scalar key, spelled with dashes (--default-pool-size).
func Flags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("pgmux", pflag.ContinueOnError)
	fs.String("config", "", "path of the YAML configuration file")
	d := Default()
	rv := reflect.ValueOf(d)
	rt := rv.Type()
	for i := range rt.NumField() {
		key := rt.Field(i).Tag.Get("mapstructure")
		name := strings.ReplaceAll(key, "_", "-")
		switch f := rv.Field(i).Interface().(type) {
		case string:
			fs.String(name, f, "overrides "+key)
		case int:
			fs.Int(name, f, "overrides "+key)
		case time.Duration:
			fs.Duration(name, f, "overrides "+key)
		}
	}
	return fs
}

// Load reads the file at path (none if empty), then the PGMUX_* environment,
// then any flags in fs that were set, and validates the result.
func Load(path string, fs *pflag.FlagSet) (*Config, error) {
	c, _, err := LoadNotes(path, fs)
	return c, err
}

// LoadNotes is Load, with what it has to say about a PgBouncer ini file's
// keys (IsINI): those it maps other than one to one, and those it does not
// honour.
func LoadNotes(path string, fs *pflag.FlagSet) (*Config, []Note, error) {
	v := viper.New()
	d := Default()
	rv := reflect.ValueOf(d)
	rt := rv.Type()
	for i := range rt.NumField() {
		key := rt.Field(i).Tag.Get("mapstructure")
		if key == "databases" || key == "users" || key == "peers" {
			continue
		}
		if key == "tracing" { // a section: a default for each of its keys
			tv := rv.Field(i)
			for j := range tv.NumField() {
				v.SetDefault(key+"."+tv.Type().Field(j).Tag.Get("mapstructure"), tv.Field(j).Interface())
			}
			continue
		}
		v.SetDefault(key, rv.Field(i).Interface())
		if fs != nil {
			if f := fs.Lookup(strings.ReplaceAll(key, "_", "-")); f != nil && f.Changed {
				v.Set(key, f.Value.String())
			}
		}
	}
	v.SetEnvPrefix("PGMUX")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	var notes []Note
	switch {
	case path != "" && IsINI(path):
		m, n, err := LoadINI(path)
		if err != nil {
			return nil, nil, fmt.Errorf("read config %s: %w", path, err)
		}
		if err := v.MergeConfigMap(m); err != nil {
			return nil, nil, fmt.Errorf("read config %s: %w", path, err)
		}
		notes = n
	case path != "":
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			return nil, nil, fmt.Errorf("read config %s: %w", path, err)
		}
	}
	var c Config
	if err := v.UnmarshalExact(&c, viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		hostListHook, secondsHook, mapstructure.StringToTimeDurationHookFunc(), mapstructure.StringToSliceHookFunc(",")))); err != nil {
		return nil, nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return nil, nil, fmt.Errorf("invalid config %s: %w", path, err)
	}
	return &c, notes, nil
}

// hostListHook reads a list of hosts given as a YAML list as libpq writes
// it, comma-separated.
func hostListHook(from, to reflect.Type, data any) (any, error) {
	list, ok := data.([]any)
	if !ok || to.Kind() != reflect.String {
		return data, nil
	}
	parts := make([]string, len(list))
	for i, v := range list {
		parts[i] = fmt.Sprint(v)
	}
	return strings.Join(parts, ","), nil
}

// secondsHook reads a bare number given for a duration as seconds, as
// PgBouncer does ("server_lifetime: 3600").
func secondsHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeOf(time.Duration(0)) {
		return data, nil
	}
	switch x := data.(type) {
	case int:
		return time.Duration(x) * time.Second, nil
	case int64:
		return time.Duration(x) * time.Second, nil
	case float64:
		return time.Duration(x * float64(time.Second)), nil
	case string:
		if n, err := strconv.ParseFloat(x, 64); err == nil {
			return time.Duration(n * float64(time.Second)), nil
		}
	}
	return data, nil
}

// KeepAlive is the TCP keepalive of client and server connections: off
// without tcp_keepalive (Enable false, the rest -1), else with
// tcp_keepidle, tcp_keepintvl and tcp_keepcnt where set (0 leaves Go's:
// 15 s, 15 s and 9).
func (c *Config) KeepAlive() net.KeepAliveConfig {
	if !c.TCPKeepalive {
		return net.KeepAliveConfig{Enable: false, Idle: -1, Interval: -1, Count: -1}
	}
	return net.KeepAliveConfig{Enable: true, Idle: c.TCPKeepidle, Interval: c.TCPKeepintvl, Count: c.TCPKeepcnt}
}

// ListenAddrs returns listen's addresses.
func (c *Config) ListenAddrs() []string {
	var out []string
	for _, a := range strings.Split(c.Listen, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		out = []string{""} // refused by Validate
	}
	return out
}

func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Redacted returns a copy of c fit to show: passwords and the admin token
// replaced.
func (c *Config) Redacted() Config {
	out := *c
	if out.AdminToken != "" {
		out.AdminToken = "(redacted)"
	}
	out.Databases = make(map[string]Database, len(c.Databases))
	for k, d := range c.Databases {
		if d.Password != "" {
			d.Password = "(redacted)"
		}
		out.Databases[k] = d
	}
	return out
}

// Map returns the configuration keyed as in the file, for display.
func (c Config) Map() map[string]any {
	out := map[string]any{}
	rv := reflect.ValueOf(c)
	for i := range rv.NumField() {
		key := rv.Type().Field(i).Tag.Get("mapstructure")
		switch f := rv.Field(i).Interface().(type) {
		case time.Duration:
			out[key] = f.String()
		case map[string]Database:
			out[key] = entries(f)
		case map[string]User:
			out[key] = entries(f)
		case map[string]Peer:
			out[key] = entries(f)
		case Tracing:
			out[key] = entries(map[string]Tracing{"": f})[""]
		default:
			out[key] = f
		}
	}
	return out
}

// entries is a section of entries (databases, users) keyed as in the file.
func entries[T any](section map[string]T) map[string]any {
	out := map[string]any{}
	for name, e := range section {
		m := map[string]any{}
		ev := reflect.ValueOf(e)
		for j := range ev.NumField() {
			m[ev.Type().Field(j).Tag.Get("mapstructure")] = ev.Field(j).Interface()
		}
		out[name] = m
	}
	return out
}

// ClientTLS is the client leg's TLS keys.
func (c *Config) ClientTLS() tlsconf.Settings {
	return tlsconf.Settings{Key: "client_tls", Mode: c.ClientTLSSSLMode, CertFile: c.ClientTLSCertFile, KeyFile: c.ClientTLSKeyFile,
		CAFile: c.ClientTLSCAFile, Protocols: c.ClientTLSProtocols, Ciphers: c.ClientTLSCiphers}
}

// ServerTLS is the server leg's TLS keys for database name (an entry of
// Databases), its own keys over the top-level ones.
func (c *Config) ServerTLS(name string) tlsconf.Settings {
	s := tlsconf.Settings{Key: "server_tls", Mode: c.ServerTLSSSLMode, CertFile: c.ServerTLSCertFile, KeyFile: c.ServerTLSKeyFile,
		CAFile: c.ServerTLSCAFile, Protocols: c.ServerTLSProtocols, Ciphers: c.ServerTLSCiphers}
	d := c.Databases[name]
	if d.ServerTLSSSLMode != "" || d.ServerTLSCertFile != "" || d.ServerTLSKeyFile != "" || d.ServerTLSCAFile != "" {
		s.Key = "databases." + name + ".server_tls"
		s.Mode = cmp.Or(d.ServerTLSSSLMode, s.Mode)
		s.CertFile = cmp.Or(d.ServerTLSCertFile, s.CertFile)
		s.KeyFile = cmp.Or(d.ServerTLSKeyFile, s.KeyFile)
		s.CAFile = cmp.Or(d.ServerTLSCAFile, s.CAFile)
	}
	return s
}

// ReadyDatabases are the databases named in the file (not "*").
func (c *Config) ReadyDatabases() []string {
	var out []string
	for k := range c.Databases {
		if k != "*" {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// Resolved returns the entry for database name with its defaults filled in:
// dbname from the name, host 127.0.0.1, port 5432, pool mode and size from
// the top level.
func (c *Config) Resolved(name string) (Database, bool) {
	d, ok := c.Databases[name]
	if !ok {
		if d, ok = c.Databases["*"]; !ok {
			return Database{}, false
		}
	}
	if d.DBName == "" {
		d.DBName = name
	}
	if d.Host == "" {
		d.Host = "127.0.0.1"
	}
	if d.Port == 0 {
		d.Port = 5432
	}
	if d.PoolMode == "" {
		d.PoolMode = c.PoolMode
	}
	if d.PoolSize == 0 {
		d.PoolSize = c.DefaultPoolSize
	}
	if d.ReservePoolSize == 0 {
		d.ReservePoolSize = c.ReservePoolSize
	}
	if d.MaxDBConnections == 0 {
		d.MaxDBConnections = c.MaxDBConnections
	}
	return d, true
}
