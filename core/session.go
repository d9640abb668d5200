package core

import (
	"errors"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/prepared"
)

// Server is a server's protocol state, kept by whoever holds it.
type Server struct {
	TxStatus byte              // of its last ReadyForQuery
	CopyIn   bool              // it waits for COPY data
	Settings ServerSettings    // as it reported them or pgmux set them
	Prepared prepared.Registry // statements prepared under pgmux names
	Closing  bool              // it sent a FATAL error: it ends the connection, and its client knows why
}

// errBadReady is a ReadyForQuery whose body is not one status byte.
var errBadReady = errors.New("bad ReadyForQuery from server")

// Note notes what a message of the answer to pgmux's own query says of the
// server (its transaction status, a setting), and reports whether it was
// the ReadyForQuery that ends the answer.
func (s *Server) Note(typ byte, body []byte) (ready bool, err error) {
	switch typ {
	case 'Z':
		if len(body) != 1 {
			return true, errBadReady
		}
		s.TxStatus, s.CopyIn = body[0], false
		return true, nil
	case 'S':
		var ps pgproto3.ParameterStatus
		if ps.Decode(body) == nil {
			s.Settings.Note(ps.Name, ps.Value)
		}
	}
	return false, nil
}

// Session is a logged-in client's protocol state: its account with the
// server it holds, its prepared statements and its settings. The drivers
// feed it what the client sends and what the server answers.
type Session struct {
	Acct    Account
	PS      prepared.Mapper
	Want    Wanted
	Mapping bool // prepared-statement mapping is on
	Pooled  bool // transaction mode: the server goes back between transactions
	// Pinned: transaction mode, but the client left state on its server
	// that stays there (see NoteQuery), so it keeps the server (Pooled off).
	Pinned bool
	// NoLook: the statements' text is not read for the session state
	// they leave (track_session_state off): SET, LISTEN and the rest stay
	// on whichever server runs them, as with PgBouncer.
	NoLook bool
	// Sync brings a granted server's settings to Want's.
	Sync SettingsSync

	noted notes // what its statements left to deal with (NoteMessage)

	req request // where its request stands, for cancels
	// skipping: the rest of a request answered as cancelled is dropped
	// (Skip). Apart from req, being the reader's alone: whoever reads the
	// client asks Skip at every message, and needs no lock for it.
	skipping bool
}

// Sent accounts for a client message of type typ about to be written to the
// server, as Account.Sent; rewritten says the mapping rewrites it (and
// queues what its answer must match), else a Parse or Close passed as it is
// still has its answer matched. It reports whether the message ends a
// segment.
func (s *Session) Sent(typ byte, unnamedParse, rewritten bool) (endsSegment bool) {
	if s.Mapping && !rewritten && (typ == 'P' || typ == 'C') {
		s.PS.Passed(typ)
	}
	return s.Acct.Sent(typ, unnamedParse)
}

// Peek says how much of the body of a client message of type typ (n bytes)
// the session must see before the message goes to the server: the start of
// a Parse, Bind, Describe or Close for Looked, and the text of a Query,
// Parse or Bind for NoteMessage, or of a Query or Parse for its trace
// (traced), as much as fits in limit.
func (s *Session) Peek(typ byte, n int, traced bool, limit int) int {
	look := s.Pooled && !s.NoLook
	switch typ {
	case 'Q', 'P':
		if look || traced {
			return min(n, limit)
		}
	case 'B':
		if look {
			return min(n, limit)
		}
	}
	switch typ {
	case 'P', 'B', 'D', 'C':
		return min(n, 64)
	}
	return 0
}

// Looked says, from the start of a client message's body (head; empty if
// it could not be seen) of n bytes, whether it is a Parse of the unnamed
// statement, and whether it names a prepared statement the mapping
// rewrites (prepared.NamesStatement; a name not seen is taken to).
func (s *Session) Looked(typ byte, head []byte, n int) (unnamedParse, mapped bool) {
	switch typ {
	case 'P', 'B', 'D', 'C':
	default:
		return false, false
	}
	if len(head) == 0 {
		return false, s.Mapping && n > 0
	}
	return typ == 'P' && head[0] == 0, s.Mapping && prepared.NamesStatement(typ, head, n)
}

// SentBatch accounts for a batch Scan sorted, sent at once with nothing in
// it for the mapping to match.
func (s *Session) SentBatch(b Batch) {
	s.Acct.SentBatch(b)
	s.PS.Sent(b.Segments)
}

