//go:build linux

package proxy

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysConn reads and writes a socket with raw system calls on its
// non-blocking descriptor, waiting for readiness through Go's poller as
// net.Conn does. The difference is that the runtime is not told of the
// calls: a write that wakes PostgreSQL or a client on this core, and is
// preempted by it before returning, no longer looks like a blocked system
// call, so the scheduler does not hand the goroutines to a second thread
// meanwhile. Pinned to one core that hand-off, and the thread switches it
// brings, cost more than the relay itself (see
// docs/relay.md). Deadlines and Close act on it as on the net.Conn.
//
// TryRead and TryWrite, the relay loop's, go further: they call the kernel
// on the descriptor's number itself, without the net.Conn's reference count
// and poller reset around every call. That is safe only while the
// descriptor cannot be closed under them, and its number given to another
// connection: a session's client socket is closed only by whoever ends the
// session, its goroutine or the loop (see goodbye), never while the loop
// may still read it (others call shutdown), and a server's only by its
// lease's holder.
type sysConn struct {
	raw syscall.RawConn
	fd  uintptr
	// A reader and a writer may run at once: each has its own state.
	rd, wr sysOp
	ahead  int32 // the loop's read ahead of this socket, plus one (see readAhead)
}

// sysOp is one direction's call in progress.
type sysOp struct {
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // the method value, made once
}

// newSysConn returns c's sysConn, or c itself when c has no descriptor
// (TLS, a pipe in a test).
func newSysConn(c net.Conn) io.ReadWriter {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	s := &sysConn{raw: raw}
	if raw.Control(func(fd uintptr) { s.fd = fd }) != nil {
		return c
	}
	s.rd.fn, s.wr.fn = s.rd.read, s.wr.write
	return s
}

// rawSocket returns sock's sysConn and descriptor for the loop, or nil and -1
// when sock has none.
func rawSocket(sock io.ReadWriter) (*sysConn, int) {
	s, ok := sock.(*sysConn)
	if !ok {
		return nil, -1
	}
	fd := -1
	s.raw.Control(func(d uintptr) { fd = int(d) })
	return s, fd
}

// shutdown ends the connection both ways without closing its descriptor:
// whoever waits to read or write it wakes to EOF or an error, and its owner
// closes it (see sysConn).
func (s *sysConn) shutdown() {
	s.raw.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
}

func (o *sysOp) read(fd uintptr) bool {
	for {
		// recvfrom and sendto rather than read and write: on a socket they
		// skip the file layer's work (position lock, access checks), about
		// 0.8 us a transaction on this machine (docs/relay.md).
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(bufPtr(o.p)), uintptr(len(o.p)), 0, 0, 0)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait for data
		}
		o.n, o.errno = int(n), e
		return true
	}
}

func (o *sysOp) write(fd uintptr) bool {
	for o.n < len(o.p) {
		rest := o.p[o.n:]
		// MSG_NOSIGNAL: a peer gone is an EPIPE error, not a SIGPIPE.
		n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(bufPtr(rest)), uintptr(len(rest)), unix.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			o.n += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // wait for room
		default:
			o.errno = e
			return true
		}
	}
	return true
}

func (s *sysConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	o := &s.rd
	o.p, o.n, o.errno = p, 0, 0
	err := s.raw.Read(o.fn)
	o.p = nil
	if err != nil {
		return 0, err
	}
	return readResult(o.n, o.errno)
}

// TryRead is Read that does not wait: with nothing to read it returns
// errWouldBlock. It is for the relay loop, which waits on the descriptor
// itself, and calls the kernel directly (see sysConn for when that is safe).
func (s *sysConn) TryRead(p []byte) (int, error) {
	o := sysOp{p: p, errno: syscall.EAGAIN} // read leaves errno as it is on EAGAIN
	o.read(s.fd)
	return readResult(o.n, o.errno)
}

func readResult(n int, errno syscall.Errno) (int, error) {
	switch {
	case errno == syscall.EAGAIN: // only TryRead's call returns with it
		return 0, errWouldBlock
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: errno}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (s *sysConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	o := &s.wr
	o.p, o.n, o.errno = p, 0, 0
	err := s.raw.Write(o.fn)
	o.p = nil
	if err != nil {
		return o.n, err
	}
	return o.n, writeError(o.errno)
}

// TryWrite is Write that does not wait: it writes what the socket takes now
// and returns errWouldBlock if that is not all of p. Like TryRead it is the
// relay loop's, and calls the kernel directly.
func (s *sysConn) TryWrite(p []byte) (int, error) {
	o := sysOp{p: p}
	if !o.write(s.fd) {
		return o.n, errWouldBlock
	}
	return o.n, writeError(o.errno)
}

func writeError(errno syscall.Errno) error {
	if errno != 0 {
		return &net.OpError{Op: "write", Net: "tcp", Err: errno}
	}
	return nil
}

// errWouldBlock is TryRead's and TryWrite's "not now".
var errWouldBlock = syscall.EAGAIN

// bufPtr is the address of b's first byte, for a raw system call.
func bufPtr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }
