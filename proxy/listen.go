package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/protocol"
)

// LISTEN in transaction mode (core.ListenOps): each pool whose clients
// listen keeps one server connection of its own outside the pool, LISTENing
// on the union of their channels, and hands each NotificationResponse it
// reads to every client listening on its channel. A client gets them
// between transactions, as from PostgreSQL: written at once when it is
// idle, else with the ReadyForQuery that ends its transaction.

// listening is a session's part: the notifications not yet written and
// the error that closes a client that cannot take them; readIdle: its
// goroutine waits for the client's next message, so a past read deadline
// (woke) wakes it to write them. All under the session's mu but channels,
// the ones it listens on, under the hub's.
type listening struct {
	q              []byte
	err            *protocol.PgError
	readIdle, woke bool
	channels       map[string]struct{}
}

// listenHub is a pool's listening.
type listenHub struct {
	p *dbPool
	// cmd serialises the exchanges with the server (sync), so that what
	// the connection listens on is known: lc.chans is under it.
	cmd sync.Mutex

	mu   sync.Mutex // guards following
	subs map[string]map[*session]struct{}
	lc   *listenConn // nil while no channel is listened on
}

// listenConn is the hub's server connection.
type listenConn struct {
	sc      *serverConn
	chans   map[string]bool // what the server listens on; under the hub's cmd
	replies chan error      // the reader's: each command's outcome, in order
	done    chan struct{}   // closed (by end) when the reader has ended
	ended   sync.Once
	closing atomic.Bool // closed by the hub, not lost
}

// end closes lc.done, once: the reader and a failed exec may both end it.
func (lc *listenConn) end() { lc.ended.Do(func() { close(lc.done) }) }

// notifyTellTimeout is how long a client closed for the notifications it
// did not read has to read them and why it is closed; only the error is
// kept meanwhile.
const notifyTellTimeout = 10 * time.Second

// listenTimeout bounds a LISTEN or UNLISTEN exchange with the server, and
// its connect.
const listenTimeout = 10 * time.Second

// defaultNotifyQueue bounds the notifications a client has not taken yet
// (NotifyQueueBytes).
const defaultNotifyQueue = 1 << 20

// listen carries out a client's LISTEN and UNLISTEN statements; the server
// connection listens on every channel a client listens on before it
// returns. On an error the client listens on what it did before.
func (h *listenHub) listen(ss *session, ops []core.ListenOp) error {
	h.cmd.Lock()
	defer h.cmd.Unlock()
	h.mu.Lock()
	var added []string
	for _, op := range ops {
		switch {
		case op.Listen:
			if h.add(ss, op.Channel) {
				added = append(added, op.Channel)
			}
		case op.All:
			for ch := range ss.lis.channels {
				h.remove(ss, ch)
			}
		default:
			h.remove(ss, op.Channel)
		}
	}
	h.mu.Unlock()
	err := h.sync()
	if err != nil && len(added) > 0 {
		h.mu.Lock()
		for _, ch := range added {
			h.remove(ss, ch)
		}
		h.mu.Unlock()
		h.sync() // what is left; a failure is a lost connection, handled
	}
	return err
}

// add makes ss listen on ch, under h.mu, and reports whether it did not.
func (h *listenHub) add(ss *session, ch string) bool {
	if _, ok := ss.lis.channels[ch]; ok {
		return false
	}
	if len(ss.lis.channels) == 0 {
		ss.lis.channels = map[string]struct{}{}
		h.p.clientsListening.Add(1)
	}
	ss.lis.channels[ch] = struct{}{}
	if h.subs == nil {
		h.subs = map[string]map[*session]struct{}{}
	}
	if h.subs[ch] == nil {
		h.subs[ch] = map[*session]struct{}{}
	}
	h.subs[ch][ss] = struct{}{}
	return true
}

// remove stops ss listening on ch, under h.mu.
func (h *listenHub) remove(ss *session, ch string) {
	if _, ok := ss.lis.channels[ch]; !ok {
		return
	}
	delete(ss.lis.channels, ch)
	if len(ss.lis.channels) == 0 {
		ss.lis.channels = nil
		h.p.clientsListening.Add(-1)
	}
	delete(h.subs[ch], ss)
	if len(h.subs[ch]) == 0 {
		delete(h.subs, ch)
	}
}

