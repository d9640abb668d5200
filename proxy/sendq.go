//go:build linux

package proxy

import (
	"syscall"

	"go.uber.org/zap"

	"github.com/pgmux/pgmux/rawio"
)

// sendQueue holds the relay loop's sends of one turn until its end, and
// then makes them together: with io_uring (rawio.Ring) one system call for
// all of them, else one sendto each. The bytes are copied in, so the
// buffers they came from are free at once; the results come back at the
// flush, where a socket that did not take all (a client that reads slowly)
// has the rest kept in its writer's spill, and its session ejected, as a
// short write did before. At 10 clients a turn holds about ten sends.
//
// Every send queued must be made before anyone else may write to its
// socket or close it: the loop flushes at the end of each turn, and before
// it hands a session to a goroutine (ejectTo) or closes a client (goodbye).
type sendQueue struct {
	ring *rawio.Ring // nil: io_uring unusable here
	buf  []byte
	ents []queuedSend
	ops  []rawio.Op // the ring's, for ents or for readAhead
}

// queuedSend is one socket's bytes in a sendQueue.
type queuedSend struct {
	w      *loopWriter
	fd     int32
	res    int32 // what the socket took, or -errno; rawio.ResUnknown before the flush
	off, n int
}

// sendQueueBytes bounds the bytes a turn's queue holds before it is flushed
// early; a single write larger than that is made at once.
const sendQueueBytes = 64 << 10

// newSendQueue makes the loop's queue, with a ring if uring and the kernel
// allow; log says which.
func newSendQueue(uring bool, log *zap.Logger) sendQueue {
	q := sendQueue{buf: make([]byte, 0, sendQueueBytes), ents: make([]queuedSend, 0, rawio.RingEntries)}
	if !uring {
		log.Info("relay loop reads and sends one system call each (io_uring off)")
		return q
	}
	var err error
	if q.ring, err = rawio.NewRing(); err != nil {
		log.Info("relay loop reads and sends one system call each: io_uring unusable here", zap.Error(err))
	} else {
		log.Info("relay loop batches its reads and sends through io_uring")
	}
	return q
}

func (q *sendQueue) close() {
	if q.ring != nil {
		q.ring.Close()
		q.ring = nil
	}
}

// queueSend is loopWriter.Write's: it queues b for w's socket.
func (p *parker) queueSend(w *loopWriter, b []byte) (int, error) {
	q := &p.sendq
	if w.at > 0 && int(w.at) == len(q.ents) && len(q.buf)+len(b) <= cap(q.buf) {
		q.buf = append(q.buf, b...) // more for the last socket queued: one send
		q.ents[w.at-1].n += len(b)
		return len(b), nil
	}
	if w.at > 0 || len(q.ents) == cap(q.ents) || len(q.buf)+len(b) > cap(q.buf) {
		// Full, or w's socket already has a send queued that is not the
		// last: the bytes must not go in an order other than written.
		p.flushSends()
		if len(*w.spill) > 0 {
			*w.spill = append(*w.spill, b...)
			return len(b), nil
		}
	}
	if len(b) > cap(q.buf) {
		n, err := w.sock.TryWrite(b)
		if err == rawio.ErrWouldBlock {
			*w.spill = append(*w.spill, b[n:]...)
			return len(b), nil
		}
		return n, err
	}
	q.ents = append(q.ents, queuedSend{w: w, fd: w.sock.Fd(), res: rawio.ResUnknown, off: len(q.buf), n: len(b)})
	q.buf = append(q.buf, b...)
	w.at = int32(len(q.ents))
	return len(b), nil
}

// flushSends makes the queued sends. A session whose socket did not take
// all of its bytes, or failed, is put on p.toEject, which the loop serves
// at the next boundary (ejectPending): flushSends may be called in the
// middle of a session's relay.
func (p *parker) flushSends() {
	q := &p.sendq
	if len(q.ents) == 0 {
		return
	}
	if q.ring != nil && len(q.ents) > 1 {
		ops := q.ops[:0]
		for _, e := range q.ents {
			ops = append(ops, rawio.SendOp(e.fd, q.buf[e.off:e.off+e.n]))
		}
		q.ring.Do(ops, true) // on an error, what it did not send goes below
		for i := range ops {
			q.ents[i].res = ops[i].Res
			ops[i] = rawio.Op{}
		}
		q.ops = ops[:0]
	}
	for i := range q.ents {
		e := &q.ents[i]
		b := q.buf[e.off : e.off+e.n]
		if e.res == rawio.ResUnknown {
			e.res = rawio.Send(e.fd, b)
		}
		e.w.at = 0
		if int(e.res) != e.n {
			p.sendShort(e.w, b, e.res)
		}
		*e = queuedSend{}
	}
	q.ents, q.buf = q.ents[:0], q.buf[:0]
}

// sendShort deals with a queued send that did not go whole: res is what the
// socket took, or -errno.
func (p *parker) sendShort(w *loopWriter, b []byte, res int32) {
	ss := w.ss
	switch {
	case res >= 0 || res == -int32(syscall.EAGAIN):
		*w.spill = append(*w.spill, b[max(res, 0):]...) // the goroutine writes it
	case w.server:
		// The session holds the server still: its sends are made before
		// the loop may hand the session over (ejectTo), and before the
		// server can answer them.
		ss.mu.Lock()
		ss.lease.Conn().torn = true
		ss.mu.Unlock()
		ss.lc.endErr = errServerCrashed
	default:
		ss.hangUp() // the client is gone: its goroutine ends the session
	}
	p.toEject = append(p.toEject, ss)
}

// ejectPending ejects the sessions flushSends found a short send for.
func (p *parker) ejectPending() {
	for n := len(p.toEject); n > 0; n = len(p.toEject) {
		ss := p.toEject[n-1]
		p.toEject[n-1] = nil
		p.toEject = p.toEject[:n-1]
		p.leave(ss, eject) // nothing if it has left the loop since
	}
}
