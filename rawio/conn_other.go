//go:build !linux

package rawio

import (
	"io"
	"net"
)

// Conn is the raw socket, never made outside Linux.
type Conn struct{}

// New returns c: outside Linux every socket goes through the net.Conn.
func New(c net.Conn) io.ReadWriter { return c }

// Of returns nil and -1: no socket is a Conn outside Linux.
func Of(io.ReadWriter) (*Conn, int) { return nil, -1 }

// Shutdown does nothing; no Conn is ever made.
func (s *Conn) Shutdown() {}
