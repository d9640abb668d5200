package protocol

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// HeaderLen is the length of a regular message's header: a type byte and a
// 4-byte length that counts itself but not the type.
const HeaderLen = 5

// ErrMessageTooLarge is returned for a message whose length prefix exceeds the
// reader's limit, and ErrMessageMalformed for a length that cannot be valid.
var (
	ErrMessageTooLarge  = errors.New("message too large")
	ErrMessageMalformed = errors.New("malformed message length")
)

// Reader frames regular (post-startup) messages from a stream. It peeks
// headers and lets the caller decide per message whether to decode the body,
// to relay it raw (Relay) or to skip it, so that relayed messages are never
// copied into a message of their own.
//
// Its buffer can be given back while nothing is buffered (Release) — an idle
// client then holds no read buffer — and is taken again from a pool when data
// arrives; the blocking read that waits for it goes into a few bytes of the
// Reader's own.
type Reader struct {
	rd      io.Reader
	pool    *sync.Pool // of *[]byte of len size
	size    int
	buf     []byte // nil while released
	bp      *[]byte
	r, w    int
	err     error
	small   [256]byte // the first read after idle goes here: most requests fit
	maxBody int
	scratch []byte
	inMsg   bool // a message is partly consumed: the stream is out of step
}

var bufPools sync.Map // size -> *sync.Pool

// NewReader returns a Reader of rd with a buffer of size bytes that refuses
// message bodies over maxBody bytes.
func NewReader(rd io.Reader, size, maxBody int) *Reader {
	p, _ := bufPools.LoadOrStore(size, &sync.Pool{New: func() any { b := make([]byte, size); return &b }})
	return &Reader{rd: rd, pool: p.(*sync.Pool), size: size, maxBody: maxBody}
}

// InMessage reports whether a read failed part-way through a message, which
// leaves the stream unusable.
func (r *Reader) InMessage() bool { return r.inMsg }

// Size is the buffer's size: the most Peek can return.
func (r *Reader) Size() int { return r.size }

// Buffered reports how many bytes can be read without blocking.
func (r *Reader) Buffered() int { return r.w - r.r }

// Holding reports whether the Reader has a buffer taken from its pool.
func (r *Reader) Holding() bool { return r.buf != nil }

// Release gives the buffer back to the pool if nothing is buffered. Slices
// returned earlier are invalid afterwards.
func (r *Reader) Release() {
	if r.buf != nil && r.r == r.w {
		r.pool.Put(r.bp)
		r.buf, r.bp, r.r, r.w = nil, nil, 0, 0
	}
}

func (r *Reader) readErr() error {
	err := r.err
	r.err = nil
	return err
}

