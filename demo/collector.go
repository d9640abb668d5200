package demo

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgmux/pgmux/internal/otlp"
)

// Collector is the demo's in-process trace collector: an OTLP/HTTP
// receiver that pgmux and the demo API both export to. It joins each HTTP
// request's spans into one trace and keeps how the request's time split
// between the application, Redis, waiting in pgmux's pool for a server
// (pgmux.pool_wait) and PostgreSQL (pgmux.server); Split reports it for
// each route's slowest requests.
type Collector struct {
	recv *otlp.Receiver

	mu       sync.Mutex
	pending  map[string]*pendingTrace // by trace id
	settled  time.Time                // when pending was last looked over
	requests []requestSplit
}

// pendingTrace is a trace's spans while more of them may come.
type pendingTrace struct {
	spans    []otlp.Span
	first    time.Time // when its first span came
	rootSeen time.Time // when its HTTP span came; zero until then
}

// requestSplit is where one request's time went.
type requestSplit struct {
	route                        string
	total, redis, wait, postgres time.Duration
}

// settleAfter is how long after a request's HTTP span its trace is taken as
// whole: pgmux exports within about a second of a transaction's end.
const settleAfter = 3 * time.Second

// orphanAfter is how long spans of a trace without an HTTP span are kept
// (the event flusher's transactions have none).
const orphanAfter = 30 * time.Second

// StartCollector listens for OTLP/HTTP on addr (127.0.0.1:0 for any port).
func StartCollector(addr string) (*Collector, error) {
	c := &Collector{pending: map[string]*pendingTrace{}}
	recv, err := otlp.Listen(addr, c.add)
	if err != nil {
		return nil, err
	}
	c.recv = recv
	return c, nil
}

// URL is the collector's base URL, for an exporter's endpoint.
func (c *Collector) URL() string { return c.recv.URL }

// Close stops the collector.
func (c *Collector) Close() error { return c.recv.Close() }

func (c *Collector) add(spans []otlp.Span) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range spans {
		p := c.pending[s.TraceID]
		if p == nil {
			p = &pendingTrace{first: now}
			c.pending[s.TraceID] = p
		}
		p.spans = append(p.spans, s)
		if isRequest(s) {
			p.rootSeen = now
		}
	}
	if now.Sub(c.settled) >= settleEvery {
		c.settleLocked(now, false)
		c.settled = now
	}
}

// settleEvery is how often pending traces are looked over.
const settleEvery = time.Second

// isRequest reports whether s is a request's HTTP span: otelhttp's, a
// root (pgmux's transactions without a parent are roots too).
func isRequest(s otlp.Span) bool {
	return s.ParentSpanID == "" && strings.HasSuffix(s.InstrumentationScope, "otelhttp")
}

// settleLocked turns the traces whose request span came settleAfter ago
// (all that have one, if all) into requestSplits, and forgets old orphans.
func (c *Collector) settleLocked(now time.Time, all bool) {
	for id, p := range c.pending {
		switch {
		case !p.rootSeen.IsZero() && (all || now.Sub(p.rootSeen) >= settleAfter):
			if r, ok := split(p.spans); ok {
				c.requests = append(c.requests, r)
			}
			delete(c.pending, id)
		case p.rootSeen.IsZero() && now.Sub(p.first) >= orphanAfter:
			delete(c.pending, id)
		}
	}
}

// split is where a trace's request spent its time: the union of its Redis
// spans, of pgmux's pool waits and of pgmux's server spans, each within the
// request; the application's is the rest (its own code, the drivers, the
// network and pgmux's relaying).
func split(spans []otlp.Span) (requestSplit, bool) {
	var root otlp.Span
	found := false
	for _, s := range spans {
		if isRequest(s) {
			root, found = s, true
		}
	}
	if !found {
		return requestSplit{}, false
	}
	var redis, wait, postgres []otlp.Span
	for _, s := range spans {
		switch {
		case s.Name == "pgmux.pool_wait":
			wait = append(wait, s)
		case s.Name == "pgmux.server":
			postgres = append(postgres, s)
		case strings.Contains(s.InstrumentationScope, "redis"):
			redis = append(redis, s)
		}
	}
	r := requestSplit{route: root.Name, total: root.Duration(),
		redis: union(redis, root), wait: union(wait, root), postgres: union(postgres, root)}
	return r, true
}

// union is how long, within root, at least one of spans was open.
func union(spans []otlp.Span, root otlp.Span) time.Duration {
	slices.SortFunc(spans, func(a, b otlp.Span) int { return a.Start.Compare(b.Start) })
	var total time.Duration
	var end time.Time
	for _, s := range spans {
		start, stop := later(s.Start, root.Start), earlier(s.End, root.End)
		start = later(start, end)
		if stop.After(start) {
			total += stop.Sub(start)
			end = stop
		}
	}
	return total
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// RouteSplit is where a route's slowest requests (its P99 and above) spent
// their time, as shares of it.
type RouteSplit struct {
	Route    string  `json:"route"`
	Requests int     `json:"requests"` // traced requests of the route
	Slowest  int     `json:"slowest"`  // those at or above its P99
	P99Ms    float64 `json:"p99_ms"`
	App      float64 `json:"app"`
	Redis    float64 `json:"redis"`
	PoolWait float64 `json:"pool_wait"`
	Postgres float64 `json:"postgres"`
}

// Split reports, per route, the time split of its requests at or above
// its P99, from every trace whose request span has come.
func (c *Collector) Split() []RouteSplit {
	c.mu.Lock()
	c.settleLocked(time.Now(), true)
	byRoute := map[string][]requestSplit{}
	for _, r := range c.requests {
		byRoute[r.route] = append(byRoute[r.route], r)
	}
	c.mu.Unlock()
	var out []RouteSplit
	for route, rs := range byRoute {
		slices.SortFunc(rs, func(a, b requestSplit) int { return cmp.Compare(a.total, b.total) })
		p99 := rs[len(rs)*99/100]
		var total, redis, wait, postgres time.Duration
		slow := rs[len(rs)*99/100:]
		for _, r := range slow {
			total += r.total
			redis += r.redis
			wait += r.wait
			postgres += r.postgres
		}
		share := func(d time.Duration) float64 { return float64(d) / float64(max(total, 1)) }
		out = append(out, RouteSplit{Route: route, Requests: len(rs), Slowest: len(slow), P99Ms: float64(p99.total) / 1e6,
			Redis: share(redis), PoolWait: share(wait), Postgres: share(postgres),
			App: max(0, 1-share(redis)-share(wait)-share(postgres))})
	}
	slices.SortFunc(out, func(a, b RouteSplit) int { return strings.Compare(a.Route, b.Route) })
	return out
}
