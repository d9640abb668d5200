package main

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmux/pgmux/config"
	"github.com/pgmux/pgmux/internal/pgtest"
	"github.com/pgmux/pgmux/protocol"
)

// TestPeersCancel: two pgmux processes, peers of each other by their
// configuration; a cancel sent to the one that does not hold the client
// cancels its query (57014) within a second.
func TestPeersCancel(t *testing.T) {
	needPG(t)
	port1, _ := pgtest.FreePort()
	port2, _ := pgtest.FreePort()
	peers := fmt.Sprintf("peers:\n  1: {host: 127.0.0.1, port: %d}\n  2: {host: 127.0.0.1, port: %d}\n", port1, port2)
	a := startPgmuxOn(t, baseConfig+"peer_id: 1\n"+peers, port1)
	startPgmuxOn(t, baseConfig+"peer_id: 2\n"+peers, port2)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, a.dsn(cluster.SuperUserName(), "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	done := make(chan error, 1)
	go func() { _, err := conn.Exec(ctx, "SELECT pg_sleep(10)"); done <- err }()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port2))
	if err != nil {
		t.Fatal(err)
	}
	c.Write(protocol.AppendCancelRequest(nil, conn.PgConn().PID(), conn.PgConn().SecretKey()))
	c.Close()
	select {
	case err := <-done:
		var code string
		if pgErr, ok := err.(interface{ SQLState() string }); ok {
			code = pgErr.SQLState()
		}
		if code != "57014" {
			t.Fatalf("want 57014, got %v", err)
		}
		t.Logf("cancel sent to peer 2 cancelled peer 1's client after %s: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(time.Second):
		t.Fatal("the query was not cancelled within a second")
	}
}

// TestPeersDNS: peers_dns finds every address of its name, on the listen
// port unless it names one.
func TestPeersDNS(t *testing.T) {
	for _, c := range []struct{ dns, want string }{{"localhost", "127.0.0.1:7432"}, {"localhost:7000", "127.0.0.1:7000"}} {
		cfg := &config.Config{Listen: "0.0.0.0:7432", PeersDNS: c.dns}
		addrs, err := peersDNS(cfg)(context.Background())
		if err != nil || !slices.Contains(addrs, c.want) {
			t.Errorf("peers_dns %s: %v %v, want %s among them", c.dns, addrs, err, c.want)
		}
	}
	if peersDNS(&config.Config{}) != nil {
		t.Error("no peers_dns: a lookup all the same")
	}
}
