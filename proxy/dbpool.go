package proxy

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/hosts"
	"github.com/pgmux/pgmux/pool"
	"github.com/pgmux/pgmux/prepared"
	"github.com/pgmux/pgmux/stats"
)

// poolKey names the pool of one (database, backend user) pair.
type poolKey struct{ database, user string }

// dbPool is everything pgmux keeps for one (database, backend user) pair:
// the pool of server connections (replaced whole when a reload resizes it),
// the server parameters shown to clients at login, and the pair's counters.
type dbPool struct {
	key  poolKey
	db   Database
	pool atomic.Pointer[pool.Pool[*serverConn]]
	// tlsServers: the pool's latest server speaks TLS, so the event loop,
	// which reads raw descriptors, does not serve its clients (see
	// loopable); one it is given all the same is handed to the goroutine
	// path (gotServer).
	tlsServers atomic.Bool
	// learned logs in to the servers as the pool's user when pgmux has no
	// password for it: what a client proved at its login (SCRAM keys, or
	// auth_query's md5 secret).
	learned atomic.Pointer[serverCred]
	srv     *Server
	// listen LISTENs for the pool's transaction-mode clients (listen.go).
	listen listenHub
	// hosts are the database's hosts when it has several or a role
	// (hosts.go); nil for one host of any role.
	hosts *hosts.Set
	// reads, with route_reads, is the pool of the database's replicas
	// that read-only transactions go to (route.go); this pool is then the
	// primary's. readsOf is, in that pool, the database it serves.
	reads   *dbPool
	readsOf string

	mu      sync.Mutex                                 // guards following
	params  []core.Param                               // the server's settings at connect, by name (see serverParams)
	dial    func(context.Context) (*serverConn, error) // the pool's, for the listening connection
	servers map[*serverConn]struct{}
	errors  map[string]int64 // ErrorResponse from servers, by SQLSTATE class

	clientsIdle, clientsWaiting, clientsActive atomic.Int64
	clientGauges                               [core.PhaseClosed + 1]*atomic.Int64 // by phase: the count it shows in (see session.setPhase)
	clientsPinned, clientsListening            atomic.Int64
	assignments                                atomic.Int64 // servers lent to clients
	ps                                         prepared.Counters
	transactions, queries                      atomic.Int64
	bytesIn, bytesOut                          atomic.Int64
	txNanos, queryNanos, waitNanos             atomic.Int64
	txWin, queryWin, waitWin                   stats.Window
	txHist, queryHist, waitHist                latencyHist // the Prometheus histograms' counts

	m poolMetrics

	closing sync.WaitGroup // replaced pools closing (replacePool), for WAIT_CLOSE

	// The counts at the ends of the last two stats periods (statsTick),
	// for PgBouncer's averages.
	periodMu         sync.Mutex
	periodAt, prevAt time.Time
	periodEnd, prev  stats.Pool
}

// counts returns the pool's cumulative counts.
func (p *dbPool) counts() stats.Pool {
	ps := p.ps.Snapshot()
	return stats.Pool{ServerAssignments: p.assignments.Load(), Transactions: p.transactions.Load(), Queries: p.queries.Load(),
		BytesReceived: p.bytesIn.Load(), BytesSent: p.bytesOut.Load(),
		ClientParses: ps.Parses, ServerParses: ps.Prepared, Binds: ps.Binds,
		TotalTransactionTime: time.Duration(p.txNanos.Load()), TotalQueryTime: time.Duration(p.queryNanos.Load()),
		TotalWaitTime: time.Duration(p.waitNanos.Load())}
}

// statsTick ends a stats period at now.
func (p *dbPool) statsTick(now time.Time) {
	c := p.counts()
	p.periodMu.Lock()
	p.prev, p.prevAt = p.periodEnd, p.periodAt
	p.periodEnd, p.periodAt = c, now
	p.periodMu.Unlock()
}

// period is what the counts grew by over the latest complete stats period.
func (p *dbPool) period() stats.Period {
	p.periodMu.Lock()
	defer p.periodMu.Unlock()
	if p.prevAt.IsZero() {
		return stats.Period{}
	}
	a, b := p.prev, p.periodEnd
	return stats.Period{Seconds: p.periodAt.Sub(p.prevAt).Seconds(),
		ServerAssignments: b.ServerAssignments - a.ServerAssignments, Transactions: b.Transactions - a.Transactions,
		Queries: b.Queries - a.Queries, BytesReceived: b.BytesReceived - a.BytesReceived, BytesSent: b.BytesSent - a.BytesSent,
		ClientParses: b.ClientParses - a.ClientParses, ServerParses: b.ServerParses - a.ServerParses, Binds: b.Binds - a.Binds,
		TransactionTime: b.TotalTransactionTime - a.TotalTransactionTime, QueryTime: b.TotalQueryTime - a.TotalQueryTime,
		WaitTime: b.TotalWaitTime - a.TotalWaitTime}
}

