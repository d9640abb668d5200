// Package rawio owns pgmux's raw socket I/O on Linux: reads and writes with
// system calls on a socket's descriptor that the Go runtime is not told of
// (Conn), and an io_uring that makes many sends or reads in one call (Ring).
// It also looks at a socket without consuming it (Peek), on any Unix.
//
// It moves bytes and says what the kernel answered; what the bytes mean,
// and when to read or write, is the caller's. It must never import the
// session core, the pools, the wire protocol or the proxy (layout_test.go).
// Outside Linux, New hands the net.Conn back and no Conn is ever made.
package rawio

// PeekResult is what Peek saw.
type PeekResult uint8

const (
	PeekEmpty PeekResult = iota // nothing to read: the peer is there and quiet
	PeekData                    // bytes are waiting
	PeekEOF                     // the peer closed, or the socket failed
)
