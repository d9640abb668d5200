package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestPauseHoldsNewTransactions: while the server is paused (PgBouncer's
// PAUSE) a client that starts a transaction waits, whether the relay loop
// or its goroutine reads the query, and Resume lets it go on.
func TestPauseHoldsNewTransactions(t *testing.T) {
	p := startProxy(t, nil)
	c := loggedIn(t, p)
	// The first query brings the server's settings in line on the goroutine
	// path; with the loop on, the next ones are read by the loop.
	runSteps(t, []clientStep{{c, "SELECT 1"}, {c, "SELECT 1"}})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if !p.Paused() {
		t.Fatal("Paused() false after Pause")
	}
	done := make(chan error, 1)
	go func() { done <- c.query("SELECT 1") }()
	select {
	case err := <-done:
		t.Fatalf("a query ran while paused (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	p.Resume()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("query after Resume: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the query was still held 5 s after Resume")
	}
	if p.Paused() {
		t.Fatal("Paused() true after Resume")
	}
}

// TestCancelWhilePaused: a request waiting for RESUME is cancelled as one
// waiting for a server is: 57014 at once, and the client goes on after
// Resume.
func TestCancelWhilePaused(t *testing.T) {
	p := startProxy(t, nil)
	c := loggedInTo(t, p, "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Resume()
	c.sendAll(t, &pgproto3.Query{String: "SELECT 1"})
	time.Sleep(200 * time.Millisecond)
	if err := c.sendCancel(p.addr); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if err := c.untilReady(); sqlstate(err) != "57014" {
		t.Fatalf("the paused client got %v, want 57014", err)
	}
	p.Resume()
	if v, err := c.value("SELECT 7"); err != nil || v != "7" {
		t.Fatalf("after Resume: %q, %v", v, err)
	}
}
