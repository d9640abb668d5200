package prepared

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// msg is one message of a rewrite, for the tests to read.
type msg struct {
	typ  byte
	body string
}

// split reads the messages in b, followed by rest (a tail of the last one).
func split(t *testing.T, b, rest []byte) []msg {
	t.Helper()
	b = append(append([]byte(nil), b...), rest...)
	var out []msg
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("cut header: %q", b)
		}
		l := int(binary.BigEndian.Uint32(b[1:]))
		if l < 4 || len(b) < 1+l {
			t.Fatalf("bad length %d in %q", l, b)
		}
		out = append(out, msg{b[0], string(b[5 : 1+l])})
		b = b[1+l:]
	}
	return out
}

func parseBody(name, query string) []byte { return []byte(name + "\x00" + query + "\x00\x00\x00") }
func bindBody(stmt string) []byte         { return []byte("\x00" + stmt + "\x00\x00\x00\x00\x00\x00\x00") }

var queryOne = "SELECT 1"

func newMapper() *Mapper { return &Mapper{Counters: new(Counters)} }

// TestReparseOnAnotherServer: a statement the client prepared on one server
// is prepared again, unseen, on the next server that is to bind it, under the
// same server name; a third server that has it gets the Bind alone.
func TestReparseOnAnotherServer(t *testing.T) {
	m := newMapper()
	var a, b Registry
	server := ServerName([]byte(queryOne + "\x00\x00\x00"))

	out, rest := m.Rewrite(&a, 'P', parseBody("s1", queryOne), nil)
	got := split(t, out, rest)
	if len(got) != 1 || got[0].typ != 'P' || !strings.HasPrefix(got[0].body, server+"\x00"+queryOne) {
		t.Fatalf("Parse on a: %q", got)
	}
	if r := m.Answer(&a, '1'); r != '1' {
		t.Fatalf("ParseComplete on a reached the client as %q", r)
	}
	m.Sent(1)
	m.Ready(&a)

	// The client's next transaction runs on b, which lacks the statement.
	m.Attach()
	out, rest = m.Rewrite(&b, 'B', bindBody("s1"), nil)
	got = split(t, out, rest)
	if len(got) != 2 || got[0].typ != 'P' || got[1].typ != 'B' {
		t.Fatalf("Bind on b: %q, want Parse then Bind", got)
	}
	if !strings.HasPrefix(got[0].body, server+"\x00") || !strings.HasPrefix(got[1].body, "\x00"+server+"\x00") {
		t.Fatalf("Bind on b names %q", got)
	}
	if r := m.Answer(&b, '1'); r != 0 {
		t.Fatalf("the injected Parse's answer reached the client as %q", r)
	}
	m.Sent(1)
	m.Ready(&b)
	if b.Len() != 1 || b.Pending() {
		t.Fatalf("b holds %d statements, pending %v", b.Len(), b.Pending())
	}

	// Back on a, which has it: the Bind alone.
	m.Attach()
	out, rest = m.Rewrite(&a, 'B', bindBody("s1"), nil)
	if got = split(t, out, rest); len(got) != 1 || got[0].typ != 'B' {
		t.Fatalf("Bind on a: %q, want the Bind alone", got)
	}
	s := m.Counters.Snapshot()
	if s.Prepared != 2 || s.Misses != 2 || s.Hits != 1 {
		t.Fatalf("counters %+v, want 2 prepared, 2 misses, 1 hit", s)
	}
}

// TestRewrite: each message a client may send, mapped, and what the client
// sees of the server's answers.
func TestRewrite(t *testing.T) {
	type step struct {
		typ    byte
		body   []byte
		want   string // the types sent, in order
		answer string // the server's ParseComplete/CloseComplete answers, one each
		seen   string // what the client sees of them ("-" for nothing)
	}
	server := ServerName([]byte(queryOne + "\x00\x00\x00"))
	tests := []struct {
		name    string
		prepare []string // statements already on the server
		steps   []step
	}{
		{"parse", nil, []step{{'P', parseBody("s1", queryOne), "P", "1", "1"}}},
		{"parse of a statement the server has", []string{server}, []step{{'P', parseBody("s1", queryOne), "C", "3", "1"}}},
		{"unnamed parse passes", nil, []step{{'P', parseBody("", queryOne), "P", "1", "1"}}},
		{"bind of an unknown name passes", nil, []step{{'B', bindBody("nope"), "B", "", ""}}},
		{"describe prepares first", nil, []step{
			{'P', parseBody("s1", queryOne), "P", "1", "1"},
			{'D', []byte("Ss1\x00"), "D", "", ""},
		}},
		{"close", nil, []step{
			{'P', parseBody("s1", queryOne), "P", "1", "1"},
			{'C', []byte("Ss1\x00"), "C", "3", "3"},
			{'B', bindBody("s1"), "B", "", ""}, // forgotten: the server says 26000
		}},
		{"close of a portal passes", nil, []step{{'C', []byte("Pp\x00"), "C", "3", "3"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMapper()
			var reg Registry
			for _, name := range tt.prepare {
				reg.add(name)
			}
			for i, s := range tt.steps {
				out, rest := m.Rewrite(&reg, s.typ, s.body, nil)
				var types string
				for _, g := range split(t, out, rest) {
					types += string(g.typ)
				}
				if types != s.want {
					t.Fatalf("step %d (%c): sent %q, want %q", i, s.typ, types, s.want)
				}
				var seen string
				for _, a := range []byte(s.answer) {
					if r := m.Answer(&reg, a); r == 0 {
						seen += "-"
					} else {
						seen += string(r)
					}
				}
				if seen != s.seen {
					t.Fatalf("step %d (%c): client sees %q, want %q", i, s.typ, seen, s.seen)
				}
			}
		})
	}
}

// TestSkippedAfterError: a Parse the server skipped after an error in its
// segment is forgotten by the client and the registry at ReadyForQuery; a
// Close it skipped is undone.
func TestSkippedAfterError(t *testing.T) {
	m := newMapper()
	var reg Registry
	m.Rewrite(&reg, 'P', parseBody("s1", queryOne), nil)
	m.Sent(1)
	m.Ready(&reg) // an ErrorResponse came instead of ParseComplete
	if reg.Len() != 0 {
		t.Fatal("the registry keeps a statement the server skipped")
	}
	if out, rest := m.Rewrite(&reg, 'B', bindBody("s1"), nil); len(split(t, out, rest)) != 1 {
		t.Fatal("the client still maps a statement whose Parse was skipped")
	}

	m.Rewrite(&reg, 'P', parseBody("s2", queryOne), nil)
	m.Answer(&reg, '1')
	m.Sent(1)
	m.Ready(&reg)
	m.Rewrite(&reg, 'C', []byte("Ss2\x00"), nil)
	m.Sent(1)
	m.Ready(&reg) // the Close skipped
	out, rest := m.Rewrite(&reg, 'B', bindBody("s2"), nil)
	if got := split(t, out, rest); len(got) != 1 || !strings.Contains(got[0].body, serverStmtPrefix) {
		t.Fatalf("after a skipped Close the Bind is %q, want it mapped", got)
	}
}

// TestDuplicateParse: a Parse of a name the client holds gets 42P05, as from
// PostgreSQL, in the place of the stand-in's syntax error.
func TestDuplicateParse(t *testing.T) {
	m := newMapper()
	var reg Registry
	m.Rewrite(&reg, 'P', parseBody("s1", queryOne), nil)
	m.Answer(&reg, '1')
	out, _ := m.Rewrite(&reg, 'P', parseBody("s1", "SELECT 2"), nil)
	if !strings.Contains(string(out), dupMarker) || !m.AwaitsDup() {
		t.Fatalf("duplicate Parse sent as %q", out)
	}
	serverErr, _ := (&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601",
		Message: `syntax error at or near "` + dupMarker + `"`}).Encode(nil)
	repl := m.DupError(serverErr[5:])
	var er pgproto3.ErrorResponse
	if repl == nil || er.Decode(repl[5:]) != nil || er.Code != "42P05" || !strings.Contains(er.Message, `"s1"`) {
		t.Fatalf("the client's error: %q", repl)
	}
	if m.AwaitsDup() {
		t.Fatal("still awaiting a duplicate's error")
	}
	other, _ := (&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601", Message: "syntax error"}).Encode(nil)
	if m.DupError(other[5:]) != nil {
		t.Fatal("another syntax error taken for the duplicate's")
	}
}

// TestLocalAndQuery: DEALLOCATE and DISCARD ALL answered without a server,
// and mapped for one.
func TestLocalAndQuery(t *testing.T) {
	tag := func(b []byte) string {
		if b[0] == 'E' {
			var er pgproto3.ErrorResponse
			er.Decode(b[5:])
			return er.Code
		}
		return strings.TrimRight(string(b[5:]), "\x00")
	}
	m := newMapper()
	var reg Registry
	m.Rewrite(&reg, 'P', parseBody("s1", queryOne), nil)
	m.Rewrite(&reg, 'P', parseBody("S2", queryOne), nil)
	for _, c := range []struct{ q, want string }{
		{"DEALLOCATE nope", "26000"},
		{`deallocate prepare "S2";`, "DEALLOCATE"},
		{"DEALLOCATE s1", "DEALLOCATE"},
		{"DEALLOCATE s1", "26000"},
		{"discard all", "DISCARD ALL"},
		{"DEALLOCATE ALL", "DEALLOCATE ALL"},
	} {
		reply, _, ok := m.Local(c.q)
		if !ok || tag(reply) != c.want {
			t.Fatalf("%s: %q (handled %v), want %s", c.q, reply, ok, c.want)
		}
	}
	if _, _, ok := m.Local("DISCARD PLANS"); ok {
		t.Fatal("DISCARD PLANS answered locally")
	}

	m.Rewrite(&reg, 'P', parseBody("s1", queryOne), nil)
	out, dirty := m.RewriteQuery(&reg, "DEALLOCATE s1", nil)
	if got := split(t, out, nil); !dirty || len(got) != 1 || got[0].typ != 'Q' || !strings.HasPrefix(got[0].body, "DEALLOCATE "+serverStmtPrefix) {
		t.Fatalf("DEALLOCATE mapped as %q (dirty %v)", out, dirty)
	}
	out, dirty = m.RewriteQuery(&reg, "SELECT 1", nil)
	if got := split(t, out, nil); dirty || len(got) != 1 || got[0].body != "SELECT 1\x00" {
		t.Fatalf("another query mapped as %q (dirty %v)", out, dirty)
	}
}

// TestTrim: the least recently used ready statements beyond the bound are
// closed, then forgotten and counted.
func TestTrim(t *testing.T) {
	m := newMapper()
	var reg Registry
	for _, q := range []string{"SELECT 1", "SELECT 2", "SELECT 3"} {
		m.Rewrite(&reg, 'P', parseBody("s"+q, q), nil)
		m.Answer(&reg, '1')
	}
	if msg, names := reg.Trim(3); msg != nil || names != nil {
		t.Fatal("trimmed within the bound")
	}
	msg, names := reg.Trim(1)
	got := split(t, msg, nil)
	if len(names) != 2 || len(got) != 3 || got[0].typ != 'C' || got[2].typ != 'S' {
		t.Fatalf("trim sends %q for %q", got, names)
	}
	if names[0] != ServerName([]byte("SELECT 1\x00\x00\x00")) {
		t.Fatalf("trimmed %q first, want the least recently used", names[0])
	}
	reg.Evicted(names, m.Counters)
	if reg.Len() != 1 || m.Counters.Snapshot().Evictions != 2 {
		t.Fatalf("%d left, %d evictions", reg.Len(), m.Counters.Snapshot().Evictions)
	}
}

// TestQueueReuse: a client that sends a Parse and a Close every transaction
// (pgbench -M extended, most drivers) reuses the queue's array instead of
// allocating one a transaction, and the array keeps nothing a popped entry
// named.
func TestQueueReuse(t *testing.T) {
	m := newMapper()
	var reg Registry
	allocs := testing.AllocsPerRun(100, func() {
		m.Passed('P')
		m.Passed('C')
		m.Sent(1)
		if out := m.Answer(&reg, '1'); out != '1' {
			t.Fatalf("ParseComplete answered as %q", out)
		}
		if out := m.Answer(&reg, '3'); out != '3' {
			t.Fatalf("CloseComplete answered as %q", out)
		}
		m.Ready(&reg)
	})
	if allocs != 0 {
		t.Errorf("%v allocations a transaction, want 0", allocs)
	}
	m.Rewrite(&reg, 'P', parseBody("s1", queryOne), nil)
	m.Answer(&reg, '1')
	m.Rewrite(&reg, 'C', []byte("Ss1\x00"), nil)
	m.Answer(&reg, '3')
	m.Sent(1)
	m.Ready(&reg)
	if !m.Idle() || cap(m.arr) == 0 {
		t.Fatalf("queue %d entries, array kept %d", len(m.queue), cap(m.arr))
	}
	for _, e := range m.arr[:cap(m.arr)] {
		if e.st != nil {
			t.Fatal("the kept array still points to a statement")
		}
	}
}

// TestNamesStatement: which messages the mapping must see.
func TestNamesStatement(t *testing.T) {
	for _, c := range []struct {
		typ  byte
		body string
		want bool
	}{
		{'P', "s1\x00SELECT 1\x00\x00\x00", true},
		{'P', "\x00SELECT 1\x00\x00\x00", false},
		{'B', "\x00s1\x00", true},
		{'B', "p\x00\x00", false},
		{'B', "portal-name-longer-than-the-head", true},
		{'D', "Ss1\x00", true},
		{'D', "S\x00", false},
		{'D', "Pp\x00", false},
		{'C', "Ss1\x00", true},
		{'E', "\x00\x00\x00\x00\x00", false},
	} {
		if got := NamesStatement(c.typ, []byte(c.body), len(c.body)); got != c.want {
			t.Errorf("%c %q: %v, want %v", c.typ, c.body, got, c.want)
		}
	}
	if !IsStmtCommand([]byte("  \n deallocate x")) || IsStmtCommand([]byte("SELECT 1")) {
		t.Error("IsStmtCommand")
	}
}
