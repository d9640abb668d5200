// Package core makes pgmux's protocol decisions for a client session
// without doing any I/O: given what a client sent or a server answered, it
// says what that means and what is to be done. Its callers, the drivers in
// package proxy (a goroutine per client on net.Conn, and on Linux the event
// loop), read and write sockets and do what it says; a decision made here is
// made once for every driver and tested without a socket.
//
// It owns so far:
//   - the account of a client's exchange with the server it holds (Account):
//     what is owed, whether an extended-protocol sequence or a Flush is open,
//     and so when the server may go back to the pool (the release rule);
//   - the sorting of client messages: what a message type means once logged
//     in (Classify), and whether a batch of them is an ordinary request the
//     event loop may serve whole (Scan);
//   - the reading of a StartupMessage (ParseStartup);
//   - run-time settings: those a client wants (Wanted), a server's
//     (ServerSettings), and the query that brings one to the other;
//   - which client timeout applies and what it ends the session with (Wait);
//   - what to make sure of about a server just granted (Granted), and how
//     to settle one whose client left (SettleFor, SettleDone).
//
// The rest of a session's decisions (cancel, drain and pause as events, and
// the relay of a server's answers) move here as the drivers thin; docs/relay.md says where
// that stands.
//
// It must never import net, syscall, the pools, the proxy, a logger or
// metrics.
package core
