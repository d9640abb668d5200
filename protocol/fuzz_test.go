package protocol

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzReadStartup feeds arbitrary bytes to the startup parser: it must
// return a packet or an error, never panic, and never read past the length
// the packet declares.
func FuzzReadStartup(f *testing.F) {
	f.Add(startupBytes(ProtocolVersion30, "user", "alice", "database", "db"))
	f.Add(startupBytes(3<<16|2, "user", "x", "_pq_.a", "b"))
	f.Add(AppendStartupPacket(nil, CodeSSLRequest, nil))
	f.Add(AppendCancelRequest(nil, 1, []byte{1, 2, 3, 4}))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0, 0, 0, 8, 0, 2, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		st, err := ReadStartup(r)
		if err != nil {
			return
		}
		consumed := len(data) - r.Len()
		if consumed > MaxStartupPacketLen {
			t.Fatalf("consumed %d bytes", consumed)
		}
		if st.Kind == KindStartup && st.MajorVersion == 3 {
			for _, p := range st.Params {
				if p.Key == "" {
					t.Fatal("empty parameter name accepted")
				}
			}
		}
	})
}

// FuzzReader frames arbitrary bytes as regular messages, taking each one
// by Body, Relay or Skip in turn: no panic, and every byte relayed is a
// byte of the input.
func FuzzReader(f *testing.F) {
	var seed []byte
	seed = append(AppendHeader(seed, 'Q', 9), "SELECT 1\x00"...)
	seed = append(AppendHeader(seed, 'Z', 1), 'I')
	f.Add(seed, uint8(0))
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff}, uint8(1))
	f.Add([]byte{'Q', 0, 0, 0, 2}, uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, how uint8) {
		r := NewReader(bytes.NewReader(data), 16, 4096)
		var out, want bytes.Buffer
		w := bufio.NewWriter(&out)
		off := 0 // each message taken whole moves the input on by 5+n bytes
		for i := 0; i < 1000; i++ {
			if (int(how)+i)%5 == 4 {
				r.Release() // as an idle session does; a no-op unless empty
			}
			_, n, err := r.Next()
			if err != nil {
				break
			}
			switch (int(how) + i) % 3 {
			case 0:
				var b []byte
				if b, err = r.Body(n); err != nil {
					break
				}
				if !bytes.Equal(b, data[off+HeaderLen:off+HeaderLen+n]) {
					t.Fatalf("body differs from the input at %d", off)
				}
			case 1:
				err = r.Relay(w, n)
				if err == nil {
					want.Write(data[off : off+HeaderLen+n])
				} else {
					// A message cut short is relayed as far as it goes.
					w.Flush()
					tail := out.Bytes()[min(want.Len(), out.Len()):]
					if !bytes.HasPrefix(data[off:], tail) {
						t.Fatalf("partly relayed message differs from the input at %d", off)
					}
					want.Write(tail)
				}
			case 2:
				err = r.Skip(n)
			}
			if err != nil {
				break
			}
			off += HeaderLen + n
		}
		w.Flush()
		if !bytes.Equal(out.Bytes(), want.Bytes()) {
			t.Fatalf("relayed %d bytes, want %d from the input", out.Len(), want.Len())
		}
	})
}

// FuzzWholeRun: the run WholeRun reports is the messages Next and Skip take
// one by one from the same buffered bytes, up to the first of a stopping
// type, the first Next refuses, or the first not wholly buffered.
func FuzzWholeRun(f *testing.F) {
	var seed []byte
	seed = append(AppendHeader(seed, 'T', 3), "abc"...)
	seed = append(AppendHeader(seed, 'D', 1), 'x')
	seed = append(AppendHeader(seed, 'C', 9), "SELECT 1\x00"...)
	seed = append(AppendHeader(seed, 'Z', 1), 'I')
	f.Add(seed, byte('Z'), uint16(64))
	f.Add(seed[:20], byte('E'), uint16(8))
	f.Add([]byte{'D', 0, 0, 0, 2}, byte('Z'), uint16(64))
	f.Fuzz(func(t *testing.T, data []byte, stopType byte, size uint16) {
		size = max(size%512, HeaderLen)
		const maxBody = 100
		var stop [256]bool
		stop[stopType] = true
		stop['Z'] = true
		r := NewReader(nil, int(size), maxBody)
		in := data
		if _, err := r.FillFrom(func(p []byte) (int, error) {
			n := copy(p, in)
			in = in[n:]
			return n, nil
		}); err != nil && len(data) > 0 {
			t.Fatal(err)
		}
		buf := append([]byte(nil), r.BufferedBytes()...)
		n, count := r.WholeRun(&stop)

		ref := NewReader(bytes.NewReader(buf), int(size), maxBody)
		wantN, wantCount := 0, 0
		for {
			typ, l, err := ref.Next()
			if err != nil || stop[typ] || len(buf)-wantN < HeaderLen+l {
				break
			}
			if err := ref.Skip(l); err != nil {
				t.Fatalf("Skip after Next: %v", err)
			}
			wantN += HeaderLen + l
			wantCount++
		}
		if n != wantN || count != wantCount {
			t.Fatalf("WholeRun = %d bytes, %d messages; one by one %d, %d", n, count, wantN, wantCount)
		}
	})
}
