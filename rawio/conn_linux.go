//go:build linux

package rawio

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn reads and writes a socket with raw system calls on its
// non-blocking descriptor, waiting for readiness through Go's poller as
// net.Conn does. The difference is that the runtime is not told of the
// calls: a write that wakes PostgreSQL or a client on this core, and is
// preempted by it before returning, no longer looks like a blocked system
// call, so the scheduler does not hand the goroutines to a second thread
// meanwhile. Pinned to one core that hand-off, and the thread switches it
// brings, cost more than the relay itself (see docs/relay.md). Deadlines
// and Close act on it as on the net.Conn.
//
// TryRead and TryWrite, an event loop's, go further: they call the kernel
// on the descriptor's number itself, without the net.Conn's reference count
// and poller reset around every call. That is safe only while the
// descriptor cannot be closed under them, and its number given to another
// connection; the caller sees to that (the proxy closes a client socket
// only where its session ends, and others call Shutdown).
type Conn struct {
	raw syscall.RawConn
	fd  uintptr
	// A reader and a writer may run at once: each has its own state.
	rd, wr op
	// Ahead is the event loop's mark on the socket (its read made ahead
	// at a wake-up, plus one); rawio does not touch it.
	Ahead int32
}

// op is one direction's call in progress.
type op struct {
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // the method value, made once
}

// New returns c's Conn, or c itself when c has no descriptor (TLS, a pipe
// in a test).
func New(c net.Conn) io.ReadWriter {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	s := &Conn{raw: raw}
	if raw.Control(func(fd uintptr) { s.fd = fd }) != nil {
		return c
	}
	s.rd.fn, s.wr.fn = s.rd.read, s.wr.write
	return s
}

// Of returns sock's Conn and descriptor, or nil and -1 when sock is not a
// Conn.
func Of(sock io.ReadWriter) (*Conn, int) {
	s, ok := sock.(*Conn)
	if !ok {
		return nil, -1
	}
	fd := -1
	s.raw.Control(func(d uintptr) { fd = int(d) })
	return s, fd
}

// Fd is the socket's descriptor, for an epoll set or a ring's Op.
func (s *Conn) Fd() int32 { return int32(s.fd) }

// Control runs fn with the descriptor held open (syscall.RawConn.Control).
func (s *Conn) Control(fn func(fd uintptr)) error { return s.raw.Control(fn) }

// Shutdown ends the connection both ways without closing its descriptor:
// whoever waits to read or write it wakes to EOF or an error, and its owner
// closes it (see Conn).
func (s *Conn) Shutdown() {
	s.raw.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
}

func (o *op) read(fd uintptr) bool {
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

func (o *op) write(fd uintptr) bool {
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

func (s *Conn) Read(p []byte) (int, error) {
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
// ErrWouldBlock. It is for an event loop, which waits on the descriptor
// itself, and calls the kernel directly (see Conn for when that is safe).
func (s *Conn) TryRead(p []byte) (int, error) {
	o := op{p: p, errno: syscall.EAGAIN} // read leaves errno as it is on EAGAIN
	o.read(s.fd)
	return readResult(o.n, o.errno)
}

func readResult(n int, errno syscall.Errno) (int, error) {
	switch {
	case errno == syscall.EAGAIN: // only TryRead's call returns with it
		return 0, ErrWouldBlock
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: errno}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (s *Conn) Write(p []byte) (int, error) {
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
// and returns ErrWouldBlock if that is not all of p. Like TryRead it is an
// event loop's, and calls the kernel directly.
func (s *Conn) TryWrite(p []byte) (int, error) {
	o := op{p: p}
	if !o.write(s.fd) {
		return o.n, ErrWouldBlock
	}
	return o.n, writeError(o.errno)
}

func writeError(errno syscall.Errno) error {
	if errno != 0 {
		return &net.OpError{Op: "write", Net: "tcp", Err: errno}
	}
	return nil
}

// ErrWouldBlock is TryRead's and TryWrite's "not now".
var ErrWouldBlock error = syscall.EAGAIN

// Send writes b to descriptor fd as TryWrite does, and returns what a
// ring's Op would: the count sent, or -errno when nothing was.
func Send(fd int32, b []byte) int32 {
	o := op{p: b}
	o.write(uintptr(fd))
	if o.errno != 0 && o.n == 0 {
		return -int32(o.errno)
	}
	return int32(o.n)
}

// Result turns a read's Res (a count, or -errno) into what TryRead would
// have returned.
func Result(res int32) (int, error) {
	if res > 0 {
		return int(res), nil // inlined: the usual case
	}
	return readResult(0, syscall.Errno(-res)) // 0: the end of file
}

// bufPtr is the address of b's first byte, for a raw system call.
func bufPtr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }
