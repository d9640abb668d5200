//go:build !unix

package main

import "net"

// listen listens on addr. Without SO_REUSEPORT a second pgmux cannot take
// the address over while this one drains.
func listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
