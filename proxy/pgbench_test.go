package proxy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// pgbenchPath finds pgbench on PATH or in Debian's PostgreSQL directory.
func pgbenchPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	if dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench"); len(dirs) > 0 {
		return dirs[len(dirs)-1]
	}
	t.Fatal("pgbench not installed (apt-get install -y postgresql-contrib or postgresql)")
	return ""
}

var (
	pgbenchFailed    = regexp.MustCompile(`number of failed transactions: (\d+)`)
	pgbenchProcessed = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
)

// pgbenchDB creates dbName and fills it with pgbench -i (scale 1), directly.
func pgbenchDB(t *testing.T, dbName string) string {
	t.Helper()
	c := needPG(t)
	bin := pgbenchPath(t)
	if err := c.CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-i", "-q", "-s", "1", "-h", c.Host, "-p", strconv.Itoa(c.Port), "-U", c.SuperUserName(), dbName).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	return bin
}

// runPgbench runs pgbench through p for 4 seconds with args, and fails the
// test unless it ends with transactions processed and none failed.
func runPgbench(t *testing.T, bin string, p *testProxy, dbName string, args ...string) {
	t.Helper()
	runPgbenchEnv(t, bin, p, dbName, []string{"PGSSLMODE=disable"}, args...)
}

// runPgbenchCount is runPgbench, returning how many transactions ran.
func runPgbenchCount(t *testing.T, bin string, p *testProxy, dbName string, args ...string) int {
	t.Helper()
	return runPgbenchEnv(t, bin, p, dbName, []string{"PGSSLMODE=disable"}, args...)
}

// runPgbenchEnv is runPgbench with env added to pgbench's environment; it
// returns how many transactions ran.
func runPgbenchEnv(t *testing.T, bin string, p *testProxy, dbName string, env []string, args ...string) int {
	t.Helper()
	args = append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", cluster.SuperUserName(), "-j", "2", "-T", "4", "-n"}, args...)
	cmd := exec.Command(bin, append(args, dbName)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench %v: %v\n%s", args, err, out)
	}
	failed := pgbenchFailed.FindSubmatch(out)
	processed := pgbenchProcessed.FindSubmatch(out)
	if failed == nil || processed == nil {
		t.Fatalf("cannot read pgbench's report:\n%s", out)
	}
	if string(failed[1]) != "0" || string(processed[1]) == "0" {
		t.Fatalf("pgbench %v: %s failed, %s processed:\n%s", args, failed[1], processed[1], out)
	}
	t.Logf("pgbench %v: %s transactions, none failed", args, processed[1])
	n, _ := strconv.Atoi(string(processed[1]))
	return n
}

// TestPgbench runs pgbench's TPC-B-like script, 100 clients on a pool of
// 10, through transaction mode, with the simple and the extended protocol:
// no transaction may fail.
func TestPgbench(t *testing.T) {
	bin := pgbenchDB(t, "pgbench")
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 10 })
	for _, mode := range []string{"simple", "extended"} {
		t.Run(mode, func(t *testing.T) { runPgbench(t, bin, p, "pgbench", "-c", "100", "-M", mode) })
	}
}
