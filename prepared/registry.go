package prepared

import (
	"container/list"
	"sync/atomic"

	"github.com/pgmux/pgmux/stats"
)

// Registry is the set of statements prepared on one server, in
// least-recently-used order. Its holder serializes the calls; only Count
// may be read from elsewhere.
type Registry struct {
	m     map[string]*list.Element // name -> element whose Value is *state
	lru   list.List                // front: most recently used
	count atomic.Int64             // len(m), for reports read without the holder's lock
}

type state struct {
	name  string
	ready bool // ParseComplete seen; else a Parse is in flight
}

func (r *Registry) get(name string) (*state, bool) {
	if r.m == nil {
		return nil, false
	}
	e, ok := r.m[name]
	if !ok {
		return nil, false
	}
	r.lru.MoveToFront(e)
	return e.Value.(*state), true
}

func (r *Registry) add(name string) {
	if r.m == nil {
		r.m = make(map[string]*list.Element)
	}
	if e, ok := r.m[name]; ok {
		r.lru.MoveToFront(e)
		return
	}
	r.m[name] = r.lru.PushFront(&state{name: name})
	r.count.Store(int64(len(r.m)))
}

// Remove forgets a statement the server no longer holds.
func (r *Registry) Remove(name string) {
	if e, ok := r.m[name]; ok {
		r.lru.Remove(e)
		delete(r.m, name)
		r.count.Store(int64(len(r.m)))
	}
}

// Clear forgets every statement (the server was reset).
func (r *Registry) Clear() {
	r.m = nil
	r.lru.Init()
	r.count.Store(0)
}

// Len is how many statements the server holds or is preparing.
func (r *Registry) Len() int { return len(r.m) }

// Count is Len for readers outside the holder's lock.
func (r *Registry) Count() int { return int(r.count.Load()) }

// Oldest returns up to n ready names from the least recently used end.
func (r *Registry) Oldest(n int) []string {
	var out []string
	for e := r.lru.Back(); e != nil && len(out) < n; e = e.Prev() {
		if st := e.Value.(*state); st.ready {
			out = append(out, st.name)
		}
	}
	return out
}

// Pending reports whether a Parse is in flight for any statement.
func (r *Registry) Pending() bool {
	for _, e := range r.m {
		if !e.Value.(*state).ready {
			return true
		}
	}
	return false
}

// Trim returns the messages that close the least recently used statements
// beyond max, ending with a Sync, and the names they close (none: nothing
// to do). Once the server has answered, Evicted forgets them.
func (r *Registry) Trim(max int) (msg []byte, names []string) {
	over := r.Len() - max
	if over <= 0 {
		return nil, nil
	}
	names = r.Oldest(over)
	for _, name := range names {
		msg = appendClose(msg, 'S', name)
	}
	return append(msg, 'S', 0, 0, 0, 4), names
}

// Evicted forgets the statements Trim closed, and counts them.
func (r *Registry) Evicted(names []string, c *Counters) {
	for _, name := range names {
		r.Remove(name)
	}
	c.evictions.Add(int64(len(names)))
}

// Counters count the mapping's work across every client and server.
type Counters struct {
	prepared, hits, misses, evictions atomic.Int64
	parses, binds                     atomic.Int64 // the clients' Parses and Binds of named statements
}

// Snapshot reports the counters.
func (c *Counters) Snapshot() stats.Prepared {
	return stats.Prepared{Prepared: c.prepared.Load(), Hits: c.hits.Load(), Misses: c.misses.Load(), Evictions: c.evictions.Load(),
		Parses: c.parses.Load(), Binds: c.binds.Load()}
}