// leave forgets a session that ends; the server stops listening on what
// no one else listens on, in the background.
func (h *listenHub) leave(ss *session) {
	h.mu.Lock()
	if len(ss.lis.channels) == 0 {
		h.mu.Unlock()
		return
	}
	for ch := range ss.lis.channels {
		h.remove(ss, ch)
	}
	h.mu.Unlock()
	go h.resync()
}

// resync is sync in the background, after clients left.
func (h *listenHub) resync() {
	h.cmd.Lock()
	defer h.cmd.Unlock()
	h.sync()
}

// sync, under h.cmd, makes the server connection listen on exactly the
// channels clients listen on: it connects when there are some, and closes
// the connection when there are none.
func (h *listenHub) sync() error {
	h.mu.Lock()
	lc, want := h.lc, len(h.subs)
	h.mu.Unlock()
	if lc == nil && want == 0 {
		return nil
	}
	if lc == nil {
		var err error
		if lc, err = h.connect(); err != nil {
			return protocol.Error(protocol.CodeConnectionFailure, "LISTEN: cannot connect to the server: "+err.Error())
		}
	}
	var q []byte
	var on, off []string
	h.mu.Lock()
	for ch := range h.subs {
		if !lc.chans[ch] {
			on = append(on, ch)
			q = append(q, "LISTEN "+core.QuoteIdent(ch)+";"...)
		}
	}
	for ch := range lc.chans {
		if h.subs[ch] == nil {
			off = append(off, ch)
			q = append(q, "UNLISTEN "+core.QuoteIdent(ch)+";"...)
		}
	}
	want = len(h.subs)
	h.mu.Unlock()
	if want == 0 {
		h.close(lc)
		return nil
	}
	if len(q) == 0 {
		return nil
	}
	if err := lc.exec(q); err != nil {
		var pe *protocol.PgError
		if !errors.As(err, &pe) {
			h.lost(lc, err)
			return protocol.Error(protocol.CodeConnectionFailure, "LISTEN: the server connection failed: "+err.Error())
		}
		return err // the server refused it: its own error
	}
	for _, ch := range on {
		lc.chans[ch] = true
	}
	for _, ch := range off {
		delete(lc.chans, ch)
	}
	return nil
}

// connect opens the hub's server connection and starts its reader.
func (h *listenHub) connect() (*listenConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), listenTimeout)
	defer cancel()
	h.p.mu.Lock()
	dial := h.p.dial
	h.p.mu.Unlock()
	sc, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	sc.listener = true
	lc := &listenConn{sc: sc, chans: map[string]bool{}, replies: make(chan error, 1), done: make(chan struct{})}
	h.mu.Lock()
	h.lc = lc
	h.mu.Unlock()
	go h.read(lc)
	return lc, nil
}

// exec sends q, a simple Query, and waits for its outcome.
func (lc *listenConn) exec(q []byte) error {
	msg := protocol.AppendHeader(nil, 'Q', len(q)+1)
	msg = append(append(msg, q...), 0)
	lc.sc.conn.SetWriteDeadline(time.Now().Add(listenTimeout))
	if _, err := lc.sc.conn.Write(msg); err != nil {
		return err
	}
	select {
	case err := <-lc.replies:
		return err
	case <-lc.done:
		return errors.New("connection lost")
	case <-time.After(listenTimeout):
		return errors.New("no answer in " + listenTimeout.String())
	}
}

// read reads the hub's server connection until it ends: notifications go
// to their listeners, the outcome of each command to exec.
func (h *listenHub) read(lc *listenConn) {
	var failed error
	for {
		typ, n, err := lc.sc.rd.Next()
		if err != nil {
			h.lost(lc, err)
			return
		}
		body, err := lc.sc.rd.Body(n)
		if err != nil {
			h.lost(lc, err)
			return
		}
		switch typ {
		case 'A':
			if ch, ok := core.NotificationChannel(body); ok {
				h.deliver(ch, append(protocol.AppendHeader(nil, 'A', n), body...))
			}
		case 'E':
			failed = protocol.DecodeError(body)
		case 'Z':
			lc.replies <- failed
			failed = nil
		}
	}
}

