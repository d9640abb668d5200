package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Startup packet codes, from PostgreSQL's pqcomm.h.
const (
	ProtocolVersion30   = 3<<16 | 0
	CodeCancelRequest   = 1234<<16 | 5678
	CodeSSLRequest      = 1234<<16 | 5679
	CodeGSSENCRequest   = 1234<<16 | 5680
	MaxStartupPacketLen = 10000 // MAX_STARTUP_PACKET_LENGTH in PostgreSQL's pqcomm.h
)

// StartupKind says which of the packets that may open a connection was read.
type StartupKind uint8

const (
	KindStartup StartupKind = iota + 1
	KindSSLRequest
	KindGSSENCRequest
	KindCancelRequest
)

// Startup is the first packet of a connection.
type Startup struct {
	Kind StartupKind

	// Set for KindStartup.
	MajorVersion uint16
	MinorVersion uint16
	// Params holds the parameters in the order the client sent them, as
	// key/value pairs. Keys starting with "_pq_." are protocol options.
	Params []Param

	// Set for KindCancelRequest.
	ProcessID uint32
	SecretKey []byte
}

// Param is one startup parameter.
type Param struct{ Key, Value string }

// Get returns the value of the parameter key and whether it was given.
func (s *Startup) Get(key string) (string, bool) {
	for _, p := range s.Params {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// ErrStartupMalformed is wrapped by every error ReadStartup returns for bytes
// that are not a valid startup packet (as opposed to I/O errors).
var ErrStartupMalformed = errors.New("malformed startup packet")

// ReadStartup reads one startup packet from r. It never reads more than the
// packet's own length, so whatever follows stays in r.
func ReadStartup(r io.Reader) (*Startup, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:4]))
	if n < 8 || n > MaxStartupPacketLen {
		return nil, fmt.Errorf("%w: invalid length %d", ErrStartupMalformed, n)
	}
	code := binary.BigEndian.Uint32(hdr[4:8])
	body := make([]byte, n-8)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return ParseStartup(code, body)
}

// ParseStartup interprets a startup packet whose code and remaining body were
// already read.
func ParseStartup(code uint32, body []byte) (*Startup, error) {
	switch code {
	case CodeSSLRequest, CodeGSSENCRequest:
		if len(body) != 0 {
			return nil, fmt.Errorf("%w: request with a body", ErrStartupMalformed)
		}
		if code == CodeSSLRequest {
			return &Startup{Kind: KindSSLRequest}, nil
		}
		return &Startup{Kind: KindGSSENCRequest}, nil
	case CodeCancelRequest:
		// 3.0 keys are 4 bytes; 3.2 allows up to 256.
		if len(body) < 8 || len(body) > 4+256 {
			return nil, fmt.Errorf("%w: cancel request of %d bytes", ErrStartupMalformed, len(body)+8)
		}
		return &Startup{
			Kind:      KindCancelRequest,
			ProcessID: binary.BigEndian.Uint32(body[:4]),
			SecretKey: append([]byte(nil), body[4:]...),
		}, nil
	}
	s := &Startup{Kind: KindStartup, MajorVersion: uint16(code >> 16), MinorVersion: uint16(code)}
	if s.MajorVersion != 3 {
		// Leave the parameters unparsed: the caller rejects the version.
		return s, nil
	}
	// The body is a list of NUL-terminated key, value pairs ending with a NUL.
	if len(body) == 0 || body[len(body)-1] != 0 {
		return nil, fmt.Errorf("%w: parameters not terminated", ErrStartupMalformed)
	}
	rest := body[:len(body)-1]
	for len(rest) > 0 {
		k, after, ok := strings.Cut(string(rest), "\x00")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: invalid parameter list", ErrStartupMalformed)
		}
		v, after2, ok := strings.Cut(after, "\x00")
		if !ok {
			return nil, fmt.Errorf("%w: parameter %q has no value", ErrStartupMalformed, k)
		}
		s.Params = append(s.Params, Param{Key: k, Value: v})
		rest = rest[len(rest)-len(after2):]
	}
	return s, nil
}

// AppendCancelRequest appends a CancelRequest packet for the given backend key.
func AppendCancelRequest(dst []byte, pid uint32, key []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(12+len(key)))
	dst = binary.BigEndian.AppendUint32(dst, CodeCancelRequest)
	dst = binary.BigEndian.AppendUint32(dst, pid)
	return append(dst, key...)
}

// AppendStartupPacket appends a raw startup packet of the given code and body;
// tests use it to build SSLRequest, GSSENCRequest and malformed packets.
func AppendStartupPacket(dst []byte, code uint32, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(8+len(body)))
	dst = binary.BigEndian.AppendUint32(dst, code)
	return append(dst, body...)
}
