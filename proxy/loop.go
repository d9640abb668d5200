//go:build linux

package proxy

import (
	"bufio"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/pool"
	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/rawio"
)

// The parker is also the relay loop. Sessions without a goroutine (parked
// idle clients, and with relay_loop on every transaction-mode client waiting
// for its next query) sit in one epoll set that a single goroutine watches.
// With relay_loop on, that goroutine serves the common transaction itself,
// as PgBouncer's event loop does: it reads the client's query, queues for a
// server without blocking (pool.AcquireAsync), writes the query, relays the
// answer up to ReadyForQuery and gives the server back (or keeps it while a
// transaction is open) — no goroutine woken per message, and one look at
// every ready socket per wake-up. Where io_uring allows it, a wake-up's
// reads are made with one system call before its events are served
// (readAhead), and a turn's writes with one more at its end (sendQueue):
// on a machine where each system call switches page tables and empties
// the TLB, that saved a third of the pooler's CPU a transaction at 100
// clients, less where a wake-up has fewer events to serve (docs/relay.md).
// Anything out of the ordinary (COPY, a Flush, DEALLOCATE or DISCARD, a
// statement that leaves session state such as a SET, a client that reads
// slowly, a query larger than a buffer, a hang-up, a drain, a pause, an
// error) ejects the session to a goroutine of its own at a message
// boundary, with its state as the goroutine path keeps it, and the
// goroutine path goes on from there. Sessions on TLS never enter.
//
// Only the loop goroutine touches a session while it is in the loop; other
// goroutines reach it through post (wake, a server handed over by the pool).

// parker holds the sessions in the loop.
type parker struct {
	srv  *Server
	once sync.Once
	ok   bool // the loop started
	epfd int
	wake [2]int // a pipe: a byte written wakes the loop for its inbox

	mu      sync.Mutex // guards following
	slots   []loopSlot // by token (see newTokenLocked): parked sessions, and servers registered for good (see watchServer)
	free    []uint32   // slots' free indexes
	gen     uint64
	nparked int
	inbox   []loopMsg
	busy    bool // the loop is at work and will look at the inbox before it waits
	ejects  int  // sessions ejected to a goroutine so far (see ejectTo)
	aheads  int  // wake-ups whose reads were made ahead (see readAhead)

	// now is the time of the loop's latest wake-up, in Unix nanoseconds:
	// the clock its sessions' statistics read (see session.now); mono is
	// the same instant on pool.Now's clock. Only the loop goroutine touches
	// them (see tick).
	now      int64
	mono     time.Duration
	wallBase int64         // now - mono, as of wallAt
	wallAt   time.Duration // mono when wallBase was last read
	// writers are client writers free for the loop's sessions, which take
	// one for each answer: a stack only the loop goroutine touches, cheaper
	// than writerPool's per-P pinning at every transaction. Bounded by how
	// many answers the loop relays at once (one per server).
	writers []*bufio.Writer
	syncBuf []byte // the loop's settings queries are made in (see syncServer)
	sendq   sendQueue
	toEject []*session  // sessions a flush of sendq found a short send for
	ahead   []readAhead // the reads made ahead at this wake-up
	unread  bool        // a client read this turn filled its buffer: the loop looks again before it waits
}

// getWriter returns a client writer for a session in the loop.
func (p *parker) getWriter() *bufio.Writer {
	if n := len(p.writers); n > 0 {
		w := p.writers[n-1]
		p.writers[n-1] = nil
		p.writers = p.writers[:n-1]
		return w
	}
	return writerPool.Get().(*bufio.Writer)
}

// putWriter keeps an empty client writer for the loop's next answer.
func (p *parker) putWriter(w *bufio.Writer) {
	if len(p.writers) < maxLoopWriters {
		p.writers = append(p.writers, w)
		return
	}
	writerPool.Put(w)
}

// maxLoopWriters bounds the writers the loop keeps (4 KiB each): one for
// each answer in flight, which the servers bound, up to 32.
const maxLoopWriters = 32

// loopSlot is what an epoll token stands for: a session's client socket, or
// (with srvBit) a server's socket.
type loopSlot struct {
	token uint64
	ss    *session
	sc    *serverConn
}