// deliver hands a NotificationResponse, msg, to the sessions listening on
// ch.
func (h *listenHub) deliver(ch string, msg []byte) {
	limit := h.p.srv.options().NotifyQueueBytes
	dropped := false
	h.mu.Lock()
	for ss := range h.subs[ch] {
		if !ss.notify(msg, limit) {
			for ch := range ss.lis.channels {
				h.remove(ss, ch) // it is closed: nothing more queued for it
			}
			dropped = true
		}
	}
	h.mu.Unlock()
	if dropped {
		go h.resync()
	}
}

// lost ends a connection that failed: every client listening through it is
// told and closed, as a client of PostgreSQL whose server went away.
func (h *listenHub) lost(lc *listenConn, err error) {
	lc.sc.Close()
	if lc.closing.Load() {
		lc.end()
		return
	}
	h.mu.Lock()
	if h.lc == lc {
		h.lc = nil
		fatal := protocol.Fatal(protocol.CodeConnectionFailure, "the server connection pgmux listens on for this client was lost")
		for ch, subs := range h.subs {
			for ss := range subs {
				h.remove(ss, ch)
				ss.notifyFailed(fatal)
			}
		}
	}
	h.mu.Unlock()
	h.p.srv.log.Warn("listening server connection lost", zap.String("database", h.p.key.database),
		zap.String("user", h.p.key.user), zap.Error(err))
	lc.end()
}

// close ends the hub's connection, which listens on nothing clients want.
func (h *listenHub) close(lc *listenConn) {
	h.mu.Lock()
	if h.lc == lc {
		h.lc = nil
	}
	h.mu.Unlock()
	lc.closing.Store(true)
	lc.sc.conn.SetWriteDeadline(time.Now().Add(time.Second))
	lc.sc.conn.Write([]byte{'X', 0, 0, 0, 4})
	lc.sc.Close()
	<-lc.done
}

// shutdown closes the hub's connection, if any, when the server stops.
func (h *listenHub) shutdown() {
	h.cmd.Lock()
	defer h.cmd.Unlock()
	h.mu.Lock()
	lc := h.lc
	h.mu.Unlock()
	if lc != nil {
		h.close(lc)
	}
}

// channels reports how many channels the pool listens on.
func (h *listenHub) channels() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// listenCommand answers a client's simple Query, of body length n, if it
// holds nothing but LISTEN and UNLISTEN statements (core.ListenOps) and the
// session holds no server, and reports whether it did. Otherwise the query
// goes to the server (a LISTEN there pins it), and what it UNLISTENs the
// hub stops giving the client too.
func (ss *session) listenCommand(n int) (bool, error) {
	if protocol.HeaderLen+n > ss.rd.Size() {
		return false, nil
	}
	b, err := ss.peek(protocol.HeaderLen + n)
	if err != nil {
		return false, ss.clientError(err)
	}
	ops, ok := core.ListenOps(b[protocol.HeaderLen:])
	if !ok {
		return false, nil
	}
	h := &ss.pool.listen
	if !ss.Pooled || ss.bound() {
		if ss.lis != nil {
			var unlisten []core.ListenOp
			for _, op := range ops {
				if !op.Listen {
					unlisten = append(unlisten, op)
				}
			}
			if len(unlisten) > 0 {
				h.listen(ss, unlisten)
			}
		}
		return false, nil
	}
	if ss.lis == nil {
		ss.mu.Lock()
		ss.lis = &listening{}
		ss.mu.Unlock()
	}
	var reply []byte
	if err := h.listen(ss, ops); err != nil {
		var pe *protocol.PgError
		if !errors.As(err, &pe) {
			pe = protocol.Error(protocol.CodeConnectionFailure, err.Error())
		}
		reply = append(pe.AppendTo(nil), core.ListenAnswer(nil)...)
	} else {
		reply = core.ListenAnswer(ops)
	}
	return true, ss.answerAlone(n, reply)
}

