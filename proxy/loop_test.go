//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/rawio"
)

// TestLoopSlowReader: a client that does not read a large answer for a while
// gets all of it, in order, and the others are served meanwhile: the loop
// keeps what the client's socket does not take and hands the slow one to a
// goroutine rather than wait for it. Afterwards the slow client is served
// again as usual. Run with the loop's sends made through io_uring (where the
// kernel allows it) and with one system call each.
func TestLoopSlowReader(t *testing.T) { withAndWithoutRing(t, testLoopSlowReader) }

// withAndWithoutRing runs test with the loop's sends and reads batched
// through io_uring (where the kernel allows it; see rawio.Ring), and with one
// system call each.
func withAndWithoutRing(t *testing.T, test func(t *testing.T, uring bool)) {
	t.Run("io_uring", func(t *testing.T) { test(t, true) })
	t.Run("syscalls", func(t *testing.T) { test(t, false) })
}

func testLoopSlowReader(t *testing.T, uring bool) {
	p := startProxy(t, func(o *Options, db *Database) {
		db.PoolSize = 2
		o.NoIOURing = !uring
	})
	slow, other := loggedIn(t, p), loggedIn(t, p)
	// Both servers' settings brought in line with the clients' (the same):
	// a server's first use runs on the goroutine path, the next ones in the
	// loop.
	runSteps(t, []clientStep{{slow, "SELECT 1"}, {other, "BEGIN"}, {slow, "SELECT 1"}, {other, "COMMIT"}})

	// About 20 MB, with a small receive buffer: more than the sockets hold.
	slow.Conn.(*net.TCPConn).SetReadBuffer(32 << 10)
	const rows = 20000
	slow.sendAll(t, &pgproto3.Query{String: "SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g"})
	// While the slow client reads nothing, the other is served, many times.
	for i := range 50 {
		if err := other.query("SELECT " + strconv.Itoa(i)); err != nil {
			t.Fatalf("other client while the slow one stalls, query %d: %v", i, err)
		}
	}
	time.Sleep(200 * time.Millisecond)

	next := 1
	for {
		msg, err := slow.fe.Receive()
		if err != nil {
			t.Fatalf("after %d rows: %v", next-1, err)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if got := string(m.Values[0]); got != strconv.Itoa(next) || len(m.Values[1]) != 1000 {
				t.Fatalf("row %d: got %q and %d bytes", next, got, len(m.Values[1]))
			}
			next++
		case *pgproto3.ErrorResponse:
			t.Fatalf("error after %d rows: %s", next-1, m.Message)
		}
	}
	if next-1 != rows {
		t.Fatalf("%d rows, want %d", next-1, rows)
	}
	if err := slow.query("SELECT 1"); err != nil {
		t.Fatalf("the slow client afterwards: %v", err)
	}
	if p.options().RelayLoop && p.loopEjects() == 0 {
		t.Fatal("the slow client was never handed to a goroutine")
	}
	for _, l := range p.loops {
		if l.start() && (l.sendq.ring != nil) != uring && ioRingOK() {
			t.Fatalf("io_uring wanted %v, ring made %v", uring, l.sendq.ring != nil)
		}
	}
}

// ioRingOK reports whether this machine's kernel gives the loop a ring.
func ioRingOK() bool {
	r, err := rawio.NewRing()
	if err != nil {
		return false
	}
	r.Close()
	return true
}

