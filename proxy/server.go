// Package proxy is pgmux's client side: the listener and the Server (its
// sessions, the cancel map, PAUSE and the console's other commands, reload
// and graceful shutdown), the pools of servers it keeps per database and
// user, and the two drivers that carry each client's session: the portable
// one, a goroutine per client on net.Conn (any OS, and TLS), and on Linux
// the event loops (loop.go, looptx.go), which serve transaction-mode clients
// with raw system calls (package rawio). The protocol's decisions are
// package core's; the drivers read, ask it and write (docs/relay.md).
//
// It must never import config (only cmd does) or admin, which reads it
// through interfaces of its own (layout_test.go).
package proxy

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/hba"
	"github.com/pgmux/pgmux/pool"
	"github.com/pgmux/pgmux/prepared"
	"github.com/pgmux/pgmux/stats"
	"github.com/pgmux/pgmux/tlsconf"
	"github.com/pgmux/pgmux/tracing"
)

// Pool modes.
const (
	ModeTransaction = "transaction"
	ModeSession     = "session"
)

// Database is a database clients may ask for, resolved: every field is set
// except User and Password, which are optional.
type Database struct {
	// Host is a name or address, or a Unix-socket directory if it begins
	// with /; or several, comma-separated, all on Port (hosts.go).
	Host string
	Port int
	// With several hosts, or a Role: which of them serve (hosts.Primary,
	// Replica, Any; empty is Any), how connections spread over them
	// (hosts.RoundRobin, Random, Disable; empty is Disable), and how far
	// behind in replay a replica may be and stay in rotation (0: any).
	Role             string
	LoadBalanceHosts string
	MaxReplicaLag    time.Duration
	// RouteReads sends read-only transactions to the replicas among the
	// hosts and the rest to the primary (route.go).
	RouteReads bool
	DBName     string // name on the server
	User       string // fixed backend user; empty means the client's
	Password   string // backend password; empty means the auth file's
	PoolMode   string
	PoolSize   int
	// ReservePoolSize more servers serve a client that has waited
	// ReservePoolTimeout; MaxDBConnections bounds the servers of all the
	// database's pools (0: no bound).
	ReservePoolSize, MaxDBConnections int
	// KeepAlive is the server connections' TCP keepalive: the zero value
	// is Go's default (on, 15 s); Enable false with a negative Idle is
	// off.
	KeepAlive net.KeepAliveConfig
	// ServerTLS is how the server is reached: nil or tlsconf's disable
	// for plain text.
	ServerTLS *tlsconf.Servers
}

// UserSettings are a backend user's own pool settings; zero values leave
// the database's, and MaxUserConnections the top-level one.
type UserSettings struct {
	PoolMode                                      string
	PoolSize, ReservePoolSize, MaxUserConnections int
}

// forUser returns db with backend user's own settings over it, and the
// bound on the user's servers (max_user_connections).
func (o *Options) forUser(db Database, user string) (Database, int) {
	u, ok := o.PerUser[user]
	if !ok {
		return db, o.MaxUserConnections
	}
	db.PoolMode = cmp.Or(u.PoolMode, db.PoolMode)
	db.PoolSize = cmp.Or(u.PoolSize, db.PoolSize)
	db.ReservePoolSize = cmp.Or(u.ReservePoolSize, db.ReservePoolSize)
	return db, cmp.Or(u.MaxUserConnections, o.MaxUserConnections)
}

// serverAddr is where db's server listens, as net.Dial takes it: a Host
// beginning with / is the directory of the server's Unix socket, as for
// libpq and PgBouncer. Logins, cancels and readiness checks all dial it.
func (db *Database) serverAddr() (network, addr string) { return dialAddr(db.Host, db.Port) }

// dialAddr is host and port as net.Dial takes them: a host beginning with /
// is the directory of a Unix socket, .s.PGSQL.<port>.
func dialAddr(host string, port int) (network, addr string) {
	p := strconv.Itoa(port)
	if strings.HasPrefix(host, "/") {
		return "unix", filepath.Join(host, ".s.PGSQL."+p)
	}
	return "tcp", net.JoinHostPort(host, p)
}

