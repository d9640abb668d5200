package protocol

import (
	"bufio"
	"bytes"
	"errors"
	"testing"
)

// TestFillFrom: an event loop's reads go into the Reader's buffer (taken
// from the pool after a Release), what they bring is framed as a blocking
// reader's would be, and a full buffer says so rather than reading nothing.
func TestFillFrom(t *testing.T) {
	r := NewReader(bytes.NewReader(nil), 16, 1<<20)
	src := append(AppendHeader(nil, 'Q', 3), "ab\x00"...) // 8 bytes
	src = append(src, AppendHeader(nil, 'S', 0)...)       // 5 more
	feed := func(chunk []byte) func([]byte) (int, error) {
		return func(p []byte) (int, error) { return copy(p, chunk), nil }
	}
	if n, err := r.FillFrom(feed(src[:6])); n != 6 || err != nil {
		t.Fatalf("first fill: %d, %v", n, err)
	}
	if r.Complete() {
		t.Fatal("a message cut short reported complete")
	}
	if n, err := r.FillFrom(feed(src[6:])); n != 7 || err != nil {
		t.Fatalf("second fill: %d, %v", n, err)
	}
	if got := r.BufferedBytes(); !bytes.Equal(got, src) {
		t.Fatalf("buffered %q, want %q", got, src)
	}
	typ, n, err := r.Next()
	if err != nil || typ != 'Q' || n != 3 {
		t.Fatalf("Next: %c %d %v", typ, n, err)
	}
	if err := r.Skip(n); err != nil {
		t.Fatal(err)
	}
	if typ, n, err := r.Next(); err != nil || typ != 'S' || n != 0 {
		t.Fatalf("Next: %c %d %v", typ, n, err)
	}
	r.Skip(0)
	r.Release()
	// Full: 16 bytes buffered, nothing consumed.
	big := bytes.Repeat([]byte{'x'}, 16)
	if n, err := r.FillFrom(feed(big)); n != 16 || err != nil {
		t.Fatalf("fill after release: %d, %v", n, err)
	}
	if _, err := r.FillFrom(feed(big)); !errors.Is(err, bufio.ErrBufferFull) {
		t.Fatalf("fill of a full buffer: %v", err)
	}
	// Consumed bytes make room again.
	r.Discard(10)
	if n, err := r.FillFrom(feed(big)); n != 10 || err != nil {
		t.Fatalf("fill after a discard: %d, %v", n, err)
	}
	// A read's error comes back as it is.
	boom := errors.New("boom")
	r.Discard(16)
	if _, err := r.FillFrom(func([]byte) (int, error) { return 0, boom }); err != boom {
		t.Fatalf("error: %v", err)
	}
}
