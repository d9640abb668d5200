package proxy

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/pool"
	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/rawio"
)

// serverConn is one backend connection. It is owned by whoever holds its
// pool lease; only cancels reach it from elsewhere, through cancels.
type serverConn struct {
	conn net.Conn
	sys  *rawio.Conn // conn's, for the loop; nil if it has no descriptor
	fd   int         // conn's descriptor, valid while conn is open
	// The relay loop's (see watchServer): the token of the socket's
	// registration (0 if none), and the session it relays to, if any.
	loopTok   uint64
	loop      *parker
	loopOwner *session
	// rd is held in the struct, not behind a pointer: the loop reads it
	// first thing at each answer, and one pointer fewer is one cache miss
	// fewer on a core the backends share.
	rd            protocol.Reader
	bw            *bufio.Writer
	network, addr string // where cancels go (Database.serverAddr)
	pid           uint32
	key           []byte

	core.Server // its protocol state

	owner     *dbPool
	id        uint64 // for reports, from serverIDs
	connected time.Time
	leased    atomic.Bool // lent to a client (for reports)
	// timedOut: closed by query_timeout (expireQueries); its client is
	// told so rather than that the server crashed.
	timedOut atomic.Bool

	// times are its client's requests' timings, kept with the server
	// rather than in every session (idle ones included): its holder's,
	// under the holder's mu.
	times reqTimes
	hdr   [protocol.HeaderLen]byte // its relayer's scratch for a header

	// torn: a client message reached it only in part, or its answer to
	// pgmux's own query could not be read: it goes to no one (its holder's,
	// under the holder's mu).
	torn     bool
	psDirty  bool           // a client's DEALLOCATE or DISCARD left prepared statements unsure
	listener bool           // the pool's LISTEN connection, outside the pool (listen.go)
	cancels  sync.WaitGroup // cancel requests in flight to this backend
	// cancelling counts them too, for a look that does not wait (see
	// readyLocked); it falls before cancels' Done.
	cancelling atomic.Int32
}

// reqTimes times what a client has sent the server it holds, for the
// statistics and query_timeout: when the transaction began and when each
// request still to be answered (a Sync, Query or FunctionCall) was sent, in
// Unix nanoseconds; and the bytes relayed each way, not yet counted.
type reqTimes struct {
	txStart           int64
	starts            [32]int64 // a ring: the oldest at head
	head, n           int
	bytesIn, bytesOut int64 // bytesOut: whoever relays the server's answers
}

// sent notes n bytes sent at now, the last of them ending segs requests.
func (t *reqTimes) sent(now int64, segs, n int) {
	if t.txStart == 0 {
		t.txStart = now
	}
	for ; segs > 0 && t.n < len(t.starts); segs-- {
		t.starts[(t.head+t.n)%len(t.starts)] = now
		t.n++
	}
	t.bytesIn += int64(n)
}

// answered takes the oldest request off, answered, and returns when it was
// sent (0: none was outstanding).
func (t *reqTimes) answered() (sentAt int64) {
	if t.n == 0 {
		return 0
	}
	sentAt = t.starts[t.head]
	t.head = (t.head + 1) % len(t.starts)
	t.n--
	return sentAt
}

// oldest returns when the oldest request still to be answered was sent (0:
// none is).
func (t *reqTimes) oldest() int64 {
	if t.n == 0 {
		return 0
	}
	return t.starts[t.head]
}

// serverIDs numbers server connections, for reports.
var serverIDs atomic.Uint64

// cancelDone ends the count of a cancel request taken by holdForCancel.
func (sc *serverConn) cancelDone() {
	sc.cancelling.Add(-1)
	sc.cancels.Done()
}

var _ pool.Conn = (*serverConn)(nil)

func (sc *serverConn) Close() error {
	if sc.owner != nil {
		sc.owner.forget(sc)
	}
	if sc.loopTok != 0 {
		sc.loop.forgetServer(sc.loopTok)
	}
	return sc.conn.Close()
}

// releaseLease gives a clean server back to its pool.
func releaseLease(l *pool.Lease[*serverConn]) { releaseLeaseAt(l, pool.Now()) }

// releaseLeaseAt is releaseLease as of now, a recent reading of pool.Now.
func releaseLeaseAt(l *pool.Lease[*serverConn], now time.Duration) {
	l.Conn().leased.Store(false)
	l.ReleaseAt(now)
}

// releaseSettled gives a server back to the pool once a cancel meant for its
// last client has been delivered (it must not reach the next one), after
// wiping prepared statements a DEALLOCATE or DISCARD left unsure.
func releaseSettled(sc *serverConn, lease *pool.Lease[*serverConn]) {
	sc.cancels.Wait()
	if sc.psDirty && sc.discardAll() != nil {
		destroyLease(lease)
		return
	}
	releaseLease(lease)
}

