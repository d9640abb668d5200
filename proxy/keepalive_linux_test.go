package proxy

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestServerKeepAlive: a database's KeepAlive (tcp_keepalive and the like)
// reaches the server connections' sockets.
func TestServerKeepAlive(t *testing.T) {
	c := needPG(t)
	for _, tc := range []struct {
		ka       net.KeepAliveConfig
		on, idle int
	}{
		{net.KeepAliveConfig{Enable: true, Idle: 41 * time.Second}, 1, 41},
		{net.KeepAliveConfig{Enable: false, Idle: -1, Interval: -1, Count: -1}, 0, 0},
	} {
		db := Database{Host: c.Host, Port: c.Port, DBName: "postgres", KeepAlive: tc.ka}
		sc, err := dialServer(context.Background(), &db, cluster.SuperUserName(), serverCred{}, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		var on, idle int
		raw, _ := sc.conn.(syscall.Conn).SyscallConn()
		raw.Control(func(fd uintptr) {
			on, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
			idle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		})
		sc.Close()
		if on != tc.on || tc.on == 1 && idle != tc.idle {
			t.Errorf("%+v: keepalive %d, idle %d", tc.ka, on, idle)
		}
	}
}
