package proxy

import (
	"crypto/tls"
	"errors"
	"net"

	"github.com/pgmux/pgmux/protocol"
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
	ss.conn, ss.sock, ss.sockOut, ss.tls = tc, tc, tc, true
	ss.rd = protocol.NewReader(tc, 4096, ss.srv.options().MaxPacketSize)
	if ss.bw != nil {
		ss.bw.Reset(tc)
	}
	return nil
}

// tlsInfo describes c's TLS as SHOW CLIENTS and SHOW SERVERS do (version
// and cipher suite), or is empty for a connection in plain text.
func tlsInfo(c net.Conn) string {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return ""
	}
	st := tc.ConnectionState()
	return tls.VersionName(st.Version) + "/" + tls.CipherSuiteName(st.CipherSuite)
}

// onUnixSocket reports whether the client came through a Unix socket
// (unix_socket_dir), where TLS is not asked for and hba's local lines
// apply.
func (ss *session) onUnixSocket() bool {
	_, ok := ss.conn.(*net.UnixConn)
	return ok
}

// certNames reports whether the client showed a certificate, verified in
// the handshake, whose common name is user.
func (ss *session) certNames(user string) bool {
	tc, ok := ss.conn.(*tls.Conn)
	if !ok {
		return false
	}
	cs := tc.ConnectionState()
	return len(cs.VerifiedChains) > 0 && cs.VerifiedChains[0][0].Subject.CommonName == user
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
