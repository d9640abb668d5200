package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/pool"
	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/rawio"
	"github.com/pgmux/pgmux/stats"
)

// A session is one client connection. Its life:
//
//	startup --StartupMessage--> auth --password ok--> idle
//	idle    --first message of a transaction--> waiting --lease--> active
//	active  --ReadyForQuery 'I', no request outstanding--> idle  (server released; transaction mode)
//	active  --ReadyForQuery 'T'/'E'--> active                     (server kept)
//	any     --Terminate, EOF, error, shutdown--> closed
//
// In session mode the session is active from login to close.
//
// On the portable driver a second goroutine, relayServer, reads the server
// and writes the client for as long as the session holds a server, so that
// the client is read (for a hang-up, COPY data, a pipeline) while the server
// answers, and the server may speak while the client is idle (session mode).
// The relay loop (loop.go) serves common transactions without either.
//
// While relayServer runs the two goroutines agree on when the server may go
// back to the pool through the fields under mu: the server is released only
// by relayServer, only at a ReadyForQuery 'I' when every Sync and Query sent
// has been answered, no extended-protocol sequence is open (mid) and no client
// message is being written (writing). Each side updates those fields before it
// does the I/O they announce, and never does I/O while holding mu.
type session struct {
	srv       *Server
	loop      *parker // the event loop the session was given at accept
	id        uint64
	conn      net.Conn
	sock      io.ReadWriter // conn's reads and writes (see rawio.Conn)
	sockOut   io.Writer     // sock, converted once: bw is reset to it at each transaction
	rd        *protocol.Reader
	bw        *bufio.Writer // to the client, from writerPool; owned by relayServer while it runs
	counted   bool          // past its startup packet: counted in loggedIn, not prelogin
	tls       bool          // the client speaks TLS (conn and sock are the TLS connection)
	start     int64         // Unix nanoseconds
	ctx       context.Context
	cancelCtx context.CancelFunc

	// Set at login, read-only after.
	pid, secret uint32
	dbName      string
	user        string
	pool        *dbPool
	mode        string
	// The protocol state: Want is touched by relayServer (ParameterStatus)
	// and by bind, never both at once; Acct and PS under mu. psBuf belongs
	// to the session goroutine.
	core.Session
	psBuf []byte

	mu            sync.Mutex // guards following
	cond          sync.Cond  // on mu: signals writing went false
	lease         *pool.Lease[*serverConn]
	readerDone    chan struct{} // closed when the current relayServer exits; nil while the lease has none
	writing       bool          // the session goroutine is writing a client message to the server
	readingBack   bool          // relayServer reads the client's settings back (readBackLocked)
	readerWaiting bool
	stopping      bool // the session is ending; relayServer must exit on its next error
	serverDead    bool // relayServer found the server gone and told the client
	draining      bool
	drainAt       time.Time // when draining, close the client once clean and past this
	deadline      time.Time // the client read deadline armed
	parkReq       bool      // the sweep asked the session to park (see tryPark)
	waitStop      func()    // stops the goroutine path's wait for a server (a cancel)

	lis *listening // LISTEN through the pool (listen.go); set under mu at the client's first
	tr  *txTrace   // the open transaction's trace notes (trace.go), under mu; nil with tracing off
	// Read/write routing (route.go), under mu: the pool the open
	// transaction's server comes from (nil: pool), and when the client's
	// last transaction on the primary ended (Unix ns).
	txPool  *dbPool
	wroteAt int64
	dbc     *dbControl // its database's PAUSE and the like (control.go); set at login

	// Parking (see park.go).
	activity  atomic.Uint32 // bumped at each transaction's start
	sweepSeen uint32        // the sweep's: activity when it last looked
	parkToken uint64        // under the parker's mu: the key while parked, 0 if not
	inLoop    atomic.Bool   // the session is in the loop (see loop.go)
	lc        *loopState    // made when it first enters the loop; the loop's while it is there

	// Where the session is (core.Phase), for the drivers and reports; and
	// timing of what is under way.
	phase        atomic.Int32
	waitingSince atomic.Int64           // unix nanoseconds; 0 when not waiting
	statsPool    atomic.Pointer[dbPool] // pool, for reports read from other goroutines
	appName      string
}