// Options configures a Server. Zero durations mean "no limit".
type Options struct {
	Logger *zap.Logger

	// Databases resolves the name a client asks for.
	Databases func(name string) (Database, bool)
	// AuthType is "trust", "md5", "scram-sha-256", "cert", or "hba" for
	// HBA's methods.
	AuthType string
	HBA      hba.Rules
	// Users holds the secrets of the auth file.
	Users map[string]auth.Secret
	// ClientTLS is what clients may or must use; nil is disable.
	ClientTLS *tlsconf.Clients
	// AuthQuery fetches the secret of a user absent from Users, with $1
	// the user name, on the server of database AuthDBName (else the one the
	// client asks for), logged in as AuthUser.
	AuthUser, AuthQuery, AuthDBName string

	MaxClientConn      int
	MinPoolSize        int
	ReservePoolTimeout time.Duration // see Database.ReservePoolSize
	// ServerCheckQuery runs on a server idle longer than ServerCheckDelay
	// before it is lent; one that fails it is closed and another taken.
	// Empty: none.
	ServerCheckQuery string
	ServerCheckDelay time.Duration
	// ServerLoginRetry: after a failed connect to a server, clients that
	// need a new server connection get the failure at once for this long.
	ServerLoginRetry       time.Duration
	MaxUserConnections     int // servers of all of a backend user's pools; 0: no bound
	MaxPacketSize          int
	QueryWaitTimeout       time.Duration
	ServerConnectTimeout   time.Duration
	ServerIdleTimeout      time.Duration
	ServerLifetime         time.Duration
	ClientIdleTimeout      time.Duration
	ClientLoginTimeout     time.Duration
	IdleTransactionTimeout time.Duration
	// PeerID is this instance's id among its peers (peers.go), 1 to
	// MaxPeerID; 0: no peering. Read at start.
	PeerID int
	// Peers are the other instances, by peer id: cancels for their
	// clients are sent on to them.
	Peers map[int]Peer
	// PeerAddrs, if set, finds the other instances (a headless Service's
	// addresses, peers_dns): a cancel for no client of this instance's is
	// sent on to each of them. Read at start whether it is set.
	PeerAddrs func(ctx context.Context) ([]string, error)
	// Tracer, if not nil, is given each transaction for its spans.
	Tracer *tracing.Tracer
	// ReadAfterWriteWindow: with route_reads, a client that ended a
	// transaction on the primary this recently reads there too.
	ReadAfterWriteWindow time.Duration
	// HostCheckInterval is how often the hosts of a database with several,
	// or with a role, are checked; 0: every second.
	HostCheckInterval time.Duration
	// QueryTimeout: a server whose answer to a client's request is this
	// late is closed, and its client told and closed (PgBouncer's
	// query_timeout); 0: none.
	QueryTimeout     time.Duration
	ServerResetQuery string
	// Registerer receives pgmux's Prometheus metrics; nil means none.
	Registerer prometheus.Registerer
	// ReadyDatabases are checked by Ready: each must reach a server.
	ReadyDatabases []string
	// AdminUsers may use the admin console (database "pgmux" or
	// "pgbouncer") in full; StatsUsers may only SHOW.
	AdminUsers, StatsUsers []string
	// OnReload and OnShutdown carry out the console's RELOAD and SHUTDOWN;
	// ConfigRows answers SHOW CONFIG (key, value, default, changeable).
	OnReload   func() error
	OnShutdown func()
	ConfigRows func() [][]string
	// MaxPreparedStatements bounds the statements pgmux keeps prepared on
	// each server in transaction mode; 0 turns the mapping off and names
	// pass through untouched.
	MaxPreparedStatements int
	// RelayLoop serves transaction-mode clients' ordinary transactions in
	// an event loop instead of a goroutine per client (see loop.go).
	RelayLoop bool
	// NoIOURing makes the relay loop's sends with one sendto each, even
	// where the kernel offers io_uring (see sendQueue).
	NoIOURing bool
	// PerUser are backend users' own pool settings, over their
	// databases' (PgBouncer's [users]).
	PerUser map[string]UserSettings
	// LogConnections and LogDisconnections log each client's login and
	// logout at info level, as PgBouncer's keys.
	LogConnections, LogDisconnections bool
	// IgnoreStartupParameters are startup parameters taken from clients and
	// not applied to their servers.
	IgnoreStartupParameters []string
	// AppNameAddHost appends " - host:port" of the client to the
	// application_name its servers see (application_name_add_host).
	AppNameAddHost bool
	// NoSessionStateLook turns off the reading of statements for the
	// session state they leave in transaction mode (core.Session.NoLook).
	NoSessionStateLook bool
	// StatsPeriod is how often the console's averages (SHOW STATS) are
	// brought up to date; 0 means 60 seconds.
	StatsPeriod time.Duration
	// NotifyQueueBytes bounds the notifications waiting for one client in
	// transaction mode (see listen.go); a client past it is closed. 0
	// means 1 MiB.
	NotifyQueueBytes int
	// Loops is how many event loops serve the clients, each on its share
	// of them; 0 means one per core the process may use (GOMAXPROCS). It is
	// read once, by New.
	Loops int
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.MaxPacketSize <= 0 {
		o.MaxPacketSize = 1 << 30
	}
	if o.MaxClientConn <= 0 {
		o.MaxClientConn = 10000
	}
	if o.StatsPeriod <= 0 {
		o.StatsPeriod = time.Minute
	}
	if o.NotifyQueueBytes <= 0 {
		o.NotifyQueueBytes = defaultNotifyQueue
	}
}

