package core

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestReadOnlyStatement(t *testing.T) {
	for _, c := range []struct {
		sql  string
		want bool
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = $1", true},
		{"select abalance from pgbench_accounts where aid = 42;", true},
		{"SELECT count(*), max(id) FROM t /* a comment; INSERT */ -- UPDATE\n", true},
		{"WITH x AS (SELECT 1) SELECT * FROM x", true},
		{"SELECT 'insert into t', \"update\", $q$delete$q$, E'\\'; drop table t' FROM t", true},
		{"SELECT now()::date, coalesce(a, 0) FROM t WHERE b IN (1, 2) AND EXISTS (SELECT 1)", true},
		{"SELECT * FROM t FOR UPDATE", false},
		{"SELECT * FROM t FOR NO KEY UPDATE", false},
		{"SELECT * FROM t FOR SHARE", false},
		{"SELECT * INTO t2 FROM t", false},
		{"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", false},
		{"SELECT nextval('s')", false},
		{"SELECT my_function(1)", false}, // may write: unsure
		{"SELECT pg_advisory_lock(1)", false},
		{"SELECT 1; DELETE FROM t", false},
		{"SELECT 1; SELECT 2", false},
		{"INSERT INTO t VALUES (1)", false},
		{"UPDATE t SET a = 1", false},
		{"SHOW server_version", false},
		{"SELECT 'open", false},
		{"SELECT /* open", false},
		{"SELECT /* /* nested */ still */ 1", true},
		{"", false},
	} {
		if got := ReadOnlyStatement(c.sql); got != c.want {
			t.Errorf("%q: %v, want %v", c.sql, got, c.want)
		}
	}
}

func TestOpensReadOnly(t *testing.T) {
	for _, c := range []struct {
		sql  string
		want bool
	}{
		{"BEGIN READ ONLY", true},
		{"begin transaction isolation level repeatable read, read only;", true},
		{"START TRANSACTION READ ONLY", true},
		{"BEGIN /*traceparent='00-x'*/ READ ONLY", true},
		{"BEGIN", false},
		{"BEGIN READ WRITE", false},
		{"BEGIN READ ONLY; INSERT INTO t VALUES (1)", false},
		{"SELECT 1", false},
	} {
		if got := OpensReadOnly(c.sql); got != c.want {
			t.Errorf("%q: %v, want %v", c.sql, got, c.want)
		}
	}
}

// encode appends messages as a client sends them.
func encode(msgs ...pgproto3.FrontendMessage) []byte {
	var b []byte
	for _, m := range msgs {
		b, _ = m.Encode(b)
	}
	return b
}

func TestReadOnlyRequest(t *testing.T) {
	sel := "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	stmts := fakeStatements{"r": sel + "\x00", "w": "UPDATE t SET a = 1\x00"}
	for _, c := range []struct {
		name string
		buf  []byte
		want bool
	}{
		{"simple SELECT", encode(&pgproto3.Query{String: "SELECT 1"}), true},
		{"simple BEGIN READ ONLY", encode(&pgproto3.Query{String: "BEGIN READ ONLY"}), true},
		{"simple UPDATE", encode(&pgproto3.Query{String: "UPDATE t SET a = 1"}), false},
		{"extended SELECT", encode(&pgproto3.Parse{Query: sel}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}), true},
		{"named statement", encode(&pgproto3.Parse{Name: "s1", Query: sel}, &pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{}), true},
		{"no Sync yet", encode(&pgproto3.Parse{Query: sel}, &pgproto3.Bind{}, &pgproto3.Execute{}), false},
		{"a write after", encode(&pgproto3.Parse{Query: sel}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: "INSERT INTO t VALUES (1)"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), false},
		{"a Bind of an unknown statement", encode(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{}), false},
		{"a Bind of a read prepared earlier", encode(&pgproto3.Bind{PreparedStatement: "r"}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}), true},
		{"a Bind of a write prepared earlier", encode(&pgproto3.Bind{PreparedStatement: "w"}, &pgproto3.Execute{}, &pgproto3.Sync{}), false},
		{"a read, then a write prepared earlier", encode(&pgproto3.Parse{Query: sel}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "w"}, &pgproto3.Execute{}, &pgproto3.Sync{}), false},
		{"two reads", encode(&pgproto3.Parse{Query: sel}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "r"}, &pgproto3.Execute{}, &pgproto3.Sync{}), true},
		{"cut short", encode(&pgproto3.Query{String: "SELECT 1"})[:7], false},
	} {
		if got := ReadOnlyRequest(c.buf, stmts); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// fakeStatements is a client's named statements, by name.
type fakeStatements map[string]string

func (f fakeStatements) Query(name []byte) ([]byte, bool) {
	q, ok := f[string(name)]
	return []byte(q), ok
}

func BenchmarkReadOnlyRequest(b *testing.B) {
	buf := encode(&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 4242;"})
	for b.Loop() {
		if !ReadOnlyRequest(buf, nil) {
			b.Fatal("not read-only")
		}
	}
}

// FuzzReadOnly: any text is read without a panic, and a statement taken as
// read-only stays so with a comment added.
func FuzzReadOnly(f *testing.F) {
	for _, s := range []string{"SELECT 1", "SELECT $a$x$a$", "SELECT E'\\''", `SELECT "a""b"`, "SELECT /* /* */ */ 1", "BEGIN READ ONLY"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ro := ReadOnlyStatement(s)
		OpensReadOnly(s)
		ReadOnlyRequest(encode(&pgproto3.Query{String: s}), nil)
		if ro && !ReadOnlyStatement("/* c */ "+s) {
			t.Fatalf("%q read-only, not with a comment before it", s)
		}
	})
}
