package core

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/pgmux/pgmux/prepared"
	"github.com/pgmux/pgmux/protocol"
)

// Kind is what a client message means to a session once it has logged in.
type Kind int8

const (
	// Relay: a message for the server (simple or extended protocol, a
	// FunctionCall); the session takes a server first if it holds none.
	Relay Kind = iota
	// CopyData: CopyData, CopyDone or CopyFail. Relayed while a server is
	// held; with none there is no COPY, and PostgreSQL ignores them outside
	// one (a failed COPY leaves a client still sending).
	CopyData
	// Terminate: the client is leaving.
	Terminate
	// Invalid: a message out of place; the session ends with the error
	// Classify returns.
	Invalid
)

// Classify says what a client message of type typ means once logged in,
// with the error to end the session with when it is Invalid.
func Classify(typ byte) (Kind, *protocol.PgError) {
	switch typ {
	case 'P', 'B', 'D', 'E', 'C', 'H', 'S', 'F', 'Q':
		return Relay, nil
	case 'd', 'c', 'f':
		return CopyData, nil
	case 'X':
		return Terminate, nil
	case 'p':
		return Invalid, protocol.Fatal(protocol.CodeProtocolViolation, "unexpected password message after authentication")
	}
	return Invalid, protocol.Fatal(protocol.CodeProtocolViolation, fmt.Sprintf("invalid frontend message type %d", typ))
}

// ScanResult is what Scan makes of a client's buffered bytes.
type ScanResult int8

const (
	ScanMore      ScanResult = iota // whole ordinary messages so far; more to come
	ScanEject                       // something only the goroutine driver handles
	ScanReady                       // whole ordinary messages, the last a Query or Sync
	ScanTerminate                   // a Terminate, alone: the client leaves
)

// Batch is what Scan makes of a batch of client messages that is ready to
// send.
type Batch struct {
	// Mapped: some message names a prepared statement (with the mapping on,
	// they are rewritten one by one).
	Mapped bool
	// Segments: the Queries and Syncs, each ending a segment.
	Segments int
	// unnamed: whether the batch leaves a Parse of the unnamed statement
	// unbound (1) or not (0), or -1 if no Query, Bind or such Parse in it
	// says (the account's as it was).
	unnamed int8
}

// Scan looks at what a client has sent while it holds no request in flight:
// messages the event loop serves (a simple Query; Parse, Bind, Describe,
// Execute, Close and Sync) ending with one the server answers with
// ReadyForQuery. When it is ready, b says what the batch holds, so that its
// sender need not look again. maxBody bounds a message's body; ps says
// whether prepared-statement mapping is on.
func Scan(buf []byte, maxBody int, ps bool, s *Session) (res ScanResult, b Batch) {
	i := 0
	var last byte
	b.unnamed = -1
	look := s == nil || !s.NoLook
	for len(buf)-i >= protocol.HeaderLen {
		typ := buf[i]
		l := int(binary.BigEndian.Uint32(buf[i+1:]))
		if l < 4 || l-4 > maxBody {
			return ScanEject, Batch{} // the goroutine driver says what is wrong with it
		}
		if typ == 'X' && i == 0 && l == 4 && len(buf) == protocol.HeaderLen {
			return ScanTerminate, Batch{}
		}
		if !loopServes[typ] {
			return ScanEject, Batch{} // at once: it may never be whole
		}
		if len(buf)-i < 1+l {
			return ScanMore, Batch{}
		}
		body := buf[i+protocol.HeaderLen : i+1+l]
		switch typ {
		case 'S':
			b.Segments++
		case 'Q':
			if ps && prepared.IsStmtCommand(body) {
				return ScanEject, Batch{} // DEALLOCATE or DISCARD: the mapping's
			}
			if len(body) == 0 || body[len(body)-1] != 0 {
				return ScanEject, Batch{} // malformed: the goroutine driver says so
			}
			if look {
				if e, _ := textEffects(body[:len(body)-1], nil); e != 0 {
					return ScanEject, Batch{} // session state: the goroutine driver notes it
				}
			}
			b.Segments++
			b.unnamed = 0
		case 'E':
		default: // Parse, Bind, Describe, Close
			if typ == 'B' {
				b.unnamed = 0
			}
			if len(body) == 0 {
				break // malformed: the server says so
			}
			if ps && prepared.NamesStatement(typ, body[:min(len(body), 64)], len(body)) {
				b.Mapped = true
			}
			if typ == 'P' && body[0] == 0 {
				b.unnamed = 1
			}
			if typ == 'P' && look {
				if _, q, ok := bytes.Cut(body, []byte{0}); ok {
					if e, _ := parseEffects(q, nil); e != 0 {
						return ScanEject, Batch{}
					}
				}
			}
			if typ == 'B' && look && s.StmtEffects(body) != 0 {
				return ScanEject, Batch{}
			}
		}
		last = typ
		i += 1 + l
	}
	if i < len(buf) || last != 'Q' && last != 'S' {
		return ScanMore, Batch{}
	}
	return ScanReady, b
}

// loopServes holds the client message types Scan lets the event loop serve.
var loopServes = func() (t [256]bool) {
	for _, typ := range []byte("QPBDCES") {
		t[typ] = true
	}
	return t
}()
