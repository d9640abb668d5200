package core

import (
	"errors"
	"testing"
	"time"

	"github.com/pgmux/pgmux/protocol"
)

func TestGranted(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name              string
		idle, waited      time.Duration
		inSync            bool
		prepared, maxPrep int
		want              Grant
	}{
		{"busy pool, nothing to do", 0, 2 * ms, true, 5, 200, Grant{}},
		{"idle a while: look whether it is alive", 150 * ms, 0, true, 0, 200, Grant{CheckAlive: true}},
		{"a long wait: look whether the client is still there", 0, 150 * ms, true, 0, 200, Grant{CheckHangup: true}},
		{"settings differ", 0, 0, false, 0, 200, Grant{Sync: true}},
		{"too many statements", 0, 0, true, 201, 200, Grant{Trim: true}},
		{"the mapping off: never trimmed", 0, 0, true, 500, 0, Grant{}},
		{"all of it", time.Minute, time.Second, false, 300, 200, Grant{true, true, true, true, true}},
		{"idle past server_check_delay", 40 * time.Second, 0, true, 0, 200, Grant{CheckAlive: true, CheckQuery: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Granted(tt.idle, tt.waited, tt.inSync, tt.prepared, tt.maxPrep, 30*time.Second); got != tt.want {
				t.Fatalf("%+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestSettle: a server whose client left is brought back to idle by the
// steps its account calls for, or closed when its state is not known.
func TestSettle(t *testing.T) {
	account := func(sent ...byte) Account {
		var a Account
		for _, typ := range sent {
			a.Sent(typ, false)
		}
		return a
	}
	tests := []struct {
		name      string
		a         Account
		inMessage bool
		copyIn    bool
		unsure    bool
		want      Settle
	}{
		{"idle: nothing to do", account(), false, false, false, Settle{}},
		{"a query running: cancel, read its answer", account('Q'), false, false, false, Settle{Cancel: true, Answers: 1}},
		{"a pipeline running", account('S', 'S', 'Q'), false, false, false, Settle{Cancel: true, Answers: 3}},
		{"a sequence open: Sync and read its answer", account('P', 'B'), false, false, false, Settle{Sync: true, Answers: 1}},
		{"a query and a sequence", account('Q', 'P'), false, false, false, Settle{Cancel: true, Sync: true, Answers: 2}},
		{"COPY FROM STDIN: fail it, no cancel", account('Q'), false, true, false, Settle{CopyFail: true, Answers: 1}},
		{"stopped inside a message: close", account('Q'), true, false, false, Settle{Close: true}},
		{"statements unsure: close", account(), false, false, true, Settle{Close: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SettleFor(tt.a, tt.inMessage, tt.copyIn, tt.unsure); got != tt.want {
				t.Fatalf("%+v, want %+v", got, tt.want)
			}
		})
	}
	for _, c := range []struct {
		tx       byte
		session  bool
		left     bool
		query    string
		rollback bool
		reset    string
	}{
		{'I', false, false, "DISCARD ALL", false, ""},
		{'T', false, false, "DISCARD ALL", true, ""},
		{'E', true, false, " DISCARD ALL ", true, "DISCARD ALL"},
		{'I', true, false, "", false, ""},
		{'I', false, true, "", false, "DISCARD ALL"}, // transaction mode, state left: cleaned even without a reset query
		{'T', false, true, "RESET ALL", true, "RESET ALL"},
	} {
		if rb, reset := SettleDone(c.tx, c.session, c.left, c.query); rb != c.rollback || reset != c.reset {
			t.Errorf("%c, session %v, left %v, %q: rollback %v, reset %q; want %v, %q", c.tx, c.session, c.left, c.query, rb, reset, c.rollback, c.reset)
		}
	}
}

// TestServerLost: what the client of a server that failed under it is told.
func TestServerLost(t *testing.T) {
	for _, c := range []struct {
		name              string
		closing, timedOut bool
		code              string // "": nothing
	}{
		{"crashed", false, false, "08006"},
		{"sent its own FATAL", true, false, ""},
		{"closed by query_timeout", false, true, "57014"},
		{"closed by query_timeout as it sent a FATAL", true, true, "57014"},
	} {
		e := ServerLost(&Server{Closing: c.closing}, c.timedOut, time.Second)
		switch {
		case c.code == "" && e != nil:
			t.Errorf("%s: told %v", c.name, e)
		case c.code != "" && (e == nil || e.Code != c.code || e.Severity != "FATAL"):
			t.Errorf("%s: told %v, want a FATAL %s", c.name, e, c.code)
		}
	}
}

// An answer's rows outlive the reader's buffer they came in, and are kept
// only when asked for; its first error is the one kept; a COPY that waits
// for data ends the answer.
func TestAnswer(t *testing.T) {
	var dropped Answer
	if dropped.Take('D', []byte("\x00\x01\x00\x00\x00\x01t")); dropped.Rows != nil {
		t.Fatal("rows kept without KeepRows")
	}
	a := Answer{KeepRows: true}
	if a.Failure() != nil {
		t.Fatal("a failure in an empty answer")
	}
	buf := []byte("\x00\x02\x00\x00\x00\x01t\xff\xff\xff\xff")
	a.Take('T', []byte("ignored"))
	a.Take('D', buf)
	buf[6] = 'f'
	if len(a.Rows) != 1 || string(a.Rows[0][0]) != "t" || a.Rows[0][1] != nil {
		t.Fatalf("rows %q", a.Rows)
	}
	first := protocol.Error(protocol.CodeQueryCanceled, "first").AppendTo(nil)
	second := protocol.Error(protocol.CodeInternalError, "second").AppendTo(nil)
	a.Take('E', first[protocol.HeaderLen:])
	a.Take('E', second[protocol.HeaderLen:])
	var pgErr *protocol.PgError
	if err := a.Failure(); !errors.As(err, &pgErr) || pgErr.Code != protocol.CodeQueryCanceled {
		t.Fatalf("failure %v", err)
	}
	a.Take('H', nil)
	if a.Copy {
		t.Fatal("a COPY TO STDOUT waits for no data")
	}
	a.Take('G', nil)
	if !a.Copy {
		t.Fatal("a COPY FROM STDIN not seen")
	}
}

// A grant's steps come in order, each once, the settings last.
func TestGrantNext(t *testing.T) {
	g := Grant{CheckAlive: true, CheckQuery: true, CheckHangup: true, Trim: true, Sync: true}
	want := []GrantStep{LookAlive, RunCheckQuery, LookHangup, TrimStatements, SyncSettings, GrantDone, GrantDone}
	for i, w := range want {
		if got := g.Next(); got != w {
			t.Fatalf("step %d: %d, want %d", i, got, w)
		}
	}
	g = Grant{Sync: true, CheckAlive: true}
	if a, b, c := g.Next(), g.Next(), g.Next(); a != LookAlive || b != SyncSettings || c != GrantDone {
		t.Fatalf("steps %d %d %d", a, b, c)
	}
}
