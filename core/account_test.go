package core

import "testing"

// exchange is one side's message in a table of the account's tests: a client
// message sent ('>'), or the server's ReadyForQuery with a status ('<').
type exchange struct {
	dir  byte // '>' client to server, '<' ReadyForQuery from the server
	typ  byte // the client message's type, or the ReadyForQuery's status
	unnP bool // a Parse of the unnamed statement
	// After the step: owed, an extended sequence open, and whether the
	// server may go back to the pool (at a ReadyForQuery).
	owed    int
	open    bool
	release bool
}

func TestAccount(t *testing.T) {
	send := func(typ byte, owed int, open bool) exchange {
		return exchange{dir: '>', typ: typ, owed: owed, open: open}
	}
	ready := func(status byte, owed int, release bool) exchange {
		return exchange{dir: '<', typ: status, owed: owed, release: release}
	}
	tests := []struct {
		name  string
		steps []exchange
	}{
		{"simple query", []exchange{send('Q', 1, false), ready('I', 0, true)}},
		{"extended protocol up to Sync", []exchange{
			send('P', 0, true), send('B', 0, true), send('D', 0, true), send('E', 0, true), send('S', 1, false),
			ready('I', 0, true),
		}},
		{"a pipeline of several Syncs: released only at the last answer", []exchange{
			send('B', 0, true), send('E', 0, true), send('S', 1, false),
			send('B', 1, true), send('E', 1, true), send('S', 2, false),
			send('Q', 3, false),
			ready('I', 2, false), ready('I', 1, false), ready('I', 0, true),
		}},
		{"a ReadyForQuery while a sequence is open keeps the server", []exchange{
			send('Q', 1, false), send('P', 1, true), {dir: '<', typ: 'I', open: true}, send('S', 1, false), ready('I', 0, true),
		}},
		{"COPY FROM STDIN: data is not a segment", []exchange{
			send('Q', 1, false), send('d', 1, false), send('d', 1, false), send('c', 1, false), ready('I', 0, true),
		}},
		{"COPY TO STDOUT", []exchange{send('Q', 1, false), ready('I', 0, true)}},
		{"an error inside a transaction keeps the server until it ends", []exchange{
			send('Q', 1, false), ready('T', 0, false), // BEGIN
			send('Q', 1, false), ready('E', 0, false), // a failing statement
			send('Q', 1, false), ready('E', 0, false), // ignored until the block ends
			send('Q', 1, false), ready('I', 0, true), // ROLLBACK
		}},
		{"an extended error inside a transaction", []exchange{
			send('B', 0, true), send('E', 0, true), send('S', 1, false), ready('T', 0, false),
			send('B', 0, true), send('E', 0, true), send('S', 1, false), ready('E', 0, false),
			send('Q', 1, false), ready('I', 0, true),
		}},
		{"describe-then-execute keeps the unnamed statement's server until its Bind", []exchange{
			{dir: '>', typ: 'P', unnP: true, open: true}, send('D', 0, true), send('S', 1, false),
			ready('I', 0, false),
			send('B', 0, true), send('E', 0, true), send('S', 1, false), ready('I', 0, true),
		}},
		{"a Query closes an unnamed Parse's wait", []exchange{
			{dir: '>', typ: 'P', unnP: true, open: true}, send('S', 1, false), ready('I', 0, false),
			send('Q', 1, false), ready('I', 0, true),
		}},
		{"FunctionCall", []exchange{send('F', 1, false), ready('I', 0, true)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a Account
			for i, s := range tt.steps {
				release := false
				if s.dir == '>' {
					ends := a.Sent(s.typ, s.unnP)
					if want := s.typ == 'S' || s.typ == 'Q' || s.typ == 'F'; ends != want {
						t.Fatalf("step %d: %c ends a segment: %v", i, s.typ, ends)
					}
				} else {
					a.Answered()
					release = a.Releasable(s.typ)
				}
				if a.Owed() != s.owed || a.Open() != s.open || release != s.release {
					t.Fatalf("step %d (%c %c): owed %d, open %v, release %v; want %d, %v, %v",
						i, s.dir, s.typ, a.Owed(), a.Open(), release, s.owed, s.open, s.release)
				}
			}
		})
	}
}

// TestAccountFlush: a Flush leaves answers that come with no ReadyForQuery,
// until a Sync.
func TestAccountFlush(t *testing.T) {
	var a Account
	a.Sent('P', false)
	a.Sent('H', false)
	if !a.Flushed() || !a.Open() || a.Quiet() {
		t.Fatal("after Parse and Flush: want flushed, open, not quiet")
	}
	a.Sent('S', false)
	if a.Flushed() || a.Open() || a.Owed() != 1 {
		t.Fatal("after Sync: want not flushed, not open, one owed")
	}
	a.Answered()
	if !a.Quiet() || !a.Releasable('I') {
		t.Fatal("after the answer: want quiet and releasable")
	}
	a.Answered() // an answer nobody asked for does not go below zero
	if a.Owed() != 0 {
		t.Fatalf("owed %d", a.Owed())
	}
}

func TestClassify(t *testing.T) {
	for typ, want := range map[byte]Kind{
		'Q': Relay, 'P': Relay, 'B': Relay, 'D': Relay, 'E': Relay, 'C': Relay, 'H': Relay, 'S': Relay, 'F': Relay,
		'd': CopyData, 'c': CopyData, 'f': CopyData,
		'X': Terminate,
		'p': Invalid, 'Z': Invalid, 0: Invalid,
	} {
		kind, err := Classify(typ)
		if kind != want || (err != nil) != (want == Invalid) {
			t.Errorf("%q: %v, %v; want %v", typ, kind, err, want)
		}
		if err != nil && (err.Code != "08P01" || err.Severity != "FATAL") {
			t.Errorf("%q: error %v, want FATAL 08P01", typ, err)
		}
	}
}
