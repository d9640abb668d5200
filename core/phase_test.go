package core

import "testing"

// TestPhase: what reports show of each phase, and when a session waits for
// its client (where a message from it is its turn): idle, or holding a server
// that owes nothing, whose transaction is open.
func TestPhase(t *testing.T) {
	var owes, owesNothing Account
	owes.Sent('Q', false)
	for _, c := range []struct {
		p            Phase
		report       string
		awaits, busy bool // AwaitsClient with nothing owed, and with a query sent
	}{
		{PhaseLogin, "login", false, false},
		{PhaseIdle, "idle", true, true},
		{PhaseWaiting, "waiting", false, false},
		{PhaseGranted, "waiting", false, false},
		{PhaseActive, "active", true, false},
		{PhaseClosed, "closed", false, false},
	} {
		if got := c.p.Report().String(); got != c.report {
			t.Errorf("phase %d reported %q, want %q", c.p, got, c.report)
		}
		if got := AwaitsClient(c.p, &owesNothing); got != c.awaits {
			t.Errorf("phase %d, nothing owed: AwaitsClient %v, want %v", c.p, got, c.awaits)
		}
		if got := AwaitsClient(c.p, &owes); got != c.busy {
			t.Errorf("phase %d, a query owed: AwaitsClient %v, want %v", c.p, got, c.busy)
		}
	}
}
