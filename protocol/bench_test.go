package protocol

import (
	"bufio"
	"fmt"
	"io"
	"testing"
)

// cyclic repeats one byte string forever.
type cyclic struct {
	b   []byte
	off int
}

func (r *cyclic) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}

// BenchmarkRelay measures framing and relaying one message of a realistic
// size (a Query, a small DataRow, a larger DataRow) without decoding it.
func BenchmarkRelay(b *testing.B) {
	for _, size := range []int{24, 170, 2048} {
		b.Run(fmt.Sprintf("msgLen=%d", size), func(b *testing.B) {
			msg := append(AppendHeader(nil, 'D', size), make([]byte, size)...)
			r := NewReader(&cyclic{b: msg}, 4096, 1<<20)
			w := bufio.NewWriterSize(io.Discard, 16<<10)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for range b.N {
				_, n, err := r.Next()
				if err != nil {
					b.Fatal(err)
				}
				if err := r.Relay(w, n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