// TestQueuedClientHangsUp: a client that sends a query and hangs up while it
// is queued for a server is dropped; its query is not run when a server comes
// free, and the server serves the next client. (In the loop the hang-up is
// seen as an event on the client's socket, not looked for on every hand-over.)
func TestQueuedClientHangsUp(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1 })
	ctx := context.Background()
	direct, err := pgx.Connect(ctx, cluster.SuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	if _, err := direct.Exec(ctx, "DROP TABLE IF EXISTS queued_hangup; CREATE TABLE queued_hangup (i int)"); err != nil {
		t.Fatal(err)
	}
	holder, gone := loggedIn(t, p), loggedIn(t, p)
	// The only server warmed for both (same settings), then held.
	for _, c := range []*rawClient{holder, gone, holder} {
		if err := c.query("SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := holder.query("BEGIN"); err != nil {
		t.Fatal(err)
	}
	gone.sendAll(t, &pgproto3.Query{String: "INSERT INTO queued_hangup VALUES (1)"})
	waitFor(t, 2*time.Second, func() bool { ps := p.Pools(); return len(ps) == 1 && ps[0].ClientsWaiting == 1 })
	gone.Close()
	time.Sleep(core.HangupCheckAfter + 100*time.Millisecond)
	if err := holder.query("COMMIT"); err != nil {
		t.Fatal(err)
	}
	// Queued behind the hung-up client's query, if that were run.
	if err := holder.query("SELECT 1"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM queued_hangup").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("the query of a client that hung up while queued was run (%d rows)", n)
	}
	waitFor(t, 2*time.Second, func() bool { return p.ClientCount() == 1 })
}

// TestReleaseWaitsForCancelElsewhere: a server whose client has a cancel on
// its way to the postmaster goes back to the pool only once the cancel is
// delivered, and the wait holds up no one else: in the loop, other clients
// are served meanwhile.
func TestReleaseWaitsForCancelElsewhere(t *testing.T) {
	p, a, b := twoClients(t, 2)
	// Both servers' settings brought in line: their next uses are the loop's.
	runSteps(t, []clientStep{{a, "BEGIN"}, {b, "SELECT 1"}, {a, "COMMIT"}})

	for _, c := range []*rawClient{a, b} {
		waitFor(t, 2*time.Second, func() bool {
			if !p.options().RelayLoop || p.sessionOf(c).inLoop.Load() {
				return true
			}
			if err := c.query("SELECT 1"); err != nil { // ended on the goroutine path; again
				t.Fatal(err)
			}
			return false
		})
	}

	a.sendAll(t, &pgproto3.Query{String: "SELECT pg_sleep(0.3)"})
	var held *serverConn
	waitFor(t, 2*time.Second, func() bool {
		held = p.sessionOf(a).holdForCancel() // as a cancel request on its way
		return held != nil
	})
	delivered := false
	defer func() {
		if !delivered {
			held.cancelDone() // after a failure, so that the proxy can shut down
		}
	}()
	if err := a.untilReady(); err != nil {
		t.Fatal(err)
	}
	b.SetDeadline(time.Now().Add(3 * time.Second))
	for i := 0; i < 5; i++ {
		if err := b.query("SELECT 1"); err != nil {
			t.Fatalf("another client while a cancel is on its way: %v", err)
		}
	}
	// On the goroutine path b sees ReadyForQuery just before its server is
	// back in the pool: wait for that, then the held one is the only one out.
	waitFor(t, 2*time.Second, func() bool { return p.Pools()[0].ServersActive <= 1 })
	if ps := p.Pools(); ps[0].ServersActive != 1 {
		t.Fatalf("%d servers out of the pool while the cancel is on its way, want 1 (the one it is meant for)", ps[0].ServersActive)
	}
	held.cancelDone()
	delivered = true
	waitFor(t, 2*time.Second, func() bool { return p.Pools()[0].ServersActive == 0 })
	b.SetDeadline(time.Now().Add(10 * time.Second))
	for _, c := range []*rawClient{a, b} {
		if err := c.query("SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
}

// twoClients starts a proxy with a pool of poolSize and logs two raw clients
// in through it, with the same settings.
func twoClients(t *testing.T, poolSize int) (*testProxy, *rawClient, *rawClient) {
	t.Helper()
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = poolSize })
	return p, loggedIn(t, p), loggedIn(t, p)
}

// startLoopProxy is startProxy with the defaults, for a test of the relay
// loop: skipped when the run has the loop off.
func startLoopProxy(t *testing.T) *testProxy {
	t.Helper()
	p := startProxy(t, nil)
	if !p.options().RelayLoop {
		t.Skip("relay_loop is off")
	}
	return p
}

// TestLoopReadBufferPerTransaction: in the loop a client's read buffer is
// taken from the pool once for a transaction of several statements, not at
// each, and given back when the transaction ends: an idle client holds none.
func TestLoopReadBufferPerTransaction(t *testing.T) {
	p := startLoopProxy(t)
	c := loggedIn(t, p)
	p.loopServes(t, c)
	ss := p.sessionOf(c)
	holding := func() bool {
		// The loop gives the buffer back before it ends its turn under
		// the lock, and sends the answer after: the client has it.
		ss.loop.mu.Lock()
		defer ss.loop.mu.Unlock()
		if !ss.inLoop.Load() {
			t.Fatal("the session left the loop")
		}
		return ss.rd.Holding()
	}
	if holding() {
		t.Fatal("an idle client holds a read buffer")
	}
	for _, q := range []string{"BEGIN", "SELECT 1", "SELECT 2"} {
		if err := c.query(q); err != nil {
			t.Fatal(err)
		}
		if !holding() {
			t.Fatalf("after %q, in a transaction, the read buffer went back to the pool", q)
		}
	}
	if err := c.query("COMMIT"); err != nil {
		t.Fatal(err)
	}
	if holding() {
		t.Fatal("after COMMIT the idle client still holds its read buffer")
	}
}

// TestLoopSyncsDialedServer: a request the loop read whole but cannot run at
// once, because the server it got was dialed for it and has not had the
// client's settings brought in line, is served by the loop after it has
// brought them: the session is not handed to a goroutine.
func TestLoopSyncsDialedServer(t *testing.T) {
	p := startLoopProxy(t)
	holder, c := loggedIn(t, p), loggedIn(t, p)
	// One server, warmed and then held in a transaction.
	for _, q := range []string{"SELECT 1", "BEGIN"} {
		if err := holder.query(q); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 2*time.Second, func() bool { return p.sessionOf(c).inLoop.Load() })
	ejects := p.loopEjects()
	// No idle server: one is dialed for c's query, its settings not yet
	// brought in line.
	if err := c.query("SELECT 2"); err != nil {
		t.Fatal(err)
	}
	if ps := p.Pools(); len(ps) != 1 || ps[0].ServersActive+ps[0].ServersIdle != 2 {
		t.Fatalf("pools %+v: want a second server, dialed for the query", ps)
	}
	if n := p.loopEjects() - ejects; n != 0 || !p.sessionOf(c).inLoop.Load() {
		t.Fatalf("%d ejects, in the loop %v: want the loop to have served it", n, p.sessionOf(c).inLoop.Load())
	}
	if err := holder.query("COMMIT"); err != nil {
		t.Fatal(err)
	}
}

// TestLoopServerGoneInTransaction: a server that dies while its client is
// idle in a transaction the loop keeps ends the session at once: the
// client gets a FATAL error and a closed connection without sending
// anything, as PgBouncer does.
func TestLoopServerGoneInTransaction(t *testing.T) {
	p := startLoopProxy(t)
	c := loggedIn(t, p)
	p.loopServes(t, c)
	if err := c.query("BEGIN"); err != nil {
		t.Fatal(err)
	}
	ss := p.sessionOf(c)
	ss.mu.Lock()
	held := ss.lease != nil
	var pid uint32
	if held {
		pid = ss.lease.Conn().pid
	}
	ss.mu.Unlock()
	if !held || !ss.inLoop.Load() {
		t.Fatalf("after BEGIN: server held %v, in the loop %v; want both", held, ss.inLoop.Load())
	}

	terminateBackend(t, pid)

	expectEnd(t, c)
	waitFor(t, 2*time.Second, func() bool { return p.ClientCount() == 0 })
}

// TestLoopServerEndsItself: a server that ends while the loop waits for its
// answer (its FATAL error and its end of file arrive together) fails the
// client with an error and a closed connection; the loop does not wait for
// ever for the rest of an answer that will not come.
func TestLoopServerEndsItself(t *testing.T) {
	p := startLoopProxy(t)
	c := loggedIn(t, p)
	p.loopServes(t, c)
	c.sendAll(t, &pgproto3.Query{String: "SELECT pg_terminate_backend(pg_backend_pid())"})
	expectEnd(t, c)
	waitFor(t, 2*time.Second, func() bool { return p.ClientCount() == 0 })
}

// expectEnd reads c until the proxy closes it, within 5 s, and checks that
// exactly one ErrorResponse came, a FATAL, and no ReadyForQuery.
func expectEnd(t *testing.T, c *rawClient) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fatal := ""
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("no end within 5 s (FATAL seen: %q)", fatal)
			}
			break // closed
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			if fatal != "" {
				t.Fatalf("a second ErrorResponse, %s %s %q, after %s", m.Severity, m.Code, m.Message, fatal)
			}
			if m.Severity != "FATAL" {
				t.Fatalf("the first error is %s %s %q, not FATAL", m.Severity, m.Code, m.Message)
			}
			fatal = m.Code
		case *pgproto3.ReadyForQuery:
			t.Fatal("ReadyForQuery from a server that was terminated")
		}
	}
	if fatal == "" {
		t.Fatal("the connection closed without a FATAL error")
	}
}