// newTokenLocked takes a slot and returns its token: the slot's index plus
// one in the low 32 bits (0 is the wake pipe's), above them a count of the
// tokens made, so that an event for a slot's former holder, still in the
// loop's batch, finds no match. The slot pointer is valid until the next
// newTokenLocked.
func (p *parker) newTokenLocked(bit uint64) (uint64, *loopSlot) {
	var i uint32
	if n := len(p.free); n > 0 {
		i, p.free = p.free[n-1], p.free[:n-1]
	} else {
		p.slots = append(p.slots, loopSlot{})
		i = uint32(len(p.slots) - 1)
	}
	p.gen++
	token := (p.gen&(1<<31-1))<<32 | (uint64(i) + 1) | bit
	p.slots[i] = loopSlot{token: token}
	return token, &p.slots[i]
}

// slotLocked returns token's slot, or nil if the token is no longer in use.
func (p *parker) slotLocked(token uint64) *loopSlot {
	i := uint64(uint32(token)) - 1
	if i >= uint64(len(p.slots)) || p.slots[i].token != token {
		return nil
	}
	return &p.slots[i]
}

// freeLocked gives token's slot back.
func (p *parker) freeLocked(token uint64) {
	if s := p.slotLocked(token); s != nil {
		*s = loopSlot{}
		p.free = append(p.free, uint32(token)-1)
	}
}

// loopMsg is work posted to the loop.
type loopMsg struct {
	ss    *session
	wake  bool // eject the session to a goroutine
	lease *pool.Lease[*serverConn]
	err   error
}

// srvBit marks an epoll token as a session's server, not its client.
const srvBit = 1 << 63

// loopState is a session's state in the loop, made the first time it enters.
type loopState struct {
	cs        *rawio.Conn               // the client's
	fd        int                       // under the parker's mu: the client's descriptor in the epoll set, while parkToken
	timer     *time.Timer               // under the parker's mu: wakes the session in the loop at its deadline
	wait      *pool.Waiter[*serverConn] // the session's place in a pool's queue, while core.PhaseWaiting
	waitStart int64                     // Unix nanoseconds
	srv       *serverConn               // the server whose answer the loop relays
	orphans   int                       // the loop's: servers on their way for waits given up
	spill     []byte
	toServer  []byte
	endErr    error // the error the resumed goroutine ends the session with
	// ejected: the session left the loop and its goroutine has not read
	// the client since; it must before it may enter again, or a client
	// whose socket the loop cannot read (EOF, an error) would go round.
	ejected bool
	batch   core.Batch // what the client sent, as core.Scan saw it
	// plain: nothing in the answer being relayed is for the prepared-
	// statement mapping to match (see send), so ParseComplete and
	// CloseComplete pass as they are.
	plain bool
	out   loopWriter // the client writer's target in the loop
	// sync is the server whose settings the loop brings to the session's
	// (Session.Sync) while core.PhaseGranted.
	sync   *pool.Lease[*serverConn]
	srvOut loopWriter // the server writer's, while mapped messages are written
}

// loopWriter is a writer's target while the loop relays: it queues what is
// written for the end of the loop's turn (see sendQueue), and what the
// socket does not take then is kept in spill, for the goroutine the session
// is then ejected to, so the loop never waits on a peer.
type loopWriter struct {
	ss     *session
	sock   *rawio.Conn
	spill  *[]byte
	at     int32 // the writer's send in the loop's queue, plus one; 0: none
	server bool  // the session's server's (else its client's)
}

func (w *loopWriter) Write(p []byte) (int, error) {
	if len(*w.spill) > 0 {
		*w.spill = append(*w.spill, p...)
		return len(p), nil
	}
	return w.ss.loop.queueSend(w, p)
}

func newParker(srv *Server) *parker {
	return &parker{srv: srv, epfd: -1}
}

