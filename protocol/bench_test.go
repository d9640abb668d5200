package protocol

import (
	"bufio"
	"fmt"
	"io"
	"testing"

	"github.com/pgmux/pgmux/internal/testio"
)

// BenchmarkRelay measures framing and relaying one message of a realistic
// size (a Query, a small DataRow, a larger DataRow) without decoding it.
func BenchmarkRelay(b *testing.B) {
	for _, size := range []int{24, 170, 2048} {
		b.Run(fmt.Sprintf("msgLen=%d", size), func(b *testing.B) {
			msg := append(AppendHeader(nil, 'D', size), make([]byte, size)...)
			r := NewReader(&testio.Cyclic{B: msg}, 4096, 1<<20)
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
