package core

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestListenOps(t *testing.T) {
	l := func(ch string) ListenOp { return ListenOp{Listen: true, Channel: ch} }
	u := func(ch string) ListenOp { return ListenOp{Channel: ch} }
	long := "a123456789b123456789c123456789d123456789e123456789f123456789g123456789"
	for _, c := range []struct {
		q   string
		ops []ListenOp // nil: not a query pgmux answers
	}{
		{"LISTEN jobs", []ListenOp{l("jobs")}},
		{"listen Jobs;\x00", []ListenOp{l("jobs")}},
		{`LISTEN "Jobs"`, []ListenOp{l("Jobs")}},
		{`LISTEN "a ""b"" c"`, []ListenOp{l(`a "b" c`)}},
		{"UNLISTEN jobs", []ListenOp{u("jobs")}},
		{"UNLISTEN *", []ListenOp{{All: true}}},
		{"unlisten*", []ListenOp{{All: true}}},
		{"LISTEN a; LISTEN b;UNLISTEN a", []ListenOp{l("a"), l("b"), u("a")}},
		{"/* app */ LISTEN a -- why\n", []ListenOp{l("a")}},
		{"  \n\tLISTEN\tq_1$x", []ListenOp{l("q_1$x")}},
		{"LISTEN " + long, []ListenOp{l(long[:63])}},
		{"LISTEN évé", []ListenOp{l("évé")}},
		{"LISTEN *", nil},
		{"LISTEN", nil},
		{"LISTEN 1a", nil},
		{`LISTEN ""`, nil},
		{`LISTEN "open`, nil},
		{"LISTEN a b", nil},
		{"LISTEN a; SELECT 1", nil},
		{"SELECT 1; LISTEN a", nil},
		{"LISTENa", nil},
		{"UNLISTEN", nil},
		{"SELECT 1", nil},
		{"update t set x = 1", nil},
		{"", nil},
		{";", nil},
	} {
		ops, ok := ListenOps([]byte(c.q))
		if ok != (c.ops != nil) || !reflect.DeepEqual(ops, c.ops) {
			t.Errorf("%q: %v %v, want %v", c.q, ops, ok, c.ops)
		}
	}
}

func TestListenAnswer(t *testing.T) {
	out := ListenAnswer([]ListenOp{{Listen: true, Channel: "a"}, {All: true}})
	fe := pgproto3.NewFrontend(bytes.NewReader(out), nil)
	var got []string
	for range 3 {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.CommandComplete:
			got = append(got, string(m.CommandTag))
		case *pgproto3.ReadyForQuery:
			got = append(got, "Z"+string(m.TxStatus))
		}
	}
	if want := []string{"LISTEN", "UNLISTEN", "ZI"}; !reflect.DeepEqual(got, want) {
		t.Errorf("answered %v, want %v", got, want)
	}
}

func TestNotificationChannel(t *testing.T) {
	body, _ := (&pgproto3.NotificationResponse{PID: 7, Channel: "jobs", Payload: "x"}).Encode(nil)
	if ch, ok := NotificationChannel(body[5:]); !ok || ch != "jobs" {
		t.Errorf("channel %q %v", ch, ok)
	}
	if _, ok := NotificationChannel([]byte{0, 0}); ok {
		t.Error("a short body read as a notification")
	}
}

func FuzzListenOps(f *testing.F) {
	for _, q := range []string{"LISTEN a; UNLISTEN *", `LISTEN "x""y"`, "/* */ UNLISTEN b", "LISTEN a -- c"} {
		f.Add([]byte(q))
	}
	f.Fuzz(func(t *testing.T, q []byte) {
		ops, ok := ListenOps(q)
		if ok != (len(ops) > 0) {
			t.Fatalf("%q: ok %v with %d ops", q, ok, len(ops))
		}
		for _, op := range ops {
			if op.All == (op.Channel != "") || op.All && op.Listen || len(op.Channel) > maxIdentLen {
				t.Fatalf("%q: %+v", q, op)
			}
		}
		if ok {
			if e, _ := QueryEffects(q, nil); e&Listens == 0 {
				t.Fatalf("%q: ListenOps takes it, QueryEffects sees no LISTEN", q)
			}
		}
	})
}
