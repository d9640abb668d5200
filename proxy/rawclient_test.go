package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/protocol"
)

// rawClient speaks the protocol by hand, for what pgx will not send: bad
// bytes, odd startup packets, cancels followed by an abrupt hang-up.
type rawClient struct {
	net.Conn
	fe       *pgproto3.Frontend
	pid, key uint32
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawClient{Conn: c, fe: pgproto3.NewFrontend(c, c)}
}

// startup logs in with trust auth and reads up to ReadyForQuery, keeping
// the BackendKeyData.
func (r *rawClient) startup(user, database string, extra ...string) error {
	params := map[string]string{"user": user, "database": database}
	for i := 0; i+1 < len(extra); i += 2 {
		params[extra[i]] = extra[i+1]
	}
	r.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
	if err := r.fe.Flush(); err != nil {
		return err
	}
	return r.untilReady()
}

// untilReady reads messages up to ReadyForQuery and returns the first
// ErrorResponse as an error.
func (r *rawClient) untilReady() error {
	var first error
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			if first != nil {
				return first
			}
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.BackendKeyData:
			r.pid, r.key = m.ProcessID, binary.BigEndian.Uint32(m.SecretKey)
		case *pgproto3.ErrorResponse:
			if first == nil {
				first = &protocol.PgError{Severity: m.Severity, Code: m.Code, Message: m.Message}
			}
			if m.Severity == "FATAL" {
				return first
			}
		case *pgproto3.ReadyForQuery:
			return first
		}
	}
}

// query runs a simple query and returns its first error, if any.
func (r *rawClient) query(sql string) error {
	r.fe.Send(&pgproto3.Query{String: sql})
	if err := r.fe.Flush(); err != nil {
		return err
	}
	return r.untilReady()
}

// sendCancel sends a CancelRequest for this client's key on a new connection.
func (r *rawClient) sendCancel(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write(protocol.AppendCancelRequest(nil, r.pid, binary.BigEndian.AppendUint32(nil, r.key)))
	return err
}

// expectFatal reads until an ErrorResponse and checks its SQLSTATE, then
// checks that the connection is closed.
func (r *rawClient) expectFatal(t testing.TB, code string) {
	t.Helper()
	err := r.untilReady()
	var pgErr *protocol.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("want error %s, got %v", code, err)
	}
	if pgErr.Code != code {
		t.Fatalf("want SQLSTATE %s, got %s (%s)", code, pgErr.Code, pgErr.Message)
	}
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.fe.Receive(); err == nil {
		t.Fatalf("connection still open after FATAL %s", code)
	}
}

func sqlstate(err error) string {
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) {
		return pgErr.SQLState()
	}
	var pe *protocol.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return fmt.Sprintf("no SQLSTATE (%v)", err)
}

// value runs a simple query and returns the first column of its first row.
func (r *rawClient) value(sql string) (string, error) {
	r.fe.Send(&pgproto3.Query{String: sql})
	if err := r.fe.Flush(); err != nil {
		return "", err
	}
	return r.firstValue()
}

// firstValue reads the answer to one query up to ReadyForQuery and returns
// the first column of its first row.
func (r *rawClient) firstValue() (string, error) {
	var v *string
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			return "", err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if v == nil && len(m.Values) > 0 {
				s := string(m.Values[0])
				v = &s
			}
		case *pgproto3.ErrorResponse:
			return "", &protocol.PgError{Severity: m.Severity, Code: m.Code, Message: m.Message}
		case *pgproto3.ReadyForQuery:
			if v == nil {
				return "", errors.New("no row")
			}
			return *v, nil
		}
	}
}

// loggedIn returns a raw client logged in to p as the superuser.
func loggedIn(t *testing.T, p *testProxy) *rawClient { return loggedInTo(t, p, "postgres") }

// loggedInTo is loggedIn to database db.
func loggedInTo(t testing.TB, p *testProxy, db string) *rawClient {
	t.Helper()
	c := dialRaw(t, p.addr)
	if err := c.startup(cluster.SuperUserName(), db); err != nil {
		t.Fatal(err)
	}
	return c
}

// sendAll sends msgs and flushes them, failing t if it cannot.
func (r *rawClient) sendAll(t testing.TB, msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	for _, m := range msgs {
		r.fe.Send(m)
	}
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
}

// runSteps runs steps in order (to bring a pool's servers into a known
// state, say) and fails the test at the first error.
func runSteps(t *testing.T, steps []clientStep) {
	t.Helper()
	for _, step := range steps {
		if err := step.c.query(step.sql); err != nil {
			t.Fatalf("%s: %v", step.sql, err)
		}
	}
}

// clientStep is a query one of a test's raw clients runs.
type clientStep struct {
	c   *rawClient
	sql string
}

// sessionOf returns the session of the client whose BackendKeyData c got.
func (p *testProxy) sessionOf(c *rawClient) *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byPID[c.pid]
}

// loopServes runs SELECT 1 on c until the loop has served one (its server's
// settings are then in line), so that c's next requests are the loop's.
func (p *testProxy) loopServes(t *testing.T, c *rawClient) {
	t.Helper()
	waitFor(t, 2*time.Second, func() bool {
		if err := c.query("SELECT 1"); err != nil {
			t.Fatal(err)
		}
		return p.sessionOf(c).inLoop.Load()
	})
}

// waitFor fails the test unless cond holds within d.
func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