// loopEjects is how many sessions p's loop has ejected to a goroutine.
func (p *testProxy) loopEjects() int {
	n := 0
	for _, l := range p.loops {
		l.mu.Lock()
		n += l.ejects
		l.mu.Unlock()
	}
	return n
}

// appClient is a raw client logged in through p with application_name app,
// whose requests the loop serves.
func appClient(t *testing.T, p *testProxy, app string) *rawClient {
	t.Helper()
	c := dialRaw(t, p.addr)
	if err := c.startup(cluster.SuperUserName(), "postgres", "application_name", app); err != nil {
		t.Fatal(err)
	}
	p.loopServes(t, c)
	return c
}

// TestLoopSyncsSettings: two clients with different settings take turns on
// one server, so each of their transactions finds it matched to the other's.
// The loop brings the settings in line itself, without handing either
// session to a goroutine, and each client sees its own.
func TestLoopSyncsSettings(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1 })
	if !p.options().RelayLoop {
		t.Skip("relay_loop is off")
	}
	// b's name needs quoting, and as an E'' literal.
	const nameB = `b's \ app`
	a, b := appClient(t, p, "app-a"), appClient(t, p, nameB)
	ejects := p.loopEjects()
	for i := range 10 {
		for _, c := range []struct {
			c   *rawClient
			app string
		}{{a, "app-a"}, {b, nameB}} {
			got, err := c.c.value("SELECT current_setting('application_name')")
			if err != nil || got != c.app {
				t.Fatalf("round %d: %s sees application_name %q (%v)", i, c.app, got, err)
			}
		}
	}
	if n := p.loopEjects() - ejects; n != 0 {
		t.Fatalf("%d sessions ejected to a goroutine for 20 transactions that each needed a settings sync; want 0", n)
	}
}

