package proxy

import (
	"encoding/binary"

	"github.com/pgmux/pgmux/prepared"
	"github.com/pgmux/pgmux/protocol"
)

// scanResult is what scanClient makes of a client's buffered bytes.
type scanResult int8

const (
	scanMore  scanResult = iota // whole ordinary messages so far; more to come
	scanEject                   // something only the goroutine path handles
	scanReady                   // whole ordinary messages, the last a Query or Sync
)

// clientBatch is what scanClient makes of a batch of client messages that
// is ready to send.
type clientBatch struct {
	mapped bool // some message names a prepared statement (psOn: the mapping rewrites them)
	// segs: the Queries and Syncs, each ending a segment (noteSentLocked).
	// unnamed: whether the batch leaves a Parse of the unnamed statement
	// unbound (1) or not (0), or -1 if no Query, Bind or such Parse in it
	// says (session.unnamedOpen as it was).
	segs    int
	unnamed int8
}

// scanClient looks at what a client in the loop has sent: messages the loop
// serves (simple Query; Parse, Bind, Describe, Execute, Close and Sync)
// ending with one the server answers with ReadyForQuery. When it is ready,
// b says what the batch holds, so that the loop's send need not look again.
func scanClient(buf []byte, maxBody int, psOn bool) (res scanResult, b clientBatch) {
	i := 0
	var last byte
	b.unnamed = -1
	for len(buf)-i >= protocol.HeaderLen {
		typ := buf[i]
		l := int(binary.BigEndian.Uint32(buf[i+1:]))
		if l < 4 || l-4 > maxBody {
			return scanEject, clientBatch{} // the goroutine path says what is wrong with it
		}
		if !loopServes[typ] {
			return scanEject, clientBatch{} // at once: it may never be whole
		}
		if len(buf)-i < 1+l {
			return scanMore, clientBatch{}
		}
		body := buf[i+protocol.HeaderLen : i+1+l]
		switch typ {
		case 'S':
			b.segs++
		case 'Q':
			if psOn && prepared.IsStmtCommand(body) {
				return scanEject, clientBatch{} // DEALLOCATE or DISCARD: the mapping's
			}
			b.segs++
			b.unnamed = 0
		case 'E':
		default: // Parse, Bind, Describe, Close
			if typ == 'B' {
				b.unnamed = 0
			}
			if len(body) == 0 {
				break // malformed: the server says so
			}
			if psOn && prepared.NamesStatement(typ, body[:min(len(body), 64)], len(body)) {
				b.mapped = true
			}
			if typ == 'P' && body[0] == 0 {
				b.unnamed = 1
			}
		}
		last = typ
		i += 1 + l
	}
	if i < len(buf) || last != 'Q' && last != 'S' {
		return scanMore, clientBatch{}
	}
	return scanReady, b
}

// loopServes holds the client message types scanClient lets the loop serve.
var loopServes = func() (t [256]bool) {
	for _, typ := range []byte("QPBDCES") {
		t[typ] = true
	}
	return t
}()
