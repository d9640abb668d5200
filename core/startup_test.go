package core

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/pgmux/pgmux/protocol"
)

func TestParseStartup(t *testing.T) {
	p := func(kv ...string) []protocol.Param {
		var out []protocol.Param
		for i := 0; i < len(kv); i += 2 {
			out = append(out, protocol.Param{Key: kv[i], Value: kv[i+1]})
		}
		return out
	}
	tests := []struct {
		name      string
		major     uint16
		minor     uint16
		params    []protocol.Param
		code      string // the error's SQLSTATE, "" for none
		negotiate bool
		user, db  string
		settings  map[string]string
	}{
		{name: "user and database", major: 3, params: p("user", "alice", "database", "app"),
			user: "alice", db: "app", settings: map[string]string{}},
		{name: "database defaults to the user", major: 3, params: p("user", "alice"),
			user: "alice", db: "alice", settings: map[string]string{}},
		{name: "settings lower-cased, options read", major: 3,
			params: p("user", "a", "DateStyle", "ISO", "options", `-c search_path=s1 --statement-timeout=5s -c x=a\ b`),
			user:   "a", db: "a", settings: map[string]string{"datestyle": "ISO", "search_path": "s1", "statement_timeout": "5s", "x": "a b"}},
		{name: "3.2 is offered 3.0", major: 3, minor: 2, params: p("user", "a"), negotiate: true,
			user: "a", db: "a", settings: map[string]string{}},
		{name: "protocol options are named back", major: 3, params: p("user", "a", "_pq_.x", "1"), negotiate: true,
			user: "a", db: "a", settings: map[string]string{}},
		{name: "protocol 2", major: 2, params: p("user", "a"), code: "0A000"},
		{name: "no user", major: 3, params: p("database", "d"), code: "28000"},
		{name: "no user, after negotiating", major: 3, minor: 2, params: p("database", "d"), code: "28000", negotiate: true},
		{name: "replication", major: 3, params: p("user", "a", "replication", "database"), code: "0A000"},
		{name: "replication off", major: 3, params: p("user", "a", "replication", "off"),
			user: "a", db: "a", settings: map[string]string{}},
		{name: "another switch in options", major: 3, params: p("user", "a", "options", "-F"), code: "0A000"},
		{name: "a setting without a value", major: 3, params: p("user", "a", "options", "-c x"), code: "08P01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lg, err := ParseStartup(&protocol.Startup{Kind: protocol.KindStartup, MajorVersion: tt.major, MinorVersion: tt.minor, Params: tt.params})
			wantFatal(t, err, tt.code)
			if (lg.Negotiate != nil) != tt.negotiate {
				t.Fatalf("negotiate %q, want %v", lg.Negotiate, tt.negotiate)
			}
			if tt.code != "" {
				return
			}
			if lg.User != tt.user || lg.Database != tt.db || !maps.Equal(lg.Settings, tt.settings) {
				t.Fatalf("%+v, want %s %s %v", lg, tt.user, tt.db, tt.settings)
			}
		})
	}
}

// wantFatal fails t unless err is nil where code is "", or else a FATAL
// error with SQLSTATE code.
func wantFatal(t *testing.T, err error, code string) {
	t.Helper()
	var pgErr *protocol.PgError
	switch {
	case code == "" && err != nil:
		t.Fatalf("error %v", err)
	case code != "" && (!errors.As(err, &pgErr) || pgErr.Code != code || pgErr.Severity != "FATAL"):
		t.Fatalf("error %v, want FATAL %s", err, code)
	}
}

func TestWait(t *testing.T) {
	tests := []struct {
		name string
		s    WaitState
		wait Wait
		code string // what the session ends with when that wait times out
	}{
		{"idle, no timeouts", WaitState{TxStatus: 'I'}, WaitForever, "57P05"},
		{"idle", WaitState{TxStatus: 'I', IdleTimeout: true, TxTimeout: true}, WaitIdle, "57P05"},
		{"draining, idle", WaitState{Draining: true, TxStatus: 'I'}, WaitDrain, "57P01"},
		{"draining, in a transaction", WaitState{Draining: true, Held: true, Quiet: true, TxStatus: 'T'}, WaitForever, "25P03"},
		{"draining, in a transaction with its timeout", WaitState{Draining: true, Held: true, Quiet: true, TxStatus: 'T', TxTimeout: true}, WaitIdleInTx, "25P03"},
		{"draining, a query running", WaitState{Draining: true, Held: true, TxStatus: 'I'}, WaitForever, "57P05"},
		{"draining, session mode, between transactions", WaitState{Draining: true, Held: true, Session: true, Quiet: true, TxStatus: 'I'}, WaitDrain, "57P01"},
		{"idle in a transaction", WaitState{Held: true, Quiet: true, TxStatus: 'T', IdleTimeout: true, TxTimeout: true}, WaitIdleInTx, "25P03"},
		{"in a failed transaction", WaitState{Held: true, Quiet: true, TxStatus: 'E', TxTimeout: true}, WaitIdleInTx, "25P03"},
		{"a query running: the server is watched, not the client", WaitState{Held: true, TxStatus: 'T', IdleTimeout: true, TxTimeout: true}, WaitForever, "25P03"},
		{"session mode between transactions", WaitState{Held: true, Session: true, Quiet: true, TxStatus: 'I', IdleTimeout: true}, WaitIdle, "57P05"},
		{"session mode in a transaction", WaitState{Held: true, Session: true, Quiet: true, TxStatus: 'T', IdleTimeout: true}, WaitForever, "25P03"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Waiting(tt.s); got != tt.wait {
				t.Errorf("wait %v, want %v", got, tt.wait)
			}
			if err := Expired(tt.s); err.Code != tt.code || err.Severity != "FATAL" {
				t.Errorf("expired with %v, want FATAL %s", err, tt.code)
			}
		})
	}
}

