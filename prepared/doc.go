// Package prepared keeps a client's named prepared statements working under
// transaction pooling, where each transaction may run on another server. It
// is a pure message rewriter: it is given the body of each Parse, Bind,
// Describe and Close a client sends and each ParseComplete, CloseComplete and
// ReadyForQuery the server answers with, and says what to send instead. It
// does no I/O and takes no lock; its caller serializes the calls for a client
// (Mapper) and for a server (Registry).
//
// A client's named statements live in its Mapper: client name -> the
// statement's server name and Parse body. The server name is derived from the
// query text and parameter types, so identical statements of any clients
// share one name, and each server's Registry lists the names prepared on it.
// Client messages naming a statement are rewritten to the server name; a
// statement the current server lacks is prepared first with an injected Parse
// whose ParseComplete the client never sees.
//
// Answers are matched to requests through a queue: one entry per Parse and
// Close sent, in order, tagged with the segment (the Sync or Query) it belongs
// to. A ParseComplete or CloseComplete answers the oldest entry of the current
// segment; at ReadyForQuery the segment's unanswered entries (skipped by the
// server after an error) are dropped, and their statements forgotten.
//
// The unnamed statement and portals pass through untouched.
//
// It must never import net, the pools, the proxy or a logger: everything it
// decides is testable from messages alone.
package prepared
