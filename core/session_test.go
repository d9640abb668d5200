package core

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/prepared"
)

// A conversation is fed to a Session as a driver feeds it: client messages
// as they are sent (rewritten by the mapping when they name a statement),
// server messages as they arrive; each server message's Reply is checked.

// turn is one message of a conversation.
type turn struct {
	client bool   // sent by the client, else by the server
	typ    byte   // its type
	body   string // its body
	on     *Server
	// For a server message: what the client gets ("" as it is; "-"
	// nothing; else the message's type and body), and what follows.
	want    string
	ready   bool
	release bool
	code    string
	copyIn  bool // the server waits for COPY data after it
}

func send(typ byte, body string) turn { return turn{client: true, typ: typ, body: body} }
func answer(typ byte, body string, want string) turn {
	return turn{typ: typ, body: body, want: want}
}
func ready(status byte, release bool) turn {
	return turn{typ: 'Z', body: string(status), want: "Z" + string(status), ready: true, release: release}
}

// converse feeds turns to s, on srv unless a turn names another server.
func converse(t *testing.T, s *Session, srv *Server, turns []turn) {
	t.Helper()
	for i, tn := range turns {
		on := srv
		if tn.on != nil {
			on = tn.on
		}
		if tn.client {
			body := []byte(tn.body)
			rewritten := s.Mapping && len(body) > 0 && prepared.NamesStatement(tn.typ, body, len(body))
			if rewritten {
				s.PS.Rewrite(&on.Prepared, tn.typ, body, nil)
			}
			unnamed := tn.typ == 'P' && len(body) > 0 && body[0] == 0
			if s.Sent(tn.typ, unnamed, rewritten) {
				s.PS.Sent(1)
			}
			continue
		}
		r := Reply{}
		if Looks(on, tn.typ, s.Mapping) {
			var err error
			if r, err = s.FromServer(on, tn.typ, []byte(tn.body), s.Mapping); err != nil {
				t.Fatalf("turn %d (%c): %v", i, tn.typ, err)
			}
		}
		got := ""
		switch {
		case r.Drop:
			got = "-"
		case r.Out != nil && r.Out[0] == 'Z':
			got = "Z" + string(r.Out[5:])
		case r.Out != nil:
			got = string(r.Out[:1]) + string(r.Out[5:])
		}
		if got != tn.want || r.Ready != tn.ready || r.Release != tn.release || r.Code != tn.code || on.CopyIn != tn.copyIn {
			t.Fatalf("turn %d (%c): client gets %q, ready %v, release %v, code %q, copy in %v; want %q, %v, %v, %q, %v",
				i, tn.typ, got, r.Ready, r.Release, r.Code, on.CopyIn, tn.want, tn.ready, tn.release, tn.code, tn.copyIn)
		}
	}
}

func errorBody(code, msg string) string {
	b, _ := (&pgproto3.ErrorResponse{Severity: "ERROR", Code: code, Message: msg}).Encode(nil)
	return string(b[5:])
}

// serverError is an ErrorResponse body as PostgreSQL writes one.
func serverError(code, msg string) string {
	b, _ := (&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg}).Encode(nil)
	return string(b[5:])
}

func parseBody(name, query string) string { return name + "\x00" + query + "\x00\x00\x00" }
func bindBody(stmt string) string         { return "\x00" + stmt + "\x00\x00\x00\x00\x00\x00\x00" }

