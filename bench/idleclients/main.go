// Command idleclients holds N idle client connections open through a
// pooler, each having run one query, for bench/run.sh's memory point. It
// prints "ready" once all are open and holds them until its standard input
// closes.
//
//	idleclients -addr 127.0.0.1:6432 -user postgres -db postgres -n 10000 [-src 127.0.0.2]
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:6432", "pooler address")
	user := flag.String("user", "postgres", "user")
	db := flag.String("db", "postgres", "database")
	n := flag.Int("n", 1000, "connections")
	par := flag.Int("parallel", 64, "connections opened at once")
	src := flag.String("src", "", "local address to connect from (a loopback address of its own lets one\n"+
		"destination take more connections than the ephemeral port range holds)")
	flag.Parse()
	dialer := &net.Dialer{Timeout: 30 * time.Second}
	if *src != "" {
		ip := net.ParseIP(*src)
		if ip == nil {
			fmt.Fprintf(os.Stderr, "idleclients: -src %q is not an IP address\n", *src)
			os.Exit(2)
		}
		dialer.LocalAddr = &net.TCPAddr{IP: ip}
	}
	conns := make([]net.Conn, *n)
	var wg sync.WaitGroup
	errs := make(chan error, *n)
	next := make(chan int)
	for range *par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := open(dialer, *addr, *user, *db)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					continue
				}
				conns[i] = c
			}
		}()
	}
	for i := range *n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed == 0 {
			fmt.Fprintln(os.Stderr, "idleclients:", err)
		}
		failed++
	}
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "idleclients: %d of %d connections failed\n", failed, *n)
		os.Exit(1)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

// open logs in (trust) and runs one query.
func open(d *net.Dialer, addr, user, db string) (net.Conn, error) {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	for _, msg := range []pgproto3.FrontendMessage{
		&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
			Parameters: map[string]string{"user": user, "database": db}},
		&pgproto3.Query{String: "SELECT 1"},
	} {
		fe.Send(msg)
		err := fe.Flush()
		if err == nil {
			err = untilReady(fe)
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func untilReady(fe *pgproto3.Frontend) error {
	for {
		msg, err := fe.Receive()
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("%s: %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return nil
		}
	}
}
