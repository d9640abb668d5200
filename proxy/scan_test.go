package proxy

import "testing"

// FuzzScanClient: whatever a client sends, the loop's look at it does not
// fail, and what it calls ready is whole messages it serves, back to back,
// ending with a Query or a Sync; and the account the loop's send makes of
// the batch at once (noteBatchLocked) is the one forward's, message by
// message, would have made.
func FuzzScanClient(f *testing.F) {
	f.Add([]byte("Q\x00\x00\x00\x0dSELECT 1\x00"), true)
	f.Add([]byte("P\x00\x00\x00\x08s1\x00\x00\x00B\x00\x00\x00\x0c\x00s1\x00\x00\x00\x00\x00\x00S\x00\x00\x00\x04"), true)
	f.Add([]byte("Q\x00\x00\x00\x0ddeallocate\x00"), true)
	f.Add([]byte("X\x00\x00\x00\x04"), false)
	f.Add([]byte("Q\x00\x00\x00\x02"), false)
	f.Add([]byte("P\x00\x00\x00\x09\x00x\x00\x00\x00B\x00\x00\x00\x04S\x00\x00\x00\x04"), false) // a Bind with no body still closes the unnamed Parse
	f.Fuzz(func(t *testing.T, buf []byte, psOn bool) {
		res, batch := scanClient(buf, 1<<20, psOn)
		mapped := batch.mapped
		if res != scanReady {
			if mapped {
				t.Fatal("mapped reported for a batch not ready")
			}
			return
		}
		var last byte
		for i := 0; i < len(buf); {
			if len(buf)-i < 5 {
				t.Fatalf("ready with a cut header at %d", i)
			}
			l := int(buf[i+1])<<24 | int(buf[i+2])<<16 | int(buf[i+3])<<8 | int(buf[i+4])
			if l < 4 || i+1+l > len(buf) {
				t.Fatalf("ready with a bad length %d at %d", l, i)
			}
			switch buf[i] {
			case 'Q', 'P', 'B', 'D', 'C', 'E', 'S':
			default:
				t.Fatalf("ready with message type %q", buf[i])
			}
			last = buf[i]
			i += 1 + l
		}
		if last != 'Q' && last != 'S' {
			t.Fatalf("ready ending with %q", last)
		}
		if !psOn && mapped {
			t.Fatal("mapped without the mapping")
		}
		for _, open := range []bool{false, true} {
			one, all := &session{unnamedOpen: open}, &session{unnamedOpen: open}
			for i := 0; i < len(buf); {
				l := int(buf[i+1])<<24 | int(buf[i+2])<<16 | int(buf[i+3])<<8 | int(buf[i+4])
				if one.noteSentLocked(buf[i], l-4, buf[i] == 'P' && l > 4 && buf[i+5] == 0, true) {
					one.ps.Sent(1)
				}
				i += 1 + l
			}
			all.noteBatchLocked(batch, len(buf))
			type account struct {
				pending                     int
				mid, flushOpen, unnamedOpen bool
				segSent                     uint64
				segLen                      int
				bytesIn                     int64
				started                     bool
			}
			of := func(ss *session) account {
				return account{ss.pending, ss.mid, ss.flushOpen, ss.unnamedOpen, ss.ps.Segments(), ss.segLen, ss.bytesIn, ss.txStart != 0}
			}
			if a, b := of(one), of(all); a != b {
				t.Fatalf("unnamed open before %v: message by message %+v, as a batch %+v", open, a, b)
			}
		}
	})
}