// fill reads more into the buffer, taking one from the pool first if needed.
func (r *Reader) fill() {
	if r.buf == nil {
		// Wait for data with a few bytes of our own, so that a Reader blocked
		// on an idle peer holds no buffer.
		n, err := r.rd.Read(r.small[:min(len(r.small), r.size)])
		r.bp = r.pool.Get().(*[]byte)
		r.buf = *r.bp
		r.r, r.w = 0, copy(*r.bp, r.small[:n])
		if err != nil {
			r.err = err
		}
		return
	}
	if r.r > 0 {
		copy(r.buf, r.buf[r.r:r.w])
		r.w -= r.r
		r.r = 0
	}
	for i := 0; i < 100; i++ {
		n, err := r.rd.Read(r.buf[r.w:])
		r.w += n
		if err != nil {
			r.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	r.err = io.ErrNoProgress
}

// FillFrom reads once into the buffer with read, which must not block (an
// event loop's non-blocking read), taking a buffer from the pool first if
// the Reader has none. It returns what read returned; an error is not kept.
func (r *Reader) FillFrom(read func([]byte) (int, error)) (int, error) {
	free := r.Free()
	if len(free) == 0 {
		return 0, bufio.ErrBufferFull
	}
	n, err := read(free)
	r.Filled(n)
	return n, err
}

// Free is FillFrom in two steps, for an event loop that makes the read
// itself: it returns the buffer's free space, taking a buffer from the
// pool first if the Reader has none (empty if the buffer is full), and
// Filled then says how much of it the read filled. Nothing else may be
// called on r in between.
func (r *Reader) Free() []byte {
	if r.buf == nil {
		r.bp = r.pool.Get().(*[]byte)
		r.buf = *r.bp
		r.r, r.w = 0, 0
	} else if r.r > 0 {
		copy(r.buf, r.buf[r.r:r.w])
		r.w -= r.r
		r.r = 0
	}
	return r.buf[r.w:]
}

// Filled adds the n bytes a read put at the start of Free's space to what
// is buffered; n <= 0 adds nothing.
func (r *Reader) Filled(n int) {
	if n > 0 {
		r.w = min(r.w+n, len(r.buf))
	}
}

// BufferedBytes returns the bytes buffered, unconsumed: valid until the next call
// on r.
func (r *Reader) BufferedBytes() []byte { return r.buf[r.r:r.w] }

// Peek returns the next n bytes without consuming them, valid until the next
// call on r. It fails with bufio.ErrBufferFull for n over Size.
func (r *Reader) Peek(n int) ([]byte, error) {
	if uint(n) <= uint(r.w-r.r) {
		return r.buf[r.r : r.r+n], nil // the usual case
	}
	return r.peekSlow(n)
}

// peekSlow is Peek when fewer than n bytes are buffered.
func (r *Reader) peekSlow(n int) ([]byte, error) {
	if n > r.size {
		return nil, bufio.ErrBufferFull
	}
	for r.w-r.r < n && r.err == nil {
		r.fill()
	}
	if avail := r.w - r.r; avail < n {
		if r.buf == nil {
			return nil, r.readErr()
		}
		return r.buf[r.r:r.w], r.readErr()
	}
	return r.buf[r.r : r.r+n], nil
}

// DiscardBuffered skips the next n bytes, all of them buffered: a caller
// that has looked at them in BufferedBytes. Unlike Discard it is inlined.
func (r *Reader) DiscardBuffered(n int) { r.r += min(n, r.w-r.r) }

// Discard skips the next n bytes.
func (r *Reader) Discard(n int) (int, error) {
	if uint(n) <= uint(r.w-r.r) {
		r.r += n // buffered
		return n, nil
	}
	return r.discardSlow(n)
}

// discardSlow is Discard of more than is buffered.
func (r *Reader) discardSlow(n int) (int, error) {
	done := 0
	for done < n {
		if r.r == r.w {
			if r.err != nil {
				return done, r.readErr()
			}
			r.fill()
			continue
		}
		k := min(n-done, r.w-r.r)
		r.r += k
		done += k
	}
	return done, nil
}

// Read reads into p (for ReadStartup and the like).
func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.r == r.w {
		if r.err != nil {
			return 0, r.readErr()
		}
		r.fill()
		if r.r == r.w {
			return 0, r.readErr()
		}
	}
	n := copy(p, r.buf[r.r:r.w])
	r.r += n
	return n, nil
}

// Next waits for the next message's header and returns its type and body
// length. The header is not consumed: follow Next with exactly one of Relay,
// Body or Skip.
func (r *Reader) Next() (typ byte, bodyLen int, err error) {
	var hdr []byte
	if r.w-r.r >= HeaderLen {
		hdr = r.buf[r.r : r.r+HeaderLen] // Peek's usual case, without its call
	} else if hdr, err = r.peekSlow(HeaderLen); err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 {
		return hdr[0], 0, fmt.Errorf("%w: %d for message type %q", ErrMessageMalformed, n, hdr[0])
	}
	if n-4 > r.maxBody {
		return hdr[0], 0, fmt.Errorf("%w: %d bytes for message type %q, limit %d", ErrMessageTooLarge, n-4, hdr[0], r.maxBody)
	}
	return hdr[0], n - 4, nil
}

// Body consumes the current message and returns its body. The slice is only
// valid until the next call on r.
func (r *Reader) Body(bodyLen int) ([]byte, error) {
	if end := r.r + HeaderLen + bodyLen; bodyLen >= 0 && end <= r.w {
		b := r.buf[r.r+HeaderLen : end] // the whole message buffered: the usual case
		r.r = end
		return b, nil
	}
	r.inMsg = true
	if _, err := r.Discard(HeaderLen); err != nil {
		return nil, err
	}
	if bodyLen <= r.size {
		b, err := r.Peek(bodyLen)
		if err != nil {
			return nil, noEOF(err)
		}
		r.Discard(bodyLen)
		r.inMsg = false
		return b, nil
	}
	if cap(r.scratch) < bodyLen {
		r.scratch = make([]byte, bodyLen)
	}
	b := r.scratch[:bodyLen]
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, noEOF(err)
	}
	if cap(r.scratch) > 1<<20 {
		r.scratch = nil // do not keep a large buffer for the life of the reader
	}
	r.inMsg = false
	return b, nil
}