// notify queues a NotificationResponse for the client and sees that it is
// written between transactions: by the session goroutine at once if it
// waits for its client with no server (waking it), by relayServer at the
// transaction's ReadyForQuery otherwise (see readyLocked). A client whose
// queue would pass limit is told and closed: notify reports false.
func (ss *session) notify(msg []byte, limit int) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.lis.err != nil || ss.stopping {
		return true
	}
	if len(ss.lis.q)+len(msg) > limit {
		ss.lis.q = nil
		ss.lis.err = protocol.Fatal(protocol.CodeProgramLimitExceeded, fmt.Sprintf(
			"more than %d bytes of notifications are waiting for this client: it does not read them fast enough (notify_queue_bytes)", limit))
		// A write of what it has not read ends if it does not read it
		// soon, and the session with it; cut sooner, the client would find
		// a torn message before the error.
		ss.conn.SetWriteDeadline(time.Now().Add(notifyTellTimeout))
		ss.wakeForNotifyLocked()
		return false
	}
	first := len(ss.lis.q) == 0
	ss.lis.q = append(ss.lis.q, msg...)
	if first {
		ss.wakeForNotifyLocked()
	}
	return true
}

// notifyFailed closes a listening client with err, between transactions.
func (ss *session) notifyFailed(err *protocol.PgError) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.lis.err == nil && !ss.stopping {
		ss.lis.err = err
		ss.wakeForNotifyLocked()
	}
}

// wakeForNotifyLocked wakes whoever serves the session to write its
// notifications, if it is waiting for its client: the loop ejects it to a
// goroutine, which writes them; a goroutine blocked on the client's next
// message is woken by a past read deadline (see takeNotifyWake). With a
// server held, the transaction's end writes them.
func (ss *session) wakeForNotifyLocked() {
	switch {
	case ss.inLoop.Load():
		ss.wake()
	case ss.lis.readIdle && ss.lease == nil && !ss.lis.woke:
		ss.lis.woke = true
		ss.conn.SetReadDeadline(pastDeadline)
	}
}

// takeNotifyWake, after a read of the client's next message returned (err:
// how), drops a wake-up for notifications and reports whether there was
// one; the client's read deadline is put back.
func (ss *session) takeNotifyWake() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.lis.readIdle = false
	if !ss.lis.woke {
		return false
	}
	ss.lis.woke = false
	if !ss.parkReq { // else its past deadline stays, for tryPark
		ss.conn.SetReadDeadline(ss.deadline)
	}
	return true
}

// readNextIdle marks the session goroutine as about to wait for its
// client's next message, unless notifications are to be written first;
// it reports whether the wait may begin.
func (ss *session) readNextIdle() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if (len(ss.lis.q) > 0 || ss.lis.err != nil) && ss.lease == nil {
		return false
	}
	ss.lis.readIdle = true
	return true
}

// writeNotifications writes the client's queued notifications, with no
// server held; it returns the error that closes the session, if any.
func (ss *session) writeNotifications() error {
	ss.mu.Lock()
	if ss.lease != nil {
		ss.mu.Unlock()
		return nil // relayServer writes them
	}
	done := ss.readerDone
	ss.mu.Unlock()
	if done != nil {
		<-done // relayServer, leaving, writes the client last
	}
	ss.mu.Lock()
	q, failed := ss.lis.q, ss.lis.err
	ss.lis.q = nil
	ss.mu.Unlock()
	if failed != nil {
		return failed
	}
	if len(q) == 0 {
		return nil
	}
	if err := ss.writeClient(q); err != nil {
		ss.mu.Lock()
		failed = ss.lis.err
		ss.mu.Unlock()
		if failed != nil {
			return failed
		}
		return errQuiet
	}
	return nil
}

// takeNotificationsLocked returns the client's queued notifications for
// relayServer to write before a ReadyForQuery 'I'.
func (ss *session) takeNotificationsLocked() []byte {
	q := ss.lis.q
	ss.lis.q = nil
	return q
}
