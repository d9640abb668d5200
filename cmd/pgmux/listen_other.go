//go:build !unix

package main

import (
	"context"
	"errors"
	"net"
	"os"
)

// listen listens on addr, its connections with keepalive ka. Without
// SO_REUSEPORT a second pgmux cannot take the address over while this one
// drains.
func listen(addr string, ka net.KeepAliveConfig) (net.Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: ka, KeepAlive: keepAliveOff(ka)}
	return lc.Listen(context.Background(), "tcp", addr)
}

// listenUnix is refused outside Unix.
func listenUnix(string, int, os.FileMode) (net.Listener, func(), error) {
	return nil, nil, errors.New("unix_socket_dir: no Unix sockets on this system")
}