// now is the time the session's statistics read, in Unix nanoseconds: in
// the relay loop the time of the loop's wake-up, which every event that
// wake-up serves shares (as PgBouncer's statistics use the time of its
// event loop's turn; one clock read a wake-up, not four a transaction);
// else the clock's.
func (ss *session) now() int64 {
	if ss.inLoop.Load() {
		return ss.loop.now
	}
	return time.Now().UnixNano()
}

// paused reports whether PAUSE (or KILL, SUSPEND) holds the session's
// next transaction back: the server's, or its database's.
func (ss *session) paused() bool {
	return ss.srv.paused.Load() || ss.dbc != nil && ss.dbc.paused.Load()
}

// poolNow is pool.Now, read once a wake-up in the loop (see parker.tick).
func (ss *session) poolNow() time.Duration {
	if ss.inLoop.Load() {
		return ss.loop.mono
	}
	return pool.Now()
}

// getPhase is where the session is.
func (ss *session) getPhase() core.Phase { return core.Phase(ss.phase.Load()) }

// setPhase moves the session to next, and the pool's client gauges with it
// when what reports show changes.
func (ss *session) setPhase(next core.Phase) {
	if ss.phase.Load() == int32(next) {
		return // no locked swap for a phase that stays
	}
	prev := core.Phase(ss.phase.Swap(int32(next)))
	if next == core.PhaseActive {
		ss.activity.Add(1) // seen by the parking sweep
	}
	if ss.pool == nil {
		return
	}
	if from, to := ss.pool.clientGauges[prev], ss.pool.clientGauges[next]; from != to {
		if from != nil {
			from.Add(-1)
		}
		if to != nil {
			to.Add(1)
		}
	}
}

// snapshot reports the session.
func (ss *session) snapshot() stats.Client {
	c := stats.Client{ID: ss.id, Addr: ss.conn.RemoteAddr().String(), LocalAddr: ss.conn.LocalAddr().String(), ConnectTime: time.Unix(0, ss.start),
		State: ss.getPhase().Report().String(), TLS: tlsInfo(ss.conn)}
	_, c.FD = rawio.Of(ss.sock)
	if t := ss.waitingSince.Load(); t != 0 {
		c.WaitingSince = time.Unix(0, t)
	}
	if ss.getPhase() != core.PhaseLogin {
		c.Database, c.User, c.ApplicationName = ss.dbName, ss.user, ss.appName
	}
	ss.mu.Lock()
	if ss.lease != nil {
		sc := ss.lease.Conn()
		c.ServerPID = sc.pid
		if sc.times.txStart != 0 {
			c.RequestTime = time.Unix(0, sc.times.txStart)
		}
	}
	c.Pinned = ss.Pinned
	c.Prepared = ss.PS.Count()
	ss.mu.Unlock()
	return c
}

func newSession(srv *Server, c net.Conn) *session {
	sock := rawio.New(c)
	ss := &session{
		srv:     srv,
		conn:    c,
		sock:    sock,
		sockOut: sock,
		rd:      protocol.NewReader(sock, 4096, srv.options().MaxPacketSize),
		start:   time.Now().UnixNano(),
	}
	ss.cond.L = &ss.mu
	ss.PS.Counters = &srv.ps
	ss.ctx, ss.cancelCtx = context.WithCancel(context.Background())
	ss.id = srv.nextID.Add(1)
	ss.loop = srv.loops[ss.id%uint64(len(srv.loops))]
	return ss
}

// logger returns the session's logger. It is built when something is to be
// logged, which is rare, rather than kept: a logger with fields costs an idle
// session more than the rest of its state.
func (ss *session) logger() *zap.Logger {
	return ss.srv.log.With(zap.Uint64("conn_id", ss.id), zap.String("client_addr", ss.conn.RemoteAddr().String()),
		zap.String("database", ss.dbName), zap.String("user", ss.user))
}