// Relay copies the current message, header included, to w without decoding
// it and without allocating. A body larger than the read buffer is streamed.
// When writing fails, the rest of the message is still read and dropped, so
// that the stream stays in step, and a *WriteError is returned.
func (r *Reader) Relay(w *bufio.Writer, bodyLen int) error {
	r.inMsg = true
	left := HeaderLen + bodyLen
	for left > 0 {
		n := min(left, max(r.Buffered(), 1), r.size)
		b, err := r.Peek(n)
		if err != nil {
			return noEOF(err)
		}
		if _, err := w.Write(b); err != nil {
			if _, derr := r.Discard(left); derr == nil {
				r.inMsg = false
			}
			return &WriteError{Err: err}
		}
		r.Discard(len(b))
		left -= len(b)
	}
	r.inMsg = false
	return nil
}

// Skip consumes the current message without looking at it.
func (r *Reader) Skip(bodyLen int) error {
	r.inMsg = true
	if _, err := r.Discard(HeaderLen + bodyLen); err != nil {
		return noEOF(err)
	}
	r.inMsg = false
	return nil
}

// WriteError marks an error that happened writing to the other side while
// relaying, so that callers can tell which peer failed.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "write: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AppendHeader appends a message header for a body of bodyLen bytes.
func AppendHeader(dst []byte, typ byte, bodyLen int) []byte {
	dst = append(dst, typ)
	return binary.BigEndian.AppendUint32(dst, uint32(bodyLen+4))
}

// WholeRun returns the length in bytes of the run of whole messages at the
// head of the buffer whose types are not in stop, and how many there are. It
// stops before a message Next would refuse (a malformed or too long length),
// so that Next reports it. A relay passes such a run on in one copy instead
// of message by message.
func (r *Reader) WholeRun(stop *[256]bool) (n, count int) {
	b := r.buf[r.r:r.w]
	for len(b)-n >= HeaderLen {
		typ := b[n]
		l := int(binary.BigEndian.Uint32(b[n+1:]))
		if stop[typ] || l < 4 || l-4 > r.maxBody || len(b)-n < 1+l {
			break
		}
		n += 1 + l
		count++
	}
	return n, count
}

// Complete reports whether a whole message is already buffered, so that a
// relay can hold back a flush while more of a pipeline is at hand.
func (r *Reader) Complete() bool {
	b := r.Buffered()
	if b < HeaderLen {
		return false
	}
	return b >= 1+int(binary.BigEndian.Uint32(r.buf[r.r+1:r.r+HeaderLen]))
}

// CommandComplete returns a CommandComplete message with tag.
func CommandComplete(tag string) []byte {
	out := AppendHeader(make([]byte, 0, HeaderLen+len(tag)+1), 'C', len(tag)+1)
	out = append(out, tag...)
	return append(out, 0)
}