// TestAnswerEncryption: an SSLRequest is answered S when client TLS is on
// and the connection is not encrypted yet, else N, as is every
// GSSENCRequest; bytes sent after an SSLRequest, before the handshake, and
// a fourth request are protocol violations.
func TestAnswerEncryption(t *testing.T) {
	for _, c := range []struct {
		name                  string
		ssl                   bool
		tries                 int
		tlsOn, inTLS, pending bool
		want                  Encrypt
		code                  string
	}{
		{"SSLRequest, TLS on", true, 0, true, false, false, EncryptTLS, ""},
		{"SSLRequest, TLS off", true, 0, false, false, false, EncryptNo, ""},
		{"SSLRequest, encrypted already", true, 1, true, true, false, EncryptNo, ""},
		{"GSSENCRequest, TLS on", false, 0, true, false, false, EncryptNo, ""},
		{"SSLRequest after GSSENCRequest", true, 1, true, false, false, EncryptTLS, ""},
		{"bytes after SSLRequest", true, 0, true, false, true, EncryptNo, "08P01"},
		{"bytes after SSLRequest, TLS off", true, 0, false, false, true, EncryptNo, ""},
		{"a fourth request", false, 3, false, false, false, EncryptNo, "08P01"},
	} {
		got, err := AnswerEncryption(c.ssl, c.tries, c.tlsOn, c.inTLS, c.pending)
		code := ""
		if pe, ok := err.(*protocol.PgError); ok {
			code = pe.Code
		} else if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got != c.want || code != c.code {
			t.Errorf("%s: %v %q, want %v %q", c.name, got, code, c.want, c.code)
		}
	}
}

func TestLoginAdjust(t *testing.T) {
	l := Login{Settings: map[string]string{"extra_float_digits": "2", "application_name": "app", "search_path": "s"}}
	l.Adjust([]string{"Extra_Float_Digits", "unknown"}, "10.0.0.7:5555")
	want := map[string]string{"application_name": "app - 10.0.0.7:5555", "search_path": "s"}
	if !maps.Equal(l.Settings, want) {
		t.Fatalf("settings %v, want %v", l.Settings, want)
	}
	l = Login{}
	l.Adjust(nil, "10.0.0.7:5555")
	if l.Settings["application_name"] != " - 10.0.0.7:5555" {
		t.Fatalf("no application_name: %q", l.Settings["application_name"])
	}
	l = Login{Settings: map[string]string{"application_name": "app"}}
	if l.Adjust(nil, ""); l.Settings["application_name"] != "app" {
		t.Fatal("application_name_add_host off changed the name")
	}
}

// A client is shown the server's parameters as its own settings make them.
func TestWelcome(t *testing.T) {
	want := NewWanted(map[string]string{"timezone": "Europe/Paris"})
	params := []Param{{Name: "DateStyle", Key: "datestyle", Value: "ISO, MDY"}, {Name: "TimeZone", Key: "timezone", Value: "UTC"}}
	b := Welcome(nil, params, &want, 42, 0x01020304)
	var got []string
	for len(b) > 0 {
		n := int(binary.BigEndian.Uint32(b[1:]))
		got = append(got, fmt.Sprintf("%c %q", b[0], b[protocol.HeaderLen:1+n]))
		b = b[1+n:]
	}
	wantMsgs := []string{`S "DateStyle\x00ISO, MDY\x00"`, `S "TimeZone\x00Europe/Paris\x00"`, `K "\x00\x00\x00*\x01\x02\x03\x04"`, `Z "I"`}
	if !slices.Equal(got, wantMsgs) {
		t.Fatalf("welcome %v, want %v", got, wantMsgs)
	}
}

func TestGate(t *testing.T) {
	negotiate := []byte{'v', 0, 0, 0, 8, 0, 0, 0, 0}
	lg := Login{User: "a", Database: "app", Negotiate: negotiate}
	bad := protocol.Fatal(protocol.CodeInvalidAuthorization, "no PostgreSQL user name specified in startup packet")
	open := Gate{Known: true}
	tests := []struct {
		name    string
		gate    Gate
		parsed  error
		code    string // the refusal's SQLSTATE, "" for none
		noBytes bool   // the client is not sent Negotiate first
	}{
		{name: "admitted", gate: open},
		{name: "TLS required, in the clear", gate: Gate{TLSRequired: "require", Known: true}, code: "28000", noBytes: true},
		{name: "TLS required, over TLS or a Unix socket", gate: Gate{TLSRequired: "verify-full", Secure: true, Known: true}},
		{name: "TLS first, then the limit", gate: Gate{TLSRequired: "require", OverLimit: true}, code: "28000", noBytes: true},
		{name: "max_client_conn", gate: Gate{OverLimit: true, Known: true}, code: "53300"},
		{name: "the limit before a bad packet", gate: Gate{OverLimit: true}, parsed: bad, code: "53300"},
		{name: "a bad packet before the database", gate: Gate{}, parsed: bad, code: "28000"},
		{name: "unknown database", gate: Gate{}, code: "3D000"},
		{name: "disabled database", gate: Gate{Known: true, Disabled: true}, code: "55000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := tt.gate.Check(lg, tt.parsed)
			wantFatal(t, err, tt.code)
			if want := !tt.noBytes; want != (string(out) == string(negotiate)) {
				t.Fatalf("sent first %q, want Negotiate: %v", out, want)
			}
		})
	}
}
