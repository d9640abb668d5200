package proxy

import (
	"fmt"
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

// TestPgbench runs pgbench's TPC-B-like script, 100 clients on a pool of
// 10, through transaction mode, with the simple and the extended protocol:
// no transaction may fail.
func TestPgbench(t *testing.T) {
	c := needPG(t)
	bin := pgbenchPath(t)
	const dbName = "pgbench"
	if err := c.CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	user := c.SuperUserName()
	if out, err := exec.Command(bin, "-i", "-q", "-s", "1", "-h", c.Host, "-p", strconv.Itoa(c.Port), "-U", user, dbName).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 10 })
	for _, mode := range []string{"simple", "extended"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(bin, "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", user,
				"-c", "100", "-j", "2", "-T", "4", "-M", mode, "-n", dbName)
			cmd.Env = append(os.Environ(), "PGSSLMODE=disable")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("pgbench: %v\n%s", err, out)
			}
			failed := pgbenchFailed.FindSubmatch(out)
			processed := pgbenchProcessed.FindSubmatch(out)
			if failed == nil || processed == nil {
				t.Fatalf("cannot read pgbench's report:\n%s", out)
			}
			if string(failed[1]) != "0" {
				t.Fatalf("%s failed transactions:\n%s", failed[1], out)
			}
			n, _ := strconv.Atoi(string(processed[1]))
			if n == 0 {
				t.Fatalf("no transaction processed:\n%s", out)
			}
			t.Log(fmt.Sprintf("-M %s: %d transactions, none failed", mode, n))
		})
	}
}
