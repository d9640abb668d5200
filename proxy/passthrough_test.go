package proxy

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/internal/pgtest"
)

// storedSecret is user's secret as the TLS cluster stores it (pg_authid).
func storedSecret(t *testing.T, user string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, tlsEnv.cluster.SuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", user).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPassThrough: pgmux holds no password, only what the server stores
// (from an auth file of SCRAM verifiers, or fetched by auth_query): clients
// log in with their passwords, and pgmux logs in to the TLS-only server as
// them with what their proofs revealed (SCRAM) or the stored hash (md5). A
// wrong password and an unknown user get 28P01, the unknown one after a
// whole exchange.
func TestPassThrough(t *testing.T) {
	needTLS(t)
	scramSecret, err := auth.ParseSecret(pgtest.ScramUser, storedSecret(t, pgtest.ScramUser))
	if err != nil || scramSecret.SCRAM == nil || scramSecret.Plain != "" {
		t.Fatalf("pg_authid's secret: %+v, %v", scramSecret, err)
	}
	for _, c := range []struct {
		name     string
		authType string
		edit     func(o *Options)
		users    [][2]string // user, password that log in
	}{
		{"auth file of SCRAM verifiers", "scram-sha-256", func(o *Options) {
			o.Users = map[string]auth.Secret{pgtest.ScramUser: scramSecret}
		}, [][2]string{{pgtest.ScramUser, pgtest.ScramPassword}}},
		{"auth_query", "scram-sha-256", func(o *Options) {
			o.Users = map[string]auth.Secret{}
			o.AuthUser, o.AuthQuery = pgtest.SuperUser, "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
		}, [][2]string{{pgtest.ScramUser, pgtest.ScramPassword}}},
		{"auth_query md5", "md5", func(o *Options) {
			o.Users = map[string]auth.Secret{}
			o.AuthUser, o.AuthQuery = pgtest.SuperUser, "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
		}, [][2]string{{pgtest.MD5User, pgtest.MD5Password}, {pgtest.ScramUser, pgtest.ScramPassword}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := startProxy(t, func(o *Options, db *Database) {
				tlsServerDB(t, o, db, "localhost", "verify-full")
				o.AuthType = c.authType
				c.edit(o)
			})
			ctx := context.Background()
			for _, u := range c.users {
				conn, err := pgx.Connect(ctx, p.dsn(u[0], u[1], "postgres"))
				if err != nil {
					t.Fatalf("%s: %v", u[0], err)
				}
				var who string
				var ssl bool
				if err := conn.QueryRow(ctx, "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&who, &ssl); err != nil || who != u[0] || !ssl {
					t.Fatalf("%s: on the server as %q, TLS %v: %v", u[0], who, ssl, err)
				}
				conn.Close(ctx)
			}
			_, err := pgx.Connect(ctx, p.dsn(c.users[0][0], "wrong", "postgres"))
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
				t.Fatalf("wrong password: %v, want 28P01", err)
			}
			for _, user := range []string{"nobody", c.users[0][0]} {
				if asked, code := probeLogin(t, p, user); !asked || code != "28P01" {
					t.Fatalf("%s with a wrong password: asked for a password %v, then %s; want the same as for anyone: asked, then 28P01", user, asked, code)
				}
			}
		})
	}
}

// probeLogin logs in as user with a wrong password, answering SCRAM or md5
// as asked, and reports whether a password was asked for and the SQLSTATE
// the login ended with.
func probeLogin(t *testing.T, p *testProxy, user string) (asked bool, code string) {
	t.Helper()
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": user, "database": "postgres"}})
	fe.Flush()
	var scram *auth.ScramClient
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationMD5Password:
			asked = true
			fe.Send(&pgproto3.PasswordMessage{Password: auth.MD5Response(auth.MD5Secret(user, "wrong"), m.Salt)})
		case *pgproto3.AuthenticationSASL:
			asked = true
			scram = auth.NewScramClient("wrong")
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: scram.First()})
		case *pgproto3.AuthenticationSASLContinue:
			final, err := scram.Final(m.Data)
			if err != nil {
				t.Fatal(err)
			}
			fe.Send(&pgproto3.SASLResponse{Data: final})
		case *pgproto3.ErrorResponse:
			return asked, m.Code
		default:
			t.Fatalf("%s: unexpected %T", user, msg)
		}
		fe.Flush()
	}
}
