package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadGood(t *testing.T) {
	c, err := Load("../testdata/config/full.good.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.ServerIdleTimeout != 600*time.Second || c.ServerLifetime != time.Hour || c.QueryWaitTimeout != 2*time.Minute {
		t.Errorf("durations: %s %s %s", c.ServerIdleTimeout, c.ServerLifetime, c.QueryWaitTimeout)
	}
	if c.Loops != 2 {
		t.Errorf("loops: %d", c.Loops)
	}
	if want := map[int]Peer{2: {Host: "10.0.0.2", Port: 6433}, 3: {Host: "/var/run/pgmux", Port: 6432}}; c.PeerID != 1 || !reflect.DeepEqual(c.PeerAddrs(), want) {
		t.Errorf("peer_id %d, peers %+v", c.PeerID, c.PeerAddrs())
	}
	if name, port := c.PeersDNSAddr(); name != "pgmux-peers.default.svc.cluster.local" || port != "6432" {
		t.Errorf("peers_dns: %s, port %s", name, port)
	}
	if ha := c.Databases["ha"]; ha.Host != "10.0.0.1,10.0.0.2" || ha.Role != "replica" || ha.LoadBalanceHosts != "round-robin" || ha.MaxReplicaLag != 5*time.Second {
		t.Errorf("ha: %+v", ha)
	}
	if c.Tracing != (Tracing{OTLPEndpoint: "http://127.0.0.1:4318", Protocol: "http", SampleRatio: 0.5, ServiceName: "pgmux"}) {
		t.Errorf("tracing %+v", c.Tracing)
	}
	app, ok := c.Resolved("app")
	if !ok || app.PoolMode != "session" || app.PoolSize != 10 || app.User != "app" || app.Password != "secret" {
		t.Errorf("app: %+v", app)
	}
	other, ok := c.Resolved("reports")
	if !ok || other.Host != "10.0.0.1" || other.Port != 5432 || other.DBName != "reports" || other.PoolSize != 20 || other.PoolMode != "transaction" {
		t.Errorf("wildcard: %+v", other)
	}
}

func TestLoadBad(t *testing.T) {
	want := map[string][]string{
		"unknown-key.bad.yaml": {"pool_size_typo"},
		"bad-values.bad.yaml": {"listen:", "pool_mode:", "default_pool_size:", "auth_type:", "databases.app.port:", "databases.app.pool_mode:", "sched_slice: must be 0", "loops: must be between 0", "client_tls_sslmode:", "databases.app.server_tls_sslmode:",
			"peer_id: must be between 0", `peers: "first" is not a peer id`, "peers.4.host: missing", "tracing.protocol:", "tracing.sample_ratio:", "databases.app.role:", "databases.app.load_balance_hosts:", "peers_dns:"},
		"md5-no-file.bad.yaml":  {"auth_file: required with auth_type md5, unless auth_user"},
		"bad-duration.bad.yaml": {"query_wait_timeout"},
		"admin-open.bad.yaml":   {"admin_token: required when admin_listen (0.0.0.0:9127) is not a loopback address"},
	}
	files, _ := filepath.Glob("../testdata/config/*.bad.yaml")
	if len(files) != len(want) {
		t.Fatalf("%d bad files, %d expectations", len(files), len(want))
	}
	for _, f := range files {
		_, err := Load(f, nil)
		if err == nil {
			t.Errorf("%s: accepted", f)
			continue
		}
		for _, sub := range want[filepath.Base(f)] {
			if !strings.Contains(err.Error(), sub) {
				t.Errorf("%s: error does not name %q:\n%v", f, sub, err)
			}
		}
	}
}

// TestOverrides: the environment wins over the file, flags over both.
func TestOverrides(t *testing.T) {
	t.Setenv("PGMUX_DEFAULT_POOL_SIZE", "7")
	t.Setenv("PGMUX_POOL_MODE", "session")
	t.Setenv("PGMUX_QUERY_WAIT_TIMEOUT", "5s")
	fs := Flags()
	if err := fs.Parse([]string{"--pool-mode", "transaction", "--max-client-conn", "50", "--server-lifetime", "90s"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load("../testdata/config/full.good.yaml", fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.DefaultPoolSize != 7 || c.QueryWaitTimeout != 5*time.Second {
		t.Errorf("env: pool size %d, wait %s", c.DefaultPoolSize, c.QueryWaitTimeout)
	}
	if c.PoolMode != "transaction" || c.MaxClientConn != 50 || c.ServerLifetime != 90*time.Second {
		t.Errorf("flags: %s %d %s", c.PoolMode, c.MaxClientConn, c.ServerLifetime)
	}
	if c.ShutdownTimeout != 30*time.Second {
		t.Errorf("file value lost: %s", c.ShutdownTimeout)
	}
}

// TestRunConfigValid: the configuration `make run` uses loads.
func TestRunConfigValid(t *testing.T) {
	if _, err := Load("../testdata/pgmux.yaml", nil); err != nil {
		t.Fatal(err)
	}
}

// TestSchedSliceValues: sched_slice takes 0 or what the kernel accepts,
// given as a duration or as seconds.
func TestSchedSliceValues(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want time.Duration
	}{{"", MinSchedSlice}, {"0", 0}, {"250us", 250 * time.Microsecond}, {"0.001", time.Millisecond}, {"100ms", 100 * time.Millisecond}} {
		v, want := tc.v, tc.want
		if v != "" { // unset first: the default
			t.Setenv("PGMUX_SCHED_SLICE", v)
		}
		c, err := Load("../testdata/config/full.good.yaml", nil)
		if err != nil {
			t.Errorf("sched_slice %q: %v", v, err)
		} else if c.SchedSlice != want {
			t.Errorf("sched_slice %q: got %s, want %s", v, c.SchedSlice, want)
		}
	}
	for _, v := range []string{"99us", "101ms", "-1ms"} {
		t.Setenv("PGMUX_SCHED_SLICE", v)
		if _, err := Load("../testdata/config/full.good.yaml", nil); err == nil || !strings.Contains(err.Error(), "sched_slice") {
			t.Errorf("sched_slice %q: accepted or not named: %v", v, err)
		}
	}
}
