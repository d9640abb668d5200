package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// sampleINI writes testdata/pgbouncer's copy of PgBouncer's sample
// pgbouncer.ini to a directory of the test's, with its paths there.
func sampleINI(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	b, err := os.ReadFile("../testdata/pgbouncer/pgbouncer.ini")
	if err != nil {
		t.Fatal(err)
	}
	users, err := filepath.Abs("../testdata/pgbouncer/userlist.txt")
	if err != nil {
		t.Fatal(err)
	}
	s := strings.NewReplacer("/etc/pgbouncer/userlist.txt", users, "/var/run/postgresql", dir).Replace(string(b))
	path := filepath.Join(dir, "pgbouncer.ini")
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadSampleINI(t *testing.T) {
	path := sampleINI(t)
	c, notes, err := LoadNotes(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "localhost:6432" || c.UnixSocketDir != filepath.Dir(path) || c.AuthType != "md5" || c.PoolMode != "session" ||
		c.MaxClientConn != 100 || len(c.Databases) != 0 {
		t.Errorf("loaded %+v", c)
	}
	said := map[string]bool{}
	for _, n := range notes {
		said[n.Key] = true
	}
	if c.Pidfile != filepath.Join(filepath.Dir(path), "pgbouncer.pid") || !c.LogConnections {
		t.Errorf("pidfile %q, log_connections %v", c.Pidfile, c.LogConnections)
	}
	for _, k := range []string{"logfile", "listen_addr, listen_port", "pool_mode", "max_client_conn"} {
		if !said[k] {
			t.Errorf("nothing said of %s: %v", k, notes)
		}
	}
}

func TestLoadFullINI(t *testing.T) {
	c, notes, err := LoadNotes("../testdata/pgbouncer/full.ini", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Database{
		"app":      {Host: "10.0.0.5", Port: 5433, DBName: "app_prod", User: "app", Password: "s3cr'et x", PoolSize: 30, PoolMode: "transaction"},
		"odd name": {Host: "/var/run/postgresql", DBName: "odd"},
		"nohost":   {DBName: "other"}, // unix_socket_dir is empty: TCP to 127.0.0.1 (Resolved)
		"multi":    {Host: "10.0.0.1,10.0.0.2", ReservePoolSize: 5, LoadBalanceHosts: "round-robin"},
		"*":        {Host: "127.0.0.1", Port: 5432},
	}
	if !reflect.DeepEqual(c.Databases, want) {
		t.Errorf("databases %+v\nwant %+v", c.Databases, want)
	}
	if c.Listen != ":7432" || c.UnixSocketDir != "" || c.AuthType != "trust" || c.PoolMode != "transaction" || c.DefaultPoolSize != 15 ||
		c.MaxClientConn != 500 || !reflect.DeepEqual(c.AdminUsers, []string{"alice", "bob"}) || !reflect.DeepEqual(c.StatsUsers, []string{"carol"}) ||
		c.ServerIdleTimeout != 300*time.Second || c.QueryWaitTimeout != 60500*time.Millisecond || c.LogLevel != "debug" ||
		c.ServerLifetime != 1800*time.Second || c.ClientTLSSSLMode != "disable" || c.QueryTimeout != 90*time.Second {
		t.Errorf("loaded %+v", c)
	}
	said := map[string]string{}
	for _, n := range notes {
		said[n.Key] = n.Text
	}
	if want := map[int]Peer{2: {Host: "10.0.0.2", Port: 6433}}; c.PeerID != 1 || !reflect.DeepEqual(c.PeerAddrs(), want) {
		t.Errorf("peer_id %d, [peers] %+v", c.PeerID, c.PeerAddrs())
	}
	if u := c.Users["alice"]; u != (User{PoolMode: "session", MaxUserConnections: 10}) {
		t.Errorf("[users] alice: %+v", u)
	}
	for _, k := range []string{"multi connect_query", "auth_type", "pool_mode",
		"verbose", "so_reuseport", "no_such_key", "2 pool_size"} {
		if said[k] == "" {
			t.Errorf("nothing said of %s", k)
		}
	}
	if !strings.Contains(said["no_such_key"], "not a key pgmux knows") {
		t.Errorf("no_such_key: %s", said["no_such_key"])
	}
}

func TestINIRefused(t *testing.T) {
	dir := t.TempDir()
	for name, c := range map[string]struct{ ini, want string }{
		"plain":    {"[pgbouncer]\nauth_type = plain\n", "auth_type plain"},
		"nosect":   {"listen_port = 1\n", "before any [section]"},
		"noeq":     {"[pgbouncer]\nlisten_port\n", "not key = value"},
		"quote":    {"[databases]\na = password='x\n", "unclosed quote"},
		"port":     {"[databases]\na = port=x\n", "not a number"},
		"include":  {"[pgbouncer]\n%include /nonexistent/x.ini\n", "no such file"},
		"badvalue": {"[pgbouncer]\ndefault_pool_size = many\n", "default_pool_size"},
	} {
		path := filepath.Join(dir, name+".ini")
		os.WriteFile(path, []byte(c.ini), 0o644)
		if _, _, err := LoadNotes(path, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	self := filepath.Join(dir, "self.ini")
	os.WriteFile(self, []byte("[pgbouncer]\n%include "+self+"\n"), 0o644)
	if _, _, err := LoadNotes(self, nil); err == nil || !strings.Contains(err.Error(), "nested") {
		t.Errorf("an ini that includes itself: %v", err)
	}
}

// TestConvertRoundTrip: pgmux convert's YAML loads to the same
// configuration as the ini it came from, and says what it changed.
func TestConvertRoundTrip(t *testing.T) {
	for _, path := range []string{sampleINI(t), "../testdata/pgbouncer/full.ini"} {
		fromINI, _, err := LoadNotes(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		y, err := Convert(path)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "pgmux.yaml")
		if err := os.WriteFile(out, y, 0o644); err != nil {
			t.Fatal(err)
		}
		fromYAML, err := Load(out, nil)
		if err != nil {
			t.Fatalf("%s: the converted YAML: %v\n%s", path, err, y)
		}
		if !reflect.DeepEqual(fromINI, fromYAML) {
			t.Errorf("%s: converted YAML loads as\n%+v\nthe ini as\n%+v\n%s", path, fromYAML, fromINI, y)
		}
		if !strings.Contains(string(y), "# What it maps differently or does not honour:") {
			t.Errorf("%s: no notes in\n%s", path, y)
		}
	}
}

// FuzzINI: any file is read or refused with an error, never a panic, and
// what is read converts to YAML.
func FuzzINI(f *testing.F) {
	for _, s := range []string{"[pgbouncer]\nlisten_port = 1\n", "[databases]\n\"a\"\"b\" = host=x password='a\\'b' port=1\n",
		"[users]\nu = pool_mode=session\n", "[databases]\nx = host=a,b dbname=\n"} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "f.ini")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := LoadINI(path); err != nil {
			return
		}
		if _, err := Convert(path); err != nil {
			t.Fatalf("read, but not converted: %v", err)
		}
	})
}

// TestINIListenAddrs: several listen_addr make several listen addresses.
func TestINIListenAddrs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.ini")
	os.WriteFile(path, []byte("[pgbouncer]\nlisten_addr = 127.0.0.1, ::1, *\nlisten_port = 7000\nauth_type = trust\nunix_socket_dir =\n"), 0o600)
	c, _, err := LoadNotes(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.ListenAddrs(); !reflect.DeepEqual(got, []string{"127.0.0.1:7000", "[::1]:7000", ":7000"}) {
		t.Errorf("listen %q: %q", c.Listen, got)
	}
}