func TestFromServer(t *testing.T) {
	other := &Server{TxStatus: 'I', Settings: NewServerSettings(nil)}
	copyIn := func(tn turn) turn { tn.copyIn = true; return tn }
	onOther := func(tn turn) turn { tn.on = other; return tn }
	tests := []struct {
		name    string
		session bool // session mode: the server is never released
		mapping bool
		turns   []turn
	}{
		{name: "simple query", turns: []turn{
			send('Q', "SELECT 1\x00"),
			answer('T', "…", ""), answer('D', "…", ""), answer('C', "SELECT 1\x00", ""),
			ready('I', true),
		}},
		{name: "session mode keeps the server", session: true, turns: []turn{
			send('Q', "SELECT 1\x00"), answer('C', "SELECT 1\x00", ""), ready('I', false),
		}},
		{name: "extended protocol up to Sync", turns: []turn{
			send('P', parseBody("", "SELECT 1")), send('B', bindBody("")), send('E', "\x00\x00\x00\x00\x00"),
			send('S', ""),
			answer('1', "", ""), answer('2', "", ""), answer('D', "…", ""), answer('C', "SELECT 1\x00", ""),
			ready('I', true),
		}},
		{name: "a pipeline of several Syncs", turns: []turn{
			send('Q', "BEGIN\x00"), send('Q', "SELECT 1\x00"), send('Q', "COMMIT\x00"),
			ready('T', false), ready('T', false), ready('I', true),
		}},
		{name: "COPY FROM STDIN", turns: []turn{
			send('Q', "COPY t FROM STDIN\x00"),
			copyIn(answer('G', "\x00\x00\x00", "")),
			send('d', "1\n"), send('c', ""),
			answer('C', "COPY 1\x00", ""),
			ready('I', true),
		}},
		{name: "COPY TO STDOUT", turns: []turn{
			send('Q', "COPY t TO STDOUT\x00"),
			answer('H', "\x00\x00\x00", ""), answer('d', "1\n", ""), answer('c', "", ""), answer('C', "COPY 1\x00", ""),
			ready('I', true),
		}},
		{name: "an error ends COPY FROM STDIN", turns: []turn{
			send('Q', "COPY t FROM STDIN\x00"),
			copyIn(answer('G', "\x00\x00\x00", "")),
			send('d', "x\n"), send('c', ""),
			{typ: 'E', body: errorBody("22P02", "invalid input"), code: "22P02"},
			ready('I', true),
		}},
		{name: "an error inside a transaction", turns: []turn{
			send('Q', "BEGIN\x00"), ready('T', false),
			send('Q', "SELECT nope\x00"), {typ: 'E', body: errorBody("42703", "no column"), code: "42703"},
			ready('E', false),
			send('Q', "ROLLBACK\x00"), ready('I', true),
		}},
		{name: "re-Parse of a prepared statement on another server", mapping: true, turns: []turn{
			send('P', parseBody("s1", "SELECT 1")), send('S', ""),
			answer('1', "", "1"), ready('I', true),
			// The next transaction gets another server, which lacks s1:
			// its Parse goes first, and its answer to no one.
			onOther(send('B', bindBody("s1"))), onOther(send('E', "\x00\x00\x00\x00\x00")), onOther(send('S', "")),
			onOther(answer('1', "", "-")), onOther(answer('2', "", "")), onOther(answer('C', "SELECT 1\x00", "")),
			onOther(ready('I', true)),
		}},
		{name: "a duplicate Parse gets 42P05", mapping: true, turns: []turn{
			send('P', parseBody("s1", "SELECT 1")), send('P', parseBody("s1", "SELECT 2")), send('S', ""),
			answer('1', "", "1"),
			{typ: 'E', body: errorBody("42601", `syntax error at or near "pgmux_duplicate_prepared_statement"`),
				code: "42601", want: "E" + serverError("42P05", `prepared statement "s1" already exists`)},
			ready('I', true),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Session{Pooled: !tt.session, Mapping: tt.mapping}
			s.PS.Counters = new(prepared.Counters)
			*other = Server{TxStatus: 'I', Settings: NewServerSettings(nil)}
			converse(t, s, &Server{TxStatus: 'I', Settings: NewServerSettings(nil)}, tt.turns)
		})
	}
}

// TestFromServerSettings: a ParameterStatus is noted on the server and, for a
// setting that follows its client, in what the client wants.
func TestFromServerSettings(t *testing.T) {
	s := &Session{Pooled: true, Want: NewWanted(map[string]string{"application_name": "a"})}
	srv := &Server{TxStatus: 'I', Settings: NewServerSettings(map[string]string{"TimeZone": "UTC"})}
	converse(t, s, srv, []turn{
		send('Q', "SET TIME ZONE 'Europe/Paris'\x00"),
		answer('S', "TimeZone\x00Europe/Paris\x00", ""),
		answer('C', "SET\x00", ""),
		ready('I', true),
	})
	if v, _ := s.Want.Get("timezone"); v != "Europe/Paris" {
		t.Fatalf("the client wants TimeZone %q", v)
	}
	if srv.TxStatus != 'I' {
		t.Fatalf("status %c", srv.TxStatus)
	}
}

