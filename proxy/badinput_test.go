package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/protocol"
)

// healthyClient runs queries through p until stopped and reports the first
// failure: bad input from others must never reach it.
func healthyClient(t *testing.T, p *testProxy, dbName string) (stop func() int64) {
	t.Helper()
	conn := p.connect(t, dbName, pgx.QueryExecModeExec)
	var done atomic.Bool
	var n atomic.Int64
	errCh := make(chan error, 1)
	go func() {
		ctx := context.Background()
		for i := 0; !done.Load(); i++ {
			var v int
			if err := conn.QueryRow(ctx, "SELECT $1::int", i).Scan(&v); err != nil || v != i {
				errCh <- fmt.Errorf("healthy client, query %d: %d, %v", i, v, err)
				return
			}
			n.Add(1)
		}
		errCh <- nil
	}()
	return func() int64 {
		done.Store(true)
		if err := <-errCh; err != nil {
			t.Fatal(err)
		}
		return n.Load()
	}
}

func msg(typ byte, body string) []byte {
	return append(protocol.AppendHeader(nil, typ, len(body)), body...)
}

// TestBadInput sends malformed bytes in every phase: each offender gets a
// FATAL with SQLSTATE and is closed; a healthy client alongside never fails.
func TestBadInput(t *testing.T) {
	const dbName = "bad_input"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) {
		o.MaxPacketSize = 1 << 20
		o.ClientLoginTimeout = 500 * time.Millisecond
		db.PoolSize = 3
	})
	stop := healthyClient(t, p, dbName)
	user := cluster.SuperUserName()

	before := map[string][]byte{
		"http request":       []byte("GET / HTTP/1.1\r\nHost: pgmux\r\n\r\n"),
		"length under 8":     {0, 0, 0, 3, 0, 3, 0, 0},
		"length over 10000":  {0, 1, 0, 0, 0, 3, 0, 0},
		"unterminated":       protocol.AppendStartupPacket(nil, protocol.ProtocolVersion30, []byte("user\x00x")),
		"protocol 2.0":       protocol.AppendStartupPacket(nil, 2<<16, []byte("user\x00x\x00\x00")),
		"protocol 4.0":       protocol.AppendStartupPacket(nil, 4<<16, []byte("user\x00x\x00\x00")),
		"no user":            protocol.AppendStartupPacket(nil, protocol.ProtocolVersion30, []byte("database\x00x\x00\x00")),
		"bad options":        protocol.AppendStartupPacket(nil, protocol.ProtocolVersion30, []byte("user\x00x\x00options\x00-d 5\x00\x00")),
		"replication":        protocol.AppendStartupPacket(nil, protocol.ProtocolVersion30, []byte("user\x00x\x00replication\x00true\x00\x00")),
		"three ssl requests": append(append(protocol.AppendStartupPacket(nil, protocol.CodeSSLRequest, nil), protocol.AppendStartupPacket(nil, protocol.CodeSSLRequest, nil)...), append(protocol.AppendStartupPacket(nil, protocol.CodeSSLRequest, nil), protocol.AppendStartupPacket(nil, protocol.CodeSSLRequest, nil)...)...),
	}
	wantCode := map[string]string{"protocol 2.0": "0A000", "protocol 4.0": "0A000", "no user": "28000", "bad options": "0A000", "replication": "0A000"}
	for name, b := range before {
		t.Run("startup/"+name, func(t *testing.T) {
			c := dialRaw(t, p.addr)
			c.Write(b)
			// SSL requests are answered 'N' before the error.
			var one [1]byte
			for range 3 {
				if name == "three ssl requests" {
					c.Read(one[:])
				}
			}
			code := wantCode[name]
			if code == "" {
				code = "08P01"
			}
			c.expectFatal(t, code)
		})
	}

	// Garbage after login, idle and inside a transaction.
	after := map[string][]byte{
		"unknown type":        msg('z', "x"),
		"length under 4":      {'Q', 0, 0, 0, 2},
		"over max_packet":     binary.BigEndian.AppendUint32([]byte{'Q'}, 2<<20),
		"password after auth": msg('p', "secret\x00"),
		"startup again":       protocol.AppendStartupPacket(nil, protocol.ProtocolVersion30, []byte("user\x00x\x00\x00")),
	}
	for name, b := range after {
		for _, inTx := range []bool{false, true} {
			t.Run(fmt.Sprintf("after login/%s/in tx %v", name, inTx), func(t *testing.T) {
				c := dialRaw(t, p.addr)
				if err := c.startup(user, dbName); err != nil {
					t.Fatal(err)
				}
				if inTx {
					if err := c.query("BEGIN; SELECT 1"); err != nil {
						t.Fatal(err)
					}
				}
				c.Write(b)
				c.expectFatal(t, "08P01")
				waitNoIdleInTransaction(t, dbName)
			})
		}
	}

	t.Run("silent client", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		start := time.Now()
		c.expectFatal(t, "08P01")
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("closed after %s with a 500ms client_login_timeout", took)
		}
	})
	t.Run("message cut short in a transaction", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		if err := c.startup(user, dbName); err != nil {
			t.Fatal(err)
		}
		if err := c.query("BEGIN; SELECT 1"); err != nil {
			t.Fatal(err)
		}
		q := msg('Q', "SELECT 1\x00")
		c.Write(q[:len(q)-3])
		c.Close()
		waitNoIdleInTransaction(t, dbName)
	})
	t.Run("stray copy data and a lone sync", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		if err := c.startup(user, dbName); err != nil {
			t.Fatal(err)
		}
		c.Write(msg('d', "1\t2\n"))
		c.Write(msg('c', ""))
		c.Write(msg('S', ""))
		if err := c.untilReady(); err != nil {
			t.Fatalf("lone Sync: %v", err)
		}
		if err := c.query("SELECT 1"); err != nil {
			t.Fatalf("after stray copy messages: %v", err)
		}
	})
	if n := stop(); n == 0 {
		t.Fatal("the healthy client ran no query")
	}
}

// TestStartupNegotiation: SSLRequest and GSSENCRequest are answered 'N' and
// the client goes on; a 3.2 client and _pq_ options get
// NegotiateProtocolVersion, then a normal session.
func TestStartupNegotiation(t *testing.T) {
	p := startProxy(t, nil)
	user := cluster.SuperUserName()
	for _, code := range []uint32{protocol.CodeSSLRequest, protocol.CodeGSSENCRequest} {
		c := dialRaw(t, p.addr)
		c.Write(protocol.AppendStartupPacket(nil, code, nil))
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil || b[0] != 'N' {
			t.Fatalf("request %d: got %q, %v", code, b[0], err)
		}
		if err := c.startup(user, "postgres"); err != nil {
			t.Fatal(err)
		}
		if err := c.query("SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	c := dialRaw(t, p.addr)
	c.Write(protocol.AppendStartupPacket(nil, 3<<16|2, []byte("user\x00"+user+"\x00database\x00postgres\x00_pq_.future\x00on\x00\x00")))
	m, err := c.fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	npv, ok := m.(*pgproto3.NegotiateProtocolVersion)
	if !ok || npv.NewestMinorProtocol != 0 || len(npv.UnrecognizedOptions) != 1 || npv.UnrecognizedOptions[0] != "_pq_.future" {
		t.Fatalf("want NegotiateProtocolVersion(0, [_pq_.future]), got %#v", m)
	}
	if err := c.untilReady(); err != nil {
		t.Fatal(err)
	}
	if err := c.query("SELECT 1"); err != nil {
		t.Fatal(err)
	}
}