// newPoolFor builds the server pool of db for the options in force.
func (s *Server) newPoolFor(p *dbPool, db Database, user string, cred serverCred) (*pool.Pool[*serverConn], error) {
	o := s.options()
	_, maxUser := o.forUser(db, user)
	maxBody := o.MaxPacketSize
	dial := func(ctx context.Context) (*serverConn, error) {
		d := db
		p.mu.Lock()
		d.ServerTLS = p.db.ServerTLS // as the latest reload left it
		p.mu.Unlock()
		c := cred
		if l := p.learned.Load(); l != nil && c.Password == "" && c.MD5 == "" {
			c = *l // pass-through
		}
		var sc *serverConn
		var err error
		if p.hosts != nil {
			sc, err = s.dialHosts(ctx, p, d, user, c)
		} else {
			d = onHost(d, d.Host) // host:port
			sc, err = dialServer(ctx, &d, user, c, maxBody)
		}
		if err == nil {
			p.tlsServers.Store(sc.sys == nil)
			sc.owner = p
			sc.id = serverIDs.Add(1)
			sc.connected = time.Now()
			p.mu.Lock()
			p.servers[sc] = struct{}{}
			p.mu.Unlock()
		}
		s.metrics.serverConnects(err)
		return sc, err
	}
	p.mu.Lock()
	p.dial = dial
	p.mu.Unlock()
	return pool.New(pool.Config[*serverConn]{
		Dial:           dial,
		ReserveSize:    int32(db.ReservePoolSize),
		ReserveTimeout: o.ReservePoolTimeout,
		LoginRetry:     o.ServerLoginRetry,
		Limits:         s.limitsFor(p.key.database, user, db.MaxDBConnections, maxUser),
		MaxSize:        int32(db.PoolSize),
		MinSize:        int32(o.MinPoolSize),
		ConnectTimeout: o.ServerConnectTimeout,
		IdleTimeout:    o.ServerIdleTimeout,
		MaxLifetime:    o.ServerLifetime,
	})
}

// poolFor returns the pool for a database and backend user, creating it.
func (s *Server) poolFor(name string, db Database, user string, cred serverCred) (*dbPool, error) {
	key := poolKey{name, user}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.pools[key]; p != nil {
		return p, nil
	}
	if s.closed {
		return nil, pool.ErrClosed
	}
	if db.RouteReads && db.PoolMode == ModeTransaction {
		// The database's own pool is its primary's; its replicas' beside.
		r, err := s.newDBPool(readsKey(key), routed(db, true), user, cred)
		if err != nil {
			return nil, err
		}
		r.readsOf = name
		p, err := s.newDBPool(key, routed(db, false), user, cred)
		if err != nil {
			return nil, err
		}
		p.reads = r
		return p, nil
	}
	return s.newDBPool(key, db, user, cred)
}

// newDBPool makes the dbPool of key, under s.mu.
func (s *Server) newDBPool(key poolKey, db Database, user string, cred serverCred) (*dbPool, error) {
	p := &dbPool{key: key, db: db, srv: s, servers: map[*serverConn]struct{}{}, errors: map[string]int64{}}
	for ph := range p.clientGauges {
		p.clientGauges[ph] = p.clientGauge(core.Phase(ph).Report())
	}
	p.listen.p = p
	p.periodAt = time.Now() // the first period begins
	p.m = s.metrics.forPool(key.database, user)
	p.hosts = hostSet(db)
	pl, err := s.newPoolFor(p, db, user, cred)
	if err != nil {
		return nil, err
	}
	p.pool.Store(pl)
	s.pools[key] = p
	if p.hosts != nil {
		go s.watchHosts(p, user, cred)
	}
	return p, nil
}

// limitsFor returns the limits a pool of database name and backend user
// is under: those of max_db_connections and max_user_connections that are
// set, shared with the other pools of the same database or user, and
// brought to the values given.
func (s *Server) limitsFor(name, user string, maxDB, maxUser int) []*pool.Limit {
	s.limitsMu.Lock() // not mu: poolFor makes pools under it
	defer s.limitsMu.Unlock()
	var out []*pool.Limit
	for _, l := range []struct {
		m   map[string]*pool.Limit
		key string
		max int
	}{{s.dbLimits, name, maxDB}, {s.userLimits, user, maxUser}} {
		lim := l.m[l.key]
		if lim == nil {
			if l.max <= 0 {
				continue
			}
			lim = pool.NewLimit(int32(l.max))
			l.m[l.key] = lim
		}
		lim.SetMax(int32(l.max))
		out = append(out, lim)
	}
	return out
}