// Server accepts client connections and serves them from backend pools.
type Server struct {
	opts atomic.Pointer[Options] // replaced whole by Update
	log  *zap.Logger

	ps      prepared.Counters
	metrics *metrics
	// refusalLog writes one line a second per SQLSTATE for clients refused
	// at login, with a count of the rest.
	refusalLog logLimit
	mockNonce  [32]byte     // keys the mock SCRAM salts of unknown users
	secrets    secretCache  // auth_query's answers
	clients    atomic.Int64 // client connections open, cancel requests included
	prelogin   atomic.Int64 // of those, the ones that have not sent a startup packet
	loggedIn   atomic.Int64 // the others but cancel requests: what max_client_conn bounds
	nextID     atomic.Uint64
	peerID     int  // Options.PeerID at start
	peering    bool // keys carry the hop count: a peer id, or peers found by PeerAddrs
	draining   atomic.Bool
	// paused is read without mu (every transaction of the relay loop asks,
	// and mu is held for as long as a listing of every session takes);
	// written under mu, with resumeCh.
	paused    atomic.Bool
	suspended atomic.Bool // SUSPEND: paused, and reported so

	mu       sync.Mutex // guards following
	pools    map[poolKey]*dbPool
	resumeCh chan struct{}         // closed while not paused
	dbc      map[string]*dbControl // the console's commands per database (control.go)
	// Limits on servers across pools: per database (max_db_connections)
	// and per backend user (max_user_connections); under limitsMu.
	limitsMu             sync.Mutex
	dbLimits, userLimits map[string]*pool.Limit
	sessions             map[*session]struct{} // every open client connection
	byPID                map[uint32]*session   // logged-in sessions, by the process id of their BackendKeyData
	lns                  []net.Listener
	closed               bool

	loops   []*parker // the event loops; a session keeps the one it is given at accept
	started time.Time
	wg      sync.WaitGroup // one per session goroutine
	doneCh  chan struct{}  // closed when Shutdown has finished
}

// New returns a Server; call Serve to accept connections.
func New(opts Options) *Server {
	opts.defaults()
	s := &Server{
		log:        opts.Logger.Named("proxy"),
		pools:      make(map[poolKey]*dbPool),
		sessions:   make(map[*session]struct{}),
		byPID:      make(map[uint32]*session),
		dbc:        make(map[string]*dbControl),
		dbLimits:   make(map[string]*pool.Limit),
		userLimits: make(map[string]*pool.Limit),
		doneCh:     make(chan struct{}),
		resumeCh:   make(chan struct{}),
		started:    time.Now(),
		peerID:     opts.PeerID,
		peering:    opts.PeerID > 0 || opts.PeerAddrs != nil,
	}
	n := opts.Loops
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	for range n {
		s.loops = append(s.loops, newParker(s))
	}
	go s.sweep()
	close(s.resumeCh) // not paused
	s.opts.Store(&opts)
	s.metrics = newMetrics(opts.Registerer, s)
	s.refusalLog.every = time.Second
	rand.Read(s.mockNonce[:])
	return s
}

// options returns the options in force; they change only as a whole.
func (s *Server) options() *Options { return s.opts.Load() }

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts connections on ln until Shutdown. It always returns an error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.draining.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors or the like: back off, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Error("accept", zap.Error(err), zap.Duration("retry_in", delay))
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		// No SetNoDelay or SetKeepAlive: a TCP listener's Accept has set
		// both (keepalive at Go's 15 s unless its ListenConfig says
		// otherwise), and each is a system call a login.
		if s.prelogin.Add(1) > int64(preloginFactor*s.options().MaxClientConn) {
			s.prelogin.Add(-1)
			c.Close() // a flood of sockets that have not spoken
			continue
		}
		s.clients.Add(1)
		s.wg.Add(1) // all three undone when the session closes (see serveAndClose)
		go newSession(s, c).run()
	}
}

// preloginFactor bounds the sockets that have not sent a startup packet, as
// a multiple of max_client_conn: bounded apart, so that silent sockets never
// lock out clients that log in; beyond it new sockets are closed at once.
const preloginFactor = 4