// start creates the epoll set and its goroutine on first use.
func (p *parker) start() bool {
	p.once.Do(func() {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return
		}
		if err := unix.Pipe2(p.wake[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
			syscall.Close(fd)
			return
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
		if syscall.EpollCtl(fd, syscall.EPOLL_CTL_ADD, p.wake[0], &ev) != nil {
			return
		}
		// Waited on through Go's poller, so that waiting costs no thread.
		if err := syscall.SetNonblock(fd, true); err != nil {
			return
		}
		f := os.NewFile(uintptr(fd), "pgmux-loop")
		raw, err := f.SyscallConn()
		if err != nil {
			return
		}
		p.epfd, p.ok = fd, true
		p.sendq = newSendQueue(!p.srv.options().NoIOURing, p.srv.log)
		go p.loop(f, raw)
	})
	return p.ok
}

// park adds ss to the loop and reports whether it did; from then on the
// caller must not touch ss, which the loop may already be serving.
// ss.mu is held by the caller.
func (p *parker) park(ss *session) bool {
	if !p.start() {
		return false
	}
	if ss.lc == nil {
		cs, _ := rawio.Of(ss.sock)
		if cs == nil {
			return false
		}
		lc := &loopState{cs: cs}
		lc.out = loopWriter{ss: ss, sock: cs, spill: &lc.spill}
		lc.srvOut = loopWriter{ss: ss, spill: &lc.toServer, server: true}
		lc.wait = pool.NewWaiter(func(l *pool.Lease[*serverConn], err error) {
			p.post(loopMsg{ss: ss, lease: l, err: err})
		})
		ss.lc = lc
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	token, slot := p.newTokenLocked(0)
	ok := false
	ss.lc.cs.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP}
		*(*uint64)(unsafe.Pointer(&ev.Fd)) = token
		ok = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev) == nil
		if ok {
			ss.lc.fd = int(fd)
		}
	})
	if !ok {
		p.freeLocked(token)
		return false
	}
	ss.parkToken = token
	slot.ss = ss
	p.nparked++
	ss.inLoop.Store(true)
	p.armTimerLocked(ss, ss.deadline)
	return true
}

// armTimerLocked makes the session's idle timeout, d (ss.deadline, read
// under ss.mu), wake it in the loop.
func (p *parker) armTimerLocked(ss *session, d time.Time) {
	if d.IsZero() {
		return
	}
	if ss.lc.timer == nil {
		ss.lc.timer = time.AfterFunc(time.Until(d), ss.wake)
	} else {
		ss.lc.timer.Reset(time.Until(d))
	}
}

// count returns how many sessions are in the loop.
func (p *parker) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nparked
}

// post hands m to the loop.
func (p *parker) post(m loopMsg) {
	p.mu.Lock()
	if m.wake && m.ss.parkToken == 0 {
		p.mu.Unlock()
		return // not in the loop: its goroutine sees what changed
	}
	p.inbox = append(p.inbox, m)
	signal := !p.busy
	p.mu.Unlock()
	if signal {
		unix.Write(p.wake[1], wakeByte)
	}
}

// wakeByte is what post writes to the wake pipe.
var wakeByte = []byte{1}

func (p *parker) loop(f *os.File, raw syscall.RawConn) {
	defer f.Close()
	defer p.sendq.close()
	events := make([]syscall.EpollEvent, 256)
	var inbox []loopMsg
	// The loop runs inside one RawRead, whose callback returns false only
	// to wait for the epoll set through Go's poller: RawRead forgets the
	// poller's news of the set when it is called, not when it waits, so
	// that news that came during a turn is kept for the wait after it.
	serve := func(uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, uintptr(p.epfd),
				uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
			if e == syscall.EINTR {
				continue
			}
			if e != 0 || r == 0 {
				return false
			}
			n := int(r)
			p.turn(events[:n], &inbox)
			// Look again at once only after a wake-up with more than
			// one event: such a loop is busy and usually finds more
			// (at 10 clients, nine times in ten after three events or
			// more), while after a single event the look mostly finds
			// nothing (six times in ten at 10 clients, all but always
			// at one), a system call spent before the loop sleeps, on
			// a core the backend it has just written to may be waiting
			// for. Waiting without the look is safe where every socket
			// ready now has told Go's poller since the look before: a
			// new event on any socket in the set does, whereas a
			// level-triggered socket left unread (a client that sent
			// more than was read, see clientReady) or events beyond
			// the batch do not.
			if n == 1 && !p.unread {
				return false
			}
			p.unread = false
		}
	}
	raw.Read(serve) // returns when f is closed
}

