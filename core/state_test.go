package core

import (
	"bytes"
	"slices"
	"testing"
)

func TestQueryEffects(t *testing.T) {
	for _, c := range []struct {
		q     string
		want  Effects
		names []string
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 5;", 0, nil},
		{"UPDATE t SET x = 1", 0, nil},
		{"SET statement_timeout = '7s'", SetsSettings, nil},
		{"set SESSION work_mem TO '64MB';", SetsSettings, nil},
		{"SET app.tenant = 'x'", SetsSettings, []string{"app.tenant"}},
		{`SET "App.Tenant" TO 'x'`, SetsSettings, []string{"app.tenant"}},
		{"SET LOCAL statement_timeout = 1", 0, nil},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", 0, nil},
		{"RESET statement_timeout", SetsSettings, nil},
		{"RESET app.tenant", SetsSettings, []string{"app.tenant"}},
		{"RESET ALL", SetsSettings | ResetsAll, nil},
		{"SET a..b = 1", SetsSettings, nil}, // not a name the read-back may ask for
		{"SET 1a.b = 1", SetsSettings, nil},
		{"DISCARD ALL", SetsSettings | ResetsAll, nil},
		{"BEGIN; SET app.a = 1; SET search_path = a, b; COMMIT", SetsSettings, []string{"app.a"}},
		{"SELECT 'x; SET a.b = 1'", 0, nil},
		{"SELECT $$; SET a.b = 1$$; SELECT 1", 0, nil},
		{"SELECT $tag$ ; $$ SET $tag$; /* ; SET a.b=1 */ SELECT 2", 0, nil},
		{"-- SET a.b = 1\nSELECT 1; SELECT 2", 0, nil},
		{"/* hint */ SET a.b = 1", SetsSettings, []string{"a.b"}},
		{"SELECT pg_advisory_lock(42)", Pins, nil},
		{"SELECT pg_try_advisory_lock(42)", Pins, nil},
		{"select PG_Advisory_Lock_Shared(42)", Pins, nil},
		{"SELECT 1;\x00", 0, nil},
		{"SELECT pg_advisory_lock (42), x FROM f(1)", Pins, nil},
		{"SELECT my_advisory_locks(1)", 0, nil},
		{"SETTINGS", 0, nil},
		{"RESETTING", 0, nil},
		{"SELECT pg_advisory_xact_lock(42)", 0, nil},
		{"CREATE TEMP TABLE t (x int)", Pins, nil},
		{"create local temporary table t (x int)", Pins, nil},
		{"CREATE TABLE temp_stuff (x int)", 0, nil},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", Pins, nil},
		{"DECLARE c CURSOR FOR SELECT 1", 0, nil},
		{"PREPARE p AS SELECT 1", Pins, nil},
		{"PREPARE TRANSACTION 'x'", 0, nil},
		{"LISTEN jobs", Pins | Listens, nil},
		{"UNLISTEN *", Listens, nil},
		{"unlisten jobs", Listens, nil},
		{"UNLISTENING", 0, nil},
		{"", 0, nil},
		{";;", 0, nil},
	} {
		got, names := QueryEffects([]byte(c.q), nil)
		if got != c.want || !slices.Equal(names, c.names) {
			t.Errorf("%q: %b %v, want %b %v", c.q, got, names, c.want, c.names)
		}
		// As a Parse's query, with its NUL and two parameter types
		// (one of them a '(' byte), when it is one statement.
		if len(statements([]byte(c.q))) == 1 {
			rest := append([]byte(c.q), 0, 0, 2, 0, 0, 0, '(', 0, 0, 0, 23)
			if got, _ := parseEffects(rest, nil); got != c.want {
				t.Errorf("Parse %q: %b, want %b", c.q, got, c.want)
			}
		}
	}
}

func FuzzQueryEffects(f *testing.F) {
	for _, q := range []string{"SET a.b = 1; SELECT '$$;'", "SELECT $x$;$x$", "/* ; */ RESET ALL", "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
		"SELECT pg_advisory_lock(1), f(2)", "select PG_TRY_ADVISORY_LOCK_SHARED \t(2)"} {
		f.Add([]byte(q))
	}
	f.Fuzz(func(t *testing.T, q []byte) {
		e, names := QueryEffects(q, nil)
		// The fast paths find what statement by statement finds.
		text := q
		if i := bytes.IndexByte(text, 0); i >= 0 {
			text = text[:i]
		}
		var slow Effects
		if p := bytes.IndexByte(text, '('); p >= 0 && hasAdvisoryLock(text, p) {
			slow |= Pins
		}
		for _, st := range statements(text) {
			slow, _ = statementEffects(st, slow, nil)
		}
		if slow != e {
			t.Fatalf("%q: %b, statement by statement %b", q, e, slow)
		}
		// hasAdvisoryLock finds what a plain look at each parenthesis finds.
		plain := false
		for j, c := range text {
			if c != '(' {
				continue
			}
			k := j
			for k > 0 && bytes.IndexByte([]byte(" \t\n\r"), text[k-1]) >= 0 {
				k--
			}
			name := asciiLower(text[:k])
			plain = plain || bytes.HasSuffix(name, []byte("advisory_lock")) || bytes.HasSuffix(name, []byte("advisory_lock_shared"))
		}
		if p := bytes.IndexByte(text, '('); (p >= 0 && hasAdvisoryLock(text, p)) != plain {
			t.Fatalf("%q: hasAdvisoryLock is not %v", q, plain)
		}
		if e&ResetsAll != 0 && e&SetsSettings == 0 {
			t.Fatalf("%q: ResetsAll without SetsSettings", q)
		}
		for _, n := range names {
			if n == "" {
				t.Fatalf("%q: an empty name", q)
			}
		}
	})
}

// asciiLower lower-cases b's ASCII letters only: what EqualFold matches
// against an ASCII name.
func asciiLower(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return out
}

// BenchmarkQueryEffects is what every query of the event loop pays.
func BenchmarkQueryEffects(b *testing.B) {
	q := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;\x00")
	for b.Loop() {
		if e, _ := QueryEffects(q, nil); e != 0 {
			b.Fatal(e)
		}
	}
}

// BenchmarkQueryEffectsTPCB is QueryEffects over pgbench's TPC-B-like
// transaction, statement by statement.
func BenchmarkQueryEffectsTPCB(b *testing.B) {
	qs := [][]byte{[]byte("BEGIN;"), []byte("UPDATE pgbench_accounts SET abalance = abalance + -2113 WHERE aid = 48213;"),
		[]byte("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"), []byte("UPDATE pgbench_tellers SET tbalance = tbalance + -2113 WHERE tid = 7;"),
		[]byte("UPDATE pgbench_branches SET bbalance = bbalance + -2113 WHERE bid = 1;"),
		[]byte("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 48213, -2113, CURRENT_TIMESTAMP);"), []byte("END;")}
	for b.Loop() {
		for _, q := range qs {
			if e, _ := textEffects(q, nil); e != 0 {
				b.Fatal(e)
			}
		}
	}
}
