package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/tlsconf"
)

// TLS on both legs (tlsconf builds the configurations). A session whose
// client or server speaks TLS is served by the portable driver: the event
// loop reads and writes raw descriptors.

// tlsRecord is the first byte of a TLS handshake record: a client that
// opens with it negotiates TLS directly (PostgreSQL 17's
// sslnegotiation=direct), without an SSLRequest.
const tlsRecord = 0x16

// startTLS runs the TLS handshake with the client; pre is what was read of
// it already. From then on the session reads and writes through TLS. A
// direct negotiation (no SSLRequest) must have agreed on ALPN "postgresql",
// as PostgreSQL requires.
func (ss *session) startTLS(cfg *tls.Config, pre []byte, direct bool) error {
	c := ss.conn
	if len(pre) > 0 {
		c = &prefixConn{Conn: c, pre: pre}
	}
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		return err
	}
	if direct && tc.ConnectionState().NegotiatedProtocol != "postgresql" {
		return errors.New("direct TLS negotiation without ALPN postgresql")
	}
	ss.rd.Release()
	ss.conn, ss.sock, ss.tls = tc, tc, true
	ss.rd = protocol.NewReader(tc, 4096, ss.srv.options().MaxPacketSize)
	if ss.bw != nil {
		ss.bw.Reset(tc)
	}
	return nil
}

// prefixConn reads pre before its connection.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// serverTLS sets cfg, pgconn's, to reach db's server as its sslmode says:
// prefer tries TLS and falls back to plain text, allow the other way round,
// require and stricter have no fallback. Unix sockets never use TLS, as
// with libpq.
func serverTLS(cfg *pgconn.Config, db *Database, network string) {
	tc := db.ServerTLS.For(db.Host)
	if tc == nil || network != "tcp" {
		return
	}
	switch db.ServerTLS.Mode {
	case tlsconf.Allow:
		cfg.Fallbacks = []*pgconn.FallbackConfig{{Host: cfg.Host, Port: cfg.Port, TLSConfig: tc}}
	case tlsconf.Prefer:
		cfg.TLSConfig = tc
		cfg.Fallbacks = []*pgconn.FallbackConfig{{Host: cfg.Host, Port: cfg.Port}}
	default:
		cfg.TLSConfig = tc
	}
	cfg.AfterNetConnect = func(_ context.Context, _ *pgconn.Config, c net.Conn) (net.Conn, error) {
		if _, ok := c.(*tls.Conn); ok {
			return &gate{Conn: c}, nil
		}
		return c, nil
	}
}

// gate stands between pgconn and a TLS connection to a server, so that
// pgmux can take the connection over (takeOver does it for a plain socket
// by duplicating its descriptor): a read by pgconn's background reader
// still under way at the hijack keeps what it gets for pgmux's first read,
// instead of taking it away.
type gate struct {
	net.Conn
	readMu   sync.Mutex // one read at a time, so that the kept bytes come first
	hijacked atomic.Bool
	kept     []byte
}

func (g *gate) Read(p []byte) (int, error) {
	g.readMu.Lock()
	defer g.readMu.Unlock()
	if len(g.kept) > 0 {
		n := copy(p, g.kept)
		g.kept = g.kept[n:]
		return n, nil
	}
	before := !g.hijacked.Load()
	n, err := g.Conn.Read(p)
	if before && g.hijacked.Load() {
		g.kept = append(g.kept, p[:n]...) // pgconn's read, for pgmux
		return 0, errHijacked
	}
	return n, err
}

var errHijacked = errors.New("connection taken over by pgmux")
