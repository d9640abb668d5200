package core

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/protocol"
)

// authClient answers a ClientAuth's requests as a client with password
// does, and reports how the exchange ended: the step that ended it, the
// authentication requests the client saw and whether a step warned.
func authClient(t *testing.T, a *ClientAuth, secret auth.Secret, known bool, password string) (st AuthStep, seen []uint32, warned bool) {
	t.Helper()
	var scram *auth.ScramClient
	body := func(m pgproto3.FrontendMessage) []byte {
		b, err := m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b[protocol.HeaderLen:]
	}
	st = a.Begin(secret, known)
	for {
		warned = warned || st.Warn != ""
		var answer []byte
		for out := st.Out; len(out) > 0; {
			typ, l := out[0], int(binary.BigEndian.Uint32(out[1:]))
			msg := out[protocol.HeaderLen : 1+l]
			out = out[1+l:]
			if typ != 'R' {
				t.Fatalf("message %q during authentication", typ)
			}
			code := binary.BigEndian.Uint32(msg)
			seen = append(seen, code)
			switch code {
			case 5:
				answer = body(&pgproto3.PasswordMessage{Password: auth.MD5Response(auth.MD5Secret("alice", password), [4]byte(msg[4:8]))})
			case 10:
				scram = auth.NewScramClient(password)
				answer = body(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: scram.First()})
			case 11:
				final, err := scram.Final(msg[4:])
				if err != nil {
					t.Fatal(err)
				}
				answer = body(&pgproto3.SASLResponse{Data: final})
			case 12:
				if err := scram.Verify(msg[4:]); err != nil {
					t.Fatalf("the server's signature: %v", err)
				}
			}
		}
		if st.Done || st.Err != nil {
			return st, seen, warned
		}
		if answer == nil {
			t.Fatalf("nothing to answer in %q", st.Out)
		}
		if err := a.Header('p', len(answer)); err != nil {
			t.Fatal(err)
		}
		st = a.Answer(answer)
	}
}

func TestClientAuth(t *testing.T) {
	plain, err := auth.ParseSecret("alice", "secret")
	if err != nil {
		t.Fatal(err)
	}
	md5Only := auth.Secret{MD5: plain.MD5}
	scramOnly := auth.Secret{SCRAM: plain.SCRAM}
	tests := []struct {
		name     string
		f        AuthFor
		secret   auth.Secret
		known    bool
		password string
		code     string   // the refusal's SQLSTATE, "" when authenticated
		seen     []uint32 // the authentication requests the client saw
		warn     bool
		proved   bool
	}{
		{name: "trust", f: AuthFor{Method: "trust"}, seen: []uint32{0}},
		{name: "empty method is trust", f: AuthFor{}, seen: []uint32{0}},
		{name: "cert naming the user", f: AuthFor{Method: "cert", CertNames: true}, seen: []uint32{0}},
		{name: "cert naming another", f: AuthFor{Method: "cert"}, code: "28000"},
		{name: "hba reject", f: AuthFor{Method: "reject", Host: "10.0.0.1"}, code: "28000"},
		{name: "unknown method", f: AuthFor{Method: "ident"}, code: "XX000"},
		{name: "md5", f: AuthFor{Method: "md5"}, secret: plain, known: true, password: "secret", seen: []uint32{5, 0}},
		{name: "md5, wrong password", f: AuthFor{Method: "md5"}, secret: plain, known: true, password: "guess", code: "28P01", seen: []uint32{5}},
		{name: "md5, unknown user", f: AuthFor{Method: "md5"}, password: "secret", code: "28P01", seen: []uint32{5}},
		{name: "md5 with a SCRAM secret gets SCRAM", f: AuthFor{Method: "md5"}, secret: scramOnly, known: true, password: "secret",
			seen: []uint32{10, 11, 12, 0}, proved: true},
		{name: "scram", f: AuthFor{Method: "scram-sha-256"}, secret: plain, known: true, password: "secret",
			seen: []uint32{10, 11, 12, 0}, proved: true},
		{name: "scram, wrong password", f: AuthFor{Method: "scram-sha-256"}, secret: plain, known: true, password: "guess",
			code: "28P01", seen: []uint32{10, 11}},
		{name: "scram, unknown user goes the whole way", f: AuthFor{Method: "scram-sha-256", MockNonce: []byte("n")}, password: "secret",
			code: "28P01", seen: []uint32{10, 11}},
		{name: "scram with only an md5 secret", f: AuthFor{Method: "scram-sha-256", MockNonce: []byte("n")}, secret: md5Only, known: true,
			password: "secret", code: "28P01", seen: []uint32{10, 11}, warn: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f.User = "alice"
			a := NewClientAuth(tt.f)
			st, seen, warned := authClient(t, a, tt.secret, tt.known, tt.password)
			if wantFatal(t, st.Err, tt.code); tt.code == "" && !st.Done {
				t.Fatal("not authenticated")
			}
			if len(seen) != len(tt.seen) {
				t.Fatalf("requests %v, want %v", seen, tt.seen)
			}
			for i := range seen {
				if seen[i] != tt.seen[i] {
					t.Fatalf("requests %v, want %v", seen, tt.seen)
				}
			}
			if (a.Proved() != nil) != tt.proved {
				t.Fatalf("proved %v, want %v", a.Proved(), tt.proved)
			}
			if warned != tt.warn {
				t.Fatalf("warned %v, want %v", warned, tt.warn)
			}
		})
	}
}

