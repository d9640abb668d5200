package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/hba"
	"github.com/pgmux/pgmux/internal/pgtest"
	"github.com/pgmux/pgmux/internal/testcert"
	"github.com/pgmux/pgmux/tlsconf"
)

// tlsEnv is what the TLS tests share: a CA, a PostgreSQL that takes TCP
// connections over TLS only (its certificate for localhost), and a
// certificate for pgmux (localhost and 127.0.0.1).
var tlsEnv struct {
	once    sync.Once
	err     error
	dir     string
	ca      *testcert.CA
	cluster *pgtest.Cluster
	pgmux   testcert.Pair
}

func needTLS(t *testing.T) {
	t.Helper()
	needPG(t)
	e := &tlsEnv
	e.once.Do(func() {
		if e.dir, e.err = os.MkdirTemp("", "pgmux-tls-"); e.err != nil {
			return
		}
		if e.ca, e.err = testcert.NewCA(e.dir, "ca"); e.err != nil {
			return
		}
		var pg testcert.Pair
		if pg, e.err = e.ca.Issue("postgres", "localhost", "localhost"); e.err != nil {
			return
		}
		if e.pgmux, e.err = e.ca.Issue("pgmux", "localhost", "localhost", "127.0.0.1"); e.err != nil {
			return
		}
		e.cluster, e.err = pgtest.StartWith(pgtest.Options{ServerCert: pg.CertFile, ServerKey: pg.KeyFile})
	})
	if errors.Is(e.err, pgtest.ErrExternal) {
		t.Skip("needs a PostgreSQL of its own with TLS (PGMUX_TEST_DSN is set)")
	}
	if e.err != nil {
		t.Fatal(e.err)
	}
}

// closeTLSEnv stops what needTLS started.
func closeTLSEnv() {
	if tlsEnv.cluster != nil {
		tlsEnv.cluster.Close()
	}
	if tlsEnv.dir != "" {
		os.RemoveAll(tlsEnv.dir)
	}
}

// tlsServerDB points db at the TLS-only cluster, reached as host with
// sslmode mode, verified against the test CA, logging in as the SCRAM user.
func tlsServerDB(t *testing.T, o *Options, db *Database, host, mode string) {
	t.Helper()
	servers, err := tlsconf.ForServers(tlsconf.Settings{Key: "server_tls", Mode: mode, CAFile: tlsEnv.ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	db.Host, db.Port, db.ServerTLS = host, tlsEnv.cluster.Port, servers
	secret, err := auth.ParseSecret(pgtest.ScramUser, pgtest.ScramPassword)
	if err != nil {
		t.Fatal(err)
	}
	o.Users = map[string]auth.Secret{pgtest.ScramUser: secret}
}

// TestServerTLSVerifyFull: pgmux reaches a server that takes TLS only,
// verifying its certificate and name, in both pool modes, and serves
// prepared statements over it.
func TestServerTLSVerifyFull(t *testing.T) {
	needTLS(t)
	for _, mode := range []string{ModeTransaction, ModeSession} {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, func(o *Options, db *Database) {
				tlsServerDB(t, o, db, "localhost", "verify-full")
				db.PoolMode = mode
			})
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, p.dsn(pgtest.ScramUser, "", "postgres"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			for i := 0; i < 3; i++ { // prepared by pgx, mapped by pgmux
				var ssl bool
				var version string
				if err := conn.QueryRow(ctx, "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND $1::int > 0", i+1).Scan(&ssl, &version); err != nil {
					t.Fatal(err)
				}
				if !ssl {
					t.Fatal("the server connection is not TLS")
				}
				if i == 0 {
					t.Logf("server leg: %s", version)
				}
			}
			exerciseTLS(t, conn)
		})
	}
}

// TestServerTLSWrongName: a server whose certificate names another host is
// refused under verify-full, with the reason logged and an error for the
// client, and no attempt in plain text.
func TestServerTLSWrongName(t *testing.T) {
	needTLS(t)
	core, logs := observer.New(zapcore.WarnLevel)
	p := startProxy(t, func(o *Options, db *Database) {
		tlsServerDB(t, o, db, "127.0.0.1", "verify-full") // the certificate names localhost only
		o.Logger = zap.New(core)
	})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, p.dsn(pgtest.ScramUser, "", "postgres"))
	if err == nil {
		var n int
		err = conn.QueryRow(ctx, "SELECT 1").Scan(&n)
		conn.Close(ctx)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08006" {
		t.Fatalf("client got %v, want 08006", err)
	}
	var logged string
	for _, e := range logs.All() {
		if e.Message == "server connect failed" || e.Message == "server login failed" {
			logged = e.ContextMap()["error"].(string)
		}
	}
	t.Logf("logged: %s", logged)
	if !strings.Contains(logged, "failed to verify certificate") {
		t.Fatalf("the log does not say why: %q", logged)
	}
	if strings.Contains(logged, "no encryption") {
		t.Fatalf("pgmux tried plain text after TLS failed: %q", logged)
	}
}