// debug logs at debug level, building the session's logger only if that
// level is on: every login and logout logs at it, and building the logger
// was about 5% of pgmux's CPU under pgbench -C.
func (ss *session) debug(msg string, fields ...zap.Field) {
	if ss.srv.log.Core().Enabled(zap.DebugLevel) {
		ss.logger().Debug(msg, fields...)
	}
}

// writerPool holds the client write buffers of sessions that are idle.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}

// writer returns the session's client writer, taking one from the pool.
func (ss *session) writer() *bufio.Writer {
	if ss.bw == nil {
		if ss.inLoop.Load() {
			ss.bw = ss.loop.getWriter()
		} else {
			ss.bw = writerPool.Get().(*bufio.Writer)
		}
		ss.bw.Reset(ss.sockOut)
	}
	return ss.bw
}

// putWriter gives an empty client writer back to the pool (the loop's own,
// for a session in the loop).
func (ss *session) putWriter() {
	if ss.bw != nil && ss.bw.Buffered() == 0 {
		ss.bw.Reset(nil)
		if ss.inLoop.Load() {
			ss.loop.putWriter(ss.bw)
		} else {
			writerPool.Put(ss.bw)
		}
		ss.bw = nil
	}
}

// errQuiet ends a session without an error message to the client.
var errQuiet = errors.New("session ended")

func (ss *session) run() {
	growStack()
	if !ss.srv.add(ss) {
		// Accepted as Shutdown began: served like the others, then closed.
		ss.draining, ss.drainAt = true, time.Now().Add(drainIdleGrace)
	}
	ss.serveAndClose(ss.login())
}

// growStack grows the calling goroutine's stack, which starts at 2 KiB while
// the collector (rarely run: the relay allocates nothing) has not learnt
// otherwise, to the 8 KiB a login reaches, while it holds two small frames.
// Grown during the login instead, twice, each copy looked every frame up in
// the functions' tables, login's own long: make profile counted 164
// user-space instructions more a -S transaction (runtime.step, pcvalue),
// its 20 clients logging in once for 200 transactions each.
//
//go:noinline
func growStack() byte {
	var b [6 << 10]byte
	return b[stackIndex]
}

// stackIndex is 0, read at run time so that growStack keeps its frame.
var stackIndex int

// serveAndClose serves the client after a successful login (err nil) until it
// leaves or is parked; then it closes the session, unless parked.
func (ss *session) serveAndClose(err error) {
	if err == nil {
		err = ss.serve()
	}
	if err == errParked {
		return // another goroutine may own the session already
	}
	ss.finish(err)
	ss.conn.Close()
	ss.cancelCtx()
	ss.srv.clients.Add(-1)
	if ss.counted {
		ss.srv.loggedIn.Add(-1)
	} else {
		ss.srv.prelogin.Add(-1)
	}
	ss.srv.wg.Done()
}

// errParked ends a session goroutine whose session was parked.
var errParked = errors.New("session parked")

// clientReadError turns an error reading the client into what the client
// is told, if anything.
func clientReadError(err error, timeoutName string) error {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return errQuiet
	case errors.As(err, &ne) && ne.Timeout():
		return protocol.Fatal(protocol.CodeProtocolViolation, timeoutName)
	case errors.Is(err, protocol.ErrStartupMalformed):
		return protocol.Fatal(protocol.CodeProtocolViolation, "invalid startup packet: "+err.Error())
	case errors.Is(err, protocol.ErrMessageTooLarge), errors.Is(err, protocol.ErrMessageMalformed):
		return protocol.Fatal(protocol.CodeProtocolViolation, "invalid message: "+err.Error())
	}
	return errQuiet
}

// take takes a server from from's pool as it is, waiting at most
// query_wait_timeout; a pool that a reload replaced meanwhile is tried
// again.
func (ss *session) take(ctx context.Context, from *dbPool) (*pool.Lease[*serverConn], error) {
	for {
		pl := from.pool.Load()
		lease, err := pl.AcquireWithin(ctx, ss.srv.options().QueryWaitTimeout)
		if errors.Is(err, pool.ErrClosed) && from.pool.Load() != pl {
			continue
		}
		if err != nil {
			return nil, ss.acquireError(err)
		}
		return lease, nil
	}
}