func TestClientAuthHeader(t *testing.T) {
	a := NewClientAuth(AuthFor{Method: "md5", User: "alice"})
	var pgErr *protocol.PgError
	if err := a.Header('Q', 10); !errors.As(err, &pgErr) || pgErr.Code != "08P01" {
		t.Fatalf("a query for a password: %v", err)
	}
	if err := a.Header('p', protocol.MaxStartupPacketLen+1); !errors.As(err, &pgErr) || pgErr.Code != "08P01" {
		t.Fatalf("a password response too long: %v", err)
	}
	if err := a.Header('p', 40); err != nil {
		t.Fatal(err)
	}
}

// A client whose SCRAM answer is malformed is told 08P01, not 28P01.
func TestClientAuthMalformedSASL(t *testing.T) {
	plain, _ := auth.ParseSecret("alice", "secret")
	for name, answer := range map[string][]byte{
		"initial response":     {0xff},
		"unknown mechanism":    append([]byte("SCRAM-SHA-1\x00"), 0, 0, 0, 1, 'x'),
		"client-first-message": append([]byte("SCRAM-SHA-256\x00"), 0, 0, 0, 3, 'x', 'y', 'z'),
	} {
		a := NewClientAuth(AuthFor{Method: "scram-sha-256", User: "alice"})
		a.Begin(plain, true)
		var pgErr *protocol.PgError
		if st := a.Answer(answer); !errors.As(st.Err, &pgErr) || pgErr.Code != "08P01" {
			t.Errorf("%s: %v", name, st.Err)
		}
	}
}

// FuzzClientAuth feeds a client's answers, whatever they hold, to md5 and
// SCRAM exchanges: each step is an answer to send or a FATAL error with a
// SQLSTATE, and no answer authenticates an unknown password.
func FuzzClientAuth(f *testing.F) {
	f.Add("md5", []byte("md5d41d8cd98f00b204e9800998ecf8427e\x00"), []byte{})
	f.Add("scram-sha-256", []byte("SCRAM-SHA-256\x00\x00\x00\x00\x20n,,n=,r=abcdefghijklmnopqrstuvwx"), []byte("c=biws,r=x,p=AAAA"))
	f.Add("scram-sha-256", []byte("SCRAM-SHA-256-PLUS\x00\xff\xff\xff\xff"), []byte(nil))
	plain, err := auth.ParseSecret("alice", "secret")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method string, first, second []byte) {
		a := NewClientAuth(AuthFor{Method: method, User: "alice", CBind: []byte("end point")})
		st := a.Begin(plain, true)
		for _, answer := range [][]byte{first, second} {
			if st.Done || st.Err != nil {
				break
			}
			st = a.Answer(answer)
		}
		var pgErr *protocol.PgError
		switch {
		case st.Err != nil && (!errors.As(st.Err, &pgErr) || pgErr.Severity != "FATAL" || len(pgErr.Code) != 5):
			t.Fatalf("error %v is not a FATAL with a SQLSTATE", st.Err)
		case st.Done && (method == "md5" || method == "scram-sha-256"):
			t.Fatalf("%s authenticated without the password", method)
		}
	})
}
