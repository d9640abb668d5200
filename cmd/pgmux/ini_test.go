package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmux/pgmux/internal/pgtest"
)

// TestPgBouncerSampleINI: PgBouncer's sample pgbouncer.ini and userlist.txt
// (testdata/pgbouncer's copy, its paths and port put here) start pgmux
// unchanged; each key it does not honour is a warning naming it; as the
// sample has no database, a client is told 3D000, over TCP and over the
// Unix socket.
func TestPgBouncerSampleINI(t *testing.T) {
	needPG(t)
	b, err := os.ReadFile("../../testdata/pgbouncer/pgbouncer.ini")
	if err != nil {
		t.Fatal(err)
	}
	users, _ := filepath.Abs("../../testdata/pgbouncer/userlist.txt")
	dir := t.TempDir()
	port, _ := pgtest.FreePort()
	ini := strings.NewReplacer("/etc/pgbouncer/userlist.txt", users, "/var/run/postgresql", dir,
		"listen_port = 6432", fmt.Sprintf("listen_port = %d", port)).Replace(string(b))
	p := startPgmuxFile(t, ini, port, "pgbouncer.ini")
	for _, key := range []string{`"key":"logfile"`, "no database is configured"} {
		if !strings.Contains(p.out.String(), key) {
			t.Errorf("no warning with %s in:\n%s", key, p.out.String())
		}
	}
	if pid, err := os.ReadFile(filepath.Join(dir, "pgbouncer.pid")); err != nil || strings.TrimSpace(string(pid)) != fmt.Sprint(p.cmd.Process.Pid) {
		t.Errorf("pidfile: %q, %v; pgmux is %d", pid, err, p.cmd.Process.Pid)
	}
	for _, host := range []string{"127.0.0.1", dir} {
		dsn := fmt.Sprintf("host=%s port=%d user=postgres password=asdasd dbname=anything sslmode=disable", host, port)
		_, err := pgx.Connect(context.Background(), dsn)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "3D000" {
			t.Errorf("host %s: %v, want 3D000", host, err)
		}
	}
}

// TestConvertStartsTheSamePools: an ini with databases, and the YAML
// `pgmux convert` makes of it, start pgmux with the same pools.
func TestConvertStartsTheSamePools(t *testing.T) {
	c := needPG(t)
	ini := fmt.Sprintf(`[databases]
app = host=127.0.0.1 port=%d dbname=postgres pool_size=3
rep = host=127.0.0.1 port=%d dbname=postgres pool_mode=session
[users]
someone = pool_mode=transaction
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = LISTEN_PORT
unix_socket_dir =
auth_type = trust
pool_mode = transaction
default_pool_size = 7
log_stats = 0
`, c.Port, c.Port)
	pools := func(p *pgmuxProc) string {
		t.Helper()
		for _, db := range []string{"app", "rep"} {
			conn, err := pgx.Connect(context.Background(), p.dsn(c.SuperUserName(), db))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(context.Background(), "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			conn.Close(context.Background())
		}
		var st struct {
			Pools []struct {
				Database string `json:"database"`
				PoolMode string `json:"pool_mode"`
				PoolSize int    `json:"pool_size"`
			} `json:"pools"`
		}
		p.adminJSON(t, "GET", "/stats", &st)
		var out []string
		for _, pl := range st.Pools {
			out = append(out, fmt.Sprintf("%s %s/%d", pl.Database, pl.PoolMode, pl.PoolSize))
		}
		sort.Strings(out)
		return strings.Join(out, ", ")
	}
	port, _ := pgtest.FreePort()
	fromINI := pools(startPgmuxFile(t, ini, port, "pgbouncer.ini"))
	if want := "app transaction/3, rep session/7"; fromINI != want {
		t.Fatalf("pools from the ini: %s, want %s", fromINI, want)
	}
	path := filepath.Join(t.TempDir(), "pgbouncer.ini")
	os.WriteFile(path, []byte(strings.Replace(ini, "LISTEN_PORT", "6432", 1)), 0o600)
	var y bytes.Buffer
	if err := convert([]string{path}, &y); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(y.String(), "#   log_stats: not honoured") {
		t.Errorf("the YAML says nothing of the keys it drops:\n%s", y.String())
	}
	yaml := strings.Replace(y.String(), "\nlisten: 127.0.0.1:6432", "\nlisten: 127.0.0.1:LISTEN_PORT", 1)
	port, _ = pgtest.FreePort()
	if fromYAML := pools(startPgmuxFile(t, yaml, port, "pgmux.yaml")); fromYAML != fromINI {
		t.Fatalf("pools from the converted YAML: %s; from the ini: %s\n%s", fromYAML, fromINI, yaml)
	}
}