// granted is core.Granted for a server lease has just given the session,
// after a wait of waited; both drivers ask it.
func (ss *session) granted(lease *pool.Lease[*serverConn], waited time.Duration) core.Grant {
	sc, maxPrepared := lease.Conn(), 0
	o := ss.srv.options()
	if ss.Mapping {
		maxPrepared = o.MaxPreparedStatements
	}
	var checkAfter time.Duration
	if o.ServerCheckQuery != "" {
		checkAfter = max(o.ServerCheckDelay, core.AliveCheckAfter)
	}
	g := core.Granted(lease.IdleDurationAt(ss.poolNow()), waited, sc.Settings.InSync(&ss.Want), sc.Prepared.Len(), maxPrepared, checkAfter)
	// A database that fails over looks at every server it lends: one
	// whose host has just gone must not take a client's next transaction.
	g.CheckAlive = g.CheckAlive || sc.owner != nil && sc.owner.hosts != nil
	return g
}

// errServerConnect is the client's error when no server could be reached;
// where and why is in the log, not told to clients.
var errServerConnect = protocol.Fatal(protocol.CodeConnectionFailure, "server connection failed")

// errPoolClosed is the client's error when pgmux shuts its pools.
var errPoolClosed = protocol.Fatal(protocol.CodeAdminShutdown, "pgmux is shutting down")

func (ss *session) acquireError(err error) error {
	var pgErr *protocol.PgError
	switch {
	case errors.Is(err, pool.ErrClosed):
		return errPoolClosed
	case ss.ctx.Err() != nil, errors.Is(err, context.Canceled): // the client left, or a cancel stopped the wait
		return errQuiet
	case errors.As(err, &pgErr):
		ss.logger().Warn("server login failed", zap.Error(err))
		return &protocol.PgError{Severity: "FATAL", Code: pgErr.Code, Message: "server login failed: " + pgErr.Message}
	case errors.Is(err, pool.ErrWaitTimeout):
		return protocol.Fatal(protocol.CodeTooManyConnections, fmt.Sprintf(
			"query_wait_timeout: no server connection available within %s", ss.srv.options().QueryWaitTimeout))
	case errors.Is(err, context.DeadlineExceeded):
		ss.logger().Warn("server connect timed out", zap.Error(err))
		return protocol.Fatal(protocol.CodeConnectionFailure, fmt.Sprintf(
			"server_connect_timeout: no answer from the server within %s", ss.srv.options().ServerConnectTimeout))
	}
	ss.logger().Warn("server connect failed", zap.Error(err))
	return errServerConnect
}

// bind leases a server, brings its settings to the client's, and starts
// relaying its output to the client. It is called with ss.mu held, and
// releases it.
func (ss *session) bind() error {
	ss.dropParkReqLocked()
	adm := ss.Admit(ss.paused())
	if adm == core.Cancelled { // while the loop queued it
		ss.mu.Unlock()
		return errCancelledWait
	}
	ctx, stop := context.WithCancel(ss.ctx) // stopped by a cancel (holdForCancel)
	defer stop()
	ss.waitStop = stop
	ss.mu.Unlock()
	if prev := ss.readerDone; prev != nil {
		<-prev // the last relayServer may still be flushing to the client
	}
	ss.setPhase(core.PhaseWaiting)
	var lease *pool.Lease[*serverConn]
	var err error
	if adm == core.AwaitResume {
		err = ss.srv.waitResumed(ctx, ss.dbc)
	}
	if err == nil {
		lease, err = ss.acquireSynced(ctx)
	}
	ss.mu.Lock()
	ss.waitStop = nil
	if ss.Admit(false) == core.Cancelled {
		err = errCancelledWait
		if lease != nil {
			releaseLease(lease)
		}
	}
	ss.mu.Unlock()
	if err != nil {
		ss.setPhase(core.PhaseIdle)
		if ss.ctx.Err() != nil {
			return errQuiet
		}
		return err
	}
	ss.attach(lease)
	ss.goRelay(lease.Conn())
	return nil
}

