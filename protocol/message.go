package protocol

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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

// Reader frames regular (post-startup) messages from a buffered stream. It
// peeks headers and lets the caller decide per message whether to decode the
// body, to relay it raw (Relay) or to skip it, so that relayed messages are
// never copied into a message of their own.
type Reader struct {
	br      *bufio.Reader
	maxBody int
	scratch []byte
	inMsg   bool // a message is partly consumed: the stream is out of step
}

// NewReader returns a Reader over br that refuses bodies over maxBody bytes.
func NewReader(br *bufio.Reader, maxBody int) *Reader {
	return &Reader{br: br, maxBody: maxBody}
}

// Buffered reports how many bytes can be read without blocking.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// InMessage reports whether a read failed part-way through a message, which
// leaves the stream unusable.
func (r *Reader) InMessage() bool { return r.inMsg }

// Bufio returns the underlying reader.
func (r *Reader) Bufio() *bufio.Reader { return r.br }

// Next waits for the next message's header and returns its type and body
// length. The header is not consumed: follow Next with exactly one of Relay,
// Body or Skip.
func (r *Reader) Next() (typ byte, bodyLen int, err error) {
	hdr, err := r.br.Peek(HeaderLen)
	if err != nil {
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
	r.inMsg = true
	if _, err := r.br.Discard(HeaderLen); err != nil {
		return nil, err
	}
	if bodyLen <= r.br.Size() {
		b, err := r.br.Peek(bodyLen)
		if err != nil {
			return nil, noEOF(err)
		}
		r.br.Discard(bodyLen)
		r.inMsg = false
		return b, nil
	}
	if cap(r.scratch) < bodyLen {
		r.scratch = make([]byte, bodyLen)
	}
	b := r.scratch[:bodyLen]
	if _, err := io.ReadFull(r.br, b); err != nil {
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
		n := min(left, max(r.br.Buffered(), 1), r.br.Size())
		b, err := r.br.Peek(n)
		if err != nil {
			return noEOF(err)
		}
		if _, err := w.Write(b); err != nil {
			if _, derr := r.br.Discard(left); derr == nil {
				r.inMsg = false
			}
			return &WriteError{Err: err}
		}
		r.br.Discard(len(b))
		left -= len(b)
	}
	r.inMsg = false
	return nil
}

// Skip consumes the current message without looking at it.
func (r *Reader) Skip(bodyLen int) error {
	r.inMsg = true
	if _, err := r.br.Discard(HeaderLen + bodyLen); err != nil {
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

// Complete reports whether a whole message is already buffered, so that a
// relay can hold back a flush while more of a pipeline is at hand.
func (r *Reader) Complete() bool {
	b := r.br.Buffered()
	if b < HeaderLen {
		return false
	}
	hdr, _ := r.br.Peek(HeaderLen)
	return b >= 1+int(binary.BigEndian.Uint32(hdr[1:]))
}
