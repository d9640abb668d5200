package proxy

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmux/pgmux/protocol"
)

// TestPeerKey: the peer id sits where PgBouncer puts it (the eight-byte
// key's second and third bytes, low byte first), the process id stays a
// positive int32, and an instance's keys carry every hop.
func TestPeerKey(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for peer := 1; peer <= MaxPeerID; peer++ {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], rng.Uint64())
		pid, secret := peerKey(b, peer)
		key := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, pid), secret)
		if got := int(key[1]) + int(key[2])<<8; got != peer || keyPeer(pid) != peer {
			t.Fatalf("peer %d: key %x carries %d", peer, key, got)
		}
		if pid < 1<<24 || pid >= 1<<31 || secret&cancelTTL != cancelTTL {
			t.Fatalf("peer %d: pid %d, secret %x", peer, pid, secret)
		}
	}
}

// startPeers starts n pgmux instances, peers 1..n of each other.
func startPeers(t *testing.T, n int) []*testProxy {
	var ps []*testProxy
	peers := map[int]Peer{}
	for i := 1; i <= n; i++ {
		p := startProxy(t, func(o *Options, db *Database) { o.PeerID = i })
		ps = append(ps, p)
		peers[i] = Peer{Host: "127.0.0.1", Port: p.port}
	}
	for _, p := range ps {
		o := *p.options()
		o.Peers = peers
		p.Update(o)
	}
	return ps
}

// sendCancel sends a CancelRequest for pid and secret to addr.
func sendCancel(t *testing.T, addr string, pid uint32, secret []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(protocol.AppendCancelRequest(nil, pid, secret)); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	c.Read(b[:])
}

// TestCancelThroughPeer: a cancel that reaches the instance that does not
// hold the client is sent on to the one that does, and cancels the query
// (57014) within a second; one with no hops left is dropped.
func TestCancelThroughPeer(t *testing.T) {
	ps := startPeers(t, 2)
	a, b := ps[0], ps[1]
	ctx := context.Background()
	conn := a.connect(t, "postgres", pgx.QueryExecModeSimpleProtocol)
	pid, secret := conn.PgConn().PID(), conn.PgConn().SecretKey()
	if keyPeer(pid) != 1 {
		t.Fatalf("a client of peer 1 got pid %d, which names peer %d", pid, keyPeer(pid))
	}
	run := func() chan error {
		done := make(chan error, 1)
		go func() { _, err := conn.Exec(ctx, "SELECT pg_sleep(10)"); done <- err }()
		time.Sleep(300 * time.Millisecond) // the query under way
		return done
	}

	// No hops left: dropped, the query runs on.
	done := run()
	spent := append([]byte(nil), secret...)
	spent[3] &^= cancelTTL
	sendCancel(t, b.addr, pid, spent)
	select {
	case err := <-done:
		t.Fatalf("a cancel with no hops left cancelled the query: %v", err)
	case <-time.After(700 * time.Millisecond):
	}
	sendCancel(t, a.addr, pid, secret) // the client's own instance
	if err := <-done; sqlstate(err) != "57014" {
		t.Fatalf("cancel at the client's own instance: %v", err)
	}

	// Through the other instance.
	took := cancelVia(t, b.addr, pid, secret, run())
	t.Logf("cancel sent to peer 2 for a client of peer 1: 57014 after %s", took)
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("after the cancel: %v", err)
	}
}

// TestCancelThroughFoundPeers: peers found by address (peers_dns) and no
// ids: a cancel at the wrong instance is sent to the others, and the one
// holding the client cancels the query; one already sent on is not sent
// again.
func TestCancelThroughFoundPeers(t *testing.T) {
	var addrs atomic.Pointer[[]string]
	var lookups atomic.Int32
	find := func(context.Context) ([]string, error) { lookups.Add(1); return *addrs.Load(), nil }
	a := startProxy(t, func(o *Options, db *Database) { o.PeerAddrs = find })
	b := startProxy(t, func(o *Options, db *Database) { o.PeerAddrs = find })
	addrs.Store(&[]string{a.addr, b.addr}) // each finds itself too, as a Service's addresses would
	ctx := context.Background()
	conn := a.connect(t, "postgres", pgx.QueryExecModeSimpleProtocol)
	pid, secret := conn.PgConn().PID(), conn.PgConn().SecretKey()
	done := make(chan error, 1)
	go func() { _, err := conn.Exec(ctx, "SELECT pg_sleep(10)"); done <- err }()
	time.Sleep(300 * time.Millisecond)
	took := cancelVia(t, b.addr, pid, secret, done)
	t.Logf("cancel at the other instance: 57014 after %s, %d lookups", took, lookups.Load())
	if n := lookups.Load(); n != 1 {
		t.Fatalf("%d lookups: the cancel was sent on more than once", n)
	}
}

// cancelVia sends a cancel for pid and secret to addr and waits for the
// query whose end done reports to fail with 57014 within a second; it
// returns how long that took.
func cancelVia(t *testing.T, addr string, pid uint32, secret []byte, done chan error) time.Duration {
	t.Helper()
	start := time.Now()
	sendCancel(t, addr, pid, secret)
	select {
	case err := <-done:
		if sqlstate(err) != "57014" {
			t.Fatalf("want 57014, got %v", err)
		}
	case <-time.After(time.Second):
		t.Fatalf("a cancel sent to %s did not cancel the query within a second", addr)
	}
	return time.Since(start).Round(time.Millisecond)
}
