// Package hosts keeps the hosts of a database that has more than one, or a
// role: what each was last found to be (up or not, a primary or a replica
// in recovery, how far behind its primary), which are in rotation for the
// database's role, and which one the next server connection goes to.
//
// It does no I/O: the proxy checks each host in the background and reports
// what it found (Checked, Failed), and asks Pick where to connect. It must
// never import proxy, pool, protocol or config.
package hosts

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
)

// Role is which hosts a database's connections go to.
type Role string

const (
	Any     Role = "any"     // every host up (a replica within MaxLag)
	Primary Role = "primary" // the host that is not in recovery
	Replica Role = "replica" // hosts in recovery, within MaxLag
)

// Balance is how Pick spreads connections over the hosts in rotation, as
// libpq's load_balance_hosts.
type Balance string

const (
	Disable    Balance = "disable"     // the first host in rotation, in the order given
	RoundRobin Balance = "round-robin" // each in turn
	Random     Balance = "random"
)

// Split reads a host list as libpq and PgBouncer write it: comma-separated.
func Split(list string) []string {
	var out []string
	for h := range strings.SplitSeq(list, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// State is what a host was last found to be.
type State struct {
	Host       string
	Checked    bool          // a check has ended, one way or the other
	Up         bool          // the last check reached it
	InRecovery bool          // a replica (pg_is_in_recovery)
	Lag        time.Duration // behind its primary in replay; 0 when caught up or a primary, negative when behind by an unknown amount
	Err        string        // why the last check failed
	Failures   int           // checks failed in a row
	RetryAt    time.Time     // a host down is checked again from then (backoff)
	InRotation bool
}

// Set is a database's hosts.
type Set struct {
	role    Role
	balance Balance
	maxLag  time.Duration // 0: no bound

	mu    sync.Mutex
	hosts []State
	next  int
}

// New makes the Set of hosts, none checked yet.
func New(hosts []string, role Role, balance Balance, maxLag time.Duration) *Set {
	s := &Set{role: role, balance: balance, maxLag: maxLag}
	for _, h := range hosts {
		s.hosts = append(s.hosts, State{Host: h})
	}
	return s
}

// ErrNone is Pick's error when no host is in rotation.
var ErrNone = errors.New("no host in rotation")

// Checked records a check of host that reached it. It reports whether the
// hosts in rotation changed.
func (s *Set) Checked(host string, inRecovery bool, lag time.Duration) bool {
	return s.update(host, func(h *State) {
		h.Checked, h.Up, h.InRecovery, h.Lag, h.Err, h.Failures, h.RetryAt = true, true, inRecovery, lag, "", 0, time.Time{}
	})
}

// Failed records a check of host that did not reach it, at now: it is
// checked again after a backoff that doubles with each failure, up to
// maxBackoff. It reports whether the hosts in rotation changed.
func (s *Set) Failed(host string, err error, now time.Time) bool {
	return s.update(host, func(h *State) {
		h.Checked, h.Up, h.Err = true, false, err.Error()
		h.Failures++
		h.RetryAt = now.Add(min(maxBackoff, time.Duration(1<<min(h.Failures-1, 10))*baseBackoff))
	})
}

// The backoff of a host down, from its second failed check.
const (
	baseBackoff = 500 * time.Millisecond
	maxBackoff  = 30 * time.Second
)

// Due reports whether host is to be checked at now: not while it is backing
// off.
func (s *Set) Due(host string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.hosts {
		if h.Host == host {
			return h.Failures <= 1 || !now.Before(h.RetryAt)
		}
	}
	return false
}

func (s *Set) update(host string, f func(*State)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.hosts, func(h State) bool { return h.Host == host })
	if i < 0 {
		return false
	}
	f(&s.hosts[i])
	changed := false
	for i := range s.hosts {
		in := s.eligible(&s.hosts[i])
		if in != s.hosts[i].InRotation {
			s.hosts[i].InRotation, changed = in, true
		}
	}
	return changed
}

// eligible reports whether h belongs in rotation for the Set's role.
func (s *Set) eligible(h *State) bool {
	if !h.Checked || !h.Up {
		return false
	}
	caughtUp := !h.InRecovery || s.maxLag == 0 || h.Lag >= 0 && h.Lag <= s.maxLag
	switch s.role {
	case Primary:
		return !h.InRecovery
	case Replica:
		return h.InRecovery && caughtUp
	}
	return caughtUp
}

// Pick returns the host the next server connection goes to.
func (s *Set) Pick() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var in []int
	for i := range s.hosts {
		if s.hosts[i].InRotation {
			in = append(in, i)
		}
	}
	if len(in) == 0 {
		return "", fmt.Errorf("%w (%s)", ErrNone, s.describeLocked())
	}
	var i int
	switch s.balance {
	case RoundRobin:
		i = in[s.next%len(in)]
		s.next++
	case Random:
		i = in[rand.IntN(len(in))]
	default:
		i = in[0]
	}
	return s.hosts[i].Host, nil
}

// InRotation reports whether host is in rotation now.
func (s *Set) InRotation(host string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.hosts, func(h State) bool { return h.Host == host })
	return i >= 0 && s.hosts[i].InRotation
}

// Hosts returns every host's state.
func (s *Set) Hosts() []State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.hosts)
}

// describeLocked says what each host is, for an error.
func (s *Set) describeLocked() string {
	var b strings.Builder
	b.WriteString("role " + string(s.role) + ":")
	for _, h := range s.hosts {
		b.WriteString(" " + h.Host + " ")
		switch {
		case !h.Checked:
			b.WriteString("not checked yet")
		case !h.Up:
			b.WriteString("down")
		case h.InRecovery && h.Lag < 0:
			b.WriteString("replica, behind by an unknown amount")
		case h.InRecovery:
			fmt.Fprintf(&b, "replica, %s behind", h.Lag.Round(time.Millisecond))
		default:
			b.WriteString("primary")
		}
		b.WriteString(";")
	}
	return strings.TrimSuffix(b.String(), ";")
}
