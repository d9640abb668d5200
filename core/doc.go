// Package core makes pgmux's protocol decisions for a client session
// without doing any I/O: given what a client sent or a server answered, it
// says what that means and what is to be done. Its callers, the drivers in
// package proxy (a goroutine per client on net.Conn, and on Linux the event
// loop), read and write sockets and do what it says; a decision made here is
// made once for every driver and tested without a socket.
//
// It owns:
//   - where a session is in its life (Phase), which both drivers move and
//     the reports derive their state from, and whether a session waits for
//     its client (AwaitsClient);
//   - a client's protocol state (Session) and a server's (Server), which the
//     drivers keep in their session and server structs;
//   - what the client gets for each server message and whether the server
//     may go back to the pool (Session.FromServer), by the account of the
//     exchange (Account: what is owed, an open extended-protocol sequence, a
//     Flush, and so the release rule);
//   - the sorting of client messages: what a message type means once logged
//     in (Classify), what the session must see of one before it goes to the
//     server (Session.Peek, Looked), and whether a batch of them is an
//     ordinary request the event loop may serve whole (Scan);
//   - what becomes of a request that needs a server (Admit: take one, wait
//     for RESUME, or answer it as cancelled), what a cancel does (Cancel),
//     and a cancel that follows the request to its server (Forward);
//   - login: the answer to a request for encryption (AnswerEncryption), the
//     reading of a StartupMessage (ParseStartup, Login.Adjust), who is
//     turned away at it (Gate), a client's
//     authentication as its method says (ClientAuth; package auth checks
//     the answers), and its greeting (Welcome);
//   - pgmux's own login to a server (ServerLogin, ServerEncryption) and the
//     answers to its own requests there (Answer);
//   - run-time settings: those a client wants (Wanted), a server's
//     (ServerSettings), and bringing a granted server's to a client's
//     (SettingsSync: the query, its answer, what becomes of the server);
//   - which client timeout applies and what it ends the session with (Wait),
//     and what a client is told when its server fails under it (ServerLost);
//   - what to make sure of about a server just granted, step by step
//     (Granted, Grant.Next), and how to settle one whose client left
//     (SettleFor, SettleDone);
//   - the session state a transaction-mode client's statements leave
//     (QueryEffects, Session.NoteMessage): settings read back from the
//     server before it goes back (ReadBackDue, ReadBack), the rest pinning
//     the server to the client;
//   - which queries are LISTEN and UNLISTEN that pgmux answers itself
//     (ListenOps, ListenAnswer), and the channel of a notification.
//
// What is still spelled out once per driver is in docs/relay.md.
//
// It must never import net, syscall, the pools, the proxy, a logger or
// metrics.
package core