// turn serves the events of one wake-up and then what was posted meanwhile,
// and sends what they wrote.
func (p *parker) turn(events []syscall.EpollEvent, inbox *[]loopMsg) {
	p.tick()
	p.mu.Lock()
	p.busy = true
	p.mu.Unlock()
	p.readAhead(events)
	// The events in the order epoll gave them. What they write is queued
	// and sent at the end of the turn (flushSends; earlier only if the
	// queue fills), so no backend is woken by a send before the turn is
	// served, whichever event comes first; serving servers' events first
	// bought nothing since (docs/tried-and-dropped.md).
	for _, ev := range events {
		p.event(*(*uint64)(unsafe.Pointer(&ev.Fd)), ev.Events)
		p.ejectPending()
	}
	p.dropAhead()
	for {
		p.mu.Lock()
		*inbox, p.inbox = p.inbox, (*inbox)[:0]
		if len(*inbox) == 0 {
			p.busy = false
			p.mu.Unlock()
			break
		}
		p.mu.Unlock()
		for i, m := range *inbox {
			p.handle(m)
			p.ejectPending()
			(*inbox)[i] = loopMsg{}
		}
	}
	p.flushSends()
	p.ejectPending()
}

// tick reads the clocks at a wake-up: one monotonic read, from which the
// Unix time is derived, the wall clock read once a second. time.Now reads
// two clocks and the pool's release a third, each a vDSO call that was
// nearly 1% of pgmux's CPU at 10 clients.
func (p *parker) tick() {
	p.mono = pool.Now()
	if p.wallAt == 0 || p.mono-p.wallAt >= time.Second {
		p.wallBase = time.Now().UnixNano() - int64(pool.Now())
		p.wallAt = p.mono
	}
	p.now = p.wallBase + int64(p.mono)
}

// event serves one event of the loop's epoll set; events are its flags.
func (p *parker) event(token uint64, events uint32) {
	if token == 0 {
		var b [64]byte
		for {
			if n, _ := unix.Read(p.wake[0], b[:]); n < len(b) {
				break
			}
		}
		return
	}
	if token&srvBit != 0 {
		var sc *serverConn
		var owner *session
		p.mu.Lock()
		if s := p.slotLocked(token); s != nil {
			// Under mu: another loop that takes the server over frees
			// the slot under mu before it sets its own owner.
			sc, owner = s.sc, s.sc.loopOwner
		}
		p.mu.Unlock()
		if owner != nil {
			p.leave(owner, p.serverReady(owner, sc, events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0))
		} // else not the loop's now: its holder reads it
		return
	}
	var ss *session
	p.mu.Lock()
	if s := p.slotLocked(token); s != nil {
		ss = s.ss
	}
	p.mu.Unlock()
	if ss != nil { // else ejected since
		p.leave(ss, p.clientReady(ss))
	}
}

// handle does what was posted.
func (p *parker) handle(m loopMsg) {
	ss := m.ss
	if m.wake {
		p.leave(ss, eject)
		return
	}
	lc := ss.lc
	orphan := lc.orphans > 0
	if orphan {
		lc.orphans--
	}
	p.mu.Lock()
	here := ss.parkToken != 0 && ss.getPhase() == core.PhaseWaiting
	p.mu.Unlock()
	if orphan || !here {
		if m.lease != nil {
			releaseLease(m.lease)
		}
		return
	}
	p.leave(ss, p.gotServer(ss, m.lease, m.err))
}

// exit is how a handler of the loop leaves a session: still in the loop, or
// handed to a goroutine of its own, where the goroutine path goes on from
// the message boundary the loop stopped at. The hand-over is made in one
// place (leave), once the handler has returned: nothing the handler does
// may follow it, for the goroutine may be running the session already.
type exit int8

const (
	stay  exit = iota // the loop goes on serving it, or is done with it
	eject             // for the goroutine path, which reads the client before the session may enter the loop again
	// ejectServed: the loop has read the request whole and found it
	// ordinary, and hands it over only for what the goroutine path does
	// first (bringing a server's settings in line, say): its goroutine
	// may hand it back to the loop once it has served that request,
	// without a read of its own.
	ejectServed
)

// leave hands ss to a goroutine of its own if e says so.
func (p *parker) leave(ss *session, e exit) {
	if e != stay {
		p.ejectTo(ss, e == eject)
	}
}

