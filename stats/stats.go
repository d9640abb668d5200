// Package stats holds the value types through which the proxy reports on
// itself (pools, clients, servers) and the sliding latency window behind
// their percentiles. The admin API reads these values; it never sees the
// proxy's own types. It must never import the proxy, the pools or metrics:
// it is the plain data between them.
package stats

import (
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// Pool is a snapshot of one (database, user) pool.
type Pool struct {
	Database string `json:"database"`
	User     string `json:"user"`
	PoolMode string `json:"pool_mode"`

	ClientsActive  int `json:"clients_active"`  // holding a server
	ClientsWaiting int `json:"clients_waiting"` // queued for a server
	ClientsIdle    int `json:"clients_idle"`    // between transactions
	// ClientsPinned: in transaction mode, keeping their server for state
	// they left on it (counted in the states above too).
	ClientsPinned int `json:"clients_pinned"`
	// ClientsListening: in transaction mode, LISTENing through pgmux on
	// ListenChannels channels in all.
	ClientsListening int `json:"clients_listening"`
	ListenChannels   int `json:"listen_channels"`

	ServersActive     int `json:"servers_active"`
	ServersIdle       int `json:"servers_idle"`
	ServersConnecting int `json:"servers_connecting"`
	PoolSize          int `json:"pool_size"`

	// Hosts: for a database with several hosts or a role, each host as
	// last checked.
	Hosts []Host `json:"hosts,omitempty"`

	// ServerAssignments: servers lent to clients; ClientParses, Binds: named
	// statements clients prepared and bound, ServerParses: prepared on
	// servers (prepared-statement mapping).
	ServerAssignments int64 `json:"server_assignments"`
	ClientParses      int64 `json:"client_parses"`
	ServerParses      int64 `json:"server_parses"`
	Binds             int64 `json:"binds"`

	Transactions  int64            `json:"transactions"` // ReadyForQuery 'I' (a transaction, or a statement outside one, ended)
	Queries       int64            `json:"queries"`      // ReadyForQuery (one per Query or Sync)
	BytesReceived int64            `json:"bytes_received"`
	BytesSent     int64            `json:"bytes_sent"`
	Errors        map[string]int64 `json:"errors_by_class"` // ErrorResponse from servers, by SQLSTATE class

	// Cumulative times, for PgBouncer's SHOW STATS.
	TotalTransactionTime time.Duration `json:"-"`
	TotalQueryTime       time.Duration `json:"-"`
	TotalWaitTime        time.Duration `json:"-"`
	MaxWait              time.Duration `json:"-"` // the longest a client is waiting now

	// Period: the counts' changes over the latest complete stats period,
	// for PgBouncer's averages.
	Period Period `json:"-"`

	// Over the last Window.
	TransactionTime Summary `json:"transaction_time"`
	QueryTime       Summary `json:"query_time"`
	WaitTime        Summary `json:"wait_time"` // for a server: pgmux's own contribution
}

// Host is one host of a database with several or a role.
type Host struct {
	Host       string  `json:"host"`
	State      string  `json:"state"`       // unchecked, down, primary or replica
	LagSeconds float64 `json:"lag_seconds"` // a replica's replay lag; -1 when unknown
	InRotation bool    `json:"in_rotation"` // connections may go to it
	Error      string  `json:"error,omitempty"`
}

// Period is what a pool's counts grew by over a stats period.
type Period struct {
	Seconds                                  float64
	ServerAssignments, Transactions, Queries int64
	BytesReceived, BytesSent                 int64
	ClientParses, ServerParses, Binds        int64
	TransactionTime, QueryTime, WaitTime     time.Duration
}

// Add accumulates q's counts and cumulative times into p (not its
// percentiles, which do not add up).
func (p *Pool) Add(q Pool) {
	p.ClientsActive += q.ClientsActive
	p.ClientsWaiting += q.ClientsWaiting
	p.ClientsIdle += q.ClientsIdle
	p.ClientsPinned += q.ClientsPinned
	p.ClientsListening += q.ClientsListening
	p.ListenChannels += q.ListenChannels
	p.ServersActive += q.ServersActive
	p.ServersIdle += q.ServersIdle
	p.ServersConnecting += q.ServersConnecting
	p.ServerAssignments += q.ServerAssignments
	p.ClientParses += q.ClientParses
	p.ServerParses += q.ServerParses
	p.Binds += q.Binds
	p.Period.Seconds = max(p.Period.Seconds, q.Period.Seconds)
	p.Period.ServerAssignments += q.Period.ServerAssignments
	p.Period.Transactions += q.Period.Transactions
	p.Period.Queries += q.Period.Queries
	p.Period.BytesReceived += q.Period.BytesReceived
	p.Period.BytesSent += q.Period.BytesSent
	p.Period.ClientParses += q.Period.ClientParses
	p.Period.ServerParses += q.Period.ServerParses
	p.Period.Binds += q.Period.Binds
	p.Period.TransactionTime += q.Period.TransactionTime
	p.Period.QueryTime += q.Period.QueryTime
	p.Period.WaitTime += q.Period.WaitTime
	p.Transactions += q.Transactions
	p.Queries += q.Queries
	p.BytesReceived += q.BytesReceived
	p.BytesSent += q.BytesSent
	p.TotalTransactionTime += q.TotalTransactionTime
	p.TotalQueryTime += q.TotalQueryTime
	p.TotalWaitTime += q.TotalWaitTime
	if len(q.Errors) > 0 && p.Errors == nil {
		p.Errors = map[string]int64{}
	}
	for k, v := range q.Errors {
		p.Errors[k] += v
	}
}

// Summary is a latency distribution over a recent window, in seconds.
type Summary struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_seconds"`
	P99   float64 `json:"p99_seconds"`
	Max   float64 `json:"max_seconds"`
}

