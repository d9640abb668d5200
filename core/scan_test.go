package core

import (
	"encoding/binary"
	"testing"

	"github.com/pgmux/pgmux/protocol"
)

func msgs(parts ...string) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p[0])
		b = binary.BigEndian.AppendUint32(b, uint32(4+len(p)-1))
		b = append(b, p[1:]...)
	}
	return b
}

func TestScan(t *testing.T) {
	tests := []struct {
		name   string
		buf    []byte
		ps     bool
		res    ScanResult
		segs   int
		mapped bool
	}{
		{"simple query", msgs("QSELECT 1\x00"), true, ScanReady, 1, false},
		{"extended up to Sync", msgs("P\x00SELECT 1\x00\x00\x00", "B\x00\x00\x00\x00\x00\x00\x00\x00", "E\x00\x00\x00\x00\x00", "S"), true, ScanReady, 1, false},
		{"a pipeline of several Syncs", msgs("B\x00\x00\x00\x00\x00\x00\x00\x00", "S", "B\x00\x00\x00\x00\x00\x00\x00\x00", "S"), true, ScanReady, 2, false},
		{"a named statement", msgs("Ps1\x00SELECT 1\x00\x00\x00", "S"), true, ScanReady, 1, true},
		{"a named statement, mapping off", msgs("Ps1\x00SELECT 1\x00\x00\x00", "S"), false, ScanReady, 1, false},
		{"no Sync yet", msgs("P\x00SELECT 1\x00\x00\x00"), true, ScanMore, 0, false},
		{"half a message", msgs("QSELECT 1\x00")[:7], true, ScanMore, 0, false},
		{"Flush", msgs("P\x00SELECT 1\x00\x00\x00", "H"), true, ScanEject, 0, false},
		{"COPY data", msgs("dxyz"), true, ScanEject, 0, false},
		{"Terminate", msgs("X"), true, ScanTerminate, 0, false},
		{"Terminate after a query", msgs("QSELECT 1\x00", "X"), true, ScanEject, 0, false},
		{"Terminate and more", append(msgs("X"), 'Q'), true, ScanEject, 0, false},
		{"DEALLOCATE", msgs("Q deallocate s1\x00"), true, ScanEject, 0, false},
		{"DEALLOCATE, mapping off", msgs("Q deallocate s1\x00"), false, ScanReady, 1, false},
		{"a length too short", []byte("Q\x00\x00\x00\x02"), true, ScanEject, 0, false},
		{"a length over the limit", []byte("Q\x00\x10\x00\x00"), true, ScanEject, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, b := Scan(tt.buf, 1<<16, tt.ps, nil)
			if res != tt.res || b.Segments != tt.segs || b.Mapped != tt.mapped {
				t.Fatalf("%v, %d segments, mapped %v; want %v, %d, %v", res, b.Segments, b.Mapped, tt.res, tt.segs, tt.mapped)
			}
		})
	}
}

// FuzzScan: whatever a client sends, Scan does not fail; what it calls ready
// is whole messages the event loop serves, back to back, ending with a Query
// or a Sync; and the account of the batch taken at once (SentBatch) is the
// one taken message by message (Sent), whatever the account was before.
func FuzzScan(f *testing.F) {
	f.Add([]byte("Q\x00\x00\x00\x0dSELECT 1\x00"), true)
	f.Add([]byte("P\x00\x00\x00\x08s1\x00\x00\x00B\x00\x00\x00\x0c\x00s1\x00\x00\x00\x00\x00\x00S\x00\x00\x00\x04"), true)
	f.Add([]byte("Q\x00\x00\x00\x0ddeallocate\x00"), true)
	f.Add([]byte("X\x00\x00\x00\x04"), false)
	f.Add([]byte("Q\x00\x00\x00\x02"), false)
	f.Add([]byte("P\x00\x00\x00\x09\x00x\x00\x00\x00B\x00\x00\x00\x04S\x00\x00\x00\x04"), false) // a Bind with no body still closes the unnamed Parse
	f.Fuzz(func(t *testing.T, buf []byte, ps bool) {
		res, batch := Scan(buf, 1<<20, ps, nil)
		if res != ScanReady {
			if batch != (Batch{}) {
				t.Fatalf("a batch reported for %v", res)
			}
			return
		}
		var last byte
		for i := 0; i < len(buf); {
			if len(buf)-i < 5 {
				t.Fatalf("ready with a cut header at %d", i)
			}
			l := int(binary.BigEndian.Uint32(buf[i+1:]))
			if l < 4 || i+1+l > len(buf) {
				t.Fatalf("ready with a bad length %d at %d", l, i)
			}
			if !loopServes[buf[i]] {
				t.Fatalf("ready with message type %q", buf[i])
			}
			last = buf[i]
			i += 1 + l
		}
		if last != 'Q' && last != 'S' {
			t.Fatalf("ready ending with %q", last)
		}
		if !ps && batch.Mapped {
			t.Fatal("mapped without the mapping")
		}
		for _, before := range []Account{{}, {unnamed: true}, {owed: 2, open: true, flushed: true}} {
			one, all := before, before
			segs := 0
			for i := 0; i < len(buf); {
				l := int(binary.BigEndian.Uint32(buf[i+1:]))
				if one.Sent(buf[i], buf[i] == 'P' && l > 4 && buf[i+5] == 0) {
					segs++
				}
				i += 1 + l
			}
			all.SentBatch(batch)
			if one != all || segs != batch.Segments {
				t.Fatalf("from %+v: message by message %+v (%d segments), as a batch %+v (%d)", before, one, segs, all, batch.Segments)
			}
		}
	})
}

// TestScanNoLook: with track_session_state off the loop serves what would
// leave session state, as any other query.
func TestScanNoLook(t *testing.T) {
	q := append(protocol.AppendHeader(nil, 'Q', len("SET work_mem = '1MB'")+1), "SET work_mem = '1MB'\x00"...)
	if res, _ := Scan(q, 1<<16, false, &Session{}); res != ScanEject {
		t.Errorf("looked: %v, want eject", res)
	}
	if res, _ := Scan(q, 1<<16, false, &Session{NoLook: true}); res != ScanReady {
		t.Errorf("not looked: %v, want ready", res)
	}
	s := &Session{Pooled: true, NoLook: true}
	s.NoteMessage('Q', []byte("SELECT pg_advisory_lock(1)\x00"))
	if s.Pinned || s.LeftState() {
		t.Error("pinned without a look")
	}
}
