package core

import "github.com/pgmux/pgmux/protocol"

// Wait is the timeout on a session's wait for its client's next message.
type Wait int8

const (
	WaitForever  Wait = iota // no timeout
	WaitDrain                // draining and clean: closed at the drain's deadline
	WaitIdle                 // client_idle_timeout
	WaitIdleInTx             // idle_transaction_timeout
)

// WaitState is what decides a session's timeout.
type WaitState struct {
	Draining bool // Shutdown or a drain has begun
	Held     bool // the session holds a server
	Session  bool // session mode: the server is held from login to close
	Quiet    bool // nothing owed and no sequence open (Account.Quiet)
	TxStatus byte // the held server's transaction status
	// Whether client_idle_timeout and idle_transaction_timeout are set.
	IdleTimeout, TxTimeout bool
}

// clean reports whether no transaction or request is open on the held
// server, or none is held.
func (s WaitState) clean() bool { return !s.Held || s.Quiet && s.TxStatus == 'I' }

// Waiting returns the timeout that applies while the session waits for its
// client in state s.
func Waiting(s WaitState) Wait {
	switch {
	case s.Draining && s.clean():
		return WaitDrain
	case !s.Held || s.Session && s.clean():
		if s.IdleTimeout {
			return WaitIdle
		}
	case s.TxTimeout && s.Quiet && s.TxStatus != 'I':
		return WaitIdleInTx
	}
	return WaitForever
}

// Expired returns the error that ends a session whose wait for its client
// timed out, in state s as it is when the timeout fires.
func Expired(s WaitState) *protocol.PgError {
	switch {
	case s.Draining && s.clean():
		return protocol.Fatal(protocol.CodeAdminShutdown, "terminating connection: pgmux is shutting down")
	case s.Held && s.TxStatus != 'I':
		return protocol.Fatal(protocol.CodeIdleInTransactionTimout, "idle_transaction_timeout: terminating connection due to idle-in-transaction timeout")
	}
	return protocol.Fatal(protocol.CodeIdleSessionTimeout, "client_idle_timeout: terminating connection due to idle-session timeout")
}