// TestSyncRefusedForgetsSettings: a client whose settings the server refuses
// gets a FATAL error, and the server it was tried on, given back to the
// pool, is not taken to hold the settings of that failed query: the next
// client asking for one of them gets it.
func TestSyncRefusedForgetsSettings(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1 })
	const tz = "Pacific/Chatham"
	bad := dialRaw(t, p.addr)
	if err := bad.startup(cluster.SuperUserName(), "postgres", "TimeZone", tz, "DateStyle", "garbage"); err != nil {
		t.Fatal(err)
	}
	bad.sendAll(t, &pgproto3.Query{String: "SELECT 1"})
	bad.expectFatal(t, "22023") // invalid_parameter_value
	good := dialRaw(t, p.addr)
	if err := good.startup(cluster.SuperUserName(), "postgres", "TimeZone", tz); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		got, err := good.value("SHOW TimeZone")
		if err != nil || got != tz {
			t.Fatalf("TimeZone %q (%v), want %s", got, err, tz)
		}
	}
}

// TestLoopEjectedWhileSyncing: a session ejected while the loop waits for
// the answer to its settings query (its client speaks out of turn) is served
// by its goroutine, which reads the rest of that answer: the client gets
// its answers with its settings, and the server, still sound, goes on
// serving others with theirs.
func TestLoopEjectedWhileSyncing(t *testing.T) {
	if cluster.External() {
		t.Skip("stops a server process: needs the test's own cluster")
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1 })
	if !p.options().RelayLoop {
		t.Skip("relay_loop is off")
	}
	a, b := appClient(t, p, "app-a"), appClient(t, p, "app-b")
	pidText, err := a.value("SELECT pg_backend_pid()") // the server is matched to a's settings
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil {
		t.Fatal(err)
	}
	// The server stopped, the loop's settings query for b goes unanswered.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	cont := func() {
		if stopped {
			stopped = false
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(cont)
	ejects := p.loopEjects()
	const q = "SELECT current_setting('application_name')"
	for i := range 2 {
		b.sendAll(t, &pgproto3.Query{String: q})
		time.Sleep(100 * time.Millisecond) // for the loop to read it
		switch n := p.loopEjects() - ejects; {
		case i == 0 && n != 0:
			t.Fatal("the loop handed the settings sync to a goroutine")
		case i == 1 && n == 0:
			t.Fatal("the client's second query, sent while its settings were synced, did not eject it")
		}
	}
	cont()
	for i := range 2 {
		got, err := b.firstValue()
		if err != nil || got != "app-b" {
			t.Fatalf("b's answer %d: application_name %q (%v)", i, got, err)
		}
	}
	if got, err := a.value(q); err != nil || got != "app-a" {
		t.Fatalf("a after b: application_name %q (%v)", got, err)
	}
	if got, err := a.value("SELECT pg_backend_pid()"); err != nil || got != pidText {
		t.Fatalf("a's server is %s (%v), want %s: the one stopped mid-sync should have served on", got, err, pidText)
	}
}

