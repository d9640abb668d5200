package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/internal/testio"
	"github.com/pgmux/pgmux/protocol"
)

// BenchmarkPreparedMapping measures a prepared query's round trip through
// pgmux in transaction mode with the prepared-statement mapping on and off.
// One pgx client with its default statement cache runs on a pool of one, so
// that the statement stays valid with the mapping off too; the difference
// is the mapping's cost per query (Bind rewriting and registry lookups).
func BenchmarkPreparedMapping(b *testing.B) {
	for _, max := range []int{200, 0} {
		name := "mapping=on"
		if max == 0 {
			name = "mapping=off"
		}
		b.Run(name, func(b *testing.B) {
			p := startProxy(b, func(o *Options, db *Database) {
				o.Logger = zap.NewNop()
				o.MaxPreparedStatements = max
				db.PoolSize = 1
			})
			ctx := context.Background()
			conn := p.connect(b, "postgres", pgx.QueryExecModeCacheStatement)
			for _, q := range []string{"SELECT $1::int", "SELECT $1::int + 1"} {
				var v int
				if err := conn.QueryRow(ctx, q, 1).Scan(&v); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := range b.N {
				var v int
				q := "SELECT $1::int"
				if i%2 == 1 {
					q = "SELECT $1::int + 1"
				}
				if err := conn.QueryRow(ctx, q, i).Scan(&v); err != nil {
					b.Fatal(fmt.Errorf("query %d: %w", i, err))
				}
			}
		})
	}
}

// BenchmarkBindRelay isolates what the mapping adds to a Bind: relayed raw
// (mapping off) versus decoded, looked up and rewritten (mapping on).
func BenchmarkBindRelay(b *testing.B) {
	bind, _ := (&pgproto3.Bind{PreparedStatement: "stmtcache_0123456789abcdef", Parameters: [][]byte{[]byte("42"), []byte("hello")}}).Encode(nil)
	for _, on := range []bool{true, false} {
		b.Run(fmt.Sprintf("mapping=%v", on), func(b *testing.B) {
			ss := &session{srv: &Server{}, Session: core.Session{Mapping: on}}
			ss.PS.Counters = &ss.srv.ps
			ss.rd = protocol.NewReader(&testio.Cyclic{B: bind}, 4096, 1<<20)
			sc := &serverConn{bw: bufio.NewWriterSize(io.Discard, 16<<10)}
			// The statement prepared on sc, as after its ParseComplete.
			ss.PS.Rewrite(&sc.Prepared, 'P', []byte("stmtcache_0123456789abcdef\x00SELECT $1, $2\x00\x00\x00"), nil)
			ss.PS.Answer(&sc.Prepared, '1')
			b.ReportAllocs()
			b.SetBytes(int64(len(bind)))
			b.ResetTimer()
			for range b.N {
				_, n, err := ss.rd.Next()
				if err != nil {
					b.Fatal(err)
				}
				if on {
					err = ss.writeMapped(sc, 'B', n)
				} else {
					err = ss.rd.Relay(sc.bw, n)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
