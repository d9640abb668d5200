//go:build unix

package rawio

import (
	"crypto/tls"
	"net"
	"syscall"
)

// Peek looks at c's socket without blocking or consuming (MSG_PEEK|MSG_DONTWAIT).
// Under TLS it looks at the socket beneath: a record waiting (an alert, say)
// counts as data.
func Peek(c net.Conn) PeekResult {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sys, ok := c.(syscall.Conn)
	if !ok {
		return PeekEmpty
	}
	raw, err := sys.SyscallConn()
	if err != nil {
		return PeekEOF
	}
	var n int
	var rerr error
	// Control, not Read: the look does not wait, so the read deadline (past,
	// when a park request or a drain has just set it) has no say in it.
	err = raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	switch {
	case err != nil:
		return PeekEOF
	case rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK:
		return PeekEmpty
	case rerr == nil && n > 0:
		return PeekData
	}
	return PeekEOF
}
