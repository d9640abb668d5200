package core

// Phase is where a client session is in its life. It is the one value both
// drivers move and every report reads: the loop asks it (with the Account,
// AwaitsClient) what an event on a socket means, the goroutine path sets it
// as its two goroutines go, and the console, the metrics and the sweep
// derive what they show from it (Report).
//
//	Login   --password ok--> Idle
//	Idle    --request--> Waiting --server granted--> Active
//	Waiting --server granted to the loop--> Granted --looked at, settings in line--> Active
//	Idle    --request, server granted to the loop at once--> Active, or Granted
//	Active  --ReadyForQuery, server released--> Idle
//	Active  --ReadyForQuery, server kept (a transaction open)--> Active
//	any     --Terminate, EOF, error, shutdown--> Closed
//
// In session mode a session goes from Login to Active, through Idle, and
// stays there. A session may wait for its client inside the event loop, with
// no goroutine, Idle or Active with nothing owed (AwaitsClient).
type Phase int32

const (
	PhaseLogin   Phase = iota // startup and authentication
	PhaseIdle                 // between transactions, holding no server
	PhaseWaiting              // a request waits for a server (the pool's queue, or RESUME)
	PhaseGranted              // a server granted to the loop, not yet the session's: looked at, its settings brought to the client's
	PhaseActive               // holding a server
	PhaseClosed
)

// Report is the phase as reports show it, PgBouncer's client states: a
// session holding a server is active, one whose server is still being made
// ready for it is waiting.
type Report int8

const (
	ReportLogin Report = iota
	ReportIdle
	ReportWaiting
	ReportActive
	ReportClosed
)

var reports = [...]Report{
	PhaseLogin: ReportLogin, PhaseIdle: ReportIdle, PhaseWaiting: ReportWaiting, PhaseGranted: ReportWaiting,
	PhaseActive: ReportActive, PhaseClosed: ReportClosed,
}

var reportNames = [...]string{"login", "idle", "waiting", "active", "closed"}

// Report is what reports show of p.
func (p Phase) Report() Report { return reports[p] }

func (r Report) String() string { return reportNames[r] }

// AwaitsClient reports whether a session in phase p, with account a, waits
// for its client's next request, with or without a server: a message from
// the client is its turn, not out of it. A session holding a server that
// owes nothing has a transaction open, its client's to go on with.
func AwaitsClient(p Phase, a *Account) bool {
	return p == PhaseIdle || p == PhaseActive && a.Owed() == 0
}
