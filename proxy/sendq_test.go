//go:build linux

package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/pgmux/pgmux/pool"
	"github.com/pgmux/pgmux/rawio"
)

// TestSendQueue: the loop's queued sends reach each socket whole and in the
// order written, however they are batched; what a full socket does not take
// is kept, in order, in its writer's spill and its session marked for a
// goroutine; a failed server socket marks its session's server torn. With
// io_uring (where the kernel allows it) and with one sendto each.
func TestSendQueue(t *testing.T) { withAndWithoutRing(t, testSendQueue) }

func testSendQueue(t *testing.T, uring bool) {
	p := &parker{sendq: newSendQueue(uring, zaptest.NewLogger(t))}
	t.Cleanup(p.sendq.close)
	if uring && p.sendq.ring == nil {
		t.Skip("the kernel gives no usable io_uring here")
	}
	fast, fastPeer := tcpPair(t)
	full, fullPeer := tcpPair(t)
	gone, gonePeer := tcpPair(t)
	full.(*net.TCPConn).SetWriteBuffer(4096)
	fullPeer.(*net.TCPConn).SetReadBuffer(4096)
	gonePeer.(*net.TCPConn).SetLinger(0)
	gonePeer.Close() // a reset: the next send fails
	time.Sleep(50 * time.Millisecond)

	writer := func(c net.Conn, server bool) *loopWriter {
		ss := &session{lc: &loopState{}}
		w := &loopWriter{ss: ss, sock: rawio.New(c).(*rawio.Conn), spill: &ss.lc.spill}
		if server {
			w.spill, w.server = &ss.lc.toServer, true
			pl, err := pool.New(pool.Config[*serverConn]{MaxSize: 1,
				Dial: func(context.Context) (*serverConn, error) { return &serverConn{conn: c}, nil }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(pl.Close)
			if ss.lease, err = pl.Acquire(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		return w
	}
	wf, wl, wg := writer(fast, false), writer(full, false), writer(gone, true)
	pattern := make([]byte, 100<<10)
	for i := range pattern {
		pattern[i] = byte(i % 251)
	}
	write := func(w *loopWriter, b []byte) {
		t.Helper()
		if n, err := w.Write(b); n != len(b) || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
	}
	p.srvForTest(wf, wl, wg)
	write(wf, []byte("first "))
	write(wl, pattern[:40<<10])
	write(wf, []byte("second ")) // not the last queued: the queue goes first
	write(wl, pattern[40<<10:])  // past the queue's bytes: it goes first
	write(wg, []byte("query"))
	write(wf, []byte("third"))
	p.flushSends()

	if len(p.sendq.ents) != 0 || len(p.sendq.buf) != 0 {
		t.Fatalf("queue not empty after the flush: %d sends, %d bytes", len(p.sendq.ents), len(p.sendq.buf))
	}
	fastPeer.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len("first second third"))
	if _, err := io.ReadFull(fastPeer, got); err != nil || string(got) != "first second third" {
		t.Fatalf("fast peer read %q, %v", got, err)
	}
	fastPeer.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, _ := fastPeer.Read(make([]byte, 64)); n > 0 {
		t.Fatalf("the fast peer got %d bytes more than were written", n)
	}
	if len(*wf.spill) != 0 || slices.Contains(p.toEject, wf.ss) {
		t.Fatalf("the fast socket's writer has %d bytes spilt", len(*wf.spill))
	}

	if len(*wl.spill) == 0 || !slices.Contains(p.toEject, wl.ss) {
		t.Fatalf("the full socket: %d bytes spilt, ejected %v; want some and true", len(*wl.spill), slices.Contains(p.toEject, wl.ss))
	}
	// What the peer reads and what was spilt make the whole, in order.
	// (The last bytes the socket took may come late: with so small a
	// receive window the sender waits for its persist timer.)
	recv := make([]byte, len(pattern)-len(*wl.spill))
	fullPeer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.ReadFull(fullPeer, recv); err != nil {
		t.Fatalf("the full socket's peer got %d bytes of the %d not spilt: %v", n, len(recv), err)
	}
	fullPeer.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _ := fullPeer.Read(make([]byte, 64<<10)); n > 0 || len(recv) == 0 {
		t.Fatalf("the full socket's peer got %d bytes, then %d more", len(recv), n)
	}
	if !bytes.Equal(append(recv, *wl.spill...), pattern) {
		t.Fatal("what the full socket's peer got and its spill are not what was written, in order")
	}

	if sc := wg.ss.lease.Conn(); !sc.torn || wg.ss.lc.endErr != errServerCrashed || !slices.Contains(p.toEject, wg.ss) {
		t.Fatalf("the reset server socket: torn %v, end %v", sc.torn, wg.ss.lc.endErr)
	}
}

// srvForTest makes p the writers' sessions' loop, which loopWriter.Write
// goes through.
func (p *parker) srvForTest(ws ...*loopWriter) {
	for _, w := range ws {
		w.ss.loop = p
	}
}

// tcpPair is a connected pair of loopback TCP sockets.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
