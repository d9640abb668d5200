package hosts

import (
	"errors"
	"testing"
	"time"
)

// TestRoles: which hosts each role keeps in rotation, and how Pick spreads
// connections over them.
func TestRoles(t *testing.T) {
	check := func(s *Set) {
		s.Checked("p", false, 0)
		s.Checked("r1", true, 0)
		s.Checked("r2", true, 3*time.Second) // behind
		s.Failed("r3", errors.New("refused"), time.Now())
	}
	picks := func(s *Set, n int) map[string]int {
		out := map[string]int{}
		for range n {
			h, err := s.Pick()
			if err != nil {
				t.Fatal(err)
			}
			out[h]++
		}
		return out
	}
	all := []string{"p", "r1", "r2", "r3"}
	for _, c := range []struct {
		role    Role
		balance Balance
		want    map[string]int
	}{
		{Primary, RoundRobin, map[string]int{"p": 6}},
		{Replica, RoundRobin, map[string]int{"r1": 6}},     // r2 is past the lag bound
		{Any, RoundRobin, map[string]int{"p": 3, "r1": 3}}, // each in turn
		{Any, Disable, map[string]int{"p": 6}},             // the first in the order given
		{Replica, Disable, map[string]int{"r1": 6}},
	} {
		s := New(all, c.role, c.balance, 2*time.Second)
		if _, err := s.Pick(); !errors.Is(err, ErrNone) {
			t.Errorf("%s: a pick before any check: %v", c.role, err)
		}
		check(s)
		if got := picks(s, 6); !equal(got, c.want) {
			t.Errorf("%s %s: picked %v, want %v", c.role, c.balance, got, c.want)
		}
	}
	// Random spreads too.
	s := New(all, Any, Random, 0)
	check(s)
	if got := picks(s, 200); got["p"] == 0 || got["r1"] == 0 || got["r2"] == 0 || got["r3"] != 0 {
		t.Errorf("random over p, r1, r2 (no lag bound): %v", got)
	}
}

func equal(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRotationChanges: Checked and Failed report a change of the hosts in
// rotation, and only then; a failover moves a primary database to the
// promoted replica; a replica behind by an unknown amount is out while a
// lag is bounded.
func TestRotationChanges(t *testing.T) {
	now := time.Now()
	s := New([]string{"a", "b"}, Primary, Disable, time.Second)
	if !s.Checked("a", false, 0) || s.Checked("b", true, 0) {
		t.Fatal("first checks: a joins, b (a replica) does not")
	}
	if s.Checked("a", false, 0) {
		t.Fatal("the same again: no change")
	}
	if !s.Failed("a", errors.New("gone"), now) {
		t.Fatal("the primary down: a change")
	}
	if _, err := s.Pick(); !errors.Is(err, ErrNone) {
		t.Fatalf("no primary: %v", err)
	}
	if !s.Checked("b", false, 0) { // promoted
		t.Fatal("b promoted: a change")
	}
	if h, _ := s.Pick(); h != "b" {
		t.Fatalf("after the promotion: %s", h)
	}
	r := New([]string{"x"}, Replica, Disable, time.Second)
	if r.Checked("x", true, -1) || r.InRotation("x") {
		t.Fatal("a replica behind by an unknown amount, with a lag bound: out")
	}
	if !r.Checked("x", true, 0) || !r.InRotation("x") {
		t.Fatal("caught up: in")
	}
}

// TestBackoff: a host down is checked again after a delay that doubles, up
// to a bound, and at once after it answers.
func TestBackoff(t *testing.T) {
	s := New([]string{"a"}, Any, Disable, 0)
	now := time.Now()
	s.Failed("a", errors.New("refused"), now)
	if !s.Due("a", now) {
		t.Fatal("after one failure: checked at the next round")
	}
	var waits []time.Duration
	for range 8 {
		s.Failed("a", errors.New("refused"), now)
		st := s.Hosts()[0]
		waits = append(waits, st.RetryAt.Sub(now))
		if s.Due("a", now) || !s.Due("a", st.RetryAt) {
			t.Fatalf("due before %s, or not at it", st.RetryAt)
		}
	}
	if waits[0] != time.Second || waits[1] != 2*time.Second || waits[len(waits)-1] != maxBackoff {
		t.Fatalf("backoffs %v", waits)
	}
	s.Checked("a", false, 0)
	if !s.Due("a", now) {
		t.Fatal("up again: checked at every round")
	}
}

func TestSplit(t *testing.T) {
	if got := Split(" a, b,,c:5433 "); len(got) != 3 || got[0] != "a" || got[1] != "b" || got[2] != "c:5433" {
		t.Fatalf("%q", got)
	}
}
