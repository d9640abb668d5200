package core

// Account is a client's exchange with the server it holds: what it has sent
// and what the server still owes, from which follows when the server may go
// back to the pool. The zero value is the account of a server just taken.
//
// The release rule (PgBouncer's, and CockroachDB's "safe transfer point"): a
// server is released only at a ReadyForQuery 'I' that answers the last Sync,
// Query or FunctionCall sent, with no extended-protocol sequence open, and no
// Parse of the unnamed statement waiting for its Bind (pgx's
// describe-then-execute needs the same server for both).
type Account struct {
	owed    int  // Sync, Query and FunctionCall sent, not yet answered by ReadyForQuery
	open    bool // an extended-protocol sequence is open (no Sync since its first message)
	unnamed bool // the unnamed statement was parsed and not yet bound
	flushed bool // a Flush was sent and no Sync since: answers may come unbidden
}

// Sent accounts for a client message of type typ about to be written to the
// server; unnamedParse says it is a Parse of the unnamed statement. It reports
// whether the message ends a segment: its answer ends with ReadyForQuery.
func (a *Account) Sent(typ byte, unnamedParse bool) (endsSegment bool) {
	switch typ {
	case 'S', 'F':
		a.segments(1)
		return true
	case 'Q':
		a.unnamed = false
		a.segments(1)
		return true
	case 'P':
		a.open = true
		a.unnamed = a.unnamed || unnamedParse
	case 'B':
		a.open, a.unnamed = true, false
	case 'D', 'E', 'C':
		a.open = true
	case 'H':
		a.open, a.flushed = true, true
	}
	return false
}

// SentBatch accounts for a whole batch as Scan saw it, as Sent would have
// message by message.
func (a *Account) SentBatch(b Batch) {
	if b.unnamed >= 0 {
		a.unnamed = b.unnamed == 1
	}
	a.segments(b.Segments)
}

// segments accounts for n segments ended: their answers are owed, and the
// client is out of any sequence and past any Flush.
func (a *Account) segments(n int) {
	if n > 0 {
		a.owed += n
		a.open, a.flushed = false, false
	}
}

// Answered accounts for a ReadyForQuery from the server.
func (a *Account) Answered() {
	if a.owed > 0 {
		a.owed--
	}
}

// Releasable reports whether, at a ReadyForQuery with transaction status
// status just accounted for, the server may go back to the pool in
// transaction mode.
func (a *Account) Releasable(status byte) bool {
	return status == 'I' && a.owed == 0 && !a.open && !a.unnamed
}

// Owed is how many segments still await their ReadyForQuery.
func (a *Account) Owed() int { return a.owed }

// Open reports whether an extended-protocol sequence is open.
func (a *Account) Open() bool { return a.open }

// Flushed reports whether a Flush was sent with no Sync since: the server
// may send answers the client is waiting for without a ReadyForQuery.
func (a *Account) Flushed() bool { return a.flushed }

// Quiet reports whether nothing is owed and no sequence is open: the
// server waits for the client.
func (a *Account) Quiet() bool { return a.owed == 0 && !a.open }
