//go:build !unix

package rawio

import "net"

// Peek cannot look at a socket without consuming outside Unix: every
// connection passes as quiet, so a server that died while idle fails its
// next client's first query instead of being replaced before it.
func Peek(net.Conn) PeekResult { return PeekEmpty }
