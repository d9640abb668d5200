//go:build linux

package proxy

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/pgmux/pgmux/core"
)

// TestIdleClientsPark: idle clients give up their goroutines, are served
// again when they speak, close when they hang up, and are closed by an idle
// timeout and by a shutdown while parked.
func TestIdleClientsPark(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { o.ClientIdleTimeout = 6 * time.Second })
	const n = 50
	before := runtime.NumGoroutine()
	clients := make([]*rawClient, n)
	for i := range clients {
		c := dialRaw(t, p.addr)
		if err := c.startup(cluster.SuperUserName(), "postgres"); err != nil {
			t.Fatal(err)
		}
		if err := c.query("SELECT 1"); err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	waitFor(t, 4*parkSweep, func() bool { return p.parked() == n })
	if g := runtime.NumGoroutine(); g > before+n/2 {
		t.Fatalf("%d goroutines with %d clients parked (%d before they came)", g, n, before)
	}
	for i, c := range clients[:n/2] {
		if err := c.query("SELECT 2"); err != nil {
			t.Fatalf("client %d after parking: %v", i, err)
		}
	}
	want := n - n/2
	if p.options().RelayLoop {
		// Served in the loop, and still there. Not read the instant the
		// last answer came: a dial started during the logins may end after
		// the last release, which puts a server whose settings were never
		// brought in line on top of the idle stack. The loop hands the
		// session that gets it to the goroutine path for that one request
		// (see ejectServed), and the goroutine gives it back once the
		// client has its answer. A quarter of a sweep is long enough for
		// that and too short for a sweep to park a session left with a
		// goroutine.
		want = n
		for end := time.Now().Add(parkSweep / 4); p.parked() != want && time.Now().Before(end); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if got := p.parked(); got != want {
		t.Fatalf("%d parked after half the clients spoke, want %d", got, want)
	}
	clients[n-1].Close() // a parked client hangs up
	waitFor(t, 2*time.Second, func() bool { return p.ClientCount() == n-1 })

	// The idle timeout closes parked clients (those that spoke included,
	// once parked again), with 57P05.
	start := time.Now()
	clients[0].expectFatal(t, "57P05")
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("idle timeout came after %s", took)
	}
}

// TestShutdownWakesParked: a shutdown closes parked clients at once.
func TestShutdownWakesParked(t *testing.T) {
	p := startProxy(t, nil)
	c := dialRaw(t, p.addr)
	if err := c.startup(cluster.SuperUserName(), "postgres"); err != nil {
		t.Fatal(err)
	}
	if err := c.query("SELECT 1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 4*parkSweep, func() bool { return p.parked() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("shutdown took %s with a parked client", took)
	}
	c.expectFatal(t, "57P01")
}

// TestParkRequestWhileQueued: the sweep picks sessions that were idle when it
// looked; one may have started a transaction since and be queued for a
// server when the park request comes. The request must not touch it: the
// client is served, and is not taken for one that hung up (which a past read
// deadline made the hang-up check believe).
func TestParkRequestWhileQueued(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1 })
	holder := dialRaw(t, p.addr)
	if err := holder.startup(cluster.SuperUserName(), "postgres"); err != nil {
		t.Fatal(err)
	}
	if err := holder.query("BEGIN"); err != nil { // holds the only server
		t.Fatal(err)
	}
	c := dialRaw(t, p.addr)
	if err := c.startup(cluster.SuperUserName(), "postgres"); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { res <- c.query("SELECT 1") }()
	var queued *session
	waitFor(t, 2*time.Second, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for ss := range p.sessions {
			if ss.getPhase() == core.PhaseWaiting {
				queued = ss
				return true
			}
		}
		return false
	})
	queued.requestPark() // as a sweep that saw it idle a moment before
	time.Sleep(core.HangupCheckAfter + 50*time.Millisecond)
	if err := holder.query("COMMIT"); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("queued client after a park request: %v", err)
	}
	if err := c.query("SELECT 2"); err != nil {
		t.Fatalf("queued client's next query: %v", err)
	}
}

// TestLoopTokens: a token given back, and its slot taken again, no longer
// finds the slot (an event for a former holder still in the loop's batch is
// dropped), the wake pipe's token 0 finds none, and the server bit is kept.
func TestLoopTokens(t *testing.T) {
	p := newParker(nil)
	a, sa := p.newTokenLocked(0)
	sa.ss = &session{}
	b, _ := p.newTokenLocked(srvBit)
	if a == b || a == 0 || b&srvBit == 0 || a&srvBit != 0 {
		t.Fatalf("tokens %#x, %#x", a, b)
	}
	if s := p.slotLocked(a); s == nil || s.ss != sa.ss {
		t.Fatalf("slot of %#x: %+v", a, s)
	}
	p.freeLocked(a)
	c, _ := p.newTokenLocked(0)
	if uint32(c) != uint32(a) {
		t.Fatalf("slot not reused: %#x after %#x", c, a)
	}
	if c == a || p.slotLocked(a) != nil {
		t.Fatalf("stale token %#x still finds a slot (new token %#x)", a, c)
	}
	if p.slotLocked(0) != nil || p.slotLocked(1<<40) != nil {
		t.Fatal("token 0 or an unknown token finds a slot")
	}
}