// tlsClients is a client leg that requires TLS, with pgmux's certificate.
func tlsClients(t *testing.T, mode string) *tlsconf.Clients {
	t.Helper()
	c, err := tlsconf.ForClients(tlsconf.Settings{Key: "client_tls", Mode: mode, CertFile: tlsEnv.pgmux.CertFile, KeyFile: tlsEnv.pgmux.KeyFile})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tlsDSN is p.dsn for a client that verifies pgmux's certificate.
func tlsDSN(p *testProxy, user, database, extra string) string {
	return strings.Replace(p.dsn(user, "", database), "sslmode=disable", "sslmode=verify-full sslrootcert="+tlsEnv.ca.CertFile+" "+extra, 1)
}

// TestClientTLS: with client_tls_sslmode require, clients that verify
// pgmux's certificate are served over TLS in both pool modes (prepared
// statements, COPY both ways, a cancel), whether they negotiate with an
// SSLRequest or directly; a client in plain text gets 28000 before any
// password is asked.
func TestClientTLS(t *testing.T) {
	needTLS(t)
	for _, mode := range []string{ModeTransaction, ModeSession} {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, func(o *Options, db *Database) {
				o.ClientTLS = tlsClients(t, "require")
				db.PoolMode = mode
			})
			ctx := context.Background()
			for _, negotiation := range []string{"postgres", "direct"} {
				conn, err := pgx.Connect(ctx, tlsDSN(p, cluster.SuperUserName(), "postgres", "sslnegotiation="+negotiation))
				if err != nil {
					t.Fatalf("%s: %v", negotiation, err)
				}
				if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
					t.Fatalf("%s: the client is not on TLS", negotiation)
				}
				exerciseTLS(t, conn)
				conn.Close(ctx)
			}
			_, err := pgx.Connect(ctx, p.dsn(cluster.SuperUserName(), "", "postgres"))
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
				t.Fatalf("a client in plain text got %v, want 28000", err)
			}
			t.Logf("plain text: %s", pgErr.Message)
		})
	}
}

