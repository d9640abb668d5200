package proxy

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/rawio"
	"github.com/pgmux/pgmux/tlsconf"
)

// Logging in to a server: the connection dialed, TLS as the database's
// sslmode says, and the login's messages moved as core.ServerLogin answers
// them.

// serverCred is how pgmux proves a user to a server.
type serverCred = core.ServerCred

// dialServer opens a connection to db's server and logs in as user. Unix
// sockets never use TLS, as with libpq.
func dialServer(ctx context.Context, db *Database, user string, cred serverCred, maxBody int) (*serverConn, error) {
	network, _ := db.serverAddr()
	tc := db.ServerTLS.For(db.Host)
	if tc == nil || network != "tcp" {
		return loginServer(ctx, db, user, cred, maxBody, nil, false)
	}
	switch db.ServerTLS.Mode {
	case tlsconf.Allow:
		sc, err := loginServer(ctx, db, user, cred, maxBody, nil, false)
		var pgErr *protocol.PgError
		if errors.As(err, &pgErr) { // refused in plain text: once more with TLS
			return loginServer(ctx, db, user, cred, maxBody, tc, true)
		}
		return sc, err
	case tlsconf.Prefer:
		return loginServer(ctx, db, user, cred, maxBody, tc, false)
	}
	return loginServer(ctx, db, user, cred, maxBody, tc, true)
}

// loginServer is one attempt of dialServer: with tc, TLS is asked for, and
// if required a server that refuses it is an error, else the login goes on
// in plain text on the same connection.
func loginServer(ctx context.Context, db *Database, user string, cred serverCred, maxBody int, tc *tls.Config, required bool) (*serverConn, error) {
	network, addr := db.serverAddr()
	d := net.Dialer{KeepAliveConfig: db.KeepAlive}
	if !db.KeepAlive.Enable && db.KeepAlive.Idle < 0 {
		d.KeepAlive = -1 // tcp_keepalive off
	}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		conn.SetDeadline(dl)
	}
	if tc != nil {
		tconn, err := startServerTLS(ctx, conn, tc, required)
		if err != nil {
			return nil, err
		}
		conn = tconn
	}
	sock := rawio.New(conn)
	sc := &serverConn{
		conn:    conn,
		fd:      -1,
		rd:      *protocol.NewReader(sock, 16<<10, maxBody),
		bw:      bufio.NewWriterSize(sock, 16<<10),
		network: network,
		addr:    addr,
	}
	l := core.ServerLogin{User: user, Database: db.DBName, Cred: cred}
	sc.bw.Write(l.Startup())
	for {
		if err := sc.bw.Flush(); err != nil {
			return nil, err
		}
		typ, n, err := sc.rd.Next()
		if err != nil {
			return nil, err
		}
		body, err := sc.rd.Body(n)
		if err != nil {
			return nil, err
		}
		out, done, err := l.Take(typ, body)
		if err != nil {
			return nil, err
		}
		sc.bw.Write(out)
		if done {
			conn.SetDeadline(time.Time{})
			sc.Server, sc.pid, sc.key = l.Server(), l.PID, l.Key
			sc.sys, sc.fd = rawio.Of(sock)
			ok = true
			return sc, nil
		}
	}
}

// startServerTLS asks the server for TLS on conn and runs the handshake.
func startServerTLS(ctx context.Context, conn net.Conn, tc *tls.Config, required bool) (net.Conn, error) {
	if _, err := conn.Write(protocol.AppendStartupPacket(nil, 80877103, nil)); err != nil {
		return nil, err
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return nil, err
	}
	useTLS, err := core.ServerEncryption(b[0], required)
	if err != nil || !useTLS {
		return conn, err // the caller closes conn after an error
	}
	t := tls.Client(conn, tc)
	if err := t.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS with the server: %w", err)
	}
	return t, nil
}

// authQuery returns user's secret as auth_query finds it on the server of
// database dbName, and whether the user was found with one; answers are
// kept for secretTTL.
func (s *Server) authQuery(ctx context.Context, user, dbName string) (auth.Secret, bool, error) {
	o := s.options()
	key := dbName + "\x00" + user
	if e, ok := s.secrets.get(key); ok {
		return e.secret, e.found, nil
	}
	db, ok := o.Databases(dbName)
	if !ok {
		return auth.Secret{}, false, fmt.Errorf("auth_dbname %q is not a database", dbName)
	}
	authUser := o.AuthUser
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(o.ServerConnectTimeout, 15*time.Second))
	defer cancel()
	sc, err := dialServer(ctx, &db, authUser, credFor(o, db, authUser), o.MaxPacketSize)
	if err != nil {
		return auth.Secret{}, false, fmt.Errorf("log in as auth_user %q: %w", authUser, err)
	}
	defer sc.conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		sc.conn.SetDeadline(dl)
	}
	var buf []byte
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: o.AuthQuery}, &pgproto3.Bind{Parameters: [][]byte{[]byte(user)}},
		&pgproto3.Execute{}, &pgproto3.Sync{},
	} {
		if buf, err = m.Encode(buf); err != nil {
			return auth.Secret{}, false, err
		}
	}
	a, err := sc.request(buf)
	if err != nil {
		return auth.Secret{}, false, fmt.Errorf("auth_query: %w", err)
	}
	found := len(a.Rows) > 0 && len(a.Rows[0]) >= 2 && a.Rows[0][1] != nil
	var secret auth.Secret
	if found {
		if secret, err = auth.ParseSecret(user, string(a.Rows[0][1])); err != nil {
			return auth.Secret{}, false, fmt.Errorf("auth_query's secret for %q: %w", user, err)
		}
		secret.Plain = "" // a password stored in clear is not one to log in to servers with
	}
	s.secrets.put(key, secretEntry{secret: secret, found: found})
	return secret, found, nil
}

// secretTTL is how long auth_query's answer for a user is kept: a changed
// password is seen within it, and a burst of logins asks once.
const secretTTL = 30 * time.Second

type secretEntry struct {
	secret auth.Secret
	found  bool
	at     time.Time
}

// secretCache keeps auth_query's answers for secretTTL.
type secretCache struct {
	mu sync.Mutex
	m  map[string]secretEntry
}

func (c *secretCache) get(key string) (secretEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	return e, ok && time.Since(e.at) < secretTTL
}

func (c *secretCache) put(key string, e secretEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) > 10000 {
		c.m = map[string]secretEntry{} // bounded: a flood of unknown names does not grow it for ever
	}
	e.at = time.Now()
	c.m[key] = e
}
