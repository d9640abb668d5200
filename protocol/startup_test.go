package protocol

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func startupBytes(code uint32, params ...string) []byte {
	var body []byte
	for _, p := range params {
		body = append(body, p...)
		body = append(body, 0)
	}
	if code>>16 == 3 {
		body = append(body, 0)
	}
	return AppendStartupPacket(nil, code, body)
}

func TestReadStartup(t *testing.T) {
	st, err := ReadStartup(bytes.NewReader(startupBytes(ProtocolVersion30, "user", "alice", "database", "db", "options", "-c a=b")))
	if err != nil {
		t.Fatal(err)
	}
	if st.Kind != KindStartup || st.MajorVersion != 3 || st.MinorVersion != 0 || len(st.Params) != 3 {
		t.Fatalf("%+v", st)
	}
	if v, _ := st.Get("database"); v != "db" {
		t.Fatalf("database = %q", v)
	}
	st, err = ReadStartup(bytes.NewReader(startupBytes(3<<16|2, "user", "x", "_pq_.opt", "1")))
	if err != nil || st.MinorVersion != 2 {
		t.Fatalf("3.2: %+v %v", st, err)
	}
	for code, kind := range map[uint32]StartupKind{CodeSSLRequest: KindSSLRequest, CodeGSSENCRequest: KindGSSENCRequest} {
		st, err := ReadStartup(bytes.NewReader(AppendStartupPacket(nil, code, nil)))
		if err != nil || st.Kind != kind {
			t.Fatalf("code %d: %+v %v", code, st, err)
		}
	}
	st, err = ReadStartup(bytes.NewReader(AppendCancelRequest(nil, 42, []byte{1, 2, 3, 4})))
	if err != nil || st.Kind != KindCancelRequest || st.ProcessID != 42 || !bytes.Equal(st.SecretKey, []byte{1, 2, 3, 4}) {
		t.Fatalf("cancel: %+v %v", st, err)
	}
	// What follows the packet stays unread.
	r := bytes.NewReader(append(AppendStartupPacket(nil, CodeSSLRequest, nil), 'X'))
	ReadStartup(r)
	if r.Len() != 1 {
		t.Fatalf("read past the packet: %d left", r.Len())
	}
}

func TestReadStartupRejects(t *testing.T) {
	bad := map[string][]byte{
		"http":          []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"short length":  {0, 0, 0, 4, 0, 3, 0, 0},
		"huge length":   {0x7f, 0, 0, 0, 0, 3, 0, 0},
		"unterminated":  AppendStartupPacket(nil, ProtocolVersion30, []byte("user\x00alice")),
		"no value":      AppendStartupPacket(nil, ProtocolVersion30, []byte("user\x00\x00")),
		"empty key":     AppendStartupPacket(nil, ProtocolVersion30, []byte("\x00x\x00\x00")),
		"ssl with body": AppendStartupPacket(nil, CodeSSLRequest, []byte{1}),
		"short cancel":  AppendStartupPacket(nil, CodeCancelRequest, []byte{1, 2}),
	}
	for name, b := range bad {
		_, err := ReadStartup(bytes.NewReader(b))
		if !errors.Is(err, ErrStartupMalformed) {
			t.Errorf("%s: want ErrStartupMalformed, got %v", name, err)
		}
	}
	if _, err := ReadStartup(bytes.NewReader([]byte{0, 0, 0, 20, 0, 3, 0, 0, 'u'})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: got %v", err)
	}
}

func TestReaderFraming(t *testing.T) {
	var in []byte
	in = AppendHeader(in, 'Q', 9)
	in = append(in, "SELECT 1\x00"...)
	big := bytes.Repeat([]byte("x"), 10000)
	in = AppendHeader(in, 'd', len(big))
	in = append(in, big...)
	in = AppendHeader(in, 'S', 0)
	r := NewReader(bytes.NewReader(in), 64, 1<<20)
	var out bytes.Buffer
	w := bufio.NewWriter(&out)
	for {
		typ, n, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if typ == 'd' && n != len(big) {
			t.Fatalf("CopyData length %d", n)
		}
		if err := r.Relay(w, n); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatal("relayed bytes differ from the input")
	}
	// Limits.
	for name, b := range map[string][]byte{
		"too large": binary.BigEndian.AppendUint32([]byte{'Q'}, 1<<20+5),
		"too small": binary.BigEndian.AppendUint32([]byte{'Q'}, 3),
	} {
		r := NewReader(bytes.NewReader(b), 4096, 1<<20)
		if _, _, err := r.Next(); !errors.Is(err, ErrMessageTooLarge) && !errors.Is(err, ErrMessageMalformed) {
			t.Errorf("%s: got %v", name, err)
		}
	}
}

// errWriter fails every write.
type errWriter struct{}

func (errWriter) Write(p []byte) (int, error) { return 0, errors.New("gone") }

// TestRelayKeepsStep: when the destination fails, Relay still consumes the
// whole message, so the next one can be read.
func TestRelayKeepsStep(t *testing.T) {
	var in []byte
	in = AppendHeader(in, 'D', 5000)
	in = append(in, bytes.Repeat([]byte("y"), 5000)...)
	in = append(AppendHeader(in, 'Z', 1), 'I')
	r := NewReader(bytes.NewReader(in), 16, 1<<20)
	_, n, _ := r.Next()
	var we *WriteError
	if err := r.Relay(bufio.NewWriterSize(errWriter{}, 16), n); !errors.As(err, &we) {
		t.Fatalf("want WriteError, got %v", err)
	}
	if r.InMessage() {
		t.Fatal("reader left inside the message")
	}
	typ, n, err := r.Next()
	if err != nil || typ != 'Z' || n != 1 {
		t.Fatalf("next message: %q %d %v", typ, n, err)
	}
}