// exerciseTLS runs, on conn, prepared statements, COPY in and out, a
// pipeline and a cancelled statement.
func exerciseTLS(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	table := "tls_copy_" + strconv.Itoa(int(conn.PgConn().PID()%1e6))
	if _, err := conn.Exec(ctx, "CREATE TEMP TABLE IF NOT EXISTS "+table+" (n int, s text)"); err != nil && !strings.Contains(err.Error(), "temp") {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS tls_copy (n int, s text)"); err != nil {
		t.Fatal(err)
	}
	rows := make([][]any, 5000)
	for i := range rows {
		rows[i] = []any{i, strings.Repeat("x", 100)}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if n, err := tx.CopyFrom(ctx, pgx.Identifier{"tls_copy"}, []string{"n", "s"}, pgx.CopyFromRows(rows)); err != nil || n != 5000 {
		t.Fatalf("COPY FROM: %d rows, %v", n, err)
	}
	var buf strings.Builder
	tag, err := tx.Conn().PgConn().CopyTo(ctx, &buf, "COPY (SELECT * FROM tls_copy WHERE n < 5000) TO STDOUT")
	if err != nil || tag.RowsAffected() < 5000 {
		t.Fatalf("COPY TO: %v, %v", tag, err)
	}
	var sum int64
	if err := tx.QueryRow(ctx, "SELECT sum(n) FROM tls_copy WHERE n >= $1", 0).Scan(&sum); err != nil || sum < 5000*4999/2 {
		t.Fatalf("sum %d, %v", sum, err)
	}
	tx.Rollback(ctx)
	// A pipeline: pgx sends the batch's statements and one Sync.
	batch := &pgx.Batch{}
	for i := range 20 {
		batch.Queue("SELECT $1::int * 2", i)
	}
	br := conn.SendBatch(ctx, batch)
	for i := range 20 {
		var n int
		if err := br.QueryRow().Scan(&n); err != nil || n != 2*i {
			t.Fatalf("batch row %d: %d, %v", i, n, err)
		}
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	// A CancelRequest of its own, as libpq's PQcancel sends.
	time.AfterFunc(300*time.Millisecond, func() { conn.PgConn().CancelRequest(context.Background()) })
	start := time.Now()
	_, err = conn.Exec(ctx, "SELECT pg_sleep(5)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" || time.Since(start) > 3*time.Second {
		t.Fatalf("cancel: %v after %s, want 57014 at once", err, time.Since(start))
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("after the cancel: %v", err)
	}
}

// TestTLSBothLegsTools: psql and pgbench -M prepared, verifying pgmux's
// certificate, through pgmux that reaches the TLS-only server with
// verify-full.
func TestTLSBothLegsTools(t *testing.T) {
	needTLS(t)
	bin := pgbenchPath(t)
	psql := filepath.Join(filepath.Dir(bin), "psql")
	if _, err := os.Stat(psql); err != nil {
		if psql, err = exec.LookPath("psql"); err != nil {
			t.Skip("no psql")
		}
	}
	db := "pgbench_tls"
	if err := tlsEnv.cluster.CreateDatabase(db); err != nil {
		t.Fatal(err)
	}
	if err := tlsEnv.cluster.Exec(db, "GRANT ALL ON SCHEMA public TO "+pgtest.ScramUser); err != nil {
		t.Fatal(err)
	}
	env := []string{"PGSSLMODE=verify-full", "PGSSLROOTCERT=" + tlsEnv.ca.CertFile}
	init := exec.Command(bin, "-i", "-q", "-s", "1", "-h", "localhost", "-p", strconv.Itoa(tlsEnv.cluster.Port), "-U", pgtest.ScramUser, db)
	init.Env = append(os.Environ(), "PGPASSWORD="+pgtest.ScramPassword, "PGSSLMODE=require")
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	for _, mode := range []string{ModeTransaction, ModeSession} {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, func(o *Options, d *Database) {
				tlsServerDB(t, o, d, "localhost", "verify-full")
				o.ClientTLS = tlsClients(t, "require")
				d.PoolMode, d.PoolSize = mode, 5
			})
			cmd := exec.Command(psql, "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", pgtest.ScramUser, "-d", db, "-Atc",
				"SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
			cmd.Env = append(os.Environ(), env...)
			out, err := cmd.CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "t" {
				t.Fatalf("psql: %v: %s", err, out)
			}
			clients := "10"
			if mode == ModeSession {
				clients = "5"
			}
			runPgbenchEnv(t, bin, p, db, env, "-U", pgtest.ScramUser, "-c", clients, "-M", "prepared", "-S")
		})
	}
}

// TestChannelBinding: pgx and psql with channel_binding=require log in to
// pgmux over TLS (SCRAM-SHA-256-PLUS, tls-server-end-point).
func TestChannelBinding(t *testing.T) {
	needTLS(t)
	p := startProxy(t, func(o *Options, db *Database) {
		o.ClientTLS = tlsClients(t, "require")
		o.AuthType = "scram-sha-256"
		o.Users = authUsers(t)
	})
	ctx := context.Background()
	dsn := strings.Replace(tlsDSN(p, pgtest.ScramUser, "postgres", "channel_binding=require"), "user=", "password="+pgtest.ScramPassword+" user=", 1)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("pgx: %v", err)
	}
	conn.Close(ctx)
	psql := filepath.Join(filepath.Dir(pgbenchPath(t)), "psql")
	cmd := exec.Command(psql, dsn, "-Atc", "SELECT 1")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("psql: %v: %s", err, out)
	}
}

// TestCertAuth: with auth_type cert the verified client certificate's
// common name is the user; a certificate for another name gets 28000.
func TestCertAuth(t *testing.T) {
	needTLS(t)
	user := cluster.SuperUserName()
	mine, err := tlsEnv.ca.Issue("client-"+user, user)
	if err != nil {
		t.Fatal(err)
	}
	other, err := tlsEnv.ca.Issue("client-other", "someone-else")
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) {
		c, err := tlsconf.ForClients(tlsconf.Settings{Key: "client_tls", Mode: "verify-ca", CertFile: tlsEnv.pgmux.CertFile,
			KeyFile: tlsEnv.pgmux.KeyFile, CAFile: tlsEnv.ca.CertFile})
		if err != nil {
			t.Fatal(err)
		}
		o.ClientTLS, o.AuthType = c, "cert"
	})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, tlsDSN(p, user, "postgres", "sslcert="+mine.CertFile+" sslkey="+mine.KeyFile))
	if err != nil {
		t.Fatalf("with a certificate for %s: %v", user, err)
	}
	conn.Close(ctx)
	_, err = pgx.Connect(ctx, tlsDSN(p, user, "postgres", "sslcert="+other.CertFile+" sslkey="+other.KeyFile))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
		t.Fatalf("with a certificate for another name: %v, want 28000", err)
	}
	if _, err = pgx.Connect(ctx, tlsDSN(p, user, "postgres", "")); err == nil {
		t.Fatal("a client without a certificate got in")
	}
}