// startupSilence is how long a new socket may stay silent before it is
// closed (client_login_timeout bounds the whole login, if shorter).
const startupSilence = 5 * time.Second

// ListenAndServe listens on addr and serves.
func (s *Server) ListenAndServe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// ClientCount returns the number of client connections open.
func (s *Server) ClientCount() int { return int(s.clients.Load()) }

// Shutdown stops accepting, closes idle clients at once and the others as
// soon as their transaction ends, and when ctx ends closes what is left.
// It returns when every session and pool is closed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.doneCh
		return nil
	}
	s.closed = true
	s.draining.Store(true)
	for _, ln := range s.lns {
		ln.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	s.log.Info("shutting down", zap.Int("clients", len(sessions)))
	for _, ss := range sessions {
		ss.drain()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for ss := range s.sessions {
			ss.kill()
		}
		s.mu.Unlock()
		<-done
	}
	s.mu.Lock()
	for _, p := range s.pools {
		p.pool.Load().Close()
		p.listen.shutdown()
	}
	s.mu.Unlock()
	close(s.doneCh)
	return err
}

// add tracks a new session; it reports false when the server is shutting down.
func (s *Server) add(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions[ss] = struct{}{}
	return !s.closed
}

// register gives a logged-in session its BackendKeyData: in session mode
// its server's own (sc), so that pg_backend_pid() and pg_terminate_backend
// reach what the client was told, unless another session has that process
// id already (a second database server); else one of pgmux's, above any
// process id Linux gives (pid_max is at most 2^22).
func (s *Server) register(ss *session, sc *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// In session mode the client is given its server's key, unless the key
	// must carry the peer id.
	if sc != nil && sc.pid != 0 && len(sc.key) == 4 && s.peerID == 0 {
		if _, used := s.byPID[sc.pid]; !used {
			ss.pid, ss.secret = sc.pid, binary.BigEndian.Uint32(sc.key)
			s.byPID[sc.pid] = ss
			return
		}
	}
	var b [8]byte
	for {
		rand.Read(b[:])
		pid := 1<<22 + binary.BigEndian.Uint32(b[:4])%(1<<31-1<<22) // below 2^31: some clients read it as int32
		secret := binary.BigEndian.Uint32(b[4:])
		if s.peerID > 0 {
			pid, secret = peerKey(b, s.peerID)
		} else if s.peering {
			secret |= cancelTTL
		}
		if _, used := s.byPID[pid]; used {
			continue
		}
		ss.pid, ss.secret = pid, secret
		s.byPID[pid] = ss
		return
	}
}

// remove forgets a session that has ended.
func (s *Server) remove(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	if ss.pid != 0 && s.byPID[ss.pid] == ss {
		delete(s.byPID, ss.pid)
	}
	s.mu.Unlock()
}

// cancel forwards a client's CancelRequest to the backend that the session
// it names holds at this moment, if any. A wrong key is ignored, as
// PostgreSQL does.
func (s *Server) cancel(pid uint32, key []byte) {
	sent := key
	if s.peering && len(key) == 4 {
		if peer := keyPeer(pid); s.peerID > 0 && peer != s.peerID {
			if _, known := s.options().Peers[peer]; known || s.options().PeerAddrs == nil {
				s.forwardCancel(peer, pid, key)
				return
			}
		}
		// Ours, with whatever hops it has left: ours carry them all.
		key = []byte{key[0], key[1], key[2], key[3] | cancelTTL}
	}
	s.mu.Lock()
	ss := s.byPID[pid]
	s.mu.Unlock()
	if ss == nil && len(key) == 4 && s.options().PeerAddrs != nil {
		s.broadcastCancel(pid, sent)
		return
	}
	if ss == nil || len(key) != 4 {
		return
	}
	var want [4]byte
	binary.BigEndian.PutUint32(want[:], ss.secret)
	if subtle.ConstantTimeCompare(want[:], key) != 1 {
		return
	}
	if sc := ss.holdForCancel(); sc != nil {
		s.sendCancel(sc)
	}
}

// sendCancel sends a cancel to sc, counted against it by holdForCancel.
func (s *Server) sendCancel(sc *serverConn) {
	defer sc.cancelDone()
	if err := sc.cancel(s.connectTimeout()); err != nil {
		s.log.Warn("forward cancel", zap.Uint32("server_pid", sc.pid), zap.Error(err))
	}
}

// Prepared returns the prepared-statement mapping's counters.
func (s *Server) Prepared() stats.Prepared {
	out := s.ps.Snapshot()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pools {
		out.Add(p.ps.Snapshot())
	}
	return out
}
