// Package pgtest starts a throwaway PostgreSQL cluster for tests: initdb and
// pg_ctl from the installed PostgreSQL, in a temporary directory, on a free
// port, with users that log in with SCRAM-SHA-256 and md5 passwords. When
// PGMUX_TEST_DSN is set it uses that server instead (and tests that must stop
// or restart the server skip).
//
// PostgreSQL refuses to run as root; as root the cluster runs as the
// "postgres" OS user.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Users and passwords every cluster has. The superuser logs in without a
// password over TCP; the others need theirs.
const (
	SuperUser     = "postgres"
	ScramUser     = "scram_user"
	ScramPassword = "scram-secret"
	MD5User       = "md5_user"
	MD5Password   = "md5-secret"
)

// Cluster is a running PostgreSQL server.
type Cluster struct {
	Host string
	Port int

	external bool   // from PGMUX_TEST_DSN: not ours to stop
	dsnUser  string // superuser of an external server
	dsnPass  string
	dir      string
	bin      string
	cred     *credential
	tls      bool
}

// Options change the cluster StartWith makes.
type Options struct {
	// ServerCert and ServerKey, files, turn TLS on: the cluster then takes
	// TCP connections over TLS only (hostssl, and hostnossl rejected), as
	// a managed database does.
	ServerCert, ServerKey string
}

// ErrExternal is StartWith's error for options PGMUX_TEST_DSN's server
// cannot be given.
var ErrExternal = errors.New("pgtest: PGMUX_TEST_DSN is set; its server is not made to order")

// Start creates and starts a cluster, or attaches to PGMUX_TEST_DSN.
func Start() (*Cluster, error) { return StartWith(Options{}) }