// TestHBA: with auth_type hba the first matching line decides: TLS clients
// as the superuser are trusted, the SCRAM user must prove its password,
// clients in plain text are rejected with 28000.
func TestHBA(t *testing.T) {
	needTLS(t)
	rules, err := hba.Parse(strings.NewReader("hostssl all " + cluster.SuperUserName() + " 127.0.0.1/32 trust\n" +
		"hostssl all " + pgtest.ScramUser + " 127.0.0.1/32 scram-sha-256\n" +
		"hostnossl all all all reject\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) {
		o.ClientTLS = tlsClients(t, "prefer")
		o.AuthType, o.HBA, o.Users = "hba", rules, authUsers(t)
	})
	ctx := context.Background()
	for _, c := range []struct {
		dsn, code string
	}{
		{tlsDSN(p, cluster.SuperUserName(), "postgres", ""), ""},
		{tlsDSN(p, pgtest.ScramUser, "postgres", "password="+pgtest.ScramPassword), ""},
		{tlsDSN(p, pgtest.ScramUser, "postgres", "password=wrong"), "28P01"},
		{p.dsn(cluster.SuperUserName(), "", "postgres"), "28000"},
	} {
		conn, err := pgx.Connect(ctx, c.dsn)
		var pgErr *pgconn.PgError
		switch {
		case c.code == "" && err != nil:
			t.Fatalf("%s: %v", c.dsn, err)
		case c.code != "" && (!errors.As(err, &pgErr) || pgErr.Code != c.code):
			t.Fatalf("%s: %v, want %s", c.dsn, err, c.code)
		case err == nil:
			conn.Close(ctx)
		}
	}
}

// TestTLSDrain: a drain over TLS is the drain in plain text: the idle
// client is closed with 57P01, the one in a transaction commits first, and
// Shutdown returns once both are gone.
func TestTLSDrain(t *testing.T) {
	needTLS(t)
	p := startProxy(t, func(o *Options, db *Database) { o.ClientTLS = tlsClients(t, "require") })
	ctx := context.Background()
	idle, err := pgx.Connect(ctx, tlsDSN(p, cluster.SuperUserName(), "postgres", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close(ctx)
	busy, err := pgx.Connect(ctx, tlsDSN(p, cluster.SuperUserName(), "postgres", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close(ctx)
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Shutdown(sctx) }()
	time.Sleep(2 * drainIdleGrace) // an idle client may still start a transaction within the grace
	if _, err := tx.Exec(ctx, "SELECT 2"); err != nil {
		t.Fatalf("the transaction under way, during the drain: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("COMMIT during the drain: %v", err)
	}
	var pgErr *pgconn.PgError
	if _, err := idle.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("the idle client was served after the drain began")
	} else if errors.As(err, &pgErr) && pgErr.Code != "57P01" {
		t.Fatalf("the idle client got %v, want 57P01 or its connection closed", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after both TLS clients left")
	}
}

// TestServerTLSIdleDeath: a TLS server that ends while idle in the pool is
// found out before it is lent (its last words wait on the socket beneath
// TLS), and the client is served by another.
func TestServerTLSIdleDeath(t *testing.T) {
	needTLS(t)
	p := startProxy(t, func(o *Options, db *Database) {
		tlsServerDB(t, o, db, "localhost", "verify-full")
		db.PoolSize = 1
	})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, p.dsn(pgtest.ScramUser, "", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var pid int32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if err := tlsEnv.cluster.Exec("postgres", fmt.Sprintf("SELECT pg_terminate_backend(%d, 5000)", pid)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * core.AliveCheckAfter)
	var again int32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&again); err != nil {
		t.Fatalf("after its server died while idle: %v", err)
	}
	if again == pid {
		t.Fatal("served by the server that was terminated")
	}
}
