//go:build linux

package rawio

import (
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketpair returns a connected pair of non-blocking stream sockets.
func socketpair(t testing.TB) [2]int {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return [2]int{fds[0], fds[1]}
}

// tcpPair returns the two ends of a loopback TCP connection, closed when
// the test ends.
func tcpPair(t testing.TB) (c, peer net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if c, err = net.Dial("tcp", ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if peer, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	return c, peer
}

// TestRing: a send and a read made together come back with their counts; a
// read of a socket with nothing in it comes back EAGAIN at once, as Result
// turns into ErrWouldBlock; a peer gone reads as the end of file.
func TestRing(t *testing.T) {
	ring, err := NewRing()
	if err != nil {
		t.Skipf("no io_uring here: %v", err)
	}
	defer ring.Close()
	a, b := socketpair(t), socketpair(t)
	if n := Send(int32(b[1]), []byte("ahead")); n != 5 {
		t.Fatalf("Send: %d", n)
	}
	got, empty := make([]byte, 16), make([]byte, 16)
	ops := []Op{SendOp(int32(a[0]), []byte("hello")), RecvOp(int32(b[0]), got), RecvOp(int32(a[0]), empty)}
	if err := ring.Do(ops, true); err != nil {
		t.Fatal(err)
	}
	if ops[0].Res != 5 || ops[1].Res != 5 || string(got[:5]) != "ahead" {
		t.Fatalf("send %d, read %d %q", ops[0].Res, ops[1].Res, got[:max(ops[1].Res, 0)])
	}
	if _, err := Result(ops[2].Res); err != ErrWouldBlock {
		t.Fatalf("read of an empty socket: %d, %v", ops[2].Res, err)
	}
	unix.Close(b[1])
	ops = []Op{RecvOp(int32(b[0]), got), RecvOp(int32(a[1]), got)}
	if err := ring.Do(ops, true); err != nil {
		t.Fatal(err)
	}
	if n, err := Result(ops[0].Res); n != 0 || err != io.EOF {
		t.Fatalf("read after the peer closed: %d, %v", n, err)
	}
	if n, _ := Result(ops[1].Res); n != 5 || string(got[:5]) != "hello" {
		t.Fatalf("the ring's send arrived as %d bytes, %q", n, got[:n])
	}
}

// TestConn: TryRead and TryWrite do not wait; Read and Write wait through
// Go's poller; Shutdown wakes a reader to the end of file.
func TestConn(t *testing.T) {
	c, peer := tcpPair(t)
	s, fd := Of(New(c))
	if s == nil || fd < 0 || s.Fd() != int32(fd) {
		t.Fatalf("Of(New(tcp)) = %v, %d", s, fd)
	}
	buf := make([]byte, 64)
	if _, err := s.TryRead(buf); err != ErrWouldBlock {
		t.Fatalf("TryRead of nothing: %v", err)
	}
	if n, err := s.TryWrite([]byte("ping")); n != 4 || err != nil {
		t.Fatalf("TryWrite: %d, %v", n, err)
	}
	if n, err := peer.Read(buf); n != 4 || err != nil {
		t.Fatalf("peer read %d, %v", n, err)
	}
	go peer.Write([]byte("pong"))
	if n, err := s.Read(buf); n != 4 || err != nil || string(buf[:4]) != "pong" {
		t.Fatalf("Read: %d %q, %v", n, buf[:n], err)
	}
	done := make(chan error, 1)
	go func() { _, err := s.Read(buf); done <- err }()
	time.Sleep(10 * time.Millisecond)
	s.Shutdown()
	if err := <-done; err != io.EOF {
		t.Fatalf("Read after Shutdown: %v", err)
	}
	if p := Peek(peer); p != PeekEOF {
		t.Fatalf("Peek of a peer shut down: %d", p)
	}
	if s, fd := Of(New(&net.TCPConn{})); s != nil || fd != -1 {
		t.Fatal("a net.Conn without a descriptor made a Conn")
	}
}

// BenchmarkSendBatch compares, per send, what the loop pays to write a
// turn's messages to n sockets: a sendto each, or one io_uring_enter for all
// (sendQueue's flush). Loopback TCP, 120 bytes a send (about a select's
// answer); the peers are drained outside the timed part. Which is cheaper
// depends on what a system call costs on the machine (page-table isolation
// makes each far dearer), so it is measured rather than assumed; run it
// pinned to one core (taskset -c 0) to compare with the pooler's figures.
func BenchmarkSendBatch(b *testing.B) {
	ring, err := NewRing()
	if err != nil {
		b.Skipf("no io_uring: %v", err)
	}
	defer ring.Close()
	msg := make([]byte, 120)
	for _, n := range []int{1, 2, 4, 10, 30} {
		fds, peers := make([]int, n), make([]net.Conn, n)
		for i := range n {
			var c net.Conn
			c, peers[i] = tcpPair(b)
			peers[i].(*net.TCPConn).SetReadBuffer(1 << 20)
			raw, _ := c.(*net.TCPConn).SyscallConn()
			raw.Control(func(fd uintptr) { fds[i] = int(fd) })
		}
		drain := func() {
			buf := make([]byte, 1<<20)
			for _, p := range peers {
				raw, _ := p.(*net.TCPConn).SyscallConn()
				raw.Read(func(fd uintptr) bool {
					for {
						if m, _, e := syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT); m <= 0 || e != nil {
							return true
						}
					}
				})
			}
		}
		run := func(b *testing.B, send func()) {
			for i := 0; b.Loop(); i++ {
				send()
				if i%256 == 255 {
					b.StopTimer()
					drain()
					b.StartTimer()
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/send")
		}
		b.Run(fmt.Sprintf("sends=%d/sendto", n), func(b *testing.B) {
			run(b, func() {
				for _, fd := range fds {
					if n := Send(int32(fd), msg); n != int32(len(msg)) {
						b.Fatalf("sendto: %d", n)
					}
				}
			})
		})
		ops := make([]Op, n)
		b.Run(fmt.Sprintf("sends=%d/io_uring", n), func(b *testing.B) {
			run(b, func() {
				for i, fd := range fds {
					ops[i] = SendOp(int32(fd), msg)
				}
				if err := ring.Do(ops, true); err != nil {
					b.Fatal(err)
				}
				for i := range ops {
					if ops[i].Res != int32(len(msg)) {
						b.Fatalf("send %d: %d", i, ops[i].Res)
					}
				}
			})
		})
	}
}
