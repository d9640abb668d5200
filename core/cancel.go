package core

import "github.com/pgmux/pgmux/protocol"

// CancelAction is what a client's CancelRequest does to its session.
type CancelAction int8

const (
	// CancelIgnored: nothing of the client's runs or waits, and the request
	// is dropped, as PostgreSQL drops one for an idle backend.
	CancelIgnored CancelAction = iota
	// CancelForwarded: the client's request is on the server it holds,
	// which is sent the cancel and kept from other clients until the
	// cancel has been delivered.
	CancelForwarded
	// CancelWaiting: the client's request waits for a server. It is never
	// run, and the client is answered as PostgreSQL answers a cancelled
	// statement (see Session.CancelWaiting).
	CancelWaiting
)

// CancelFor returns what a CancelRequest does to a session that holds a
// server (held) or waits for one to send its request to (waiting).
func CancelFor(held, waiting bool) CancelAction {
	switch {
	case held:
		return CancelForwarded
	case waiting:
		return CancelWaiting
	}
	return CancelIgnored
}

// request is where a client's request stands, as far as a cancel goes.
//
//	none      --Admit-->    waiting --Attached--> none
//	waiting   --Cancel-->   cancelled --Admit--> answered --CancelWaiting--> none (Skip drops the rest)
//	cancelled --Attached--> forward --Forward--> none    (the cancel follows the request to its server)
type request int8

const (
	reqNone      request = iota
	reqWaiting           // admitted, waiting for a server (or RESUME)
	reqCancelled         // a cancel came while it waited: it is never run
	reqAnswered          // Admit said Cancelled: CancelWaiting is to answer it
	reqForward           // a cancel came as its wait ended: forwarded once the request reaches the server
)

// Cancel does a CancelRequest for the session, which holds a server or
// not (held), and returns what it does (CancelFor); a waiting request is
// marked cancelled (Admit).
func (s *Session) Cancel(held bool) CancelAction {
	a := CancelFor(held, s.Waiting())
	if a == CancelWaiting {
		s.req = reqCancelled
	}
	return a
}

// Waiting reports whether a request of the client's waits for a server:
// admitted (Admit) and not yet Attached.
func (s *Session) Waiting() bool { return s.req == reqWaiting || s.req == reqCancelled }

// Admission is what becomes of a client's request that needs a server.
type Admission int8

const (
	Acquire     Admission = iota // take a server from the pool
	AwaitResume                  // PAUSE is in force: wait for RESUME, then decide again
	Cancelled                    // a cancel came while it waited: answered by CancelWaiting, never run
)

// Admit decides what becomes of a request that needs a server, when it
// comes and after each wait; paused says PAUSE is in force. A transaction
// under way holds its server and is not asked: it goes on through a pause.
func (s *Session) Admit(paused bool) Admission {
	switch {
	case s.req == reqCancelled, s.req == reqAnswered:
		s.req = reqAnswered
		return Cancelled
	case paused:
		s.req = reqWaiting
		return AwaitResume
	}
	s.req = reqWaiting
	return Acquire
}

// Attached notes that the request goes to the server granted. A cancel that
// came as its wait ended follows it (Forward).
func (s *Session) Attached() {
	if s.req == reqCancelled {
		s.req = reqForward
		return
	}
	s.req = reqNone
}

// Forward reports, once the request has reached its server, whether a
// cancel is to follow it there (Attached), and forgets it.
func (s *Session) Forward() bool {
	if s.req != reqForward {
		return false
	}
	s.req = reqNone
	return true
}

// cancelledError is PostgreSQL's error for a statement cancelled at the
// client's request.
var cancelledError = (&protocol.PgError{Severity: "ERROR", Code: protocol.CodeQueryCanceled,
	Message: "canceling statement due to user request"}).AppendTo(nil)

// CancelWaiting answers a request cancelled while it waited for a server,
// whose first message, of type typ, the driver has read and drops: the
// client gets the error at once and, as after any error in the extended
// protocol, the rest of the request up to its Sync is dropped (Skip) before
// its ReadyForQuery. It appends what the client gets now to dst.
func (s *Session) CancelWaiting(dst []byte, typ byte) []byte {
	s.req = reqNone
	dst = append(dst, cancelledError...)
	if typ == 'Q' || typ == 'S' || typ == 'F' {
		return append(dst, readyIdle...)
	}
	s.skipping = true
	return dst
}

// Skip reports whether a client message of type typ is dropped, being part
// of a request cancelled while it waited; reply is what the client then gets
// (the ReadyForQuery of the request's Sync), if anything.
func (s *Session) Skip(typ byte) (skip bool, reply []byte) {
	if !s.skipping || typ == 'X' {
		return false, nil
	}
	if typ == 'S' {
		s.skipping = false
		return true, readyIdle
	}
	return true, nil
}

// Skipping reports whether the rest of a cancelled request is being dropped.
func (s *Session) Skipping() bool { return s.skipping }