// StartWith creates and starts a cluster as o says.
func StartWith(o Options) (*Cluster, error) {
	if os.Getenv("PGMUX_TEST_DSN") != "" && o.ServerCert != "" {
		return nil, ErrExternal
	}
	if dsn := os.Getenv("PGMUX_TEST_DSN"); dsn != "" {
		cfg, err := pgconn.ParseConfig(dsn)
		if err != nil {
			return nil, fmt.Errorf("PGMUX_TEST_DSN: %w", err)
		}
		c := &Cluster{Host: cfg.Host, Port: int(cfg.Port), external: true, dsnUser: cfg.User, dsnPass: cfg.Password}
		return c, c.createUsers()
	}
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Host: "127.0.0.1", bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, errors.New("running as root and there is no postgres OS user to run PostgreSQL as (install the postgresql package)")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	c.dir, err = os.MkdirTemp("", "pgmux-pg-")
	if err != nil {
		return nil, err
	}
	os.Chmod(c.dir, 0o755)
	if c.cred != nil {
		os.Chown(c.dir, int(c.cred.Uid), int(c.cred.Gid))
	}
	data := filepath.Join(c.dir, "data")
	if out, err := c.cmd("initdb", "-D", data, "-U", SuperUser, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		c.Close()
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	host := "host"
	if o.ServerCert != "" {
		c.tls, host = true, "hostssl"
		for name, src := range map[string]string{"server.crt": o.ServerCert, "server.key": o.ServerKey} {
			if err := c.copyIn(src, filepath.Join(data, name)); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	hba := "local all all trust\n" +
		"local replication all trust\n" +
		host + " replication " + SuperUser + " 127.0.0.1/32 trust\n" +
		host + " all " + SuperUser + " 127.0.0.1/32 trust\n" +
		host + " all " + MD5User + " 127.0.0.1/32 md5\n" +
		host + " all all 127.0.0.1/32 scram-sha-256\n"
	if c.tls {
		hba += "hostnossl all all 0.0.0.0/0 reject\n"
	}
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		c.Close()
		return nil, err
	}
	if c.cred != nil {
		os.Chown(filepath.Join(data, "pg_hba.conf"), int(c.cred.Uid), int(c.cred.Gid))
	}
	if c.Port, err = FreePort(); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.Restart(); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.createUsers(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// findBin finds the directory of initdb and pg_ctl: on PATH, else the newest
// /usr/lib/postgresql/*/bin (Debian's layout).
func findBin() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if _, err := exec.LookPath("initdb"); err == nil {
			if real, err := filepath.EvalSymlinks(p); err == nil {
				p = real // a link on PATH: the rest (pg_basebackup) is beside its target
			}
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin; " +
		"install them with: apt-get install -y postgresql, or set PGMUX_TEST_DSN")
}

func (c *Cluster) cmd(name string, args ...string) *exec.Cmd {
	path := name
	if c.bin != "" {
		path = filepath.Join(c.bin, name)
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = c.dir
	runAs(cmd, c.cred)
	return cmd
}

// copyIn copies the file src to dst, a file of the server's own that only
// it may read (PostgreSQL refuses a key others can).
func (c *Cluster) copyIn(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		return err
	}
	if c.cred != nil {
		return os.Chown(dst, int(c.cred.Uid), int(c.cred.Gid))
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// SocketDir is the directory of the server's Unix socket, where its
// pg_hba.conf trusts every user; empty for PGMUX_TEST_DSN's server.
func (c *Cluster) SocketDir() string {
	if c.external {
		return ""
	}
	return c.dir
}

// External reports whether the server came from PGMUX_TEST_DSN.
func (c *Cluster) External() bool { return c.external }

// Restart starts the server, stopping it first if it runs.
func (c *Cluster) Restart() error {
	if c.external {
		return errors.New("pgtest: cannot restart an external server")
	}
	c.Stop()
	data := filepath.Join(c.dir, "data")
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off "+
		"-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=64MB", c.Port, c.dir)
	if c.tls {
		opts += " -c ssl=on" // server.crt and server.key in the data directory
	}
	out, err := c.cmd("pg_ctl", "-D", data, "-l", filepath.Join(c.dir, "server.log"), "-w", "-t", "60", "-o", opts, "start").CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(c.dir, "server.log"))
		return fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, tail(string(log), 2000))
	}
	return nil
}

// Stop stops the server at once, as a crash would (pg_ctl -m immediate): the
// next start runs crash recovery.
func (c *Cluster) Stop() error { return c.stop("immediate") }

// StopFast stops the server as an operator does (pg_ctl -m fast): sessions
// are ended, and its replicas get all the WAL it wrote before it exits.
func (c *Cluster) StopFast() error { return c.stop("fast") }

func (c *Cluster) stop(mode string) error {
	if c.external || c.dir == "" {
		return nil
	}
	data := filepath.Join(c.dir, "data")
	if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err != nil {
		return nil
	}
	out, err := c.cmd("pg_ctl", "-D", data, "-m", mode, "-w", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
}

// Close stops the server and removes its files.
func (c *Cluster) Close() {
	if c.external {
		return
	}
	c.Stop()
	if c.dir != "" {
		os.RemoveAll(c.dir)
	}
}

// StartReplica makes a streaming replica of c (pg_basebackup -R) and starts
// it on a free port. Callers MUST Close it.
func (c *Cluster) StartReplica() (*Cluster, error) {
	if c.external {
		return nil, ErrExternal
	}
	r := &Cluster{Host: c.Host, bin: c.bin, cred: c.cred, tls: c.tls}
	var err error
	if r.dir, err = os.MkdirTemp("", "pgmux-pg-"); err != nil {
		return nil, err
	}
	os.Chmod(r.dir, 0o755)
	if r.cred != nil {
		os.Chown(r.dir, int(r.cred.Uid), int(r.cred.Gid))
	}
	data := filepath.Join(r.dir, "data")
	if out, err := r.cmd("pg_basebackup", "-D", data, "-R", "-X", "stream", "-c", "fast", "--no-sync",
		"-h", c.dir, "-p", strconv.Itoa(c.Port), "-U", SuperUser).CombinedOutput(); err != nil {
		r.Close()
		return nil, fmt.Errorf("pg_basebackup: %v\n%s", err, out)
	}
	if r.Port, err = FreePort(); err != nil {
		r.Close()
		return nil, err
	}
	if err := r.Restart(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// Promote ends a replica's recovery: it becomes a primary.
func (c *Cluster) Promote() error {
	out, err := c.cmd("pg_ctl", "-D", filepath.Join(c.dir, "data"), "-w", "promote").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl promote: %v\n%s", err, out)
	}
	return nil
}

// DSN returns a connection string to the server itself.
func (c *Cluster) DSN(user, password, database string) string {
	mode := "disable"
	if c.tls {
		mode = "require"
	}
	s := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=%s", c.Host, c.Port, user, database, mode)
	if password != "" {
		s += " password=" + password
	}
	return s
}

// SuperDSN returns a connection string for the superuser.
func (c *Cluster) SuperDSN(database string) string {
	if c.external {
		return c.DSN(c.dsnUser, c.dsnPass, database)
	}
	return c.DSN(SuperUser, "", database)
}

// SuperUserName is the superuser tests connect as.
func (c *Cluster) SuperUserName() string {
	if c.external {
		return c.dsnUser
	}
	return SuperUser
}

// Exec runs sql as the superuser in database.
func (c *Cluster) Exec(database, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.SuperDSN(database))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// CreateDatabase creates a fresh database (dropping one of the same name).
func (c *Cluster) CreateDatabase(name string) error {
	if err := c.Exec("postgres", fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{name}.Sanitize())); err != nil {
		return err
	}
	return c.Exec("postgres", fmt.Sprintf("CREATE DATABASE %s", pgx.Identifier{name}.Sanitize()))
}

func (c *Cluster) createUsers() error {
	q := fmt.Sprintf(`
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%[1]s') THEN CREATE ROLE %[1]s LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%[3]s') THEN CREATE ROLE %[3]s LOGIN; END IF;
END $$;
SET password_encryption = 'scram-sha-256';
ALTER ROLE %[1]s PASSWORD '%[2]s';
SET password_encryption = 'md5';
ALTER ROLE %[3]s PASSWORD '%[4]s';
GRANT ALL ON SCHEMA public TO %[1]s, %[3]s;`, ScramUser, ScramPassword, MD5User, MD5Password)
	return c.Exec("postgres", q)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return strings.TrimSpace(s)
}
