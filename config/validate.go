package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/pgmux/pgmux/tlsconf"
)

// Validate checks every key and returns all problems found, each naming
// its key. No database is not one: as with PgBouncer, every client then
// gets 3D000 until a reload adds one.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(key, addr string, optional bool) {
		if addr == "" && optional {
			return
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(key, "%q is not host:port", addr)
		}
	}
	for _, addr := range c.ListenAddrs() {
		checkAddr("listen", addr, false)
	}
	if _, err := strconv.ParseUint(c.UnixSocketMode, 8, 32); err != nil {
		bad("unix_socket_mode", "%q is not an octal file mode", c.UnixSocketMode)
	}
	if c.UnixSocketDir != "" {
		if st, err := os.Stat(c.UnixSocketDir); err != nil || !st.IsDir() {
			bad("unix_socket_dir", "%q is not a directory", c.UnixSocketDir)
		}
	}
	checkAddr("admin_listen", c.AdminListen, true)
	if c.AdminListen != "" && c.AdminToken == "" && !loopback(c.AdminListen) {
		bad("admin_token", "required when admin_listen (%s) is not a loopback address", c.AdminListen)
	}
	checkMode := func(key, mode string) {
		if mode != "transaction" && mode != "session" {
			bad(key, "%q is not transaction or session", mode)
		}
	}
	checkMode("pool_mode", c.PoolMode)
	if c.DefaultPoolSize < 1 {
		bad("default_pool_size", "must be at least 1, got %d", c.DefaultPoolSize)
	}
	if c.MinPoolSize < 0 || c.MinPoolSize > c.DefaultPoolSize {
		bad("min_pool_size", "must be between 0 and default_pool_size (%d), got %d", c.DefaultPoolSize, c.MinPoolSize)
	}
	for key, n := range map[string]int{"reserve_pool_size": c.ReservePoolSize, "max_db_connections": c.MaxDBConnections,
		"max_user_connections": c.MaxUserConnections} {
		if n < 0 {
			bad(key, "must not be negative, got %d", n)
		}
	}
	if c.MaxClientConn < 1 {
		bad("max_client_conn", "must be at least 1, got %d", c.MaxClientConn)
	}
	switch c.AuthType {
	case "trust":
	case "hba":
		if c.AuthHBAFile == "" {
			bad("auth_hba_file", "required with auth_type hba")
		}
	case "cert":
		if m, _ := tlsconf.ParseMode(c.ClientTLSSSLMode); m < tlsconf.VerifyCA {
			bad("auth_type", "cert needs client_tls_sslmode verify-ca or verify-full (and client_tls_ca_file), got %s", c.ClientTLSSSLMode)
		}
	case "md5", "scram-sha-256":
		if c.AuthFile == "" && c.AuthUser == "" {
			bad("auth_file", "required with auth_type %s, unless auth_user fetches secrets with auth_query", c.AuthType)
		}
	default:
		bad("auth_type", "%q is not scram-sha-256, md5, cert, hba or trust", c.AuthType)
	}
	if c.AuthFile != "" {
		if _, err := os.Stat(c.AuthFile); err != nil {
			bad("auth_file", "%v", err)
		}
	}
	for key, d := range map[string]time.Duration{
		"query_wait_timeout": c.QueryWaitTimeout, "server_connect_timeout": c.ServerConnectTimeout,
		"server_idle_timeout": c.ServerIdleTimeout, "server_lifetime": c.ServerLifetime,
		"client_idle_timeout": c.ClientIdleTimeout, "client_login_timeout": c.ClientLoginTimeout,
		"idle_transaction_timeout": c.IdleTransactionTimeout, "shutdown_timeout": c.ShutdownTimeout,
		"stats_period": c.StatsPeriod, "reserve_pool_timeout": c.ReservePoolTimeout,
		"tcp_keepidle": c.TCPKeepidle, "tcp_keepintvl": c.TCPKeepintvl, "server_login_retry": c.ServerLoginRetry,
		"server_check_delay": c.ServerCheckDelay, "query_timeout": c.QueryTimeout, "host_check_interval": c.HostCheckInterval,
		"read_after_write_window": c.ReadAfterWriteWindow,
	} {
		if d < 0 {
			bad(key, "must not be negative, got %s", d)
		}
	}
	if c.SchedSlice != 0 && (c.SchedSlice < MinSchedSlice || c.SchedSlice > MaxSchedSlice) {
		bad("sched_slice", "must be 0 (the kernel's default) or between %s and %s, got %s", MinSchedSlice, MaxSchedSlice, c.SchedSlice)
	}
	if c.PeerID < 0 || c.PeerID > MaxPeerID {
		bad("peer_id", "must be between 0 (no peering) and %d, got %d", MaxPeerID, c.PeerID)
	}
	if c.PeersDNS != "" {
		if _, port, err := net.SplitHostPort(c.PeersDNS); err == nil {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				bad("peers_dns", "%q: %q is not a port", c.PeersDNS, port)
			}
		}
	}
	for k, p := range c.Peers {
		if id, err := strconv.Atoi(k); err != nil || id < 1 || id > MaxPeerID {
			bad("peers", "%q is not a peer id between 1 and %d", k, MaxPeerID)
		}
		if p.Host == "" {
			bad("peers."+k+".host", "missing")
		}
		if p.Port < 0 || p.Port > 65535 {
			bad("peers."+k+".port", "%d is not a port", p.Port)
		}
	}
	if p := c.Tracing.Protocol; p != "http" && p != "grpc" {
		bad("tracing.protocol", "%q is not http or grpc", p)
	}
	if r := c.Tracing.SampleRatio; r < 0 || r > 1 {
		bad("tracing.sample_ratio", "must be between 0 and 1, got %v", r)
	}
	if c.NotifyQueueBytes < 1024 {
		bad("notify_queue_bytes", "must be at least 1024, got %d", c.NotifyQueueBytes)
	}
	if c.MaxPreparedStatements < 0 {
		bad("max_prepared_statements", "must not be negative, got %d", c.MaxPreparedStatements)
	}
	if c.Loops < 0 || c.Loops > MaxLoops {
		bad("loops", "must be between 0 (one per core) and %d, got %d", MaxLoops, c.Loops)
	}
	if c.MaxPacketSize < 1024 {
		bad("max_packet_size", "must be at least 1024, got %d", c.MaxPacketSize)
	}
	for key, mode := range map[string]string{"client_tls_sslmode": c.ClientTLSSSLMode, "server_tls_sslmode": c.ServerTLSSSLMode} {
		if _, err := tlsconf.ParseMode(mode); err != nil {
			bad(key, "%v", err)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q is not debug, info, warn or error", c.LogLevel)
	}

	for name, u := range c.Users {
		if u.PoolMode != "" {
			checkMode("users."+name+".pool_mode", u.PoolMode)
		}
		if u.PoolSize < 0 || u.ReservePoolSize < 0 || u.MaxUserConnections < 0 {
			bad("users."+name, "sizes must not be negative")
		}
	}
	names := make([]string, 0, len(c.Databases))
	for name := range c.Databases {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		d := c.Databases[name]
		key := "databases." + name
		if d.Port < 0 || d.Port > 65535 {
			bad(key+".port", "%d is not a port", d.Port)
		}
		if d.PoolMode != "" {
			checkMode(key+".pool_mode", d.PoolMode)
		}
		if d.ServerTLSSSLMode != "" {
			if _, err := tlsconf.ParseMode(d.ServerTLSSSLMode); err != nil {
				bad(key+".server_tls_sslmode", "%v", err)
			}
		}
		if d.PoolSize < 0 {
			bad(key+".pool_size", "must not be negative, got %d", d.PoolSize)
		}
		if !slices.Contains([]string{"", "any", "primary", "replica"}, d.Role) {
			bad(key+".role", "%q is not primary, replica or any", d.Role)
		}
		if !slices.Contains([]string{"", "disable", "round-robin", "random"}, d.LoadBalanceHosts) {
			bad(key+".load_balance_hosts", "%q is not disable, round-robin or random", d.LoadBalanceHosts)
		}
		if d.MaxReplicaLag < 0 {
			bad(key+".max_replica_lag", "must not be negative, got %s", d.MaxReplicaLag)
		}
		if name == "*" && d.DBName != "" {
			bad(key+".dbname", "the wildcard entry takes the client's database name")
		}
	}
	return errors.Join(errs...)
}
