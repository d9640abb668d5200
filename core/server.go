package core

import (
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/protocol"
)

// What is done with a server outside the relay of a client's requests: the
// looks taken at a server just granted, and the settle of one whose client
// has left.

// AliveCheckAfter is how long a server must have been idle to be looked at
// before it is lent: one that died within this time of its last use fails
// its next client with "server conn crashed?", as in PgBouncer.
const AliveCheckAfter = 100 * time.Millisecond

// HangupCheckAfter is how long a client must have waited for a server to be
// looked at for a hang-up before the server is lent to it. The look is a
// system call: at 20 ms half the transactions of pgbench -c 100 over a pool
// of 20 paid it (one recvfrom for every two transactions, which make seven
// system calls in all); a client that gives up on a wait gives up later than
// this.
const HangupCheckAfter = 100 * time.Millisecond

// Grant is what to make sure of about a server a client has just been
// granted, before the client's request goes to it; Next gives the steps in
// order.
type Grant struct {
	// CheckAlive: the server sat idle long enough to have gone away
	// meanwhile (a restart, a timeout on its side); one that has is closed
	// and another taken.
	CheckAlive bool
	// CheckQuery: the server has been idle longer than server_check_delay,
	// so server_check_query runs on it before it is lent; one that fails
	// it is closed and another taken.
	CheckQuery bool
	// CheckHangup: the client waited long enough to have given up; one that
	// has gives the server straight back. A driver that watched the
	// client's socket while it waited knows already.
	CheckHangup bool
	// Trim: the server holds more prepared statements than the bound.
	Trim bool
	// Sync: the server's settings are not the client's (ServerSettings).
	Sync bool
}

// GrantStep is a step Grant asks for.
type GrantStep int8

const (
	GrantDone      GrantStep = iota // none left: the client's request goes to the server
	LookAlive                       // look at the server's socket, without blocking
	RunCheckQuery                   // run server_check_query
	LookHangup                      // look at the client's socket
	TrimStatements                  // close the prepared statements beyond the bound
	SyncSettings                    // bring the settings in line (Session.Sync), the last step
)

// Next returns the next step to take and crosses it off: the looks first,
// cheapest first, then what changes the server.
func (g *Grant) Next() GrantStep {
	switch {
	case g.CheckAlive:
		g.CheckAlive = false
		return LookAlive
	case g.CheckQuery:
		g.CheckQuery = false
		return RunCheckQuery
	case g.CheckHangup:
		g.CheckHangup = false
		return LookHangup
	case g.Trim:
		g.Trim = false
		return TrimStatements
	case g.Sync:
		g.Sync = false
		return SyncSettings
	}
	return GrantDone
}

// Granted says what to make sure of about a server granted after the client
// waited waited, the server having been idle for idle; inSync is whether its
// settings are the client's already, prepared how many statements it holds
// and maxPrepared the bound on them (0 with the mapping off); checkAfter is
// server_check_delay (0: no check query).
func Granted(idle, waited time.Duration, inSync bool, prepared, maxPrepared int, checkAfter time.Duration) Grant {
	return Grant{
		CheckAlive:  idle > AliveCheckAfter,
		CheckHangup: waited > HangupCheckAfter,
		Sync:        !inSync,
		Trim:        maxPrepared > 0 && prepared > maxPrepared,
		CheckQuery:  checkAfter > 0 && idle > checkAfter,
	}
}

// ServerLost is what the client of a server that failed under it is told
// before its connection is closed: nothing more if the server sent its own
// FATAL (Closing); query_timeout's error if pgmux closed the server for not
// answering within limit; else that the server crashed, as PgBouncer says.
func ServerLost(s *Server, timedOut bool, limit time.Duration) *protocol.PgError {
	switch {
	case timedOut:
		return protocol.Fatal(protocol.CodeQueryCanceled,
			fmt.Sprintf("query_timeout: no answer from the server within %s; the server connection was closed", limit))
	case s.Closing:
		return nil
	}
	return protocol.Fatal(protocol.CodeConnectionFailure, "server conn crashed?")
}

// Settle is how to bring a server whose client has left back to a clean
// idle state, so that it can go back to the pool. Steps, in order: Cancel,
// CopyFail and Sync are sent, Answers ReadyForQuery are read (a COPY that an
// answer starts means giving up), then ROLLBACK if a transaction is still
// open and, in session mode, server_reset_query (SettleDone).
type Settle struct {
	Close    bool // its state is not known: close it instead
	Cancel   bool // a query is running: cancel it, waiting until the postmaster has the cancel
	CopyFail bool // it waits for COPY data: fail the COPY
	Sync     bool // an extended-protocol sequence is open: close it
	Answers  int  // ReadyForQuery to read to the end
}

// SettleFor plans the settle of a server whose client left with account a.
// inMessage: the server's reader stopped inside a message; copyIn: the
// server waits for COPY data; statementsUnsure: prepared-statement mapping
// no longer knows which statements the server holds.
func SettleFor(a Account, inMessage, copyIn, statementsUnsure bool) Settle {
	if inMessage || statementsUnsure {
		return Settle{Close: true}
	}
	s := Settle{Cancel: a.owed > 0 && !copyIn, CopyFail: copyIn, Sync: a.open, Answers: a.owed}
	if s.Sync {
		s.Answers++
	}
	return s
}

// SettleDone says what is left once a settle's answers are read, the server
// now in transaction status txStatus: a ROLLBACK, and the reset query to run
// ("" for none): in session mode server_reset_query; in transaction mode,
// where the client left state on the server (leftState: see
// Session.LeftState), the same or, if that is empty, DISCARD ALL.
func SettleDone(txStatus byte, session, leftState bool, resetQuery string) (rollback bool, reset string) {
	reset = strings.TrimSpace(resetQuery)
	switch {
	case session:
	case leftState && reset == "":
		reset = "DISCARD ALL"
	case !leftState:
		reset = ""
	}
	return txStatus != 'I', reset
}

// Answer is the answer to one of pgmux's own requests to a server (a check,
// a reset, reading settings back, auth_query), up to its ReadyForQuery,
// which Server.Note takes: its rows and its first error.
type Answer struct {
	KeepRows bool       // keep the rows: off where what is read may be a client's result of any size (a settle)
	Rows     [][][]byte // each DataRow's values, copied (nil for NULL)
	Err      *protocol.PgError
	Copy     bool // the request started a COPY that waits for data: no ReadyForQuery comes
}

// Failure is the server's error as an error, nil if none.
func (a *Answer) Failure() error {
	if a.Err == nil {
		return nil
	}
	return a.Err
}

// Take takes a message of the answer other than ReadyForQuery.
func (a *Answer) Take(typ byte, body []byte) {
	switch typ {
	case 'D':
		if !a.KeepRows {
			return
		}
		var row pgproto3.DataRow
		if row.Decode(body) != nil {
			return
		}
		values := make([][]byte, len(row.Values))
		for i, v := range row.Values {
			if v != nil {
				values[i] = append([]byte{}, v...) // Decode points into body, which the reader reuses
			}
		}
		a.Rows = append(a.Rows, values)
	case 'E':
		if a.Err == nil {
			a.Err = protocol.DecodeError(body)
		}
	case 'G', 'W':
		a.Copy = true
	}
}
