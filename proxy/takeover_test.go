package proxy

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestTakeOverEndsStrayReader: a reader left blocked on the connection
// pgconn hands over (its background reader, started by a slow write at
// login) gets nothing of what the server sends afterwards; all of it reaches
// the connection takeOver returns.
func TestTakeOverEndsStrayReader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server := <-accepted
	defer server.Close()

	stray := make(chan int, 1)
	go func() { // as pgconn's background reader
		n, _ := c.Read(make([]byte, 64))
		stray <- n
	}()
	time.Sleep(50 * time.Millisecond) // let it block in Read

	own, err := takeOver(c)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	select {
	case n := <-stray:
		if n != 0 {
			t.Fatalf("the stray reader got %d bytes", n)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the stray reader is still blocked after takeOver")
	}
	if _, err := server.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	own.SetReadDeadline(time.Now().Add(2 * time.Second))
	got := make([]byte, 6)
	if _, err := io.ReadFull(own, got); err != nil || string(got) != "answer" {
		t.Fatalf("read %q, %v", got, err)
	}
	// The socket stays open: the server's end sees no EOF.
	server.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := server.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Fatalf("the server's end after takeOver: %v (want a timeout, the socket open)", err)
	}
}