// Reply is what the client gets for one server message, and what follows.
type Reply struct {
	Out     []byte // sent to the client instead of the message, if not nil
	Drop    bool   // the client gets nothing for it
	Ready   bool   // a ReadyForQuery: a segment is answered
	Release bool   // the server may go back to the pool (transaction mode)
	Code    string // an ErrorResponse's SQLSTATE, for the statistics
}

// Looks reports whether FromServer must see a server message of type typ;
// any other passes to the client as it is, unread. matched says Parse and
// CloseComplete are matched against the mapping's queue (off for a batch
// sent with nothing queued).
func Looks(srv *Server, typ byte, matched bool) bool {
	return looks[typ] || matched && (typ == '1' || typ == '3') || srv.CopyIn && typ == 'C'
}

// looks are the types FromServer always sees.
var looks = [256]bool{'Z': true, 'E': true, 'S': true, 'G': true, 'W': true}

// StopTable is Looks for a server not in COPY, as a table.
func StopTable(matched bool) *[256]bool {
	if matched {
		return &stopMatched
	}
	return &looks
}

var stopMatched = func() [256]bool {
	t := looks
	t['1'], t['3'] = true, true
	return t
}()

// FromServer decides what the client gets for a message of the server it
// holds, srv, of a type Looks selects, and notes what it says.
func (s *Session) FromServer(srv *Server, typ byte, body []byte, matched bool) (Reply, error) {
	switch typ {
	case 'Z':
		release, err := s.Ready(srv, body)
		if err != nil {
			return Reply{}, err
		}
		return Reply{Out: ReadyMessage(srv.TxStatus), Ready: true, Release: release}, nil
	case '1', '3':
		switch s.PS.Answer(&srv.Prepared, typ) {
		case '1':
			return Reply{Out: parseComplete}, nil
		case '3':
			return Reply{Out: closeComplete}, nil
		}
		return Reply{Drop: true}, nil
	case 'E':
		srv.CopyIn = false
		if sev := errorField(body, 'S'); sev == "FATAL" || sev == "PANIC" {
			srv.Closing = true
		}
		r := Reply{Code: ErrorCode(body)}
		if s.Mapping && s.PS.AwaitsDup() {
			r.Out = s.PS.DupError(body)
		}
		return r, nil
	case 'S':
		var ps pgproto3.ParameterStatus
		if ps.Decode(body) == nil {
			s.Want.Reported(srv.Settings.Note(ps.Name, ps.Value), ps.Value)
		}
	case 'G', 'W':
		srv.CopyIn = true
	case 'C':
		srv.CopyIn = false
	}
	return Reply{}, nil
}

// Ready is FromServer for a ReadyForQuery, whose Reply is ReadyMessage of
// the status it notes in srv: it reports whether the server may go back to
// the pool. The relay calls it directly, the commonest message it looks at.
func (s *Session) Ready(srv *Server, body []byte) (release bool, err error) {
	if len(body) != 1 {
		return false, errBadReady
	}
	status := body[0]
	srv.TxStatus, srv.CopyIn = status, false
	s.Acct.Answered()
	if s.Mapping {
		s.PS.Ready(&srv.Prepared)
	}
	return s.Pooled && s.Acct.Releasable(status), nil
}

// ReadyMessage is the ReadyForQuery message for a transaction status, made
// once for each of the three (one made per message would escape into the
// client's writer: an allocation per transaction).
func ReadyMessage(status byte) []byte {
	switch status {
	case 'I':
		return readyIdle
	case 'T':
		return readyInTx
	case 'E':
		return readyFailed
	}
	return []byte{'Z', 0, 0, 0, 5, status}
}

var (
	readyIdle     = []byte{'Z', 0, 0, 0, 5, 'I'}
	readyInTx     = []byte{'Z', 0, 0, 0, 5, 'T'}
	readyFailed   = []byte{'Z', 0, 0, 0, 5, 'E'}
	parseComplete = []byte{'1', 0, 0, 0, 4}
	closeComplete = []byte{'3', 0, 0, 0, 4}
)

// ErrorCode returns the SQLSTATE field of an ErrorResponse body.
func ErrorCode(body []byte) string { return errorField(body, 'C') }

// errorField returns the field of type typ of an ErrorResponse body.
func errorField(body []byte, typ byte) string {
	for len(body) > 1 {
		end := 1
		for end < len(body) && body[end] != 0 {
			end++
		}
		if body[0] == typ {
			return string(body[1:end])
		}
		body = body[min(end+1, len(body)):]
	}
	return ""
}
