package core

import (
	"bytes"
	"testing"
)

func TestCancelFor(t *testing.T) {
	for _, tt := range []struct {
		held, waiting bool
		want          CancelAction
	}{
		{false, false, CancelIgnored},
		{true, false, CancelForwarded},
		{false, true, CancelWaiting},
		{true, true, CancelForwarded},
	} {
		if got := CancelFor(tt.held, tt.waiting); got != tt.want {
			t.Errorf("held %v waiting %v: %v, want %v", tt.held, tt.waiting, got, tt.want)
		}
	}
}

// TestCancelWaiting: a request cancelled while it waited for a server is
// answered as PostgreSQL answers a cancelled statement, its messages up to
// its Sync dropped; what follows is served.
func TestCancelWaiting(t *testing.T) {
	type msg struct {
		typ  byte
		skip bool
		want string // what the client gets for it ("" nothing)
	}
	errThenReady := string(cancelledError) + string(readyIdle)
	for _, tt := range []struct {
		name  string
		first byte   // the request's first message, read when the wait was cancelled
		now   string // what the client gets at once
		rest  []msg
	}{
		{"simple query", 'Q', errThenReady, []msg{{typ: 'Q'}}},
		{"extended protocol up to Sync", 'P', string(cancelledError), []msg{
			{'B', true, ""}, {'E', true, ""}, {'S', true, string(readyIdle)}, {typ: 'P'},
		}},
		{"a Flush in the request", 'B', string(cancelledError), []msg{
			{'E', true, ""}, {'H', true, ""}, {'S', true, string(readyIdle)},
		}},
		{"Terminate is not dropped", 'P', string(cancelledError), []msg{{typ: 'X'}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var s Session
			if got := s.CancelWaiting(nil, tt.first); !bytes.Equal(got, []byte(tt.now)) {
				t.Fatalf("at once: %q, want %q", got, tt.now)
			}
			for i, m := range tt.rest {
				skip, reply := s.Skip(m.typ)
				if skip != m.skip || string(reply) != m.want {
					t.Fatalf("message %d (%c): skip %v reply %q, want %v %q", i, m.typ, skip, reply, m.skip, m.want)
				}
			}
		})
	}
}

// TestAdmit: what becomes of a request that needs a server, through a pause
// and a cancel.
func TestAdmit(t *testing.T) {
	var s Session
	steps := []struct {
		do     func()
		paused bool
		want   Admission
	}{
		{nil, false, Acquire},
		{func() {
			if s.Attached(); s.Forward() {
				t.Fatal("a request no one cancelled has a cancel to forward")
			}
		}, true, AwaitResume}, // PAUSE: the request waits
		{nil, false, Acquire}, // RESUME: it goes on
		{func() { s.Attached(); s.Cancel(false) }, false, Acquire}, // a cancel while idle does nothing
		{func() { s.Cancel(false) }, true, Cancelled},              // while it waited for RESUME
		{func() { s.CancelWaiting(nil, 'Q') }, false, Acquire},     // answered: the next request is served
		{func() { s.Cancel(false) }, false, Cancelled},             // while it waited for a server
		{func() {
			if s.Cancel(false) != CancelIgnored {
				t.Fatal("a second cancel of a request answered as cancelled did something")
			}
		}, false, Cancelled}, // asked again (the loop handed it to its goroutine): still cancelled
		{func() { s.CancelWaiting(nil, 'Q') }, false, Acquire},
		{func() {
			s.Cancel(false) // after the wait's last look (Admit), before Attached
			if s.Attached(); !s.Forward() || s.Forward() {
				t.Fatal("a cancel as the wait ended is not forwarded once")
			}
		}, false, Acquire}, // the request went to a server: the cancel follows it
		{func() { s.Cancel(true) }, false, Acquire}, // forwarded to the server it holds
	}
	for i, st := range steps {
		if st.do != nil {
			st.do()
		}
		if got := s.Admit(st.paused); got != st.want {
			t.Fatalf("step %d: Admit(%v) = %v, want %v", i, st.paused, got, st.want)
		}
	}
}