// ejectTo takes ss out of the loop and resumes it in a goroutine of its
// own; mustRead: the goroutine reads the client before the session may
// enter the loop again.
func (p *parker) ejectTo(ss *session, mustRead bool) {
	p.mu.Lock()
	if ss.parkToken == 0 {
		p.mu.Unlock()
		return
	}
	p.freeLocked(ss.parkToken)
	p.nparked--
	p.ejects++
	if ss.lc.timer != nil {
		ss.lc.timer.Stop()
		ss.lc.timer = nil
	}
	syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, ss.lc.fd, nil)
	ss.parkToken, ss.lc.fd = 0, -1
	lc := ss.lc
	if lc.srv != nil {
		p.settleAhead(lc.srv.sys) // its goroutine may give the server to another loop
		lc.srv.loopOwner, lc.srv = nil, nil
	}
	p.mu.Unlock()
	// Not under p.mu: the pool calls post with its own lock held.
	switch ss.getPhase() {
	case core.PhaseWaiting:
		if !ss.pool.pool.Load().CancelWait(lc.wait) {
			lc.orphans++ // its server is on the way: given back when it comes
		}
		fallthrough
	case core.PhaseGranted:
		ss.waitingSince.Store(0) // still waiting (Session.Waiting), for its goroutine to take a server
		ss.setPhase(core.PhaseIdle)
	}
	if ss.bw != nil {
		ss.bw.Flush() // into the loop's queue
		ss.bw.Reset(ss.sockOut)
	}
	p.flushSends() // what the client does not take now into lc.spill
	ss.inLoop.Store(false)
	lc.ejected = mustRead
	go ss.resumeFromLoop()
}

// resumeFromLoop serves an ejected session in its own goroutine: it first
// writes what the loop could not, then goes on as the goroutine path does.
func (ss *session) resumeFromLoop() {
	lc := ss.lc
	if lc.sync != nil {
		ss.finishSync()
	}
	if len(lc.spill) > 0 {
		if _, err := ss.sock.Write(lc.spill); err != nil {
			ss.hangUp() // the session ends at its next read
		}
		lc.spill = nil
	}
	if len(lc.toServer) > 0 {
		sc := ss.lease.Conn()
		if _, err := sc.sys.Write(lc.toServer); err != nil {
			ss.mu.Lock()
			sc.torn = true
			ss.mu.Unlock()
			lc.endErr = errServerCrashed
		}
		lc.toServer = nil
	}
	if err := lc.endErr; err != nil {
		lc.endErr = nil
		ss.serveAndClose(err)
		return
	}
	ss.resume()
}

// errServerCrashed is the client's error when its server failed mid-request.
var errServerCrashed = protocol.Fatal(protocol.CodeConnectionFailure, "server conn crashed?")

// clientReady is an event on a session's client socket.
func (p *parker) clientReady(ss *session) exit {
	lc := ss.lc
	ph := ss.getPhase()
	if ph == core.PhaseWaiting && peerClosed(ss.conn) {
		// Gone while queued: its query is not run (as acquireSynced does
		// after a long wait).
		lc.endErr = errQuiet
		return eject
	}
	if !core.AwaitsClient(ph, &ss.Acct) || !ss.srv.options().RelayLoop {
		// A client speaking out of turn (or hanging up) while its query
		// is served, or a parked client without the loop: a goroutine's.
		return eject
	}
	n, free, err := p.read(lc.cs, ss.rd)
	if n == free {
		// The socket may hold more, and being level-triggered it says
		// so only at the loop's next look (see loop).
		p.unread = true
	}
	switch {
	case err == rawio.ErrWouldBlock:
		return stay
	case err != nil:
		return eject // EOF, an error, a message larger than the buffer: the goroutine tells
	}
	return p.startTx(ss)
}

// goodbye ends a session whose client has sent Terminate while idle, as its
// goroutine would on reading it, but without a goroutine started to do it
// (one a connection, for clients that connect for each transaction).
func (p *parker) goodbye(ss *session) exit {
	ss.mu.Lock()
	held := ss.lease != nil
	ss.mu.Unlock()
	if held {
		return eject // a transaction left open: its goroutine settles the server
	}
	p.mu.Lock()
	p.freeLocked(ss.parkToken)
	p.nparked--
	if ss.lc.timer != nil {
		ss.lc.timer.Stop()
		ss.lc.timer = nil
	}
	// Left in the epoll set: closing the socket takes it out.
	ss.parkToken, ss.lc.fd = 0, -1
	p.mu.Unlock()
	ss.inLoop.Store(false)
	p.flushSends() // before the socket closes
	ss.rd.Discard(protocol.HeaderLen)
	ss.rd.Release()
	ss.serveAndClose(errQuiet)
	return stay
}