// acquireSynced leases a server and makes sure of it as core.Grant says,
// waiting at most query_wait_timeout for each try; another is taken for a
// server found dead or broken. A client that hung up while it waited gives
// the server straight back (its first message, already read, goes
// nowhere), so that a crowd of clients that left does not keep the others
// waiting.
func (ss *session) acquireSynced(ctx context.Context) (*pool.Lease[*serverConn], error) {
	start := time.Now()
	ss.waitingSince.Store(start.UnixNano())
	defer ss.waitingSince.Store(0)
	from := ss.acquireFrom()
	for tries, broken := 0, 0; ; tries++ {
		lease, err := ss.take(ctx, from)
		if err != nil {
			return nil, err
		}
		if tries == 0 {
			ss.waited(start.UnixNano(), time.Now().UnixNano())
		}
		sc, g := lease.Conn(), ss.granted(lease, time.Since(start))
		step, ok := core.GrantDone, true
		for ok {
			switch step = g.Next(); step {
			case core.GrantDone:
				return lease, nil
			case core.LookAlive:
				ok = sc.alive()
			case core.RunCheckQuery:
				ok = sc.check(ss.srv.options().ServerCheckQuery)
			case core.LookHangup:
				if peerClosed(ss.conn) {
					releaseLease(lease)
					return nil, errQuiet
				}
			case core.TrimStatements:
				err = ss.trimPrepared(sc, ss.srv.options().MaxPreparedStatements)
				ok = err == nil
			case core.SyncSettings:
				switch sc.syncSettings(&ss.Sync, &ss.Want) {
				case core.SyncRefused:
					releaseLease(lease)
					return nil, ss.Sync.Refusal() // the client asked for a setting the server refuses
				case core.SyncBroken:
					ok = false
				}
			}
		}
		destroyLease(lease)
		if step == core.TrimStatements || step == core.SyncSettings {
			if broken++; broken == 3 {
				ss.logger().Warn("server broken at grant, three times", zap.Error(err))
				return nil, errServerConnect
			}
		}
	}
}

// attach makes lease the session's server.
func (ss *session) attach(lease *pool.Lease[*serverConn]) {
	lease.Conn().leased.Store(true)
	ss.writer()
	ss.mu.Lock()
	ss.lease, ss.readerDone, ss.Acct = lease, nil, core.Account{}
	ss.Attached()
	t := &lease.Conn().times // its last client's, if any, are counted
	t.txStart, t.head, t.n, t.bytesIn, t.bytesOut = 0, 0, 0, 0, 0
	ss.PS.Attach()
	ss.armDeadlineLocked()
	ss.mu.Unlock()
	ss.setPhase(core.PhaseActive)
}

// holdForCancel does what a CancelRequest for the session does
// (core.CancelFor). It returns the server the session holds, if the cancel
// is for it, with the cancel counted against it so that it is not released
// to another client before the cancel has been delivered; the caller calls
// sc.cancelDone. A request waiting for a server is stopped instead.
func (ss *session) holdForCancel() *serverConn {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	switch ss.Cancel(ss.lease != nil) {
	case core.CancelForwarded:
		sc := ss.lease.Conn()
		sc.cancels.Add(1)
		sc.cancelling.Add(1)
		return sc
	case core.CancelWaiting:
		if ss.waitStop != nil {
			ss.waitStop()
		}
		ss.wake() // out of the loop's wait, if it waits there
	}
	return nil
}

// cancelSent forwards a cancel that came as the session's wait for a
// server ended, now that its request has reached the server.
func (ss *session) cancelSent() {
	if sc := ss.holdForCancel(); sc != nil {
		go ss.srv.sendCancel(sc)
	}
}

// errCancelledWait ends bind when a cancel stopped the session's wait for a
// server: its request is answered as cancelled (see cancelledWait).
var errCancelledWait = errors.New("request cancelled while waiting for a server")

// pastDeadline is a read deadline that has passed: setting it wakes a reader.
var pastDeadline = time.Unix(1, 0)

