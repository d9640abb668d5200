package core

import "testing"

// TestPhase: what reports show of each phase, and which phases wait for the
// client (where a message from it is its turn).
func TestPhase(t *testing.T) {
	for _, c := range []struct {
		p      Phase
		report string
		awaits bool
	}{
		{PhaseLogin, "login", false},
		{PhaseIdle, "idle", true},
		{PhaseWaiting, "waiting", false},
		{PhaseGranted, "waiting", false},
		{PhaseActive, "active", false},
		{PhaseInTx, "active", true},
		{PhaseClosed, "closed", false},
	} {
		if got := c.p.Report().String(); got != c.report {
			t.Errorf("phase %d reported %q, want %q", c.p, got, c.report)
		}
		if got := c.p.AwaitsClient(); got != c.awaits {
			t.Errorf("phase %d AwaitsClient %v, want %v", c.p, got, c.awaits)
		}
	}
}