// TestFromServerBadReady: a ReadyForQuery that is not one status byte is a
// broken server.
func TestFromServerBadReady(t *testing.T) {
	s := &Session{Pooled: true}
	if _, err := s.FromServer(&Server{}, 'Z', []byte("II"), false); err == nil {
		t.Fatal("a two-byte ReadyForQuery accepted")
	}
	if ready, err := (&Server{}).Note('Z', nil); !ready || err == nil {
		t.Fatal("Note took an empty ReadyForQuery")
	}
	if !strings.HasPrefix(ErrorCode([]byte(errorBody("57014", "canceled"))), "57014") {
		t.Fatal("ErrorCode")
	}
}

// TestFromServerFatal: a server's FATAL error reaches the client as it is
// and marks the server as ending, so that its client is not told twice.
func TestFromServerFatal(t *testing.T) {
	s := &Session{Pooled: true}
	srv := &Server{TxStatus: 'I'}
	b, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "57P01",
		Message: "terminating connection due to administrator command"}).Encode(nil)
	r, err := s.FromServer(srv, 'E', b[5:], false)
	if err != nil || r.Out != nil || r.Drop || r.Code != "57P01" || !srv.Closing {
		t.Fatalf("reply %+v, err %v, closing %v", r, err, srv.Closing)
	}
	other := &Server{TxStatus: 'I'}
	if s.FromServer(other, 'E', []byte(errorBody("42703", "no column")), false); other.Closing {
		t.Fatal("an ERROR taken for the end of the server")
	}
}

// What the session sees of a client message before it goes to the server,
// and what it makes of it.
func TestPeekLooked(t *testing.T) {
	pooled := Session{Pooled: true, Mapping: true}
	plain := Session{}
	for _, c := range []struct {
		name   string
		s      *Session
		typ    byte
		n      int
		traced bool
		want   int
	}{
		{"a query's text, for the session state", &pooled, 'Q', 5000, false, 1000},
		{"a short query whole", &pooled, 'Q', 20, false, 20},
		{"a Bind's names and more", &pooled, 'B', 500, false, 500},
		{"session mode: a Parse's start only", &plain, 'P', 500, false, 64},
		{"session mode, traced: the Parse's text", &plain, 'P', 500, true, 500},
		{"session mode: nothing of a Query", &plain, 'Q', 500, false, 0},
		{"a Describe's start", &pooled, 'D', 100, false, 64},
		{"an Execute: nothing", &pooled, 'E', 9, false, 0},
	} {
		if got := c.s.Peek(c.typ, c.n, c.traced, 1000); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	for _, c := range []struct {
		name            string
		typ             byte
		head            string
		n               int
		unnamed, mapped bool
	}{
		{"unnamed Parse", 'P', "\x00SELECT 1\x00", 10, true, false},
		{"named Parse", 'P', "s1\x00SELECT 1\x00", 12, false, true},
		{"Bind of the unnamed statement", 'B', "\x00\x00", 20, false, false},
		{"Bind of a named statement", 'B', "\x00s1\x00", 20, false, true},
		{"Describe of a portal", 'D', "Pp\x00", 3, false, false},
		{"Close of a statement", 'C', "Ss1\x00", 4, false, true},
		{"a Parse not seen", 'P', "", 10, false, true},
		{"a Query", 'Q', "SELECT 1\x00", 9, false, false},
	} {
		unnamed, mapped := pooled.Looked(c.typ, []byte(c.head), c.n)
		if unnamed != c.unnamed || mapped != c.mapped {
			t.Errorf("%s: unnamed %v mapped %v", c.name, unnamed, mapped)
		}
	}
	if _, mapped := plain.Looked('P', []byte("s1\x00"), 3); mapped {
		t.Error("mapped with the mapping off")
	}
}
