//go:build linux

package proxy

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"unsafe"
)

// BenchmarkSendBatch compares, per send, what the loop pays to write a
// turn's messages to n sockets: a sendto each, or one io_uring_enter for all
// (sendQueue's flush). Loopback TCP, 120 bytes a send (about a select's
// answer); the peers are drained outside the timed part. Which is cheaper
// depends on what a system call costs on the machine (page-table isolation
// makes each far dearer), so it is measured rather than assumed; run it
// pinned to one core (taskset -c 0) to compare with the pooler's figures.
func BenchmarkSendBatch(b *testing.B) {
	ring, err := newIORing()
	if err != nil {
		b.Skipf("no io_uring: %v", err)
	}
	defer ring.close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	msg := make([]byte, 120)
	for _, n := range []int{1, 2, 4, 10, 30} {
		fds, peers := make([]int, n), make([]net.Conn, n)
		for i := range n {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if peers[i], err = ln.Accept(); err != nil {
				b.Fatal(err)
			}
			defer peers[i].Close()
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
					if o := (sysOp{p: msg}); !o.write(uintptr(fd)) || o.errno != 0 || o.n != len(msg) {
						b.Fatalf("sendto: %d, %v", o.n, o.errno)
					}
				}
			})
		})
		ops := make([]ringOp, n)
		b.Run(fmt.Sprintf("sends=%d/io_uring", n), func(b *testing.B) {
			run(b, func() {
				for i, fd := range fds {
					ops[i] = ringOp{addr: unsafe.Pointer(&msg[0]), fd: int32(fd), n: uint32(len(msg)), op: ioOpSend, res: resUnknown}
				}
				if err := ring.do(ops, true); err != nil {
					b.Fatal(err)
				}
				for i := range ops {
					if ops[i].res != int32(len(msg)) {
						b.Fatalf("send %d: %d", i, ops[i].res)
					}
				}
			})
		})
	}
}