// TestLoopGoodbye: a client idle in the loop that sends Terminate is closed
// by the loop itself, its server left in the pool for the next client. One
// that leaves a transaction open is handed to its goroutine, which rolls
// the transaction back before the server serves anyone else.
func TestLoopGoodbye(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 1 })
	if !p.options().RelayLoop {
		t.Skip("relay_loop is off")
	}
	terminate := func(c *rawClient) {
		t.Helper()
		c.sendAll(t, &pgproto3.Terminate{})
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.fe.Receive(); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("after Terminate: %v, want the connection closed", err)
		}
	}
	c := loggedIn(t, p)
	p.loopServes(t, c)
	ejects := p.loopEjects()
	terminate(c)
	waitFor(t, 2*time.Second, func() bool { return p.ClientCount() == 0 })
	if n := p.loopEjects() - ejects; n != 0 {
		t.Fatalf("%d sessions ejected to a goroutine to close a client that said goodbye; want 0", n)
	}
	if parked := p.parked(); parked != 0 {
		t.Fatalf("the loop still counts %d sessions", parked)
	}

	open := loggedIn(t, p)
	p.loopServes(t, open)
	if err := open.query("BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	ejects = p.loopEjects()
	terminate(open)
	if p.loopEjects() == ejects {
		t.Fatal("a client leaving a transaction open was not handed to its goroutine")
	}
	next := loggedIn(t, p)
	// In a transaction left open now() would be its start, not this statement's.
	if got, err := next.value("SELECT now() = statement_timestamp()"); err != nil || got != "t" {
		t.Fatalf("the next client's statement: %q (%v), want a transaction of its own", got, err)
	}
}

// TestLoopReadsAhead: many clients whose queries reach the loop together
// (each sends before any reads) each get their own answer, whole, when the
// loop reads their sockets and their servers' ahead of serving them, with
// one io_uring call a wake-up (readAhead); with io_uring off it reads each
// itself.
func TestLoopReadsAhead(t *testing.T) { withAndWithoutRing(t, testLoopReadsAhead) }

