//go:build !unix

package main

import (
	"errors"
	"net"
	"os"
)

// listen listens on addr. Without SO_REUSEPORT a second pgmux cannot take
// the address over while this one drains.
func listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// listenUnix is refused outside Unix.
func listenUnix(string, int, os.FileMode) (net.Listener, func(), error) {
	return nil, nil, errors.New("unix_socket_dir: no Unix sockets on this system")
}
