package proxy

import (
	"strings"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/hosts"
)

// Read/write routing (route_reads): a database's pool is its primary's,
// with a second pool of its replicas beside it (dbPool.reads). At the first
// message of each transaction-mode transaction, the driver asks routeLocked
// which pool the server comes from: the replicas for a request that can
// only read (core.ReadOnlyRequest, which says no whenever unsure) or from
// a client whose default_transaction_read_only is on, unless the client
// ended a transaction on the primary within read_after_write_window, so
// that it reads its own writes.

// routed is a route_reads database as its primary's pool or its replicas'
// (reads) sees it.
func routed(db Database, reads bool) Database {
	if !db.RouteReads {
		return db
	}
	db.Role = string(hosts.Primary)
	if reads {
		db.Role, db.RouteReads = string(hosts.Replica), false
	}
	return db
}

// readsKey names the replicas' pool of a database beside its own.
func readsKey(k poolKey) poolKey { return poolKey{k.database + "@replicas", k.user} }

// routeLocked picks the pool the transaction that buf begins (whole
// messages, as buffered) takes its server from, and returns it.
func (ss *session) routeLocked(buf []byte) *dbPool {
	ss.txPool = ss.pool
	if ss.pool.reads == nil {
		return ss.pool // no route_reads: inlined, at every transaction
	}
	return ss.routeReadsLocked(buf)
}

// routeReadsLocked is routeLocked for a database with route_reads.
func (ss *session) routeReadsLocked(buf []byte) *dbPool {
	r := ss.pool.reads
	if !ss.Pooled || ss.Pinned {
		return ss.pool
	}
	if window := ss.srv.options().ReadAfterWriteWindow; ss.wroteAt != 0 && ss.now()-ss.wroteAt < int64(window) {
		return ss.pool
	}
	var stmts core.Statements
	if ss.Mapping {
		stmts = &ss.PS
	}
	if ss.readOnlyClient() || core.ReadOnlyRequest(buf, stmts) {
		ss.txPool = r
	}
	return ss.txPool
}

// acquireFrom is the pool the session's next server comes from.
func (ss *session) acquireFrom() *dbPool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.txPool != nil {
		return ss.txPool
	}
	return ss.pool
}

// readOnlyClient reports whether the client's transactions are read-only
// by default (default_transaction_read_only, at login or by SET).
func (ss *session) readOnlyClient() bool {
	v, _ := ss.Want.Get("default_transaction_read_only")
	switch strings.ToLower(v) {
	case "on", "true", "yes", "1":
		return true
	}
	return false
}