func testLoopReadsAhead(t *testing.T, uring bool) {
	p := startProxy(t, func(o *Options, db *Database) {
		db.PoolSize = 4
		o.NoIOURing = !uring
	})
	if !p.options().RelayLoop {
		t.Skip("relay_loop is off")
	}
	clients := make([]*rawClient, 16)
	for i := range clients {
		clients[i] = loggedIn(t, p)
		p.loopServes(t, clients[i])
	}
	for round := range 40 {
		for i, c := range clients {
			c.sendAll(t, &pgproto3.Query{String: "SELECT " + strconv.Itoa(round*100+i) + ", repeat('y', " + strconv.Itoa(i*300) + ")"})
		}
		for i, c := range clients {
			v, err := c.firstValue()
			if want := strconv.Itoa(round*100 + i); err != nil || v != want {
				t.Fatalf("round %d, client %d: got %q, %v; want %s", round, i, v, err, want)
			}
		}
	}
	aheads := 0
	for _, l := range p.loops {
		l.mu.Lock()
		aheads += l.aheads
		l.mu.Unlock()
	}
	t.Logf("wake-ups with reads made ahead: %d", aheads)
	switch {
	case !uring && aheads > 0:
		t.Fatalf("%d wake-ups read ahead with io_uring off", aheads)
	case uring && ioRingOK() && aheads == 0:
		t.Fatal("the loop never read ahead")
	}
}

// TestLoopsShareServers: with two event loops and one server, each
// transaction of two clients on different loops takes the server from the
// other loop (watchServer moves its registration), and every answer reaches
// the client that asked, whole; then many clients on a pool of two, at once.
func TestLoopsShareServers(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) {
		db.PoolSize = 1
		o.Loops = 2
	})
	if !p.options().RelayLoop {
		t.Skip("relay_loop is off")
	}
	a, b := loggedIn(t, p), loggedIn(t, p)
	p.loopServes(t, a)
	p.loopServes(t, b)
	if p.sessionOf(a).loop == p.sessionOf(b).loop {
		t.Fatal("two clients in a row were given the same loop")
	}
	for i := range 200 {
		for j, c := range []*rawClient{a, b} {
			want := strconv.Itoa(i*2 + j)
			if got, err := c.value("SELECT " + want); err != nil || got != want {
				t.Fatalf("round %d, client %d: %q, %v", i, j, got, err)
			}
		}
	}
	if n := p.loopEjects(); n != 0 {
		t.Fatalf("%d sessions ejected: the moves were not the loops'", n)
	}

	p = startProxy(t, func(o *Options, db *Database) {
		db.PoolSize = 2
		o.Loops = 2
	})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for c := range 8 {
		cl := loggedIn(t, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				want := strconv.Itoa(c*1000 + i)
				q := "SELECT " + want
				if i%5 == 0 {
					q = "BEGIN; SELECT " + want + "; COMMIT"
				}
				if got, err := cl.value(q); err != nil || got != want {
					errs <- fmt.Errorf("client %d, query %d: %q, %v", c, i, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestServerKilledMidQuery: a server terminated from elsewhere while it runs
// a client's query ends that client with exactly one error, the server's,
// whichever driver relays it.
func TestServerKilledMidQuery(t *testing.T) {
	p := startProxy(t, nil)
	c := loggedIn(t, p)
	if err := c.query("SELECT 1"); err != nil {
		t.Fatal(err)
	}
	c.sendAll(t, &pgproto3.Query{String: "SELECT 'killed_mid_query', pg_sleep(30)"})
	ctx := context.Background()
	direct, err := pgx.Connect(ctx, cluster.SuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	waitFor(t, 5*time.Second, func() bool {
		var n int
		direct.QueryRow(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'SELECT ''killed_mid_query''%'").Scan(&n)
		return n > 0
	})
	expectEnd(t, c)
}