// Client is one client connection.
type Client struct {
	ID              uint64    `json:"id"`
	Addr            string    `json:"addr"`
	Database        string    `json:"database"`
	User            string    `json:"user"`
	ApplicationName string    `json:"application_name"`
	State           string    `json:"state"` // login, idle, waiting, active
	ConnectTime     time.Time `json:"connect_time"`
	ServerPID       uint32    `json:"server_pid,omitempty"`
	Pinned          bool      `json:"pinned,omitempty"` // transaction mode, keeping its server (see Pool.ClientsPinned)

	// For the console's SHOW CLIENTS.
	LocalAddr    string    `json:"-"`
	RequestTime  time.Time `json:"-"` // when its open transaction began; zero if none
	WaitingSince time.Time `json:"-"` // zero unless it waits for a server
	TLS          string    `json:"-"` // "TLSv1.3/cipher", empty in plain text
	Prepared     int       `json:"-"` // named statements it has prepared
	FD           int       `json:"-"` // its socket's descriptor, -1 if unknown
}

// Server is one server connection.
type Server struct {
	Database    string    `json:"database"`
	User        string    `json:"user"`
	Addr        string    `json:"addr"`
	PID         uint32    `json:"pid"`
	State       string    `json:"state"` // active, idle
	ConnectTime time.Time `json:"connect_time"`
	Prepared    int       `json:"prepared_statements"`

	// For the console's SHOW SERVERS.
	ID        uint64 `json:"-"`
	LocalAddr string `json:"-"`
	TLS       string `json:"-"`
	FD        int    `json:"-"`
}

// Prepared counts the work of prepared-statement mapping.
type Prepared struct {
	Prepared  int64 `json:"prepared"`  // statements prepared on servers under pgmux names
	Hits      int64 `json:"hits"`      // uses that found the statement on the server at hand
	Misses    int64 `json:"misses"`    // uses that had to prepare it there first
	Evictions int64 `json:"evictions"` // closed to stay within max_prepared_statements
	Parses    int64 `json:"parses"`    // named statements clients prepared
	Binds     int64 `json:"binds"`     // Binds of named statements clients sent
}

// Add accumulates q into p.
func (p *Prepared) Add(q Prepared) {
	p.Prepared += q.Prepared
	p.Hits += q.Hits
	p.Misses += q.Misses
	p.Evictions += q.Evictions
	p.Parses += q.Parses
	p.Binds += q.Binds
}

// Window keeps a latency distribution over the last 60 seconds: one set of
// log-scale buckets per second, recorded with atomic adds.
type Window struct {
	mu    sync.Mutex // guards rotation of slots
	slots [windowSeconds]slot
}

const (
	windowSeconds = 60
	subBuckets    = 4               // per power of two: values within ~19%
	numBuckets    = 42 * subBuckets // up to 2^42 ns, about 73 minutes
)

type slot struct {
	second  atomic.Int64
	buckets [numBuckets]atomic.Int64
	max     atomic.Int64
}

// bucket maps a duration in nanoseconds to its bucket: four per power of
// two, so a bucket's values are within 25% of each other.
func bucket(ns int64) int {
	if ns < 4 {
		return int(max(ns, 0))
	}
	exp := bits.Len64(uint64(ns)) - 1 // ns in [2^exp, 2^(exp+1))
	sub := int(ns>>(exp-2)) & (subBuckets - 1)
	return min(exp*subBuckets+sub, numBuckets-1)
}

// bucketValue is the upper bound of bucket b, in seconds.
func bucketValue(b int) float64 {
	if b < 4 {
		return float64(b) / 1e9
	}
	exp, sub := b/subBuckets, b%subBuckets
	return math.Ldexp(float64(subBuckets+sub+1), exp-2) / 1e9
}

// Observe records one duration.
func (w *Window) Observe(d time.Duration) { w.ObserveAt(d, time.Now().Unix()) }

// ObserveAt records one duration observed at the given Unix second, for a
// caller that already knows the time.
func (w *Window) ObserveAt(d time.Duration, now int64) {
	s := &w.slots[now%windowSeconds]
	if s.second.Load() != now {
		w.mu.Lock()
		if s.second.Load() != now {
			for i := range s.buckets {
				s.buckets[i].Store(0)
			}
			s.max.Store(0)
			s.second.Store(now)
		}
		w.mu.Unlock()
	}
	ns := int64(d)
	s.buckets[bucket(ns)].Add(1)
	for {
		m := s.max.Load()
		if ns <= m || s.max.CompareAndSwap(m, ns) {
			break
		}
	}
}

// Summary returns the distribution of the last 60 seconds.
func (w *Window) Summary() Summary {
	now := time.Now().Unix()
	var counts [numBuckets]int64
	var total, maxNS int64
	for i := range w.slots {
		s := &w.slots[i]
		if now-s.second.Load() >= windowSeconds {
			continue
		}
		for b := range counts {
			c := s.buckets[b].Load()
			counts[b] += c
			total += c
		}
		maxNS = max(maxNS, s.max.Load())
	}
	out := Summary{Count: total, Max: float64(maxNS) / 1e9}
	if total == 0 {
		return out
	}
	quantile := func(q float64) float64 {
		rank := int64(math.Ceil(q * float64(total)))
		var seen int64
		for b, c := range counts {
			seen += c
			if seen >= rank {
				return min(bucketValue(b), out.Max)
			}
		}
		return out.Max
	}
	out.P50, out.P99 = quantile(0.50), quantile(0.99)
	return out
}
