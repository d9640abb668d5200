//go:build unix

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// listen listens on addr with SO_REUSEPORT, so that a second pgmux can
// listen on the same address while this one drains; its connections get
// keepalive ka (tcp_keepalive and the like).
func listen(addr string, ka net.KeepAliveConfig) (net.Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: ka, KeepAlive: keepAliveOff(ka), Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(context.Background(), "tcp", addr)
}

// listenUnix listens on the Unix socket .s.PGSQL.<port> in dir, with mode,
// as PostgreSQL and PgBouncer name it. A socket file left there is
// replaced, so that a new pgmux can start while the old one drains (the
// old one keeps the clients it has, new ones reach the new one), unless a
// PostgreSQL server's lock file says the socket is the server's. unlink
// removes the file at the end, unless another process has replaced it.
func listenUnix(dir string, port int, mode os.FileMode) (ln net.Listener, unlink func(), err error) {
	path := filepath.Join(dir, fmt.Sprintf(".s.PGSQL.%d", port))
	if _, err := os.Stat(path + ".lock"); err == nil {
		return nil, nil, fmt.Errorf("%s.lock: a PostgreSQL server owns this socket", path)
	}
	if _, err := os.Lstat(path); err == nil {
		if err := os.Remove(path); err != nil {
			return nil, nil, err
		}
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, nil, err
	}
	ul.SetUnlinkOnClose(false) // see unlink
	if err := os.Chmod(path, mode); err != nil {
		ul.Close()
		return nil, nil, err
	}
	mine, err := os.Lstat(path)
	if err != nil {
		ul.Close()
		return nil, nil, err
	}
	unlink = func() {
		if now, err := os.Lstat(path); err == nil && os.SameFile(now, mine) {
			os.Remove(path)
		}
	}
	return ul, unlink, nil
}
