//go:build linux

package main

import (
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sockopts reads a connection's keepalive settings.
func sockopts(t *testing.T, c net.Conn) (on, idle, intvl, cnt int) {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) {
		on, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		idle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		intvl, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		cnt, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
	})
	return
}

// TestListenKeepAlive: tcp_keepalive, tcp_keepidle, tcp_keepintvl and
// tcp_keepcnt reach the clients' sockets; tcp_keepalive off turns it off.
func TestListenKeepAlive(t *testing.T) {
	for _, tc := range []struct {
		ka                     net.KeepAliveConfig
		on, idle, intvl, count int
	}{
		{net.KeepAliveConfig{Enable: true, Idle: 33 * time.Second, Interval: 7 * time.Second, Count: 4}, 1, 33, 7, 4},
		{net.KeepAliveConfig{Enable: false, Idle: -1, Interval: -1, Count: -1}, 0, -1, -1, -1},
	} {
		ln, err := listen("127.0.0.1:0", tc.ka)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		on, idle, intvl, cnt := sockopts(t, s)
		if on != tc.on || tc.on == 1 && (idle != tc.idle || intvl != tc.intvl || cnt != tc.count) {
			t.Errorf("%+v: keepalive %d, idle %d, interval %d, count %d", tc.ka, on, idle, intvl, cnt)
		}
	}
}
