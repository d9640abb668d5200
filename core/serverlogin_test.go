package core

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/protocol"
)

// serverLogin runs l against a server that authenticates it as a does, and
// reports how it ended: nil once the server said AuthenticationOk, else
// the server's refusal or the login's own error.
func serverLogin(t *testing.T, l *ServerLogin, a *ClientAuth, secret auth.Secret) error {
	t.Helper()
	for st := a.Begin(secret, true); ; {
		var answer []byte
		for out := st.Out; len(out) > 0; {
			n := int(binary.BigEndian.Uint32(out[1:]))
			reply, done, err := l.Take(out[0], out[protocol.HeaderLen:1+n])
			if err != nil {
				return err
			}
			if done {
				t.Fatal("done at an authentication request")
			}
			answer = append(answer, reply...)
			out = out[1+n:]
		}
		if st.Err != nil {
			return st.Err
		}
		if st.Done {
			return nil
		}
		if answer == nil {
			return errors.New("no answer")
		}
		if err := a.Header(answer[0], len(answer)-protocol.HeaderLen); err != nil {
			return err
		}
		st = a.Answer(answer[protocol.HeaderLen:])
	}
}

// TestServerLogin logs pgmux in with each credential against each way a
// server proves it, the server being core.ClientAuth, which checks answers
// as PostgreSQL does.
func TestServerLogin(t *testing.T) {
	plain, err := auth.ParseSecret("alice", "secret")
	if err != nil {
		t.Fatal(err)
	}
	// The keys a client's SCRAM proof reveals, for pass-through.
	first := NewClientAuth(AuthFor{Method: "scram-sha-256", User: "alice"})
	if err := serverLogin(t, &ServerLogin{User: "alice", Cred: ServerCred{Password: "secret"}}, first, plain); err != nil {
		t.Fatal(err)
	}
	keys := first.Proved()
	tests := []struct {
		name   string
		method string
		cred   ServerCred
		failed string // the SQLSTATE the server refuses with, or "none" for pgmux's own failure
	}{
		{name: "md5 with the password", method: "md5", cred: ServerCred{Password: "secret"}},
		{name: "md5 with the hash", method: "md5", cred: ServerCred{MD5: plain.MD5}},
		{name: "md5 with a wrong hash", method: "md5", cred: ServerCred{MD5: auth.MD5Secret("alice", "guess")}, failed: "28P01"},
		{name: "md5 without a secret", method: "md5", cred: ServerCred{Keys: keys}, failed: "none"},
		{name: "SCRAM with the password", method: "scram-sha-256", cred: ServerCred{Password: "secret"}},
		{name: "SCRAM with a client's keys", method: "scram-sha-256", cred: ServerCred{Keys: keys}},
		{name: "SCRAM with a wrong password", method: "scram-sha-256", cred: ServerCred{Password: "guess"}, failed: "28P01"},
		{name: "SCRAM with only a hash", method: "scram-sha-256", cred: ServerCred{MD5: plain.MD5}, failed: "none"},
		{name: "trust", method: "trust"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &ServerLogin{User: "alice", Database: "app", Cred: tt.cred}
			err := serverLogin(t, l, NewClientAuth(AuthFor{Method: tt.method, User: "alice"}), plain)
			var pgErr *protocol.PgError
			switch {
			case tt.failed == "" && err != nil:
				t.Fatal(err)
			case tt.failed == "none" && err == nil:
				t.Fatal("logged in without a secret")
			case tt.failed != "" && tt.failed != "none" && (!errors.As(err, &pgErr) || pgErr.Code != tt.failed):
				t.Fatalf("error %v, want %s", err, tt.failed)
			}
		})
	}
}

