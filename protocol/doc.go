// Package protocol is pgmux's view of the PostgreSQL frontend/backend wire
// protocol (version 3.0): the startup packets (StartupMessage, SSLRequest,
// GSSENCRequest, CancelRequest), framing of regular messages so they can be
// relayed without being decoded, and the ErrorResponse and other messages
// pgmux itself sends. Checking passwords is package auth's.
//
// Encoding of the messages pgmux originates is done with pgproto3. The package
// knows nothing of pools or sessions: it must never import the pools, the
// proxy, a logger, metrics, pgconn or the configuration.
package protocol