// destroyLease closes a server that must not be reused.
func destroyLease(l *pool.Lease[*serverConn]) {
	l.Conn().leased.Store(false)
	l.Destroy()
}

// alive reports whether an idle connection is still usable, without
// blocking: a server that went away has left an end of file; one that has
// something to say while idle (a FATAL before closing, a notice) is not
// trusted either.
func (sc *serverConn) alive() bool {
	return sc.rd.Buffered() == 0 && rawio.Peek(sc.conn) == rawio.PeekEmpty
}

// peerClosed reports whether c's peer has closed its end (and sent nothing
// still unread).
func peerClosed(c net.Conn) bool { return rawio.Peek(c) == rawio.PeekEOF }

// syncSettings brings the server's settings to want's with y (see
// core.SettingsSync), waiting for its answer. The caller owns sc and no
// reader goroutine is running on it.
func (sc *serverConn) syncSettings(y *core.SettingsSync, want *core.Wanted) core.SyncEnd {
	msg := y.Start(&sc.Server, want, nil)
	if len(msg) == 0 {
		return core.SyncDone
	}
	_, err := sc.bw.Write(msg)
	if err == nil {
		err = sc.bw.Flush()
	}
	if err == nil {
		err = sc.readSync(y, want)
	}
	return y.End(&sc.Server, want, err)
}

// readSync reads the answer to y's query, or what is left of it where the
// loop read its start.
func (sc *serverConn) readSync(y *core.SettingsSync, want *core.Wanted) error {
	return sc.readUntilReady(func(typ byte, body []byte) bool {
		y.Take(want, typ, body)
		return false
	})
}

// check runs server_check_query q on a server about to be lent, and
// reports whether it answered without an error and idle.
func (sc *serverConn) check(q string) bool {
	_, err := sc.query(q)
	return err == nil && sc.TxStatus == 'I'
}

// query runs q, a simple query of pgmux's own (see request).
func (sc *serverConn) query(q string) (core.Answer, error) {
	msg, _ := (&pgproto3.Query{String: q}).Encode(nil)
	return sc.request(msg)
}

// request sends msg, a request of pgmux's own, to a server nobody else uses
// and reads its answer; err is the I/O's failure, else the server's error.
func (sc *serverConn) request(msg []byte) (core.Answer, error) {
	if _, err := sc.bw.Write(msg); err != nil {
		return core.Answer{}, err
	}
	if err := sc.bw.Flush(); err != nil {
		return core.Answer{}, err
	}
	a, err := sc.answer(true)
	if err == nil {
		err = a.Failure()
	}
	return a, err
}

// answer reads an answer up to its ReadyForQuery, or to a COPY it started,
// which waits for data; keepRows: its rows are kept (see core.Answer); err
// is the read's failure only.
func (sc *serverConn) answer(keepRows bool) (core.Answer, error) {
	a := core.Answer{KeepRows: keepRows}
	err := sc.readUntilReady(func(typ byte, body []byte) bool {
		a.Take(typ, body)
		return a.Copy
	})
	return a, err
}

// readUntilReady reads sc's messages up to and including the next
// ReadyForQuery, noting ParameterStatus and the transaction status, and
// passes every other message to fn, which may stop the reading there.
func (sc *serverConn) readUntilReady(fn func(typ byte, body []byte) (stop bool)) error {
	for {
		typ, n, err := sc.rd.Next()
		if err != nil {
			return err
		}
		body, err := sc.rd.Body(n)
		if err != nil {
			return err
		}
		if ready, err := sc.Note(typ, body); ready || err != nil {
			return err
		}
		if fn(typ, body) {
			return nil
		}
	}
}

// forgetSession records that the server's session state is back to its
// start, as after DISCARD ALL: settings as at connect, no statements.
func (sc *serverConn) forgetSession() {
	sc.Settings.Reset()
	sc.Prepared.Clear()
	sc.psDirty = false
}

// discardAll runs DISCARD ALL on a server nobody else uses.
func (sc *serverConn) discardAll() error {
	_, err := sc.query("DISCARD ALL")
	if err == nil {
		sc.forgetSession()
	}
	return err
}

// cancel sends a CancelRequest for this backend on a connection of its own.
// It returns when the server has taken the request (it closes the
// connection after signalling the backend).
func (sc *serverConn) cancel(timeout time.Duration) error {
	return sendCancelRequest(sc.network, sc.addr, sc.pid, sc.key, timeout)
}

// sendCancelRequest sends a CancelRequest for pid and key to a server or a
// peer at addr on a connection of its own, and returns once the other end
// has handled it (it closes the connection).
func sendCancelRequest(network, addr string, pid uint32, key []byte, timeout time.Duration) error {
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(protocol.AppendCancelRequest(nil, pid, key)); err != nil {
		return err
	}
	var b [1]byte
	c.Read(b[:]) // EOF once it is handled
	return nil
}