// After authentication, the server's parameters, key and first
// ReadyForQuery end the login; an ErrorResponse is the login's error.
func TestServerLoginEnd(t *testing.T) {
	l := &ServerLogin{User: "alice", Database: "app"}
	for _, m := range []struct {
		typ  byte
		body string
	}{
		{'R', "\x00\x00\x00\x00"},
		{'S', "TimeZone\x00UTC\x00"},
		{'S', "DateStyle\x00ISO, MDY\x00"},
		{'K', "\x00\x00\x30\x39key!"},
		{'N', "SNOTICE\x00\x00"},
	} {
		if out, done, err := l.Take(m.typ, []byte(m.body)); out != nil || done || err != nil {
			t.Fatalf("%q: %q %v %v", m.typ, out, done, err)
		}
	}
	if _, done, err := l.Take('Z', []byte("I")); !done || err != nil {
		t.Fatalf("ReadyForQuery: done %v, %v", done, err)
	}
	s := l.Server()
	if l.PID != 12345 || string(l.Key) != "key!" || s.TxStatus != 'I' {
		t.Fatalf("pid %d key %q status %q", l.PID, l.Key, s.TxStatus)
	}
	if p := s.Settings.Params(); len(p) != 2 {
		t.Fatalf("parameters %v", p)
	}
	e := protocol.Fatal(protocol.CodeInvalidCatalogName, `database "app" does not exist`).AppendTo(nil)
	var pgErr *protocol.PgError
	if _, _, err := l.Take('E', e[protocol.HeaderLen:]); !errors.As(err, &pgErr) || pgErr.Code != protocol.CodeInvalidCatalogName {
		t.Fatalf("ErrorResponse: %v", err)
	}
	for name, body := range map[string]string{
		"short request":          "\x00\x00",
		"unknown method":         "\x00\x00\x00\x07",
		"SASL out of turn":       "\x00\x00\x00\x0bdata",
		"SASL final first":       "\x00\x00\x00\x0cdata",
		"cleartext, no password": "\x00\x00\x00\x03",
	} {
		if _, _, err := (&ServerLogin{User: "alice"}).Take('R', []byte(body)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if out, _, err := (&ServerLogin{Cred: ServerCred{Password: "pw"}}).Take('R', []byte("\x00\x00\x00\x03")); err != nil || string(out) != "p\x00\x00\x00\x07pw\x00" {
		t.Fatalf("cleartext: %q %v", out, err)
	}
}

func TestServerEncryption(t *testing.T) {
	for _, tt := range []struct {
		answer   byte
		required bool
		useTLS   bool
		err      bool
	}{
		{'S', true, true, false},
		{'S', false, true, false},
		{'N', false, false, false},
		{'N', true, false, true},
		{'E', false, false, true},
	} {
		useTLS, err := ServerEncryption(tt.answer, tt.required)
		if useTLS != tt.useTLS || (err != nil) != tt.err {
			t.Errorf("%q required %v: TLS %v, %v", tt.answer, tt.required, useTLS, err)
		}
	}
}

// FuzzServerLogin feeds a server's login messages, whatever they hold, to
// a login with each credential: an answer, an error or the end, and never
// a panic.
func FuzzServerLogin(f *testing.F) {
	f.Add(byte('R'), []byte("\x00\x00\x00\x05salt"))
	f.Add(byte('R'), []byte("\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"))
	f.Add(byte('R'), []byte("\x00\x00\x00\x0br=x,s=c2FsdA==,i=1"))
	f.Add(byte('K'), []byte("\x00\x00\x00\x01"))
	f.Add(byte('S'), []byte("a\x00b"))
	f.Add(byte('E'), []byte("SFATAL\x00"))
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		for _, c := range []ServerCred{{Password: "pw"}, {MD5: auth.MD5Secret("alice", "pw")}, {Keys: &auth.ScramKeys{ClientKey: make([]byte, 32), ServerKey: make([]byte, 32)}}, {}} {
			l := &ServerLogin{User: "alice", Cred: c}
			// A SASL exchange begun, so that its later steps are reached too.
			l.Take('R', []byte("\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"))
			l.Take(typ, body)
			l.Server()
		}
	})
}
