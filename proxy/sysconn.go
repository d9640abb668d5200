package proxy

import (
	"io"
	"net"
	"syscall"
	"unsafe"
)

// sysConn reads and writes a socket with raw system calls on its
// non-blocking descriptor, waiting for readiness through Go's poller as
// net.Conn does. The difference is that the runtime is not told of the
// calls: a write that wakes PostgreSQL or a client on this core, and is
// preempted by it before returning, no longer looks like a blocked system
// call, so the scheduler does not hand the goroutines to a second thread
// meanwhile. Pinned to one core that hand-off, and the thread switches it
// brings, cost more than the relay itself (see bench/README section in
// README.md). Deadlines and Close act on it as on the net.Conn.
type sysConn struct {
	raw syscall.RawConn
	// A reader and a writer may run at once: each has its own state.
	rd, wr sysOp
}

// sysOp is one direction's call in progress.
type sysOp struct {
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // the method value, made once
	try   func(fd uintptr) bool // fn that never waits (see TryRead), made once
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
	s.rd.fn, s.wr.fn = s.rd.read, s.wr.write
	s.rd.try = func(fd uintptr) bool { s.rd.read(fd); return true }
	s.wr.try = func(fd uintptr) bool { s.wr.write(fd); return true }
	return s
}

func (o *sysOp) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(bufPtr(o.p)), uintptr(len(o.p)))
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
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(bufPtr(rest)), uintptr(len(rest)))
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
	return s.read(p, s.rd.fn, 0)
}

// TryRead is Read that does not wait: with nothing to read it returns
// errWouldBlock. It is for an event loop that waits on the descriptor itself.
func (s *sysConn) TryRead(p []byte) (int, error) {
	return s.read(p, s.rd.try, syscall.EAGAIN) // o.read leaves errno as it is on EAGAIN
}

func (s *sysConn) read(p []byte, fn func(uintptr) bool, errno syscall.Errno) (int, error) {
	o := &s.rd
	o.p, o.n, o.errno = p, 0, errno
	err := s.raw.Read(fn)
	o.p = nil
	switch {
	case err != nil:
		return 0, err
	case o.errno == syscall.EAGAIN: // only TryRead's call returns with it
		return 0, errWouldBlock
	case o.errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: o.errno}
	case o.n == 0:
		return 0, io.EOF
	}
	return o.n, nil
}

func (s *sysConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return s.write(p, s.wr.fn)
}

// TryWrite is Write that does not wait: it writes what the socket takes now
// and returns errWouldBlock if that is not all of p.
func (s *sysConn) TryWrite(p []byte) (int, error) {
	n, err := s.write(p, s.wr.try)
	if err == nil && n < len(p) {
		err = errWouldBlock
	}
	return n, err
}

func (s *sysConn) write(p []byte, fn func(uintptr) bool) (int, error) {
	o := &s.wr
	o.p, o.n, o.errno = p, 0, 0
	err := s.raw.Write(fn)
	o.p = nil
	switch {
	case err != nil:
		return o.n, err
	case o.errno != 0:
		return o.n, &net.OpError{Op: "write", Net: "tcp", Err: o.errno}
	}
	return o.n, nil
}

// errWouldBlock is TryRead's and TryWrite's "not now".
var errWouldBlock = syscall.EAGAIN

// bufPtr is the address of b's first byte, for a raw system call.
func bufPtr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }
