package core

import (
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// query returns the text of a Query message.
func query(t *testing.T, msg []byte) string {
	t.Helper()
	if len(msg) == 0 {
		return ""
	}
	var q pgproto3.Query
	if msg[0] != 'Q' || q.Decode(msg[5:]) != nil {
		t.Fatalf("not a Query: %q", msg)
	}
	return q.String
}

// clauses returns a settings query's set_config calls and RESETs sorted, for
// comparing two queries whose order comes from a map.
func clauses(q string) string {
	q = strings.TrimPrefix(q, "SELECT ")
	parts := strings.FieldsFunc(q, func(r rune) bool { return r == ';' })
	var out []string
	for _, p := range parts {
		out = append(out, strings.Split(p, ", pg_catalog.")...)
	}
	for i := range out {
		out[i] = strings.TrimPrefix(strings.TrimSpace(out[i]), "pg_catalog.")
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// TestSettingsSync: a server is brought to each client's settings with one
// query, only where they differ, and given back its own where no client asks.
func TestSettingsSync(t *testing.T) {
	server := NewServerSettings(map[string]string{"application_name": "", "TimeZone": "UTC", "DateStyle": "ISO, MDY"})
	a := NewWanted(map[string]string{"application_name": "a", "search_path": "s1, public"})
	b := NewWanted(map[string]string{"application_name": "b"})
	none := NewWanted(nil)

	steps := []struct {
		who     *Wanted
		want    []string // parts the query must hold, "" for no query
		notWant []string
	}{
		{&a, []string{"SELECT ", "set_config('application_name', 'a', false)", "set_config('search_path', 's1, public', false)"}, []string{"RESET"}},
		{&a, []string{""}, nil}, // in sync: no query
		{&b, []string{"set_config('application_name', 'b', false)", "RESET search_path;"}, []string{"timezone"}},
		{&none, []string{"RESET application_name;"}, []string{"set_config", "search_path"}},
		{&none, []string{""}, nil},
	}
	for i, s := range steps {
		var msg []byte
		if !server.InSync(s.who) {
			var touched []string
			msg, touched = server.SyncQuery(s.who, nil, nil)
			if len(msg) > 0 && len(touched) == 0 {
				t.Fatalf("step %d: a query that touches nothing", i)
			}
			server.Synced(s.who)
		}
		q := query(t, msg)
		for _, part := range s.want {
			if part == "" && q != "" || !strings.Contains(q, part) {
				t.Fatalf("step %d: query %q, want it to hold %q", i, q, part)
			}
		}
		for _, part := range s.notWant {
			if strings.Contains(q, part) {
				t.Fatalf("step %d: query %q holds %q", i, q, part)
			}
		}
	}
	// A setting the server reports changed (a client's SET) puts it out of
	// sync, and the client's own report follows it to its next server.
	server.Synced(&a)
	a.Reported(server.Note("application_name", "changed"), "changed")
	if server.InSync(&b) {
		t.Fatal("in sync with b after a's SET")
	}
	other := NewServerSettings(map[string]string{"application_name": ""})
	msg, _ := other.SyncQuery(&a, nil, nil)
	if q := query(t, msg); !strings.Contains(q, "'application_name', 'changed'") {
		t.Fatalf("a's next server gets %q, want its changed name", q)
	}
	// A reported setting nobody asked for at startup, but one that follows
	// a client (search_path, DateStyle...), is taken; another is not.
	b.Reported("datestyle", "German")
	b.Reported("work_mem", "64MB")
	if v, ok := b.Get("datestyle"); !ok || v != "German" {
		t.Fatal("DateStyle set by the client does not follow it")
	}
	if _, ok := b.Get("work_mem"); ok {
		t.Fatal("work_mem followed the client")
	}
}

// feedSync feeds a settings query's answer, msgs, to y up to its end or a
// failure, and returns what End makes of it.
func feedSync(t *testing.T, y *SettingsSync, srv *Server, w *Wanted, msgs ...[]byte) SyncEnd {
	t.Helper()
	for i, m := range msgs {
		done, err := y.Note(srv, w, m[0], m[5:])
		if err != nil {
			return y.End(srv, w, err)
		}
		if done != (i == len(msgs)-1) {
			t.Fatalf("message %d (%c): done %v", i, m[0], done)
		}
	}
	return y.End(srv, w, nil)
}

// enc encodes a server message.
func enc(m pgproto3.BackendMessage) []byte {
	b, _ := m.Encode(nil)
	return b
}

var refusedSetting = enc(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42704", Message: `unrecognized configuration parameter "bogus_setting"`})

// TestSettingsSyncEnd: what becomes of a server at the end of a settings
// sync, as both drivers ask it.
func TestSettingsSyncEnd(t *testing.T) {
	ready := func(status byte) []byte { return enc(&pgproto3.ReadyForQuery{TxStatus: status}) }
	for _, c := range []struct {
		name string
		msgs [][]byte
		want SyncEnd
	}{
		{"answered", [][]byte{enc(&pgproto3.RowDescription{}), enc(&pgproto3.DataRow{}), enc(&pgproto3.CommandComplete{}), ready('I')}, SyncDone},
		{"refused, idle", [][]byte{refusedSetting, ready('I')}, SyncRefused},
		{"refused, in a failed transaction", [][]byte{refusedSetting, ready('E')}, SyncBroken},
		{"answered, in a transaction", [][]byte{enc(&pgproto3.CommandComplete{}), ready('T')}, SyncBroken},
		{"a ReadyForQuery of two bytes", [][]byte{{'Z', 0, 0, 0, 6, 'I', 'I'}}, SyncBroken},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := &Server{TxStatus: 'I', Settings: NewServerSettings(map[string]string{"application_name": ""})}
			w := NewWanted(map[string]string{"application_name": "a", "bogus_setting": "1"})
			var y SettingsSync
			if msg := y.Start(srv, &w, nil); len(msg) == 0 {
				t.Fatal("no settings query for settings that differ")
			}
			got := feedSync(t, &y, srv, &w, c.msgs...)
			if got != c.want {
				t.Fatalf("End %d, want %d", got, c.want)
			}
			if got == SyncRefused && (y.Refusal().Severity != "FATAL" || y.Refusal().Code != "42704") {
				t.Fatalf("the client is told %+v", y.Refusal())
			}
			if again := y.Start(srv, &w, nil); (len(again) == 0) != (got == SyncDone) {
				t.Fatalf("after End %d, in sync: %v", got, len(again) == 0)
			}
		})
	}
}

// TestSettingsSyncFailed: a query the server refused leaves what it touched
// unknown, so the next sync sets or resets it again; the server's spelling
// of a value it reports is taken for the client's.
func TestSettingsSyncFailed(t *testing.T) {
	srv := &Server{TxStatus: 'I', Settings: NewServerSettings(map[string]string{"application_name": ""})}
	w := NewWanted(map[string]string{"application_name": "a", "bogus_setting": "1"})
	var y SettingsSync
	msg := y.Start(srv, &w, nil)
	if end := feedSync(t, &y, srv, &w, refusedSetting, enc(&pgproto3.ReadyForQuery{TxStatus: 'I'})); end != SyncRefused {
		t.Fatalf("End %d, want SyncRefused", end)
	}
	again := y.Start(srv, &w, nil)
	if clauses(query(t, again)) != clauses(query(t, msg)) { // the settings come in map order
		t.Fatalf("after the failure %q, want the same query as before %q", query(t, again), query(t, msg))
	}
	feedSync(t, &y, srv, &w, enc(&pgproto3.ParameterStatus{Name: "application_name", Value: "A"}), enc(&pgproto3.ReadyForQuery{TxStatus: 'I'}))
	if v, _ := w.Get("application_name"); v != "A" {
		t.Fatalf("application_name %q, want the server's spelling", v)
	}
}

// TestWantedDiscard: DISCARD ALL puts a client's settings back as it logged
// in, with a new fingerprint.
func TestWantedDiscard(t *testing.T) {
	w := NewWanted(map[string]string{"application_name": "a"})
	fp := w.FP()
	w.Reported("application_name", "b")
	if w.FP() == fp {
		t.Fatal("the fingerprint did not change with the settings")
	}
	w.Discard()
	if v, _ := w.Get("application_name"); v != "a" || w.FP() != fp {
		t.Fatalf("after DISCARD ALL: %q, fingerprint %x, want a and %x", v, w.FP(), fp)
	}
	none := NewWanted(nil)
	none.Discard()
	none.Reported("search_path", "x") // a nil map would panic
}

// TestServerReset: after DISCARD ALL the server's settings are its own again.
func TestServerReset(t *testing.T) {
	server := NewServerSettings(map[string]string{"application_name": "", "TimeZone": "UTC"})
	w := NewWanted(map[string]string{"timezone": "Europe/Paris"})
	server.SyncQuery(&w, nil, nil)
	server.Reset()
	none := NewWanted(nil)
	if msg, _ := server.SyncQuery(&none, nil, nil); len(msg) != 0 {
		t.Fatalf("after a reset the server still differs: %q", query(t, msg))
	}
	if p := server.Params(); len(p) != 2 || p[0].Name != "TimeZone" || p[1].Key != "application_name" {
		t.Fatalf("params %+v, want both, sorted by the server's spelling", p)
	}
}

// FuzzAppendLiteral: whatever a client sends as a setting's value (or name),
// the literal appendLiteral makes of it reads back as that value and ends
// where it should, as PostgreSQL's lexer reads one (standard strings on):
// nothing of it escapes into the settings query.
func FuzzAppendLiteral(f *testing.F) {
	for _, s := range []string{"", "plain", "o'neil", `a\b`, `\'`, `'; DROP TABLE x; --`, `\`, `''\\`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lit := string(appendLiteral([]byte("x"), s))[1:]
		esc := strings.HasPrefix(lit, "E'")
		if esc {
			lit = lit[1:]
		}
		if len(lit) < 2 || lit[0] != '\'' {
			t.Fatalf("%q: literal %q does not open with a quote", s, lit)
		}
		var got strings.Builder
		i := 1
	scan:
		for ; i < len(lit); i++ {
			c := lit[i]
			switch {
			case esc && c == '\\':
				if i+1 == len(lit) {
					t.Fatalf("%q: literal %q ends in an escape", s, lit)
				}
				i++
				got.WriteByte(lit[i]) // \\ and \' alike
				continue
			case c == '\'':
				if i+1 < len(lit) && lit[i+1] == '\'' {
					got.WriteByte('\'')
					i++
					continue
				}
			default:
				got.WriteByte(c)
				continue
			}
			break scan // the closing quote
		}
		if i != len(lit)-1 {
			t.Fatalf("%q: literal %q closes at byte %d of %d", s, lit, i, len(lit))
		}
		if got.String() != s {
			t.Fatalf("%q: literal %q reads back as %q", s, lit, got.String())
		}
	})
}