// poolList returns the pools there are now.
func (s *Server) poolList() []*dbPool {
	s.mu.Lock()
	defer s.mu.Unlock()
	pools := make([]*dbPool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	return pools
}

// forget drops a closed server connection from the pool's registry.
func (p *dbPool) forget(sc *serverConn) {
	p.mu.Lock()
	delete(p.servers, sc)
	p.mu.Unlock()
}

func (p *dbPool) countError(code string) {
	class := "??"
	if len(code) >= 2 {
		class = code[:2]
	}
	p.mu.Lock()
	p.errors[class]++
	p.mu.Unlock()
	p.m.errors.WithLabelValues(class).Inc()
}

func (p *dbPool) observeWait(d time.Duration, now int64) {
	p.assignments.Add(1)
	p.waitNanos.Add(int64(d))
	p.waitWin.ObserveAt(d, now/1e9)
	p.waitHist.observe(d)
}

func (p *dbPool) observeQuery(d time.Duration, now int64) {
	p.queries.Add(1)
	p.queryNanos.Add(int64(d))
	p.queryWin.ObserveAt(d, now/1e9)
	p.queryHist.observe(d)
}

func (p *dbPool) observeTransaction(d time.Duration, now int64) {
	p.transactions.Add(1)
	p.txNanos.Add(int64(d))
	p.txWin.ObserveAt(d, now/1e9)
	p.txHist.observe(d)
}

func (p *dbPool) addBytes(in, out int64) {
	if in > 0 {
		p.bytesIn.Add(in)
	}
	if out > 0 {
		p.bytesOut.Add(out)
	}
}

// snapshot reports the pool.
func (p *dbPool) snapshot(maxWait time.Duration) stats.Pool {
	ps := p.pool.Load().Stats()
	p.mu.Lock()
	mode := p.db.PoolMode
	p.mu.Unlock()
	st := p.counts()
	st.Database, st.User, st.PoolMode = p.key.database, p.key.user, mode
	st.ClientsActive, st.ClientsWaiting, st.ClientsIdle = int(p.clientsActive.Load()), int(p.clientsWaiting.Load()), int(p.clientsIdle.Load())
	st.ClientsPinned, st.ClientsListening = int(p.clientsPinned.Load()), int(p.clientsListening.Load())
	st.ListenChannels = p.listen.channels()
	st.ServersActive, st.ServersIdle, st.ServersConnecting, st.PoolSize = int(ps.Acquired), int(ps.Idle), int(ps.Constructing), int(ps.Max)
	st.MaxWait = maxWait
	st.Period = p.period()
	st.TransactionTime, st.QueryTime, st.WaitTime = p.txWin.Summary(), p.queryWin.Summary(), p.waitWin.Summary()
	if p.hosts != nil {
		for _, h := range p.hosts.Hosts() {
			st.Hosts = append(st.Hosts, hostReport(h))
		}
	}
	st.Errors = map[string]int64{}
	p.mu.Lock()
	for k, v := range p.errors {
		st.Errors[k] = v
	}
	p.mu.Unlock()
	return st
}

// Pools reports every pool.
func (s *Server) Pools() []stats.Pool {
	waits := map[*dbPool]time.Duration{}
	now := time.Now()
	s.mu.Lock()
	pools := make([]*dbPool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	for ss := range s.sessions {
		if t, p := ss.waitingSince.Load(), ss.statsPool.Load(); t != 0 && p != nil {
			waits[p] = max(waits[p], now.Sub(time.Unix(0, t)))
		}
	}
	s.mu.Unlock()
	out := make([]stats.Pool, 0, len(pools))
	for _, p := range pools {
		out = append(out, p.snapshot(waits[p]))
	}
	slices.SortFunc(out, func(a, b stats.Pool) int {
		return cmp.Or(cmp.Compare(a.Database, b.Database), cmp.Compare(a.User, b.User))
	})
	return out
}

// Clients reports every client connection.
func (s *Server) Clients() []stats.Client {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	out := make([]stats.Client, 0, len(sessions))
	for _, ss := range sessions {
		out = append(out, ss.snapshot())
	}
	return out
}

// Servers reports every server connection.
func (s *Server) Servers() []stats.Server {
	pools := s.poolList()
	var out []stats.Server
	for _, p := range pools {
		p.mu.Lock()
		for sc := range p.servers {
			state := "idle"
			switch {
			case sc.leased.Load():
				state = "active"
			case sc.listener:
				state = "listen" // the pool's LISTEN connection (listen.go)
			}
			out = append(out, stats.Server{Database: p.key.database, User: p.key.user, Addr: sc.addr, PID: sc.pid,
				State: state, ConnectTime: sc.connected, Prepared: sc.Prepared.Count(),
				ID: sc.id, LocalAddr: sc.conn.LocalAddr().String(), TLS: tlsInfo(sc.conn), FD: sc.fd})
		}
		p.mu.Unlock()
	}
	return out
}

// poolMetrics are one pool's Prometheus children, obtained once (its
// counters and histograms are read from the pool: see poolCounters).
type poolMetrics struct {
	errors *prometheus.CounterVec // curried with database, user
}

// clientGauge is the pool's count of clients reported as r, if it has one.
func (p *dbPool) clientGauge(r core.Report) *atomic.Int64 {
	switch r {
	case core.ReportIdle:
		return &p.clientsIdle
	case core.ReportWaiting:
		return &p.clientsWaiting
	case core.ReportActive:
		return &p.clientsActive
	}
	return nil
}