// armDeadlineLocked sets the client read deadline that the session's state
// calls for: idle and idle-in-transaction timeouts, or now when draining.
func (ss *session) armDeadlineLocked() {
	o := ss.srv.options()
	var d time.Time
	// Asked only when some timeout may apply: without one, no walk to the
	// server through the lease at each statement of a transaction.
	if ss.draining || o.ClientIdleTimeout > 0 || o.IdleTransactionTimeout > 0 {
		switch core.Waiting(ss.waitStateLocked()) {
		case core.WaitDrain:
			d = ss.drainAt
		case core.WaitIdle:
			d = time.Now().Add(o.ClientIdleTimeout)
		case core.WaitIdleInTx:
			d = time.Now().Add(o.IdleTransactionTimeout)
		}
	}
	if d != ss.deadline && !d.Equal(ss.deadline) { // != first: inlined, and both zero at each statement without timeouts
		ss.conn.SetReadDeadline(d)
		ss.deadline = d
	}
}

// expireQuery closes the session's server if its answer to the oldest
// request outstanding is later than limit (query_timeout): whoever reads
// the server finds it gone and tells the client (serverFailed), as
// PgBouncer's query_timeout does, and the backend is sent a cancel so that
// the query stops now rather than at its next write. The server is shut
// down under mu, so never after it has gone back to the pool.
func (ss *session) expireQuery(now int64, limit time.Duration) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.lease == nil {
		return
	}
	sc := ss.lease.Conn()
	if sent := sc.times.oldest(); sent == 0 || now-sent <= int64(limit) {
		return
	}
	if !sc.timedOut.CompareAndSwap(false, true) {
		return
	}
	if sc.sys != nil {
		sc.sys.Shutdown()
	} else {
		sc.conn.SetReadDeadline(pastDeadline) // a TLS server: its reader wakes to a timeout
	}
	go func() {
		if err := sc.cancel(ss.srv.connectTimeout()); err != nil {
			ss.logger().Warn("query_timeout: cancel", zap.Uint32("server_pid", sc.pid), zap.Error(err))
		}
	}()
}

// drain asks the session to end at its next transaction boundary.
func (ss *session) drain() {
	ss.mu.Lock()
	ss.draining, ss.drainAt = true, time.Now().Add(drainIdleGrace)
	ss.armDeadlineLocked()
	ss.mu.Unlock()
	ss.wake()
}

// drainIdleGrace is how long a client idle when the drain begins may still
// start a transaction before it is closed. A client that has just connected
// (a connection per transaction, as pgbench -C) is served; a client whose
// transaction ends during the drain is closed at once.
const drainIdleGrace = 250 * time.Millisecond

// kill ends the session now, whatever it is doing.
func (ss *session) kill() {
	ss.cancelCtx()
	ss.hangUp()
	ss.wake()
}

// hangUp ends the client's connection under whoever serves the session: its
// reads see EOF and its writes fail. The descriptor itself is closed only
// when the session ends (serveAndClose), so that the relay loop never reads
// or writes a number the kernel has since given to another connection (see
// rawio.Conn), nor takes a newcomer's out of its epoll set.
func (ss *session) hangUp() {
	if s, _ := rawio.Of(ss.sock); s != nil {
		s.Shutdown()
		return
	}
	ss.conn.Close()
}

// timeoutError says which timeout fired when a client read timed out, or nil
// when the deadline has since moved and the read should go on.
func (ss *session) timeoutError() error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.deadline.IsZero() || time.Now().Before(ss.deadline) {
		return nil
	}
	return core.Expired(ss.waitStateLocked())
}

// waitStateLocked is what decides the session's client timeout.
func (ss *session) waitStateLocked() core.WaitState {
	o := ss.srv.options()
	w := core.WaitState{Draining: ss.draining, Held: ss.lease != nil, Session: !ss.Pooled, // session mode, or pinned (core.Session.Pinned)
		Quiet: ss.Acct.Quiet(), TxStatus: 'I', IdleTimeout: o.ClientIdleTimeout > 0, TxTimeout: o.IdleTransactionTimeout > 0}
	if w.Held {
		w.TxStatus = ss.lease.Conn().TxStatus
	}
	return w
}
