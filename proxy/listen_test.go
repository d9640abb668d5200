package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// notifySender sends numbered notifications on channels through pgmux, as
// pg_notify batches and single NOTIFY statements: payload "<channel>:<n>".
type notifySender struct {
	conn *pgx.Conn
	next map[string]int
}

// send sends n notifications on ch, in order.
func (s *notifySender) send(t testing.TB, ch string, n int) {
	t.Helper()
	ctx := context.Background()
	for n > 0 {
		from := s.next[ch]
		batch := min(n, 250)
		if batch >= 10 {
			_, err := s.conn.Exec(ctx, "SELECT pg_notify($1, $1 || ':' || i) FROM generate_series($2::int, $3::int) i",
				ch, from, from+batch-1)
			if err != nil {
				t.Fatalf("pg_notify: %v", err)
			}
		} else {
			batch = 1
			if _, err := s.conn.Exec(ctx, fmt.Sprintf("NOTIFY %s, '%s:%d'", pgx.Identifier{ch}.Sanitize(), ch, from)); err != nil {
				t.Fatalf("NOTIFY: %v", err)
			}
		}
		s.next[ch] = from + batch
		n -= batch
	}
}

// received counts what a listener got, per channel, and whether each
// channel's came in order.
type received struct {
	count    int
	next     map[string]int
	disorder string
}

func (r *received) take(t testing.TB, n *pgconn.Notification) {
	ch, num, ok := strings.Cut(n.Payload, ":")
	i, err := strconv.Atoi(num)
	if !ok || err != nil || ch != n.Channel {
		t.Errorf("notification %+v: not one the test sent", n)
		return
	}
	if r.next == nil {
		r.next = map[string]int{}
	}
	if i != r.next[ch] && r.disorder == "" {
		r.disorder = fmt.Sprintf("channel %s: got %d, want %d", ch, i, r.next[ch])
	}
	r.next[ch] = i + 1
	r.count++
}

// TestListenNotify: in transaction mode with a pool of 2, pgx clients and
// psql LISTEN through pgmux without keeping a server, and each gets every
// notification on its channels, in order, while 200 other clients run
// transactions; after UNLISTEN, none.
func TestListenNotify(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 2 })
	ctx := context.Background()
	const listeners, busy, perChannel = 50, 200, 5000
	channels := []string{"jobs", "Mixed Case"}

	conns := make([]*pgx.Conn, listeners)
	for i := range conns {
		conns[i] = p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
		if _, err := conns[i].Exec(ctx, `LISTEN jobs; LISTEN "Mixed Case"`); err != nil {
			t.Fatalf("LISTEN: %v", err)
		}
	}
	psql := startPsqlListener(t, p, "jobs")
	node := startNodeListener(t, p, "jobs", perChannel)
	waitFor(t, 5*time.Second, func() bool { return p.Pools()[0].ClientsListening == listeners+2 })
	st := p.Pools()[0]
	if st.ListenChannels != 2 || st.ClientsPinned != 0 || st.ServersActive != 0 {
		t.Fatalf("while listening: %d channels, %d pinned, %d servers active; want 2, 0, 0", st.ListenChannels, st.ClientsPinned, st.ServersActive)
	}

	// 200 clients keep the pool of 2 busy meanwhile.
	stop := make(chan struct{})
	var stopOnce sync.Once
	var busyWG sync.WaitGroup
	var busyTx atomic.Int64
	for range busy {
		c := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
		busyWG.Add(1)
		go func() {
			defer busyWG.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var x int
				if err := c.QueryRow(ctx, "SELECT $1::int", 7).Scan(&x); err != nil {
					t.Errorf("busy client: %v", err)
					return
				}
				busyTx.Add(1)
			}
		}()
	}
	t.Cleanup(func() { stopOnce.Do(func() { close(stop) }); busyWG.Wait() }) // before their connections close

	got := make([]received, listeners)
	var recvWG sync.WaitGroup
	rctx, stopRecv := context.WithTimeout(ctx, 120*time.Second)
	t.Cleanup(func() { stopRecv(); recvWG.Wait() })
	for i, c := range conns {
		recvWG.Add(1)
		go func() {
			defer recvWG.Done()
			wctx := rctx
			for got[i].count < perChannel*len(channels) {
				n, err := c.WaitForNotification(wctx)
				if err != nil {
					t.Errorf("listener %d after %d notifications: %v", i, got[i].count, err)
					return
				}
				got[i].take(t, n)
			}
		}()
	}
	s := &notifySender{conn: p.connect(t, "postgres", pgx.QueryExecModeCacheStatement), next: map[string]int{}}
	start := time.Now()
	for range perChannel / 500 {
		for _, ch := range channels {
			s.send(t, ch, 495)
			s.send(t, ch, 5) // as NOTIFY statements
		}
	}
	recvWG.Wait()
	t.Logf("%d notifications sent, each of %d listeners got them in %s; %d other transactions meanwhile",
		perChannel*len(channels), listeners, time.Since(start).Round(time.Millisecond), busyTx.Load())
	stopOnce.Do(func() { close(stop) })
	busyWG.Wait()
	for i := range got {
		if got[i].count != perChannel*len(channels) || got[i].disorder != "" {
			t.Fatalf("listener %d: %d notifications, %s", i, got[i].count, got[i].disorder)
		}
	}
	if n, order := psql.finish(t); n != perChannel || order != "" {
		t.Fatalf("psql: %d notifications on jobs, want %d; %s", n, perChannel, order)
	}
	if line := node.next(t); line != fmt.Sprintf("received %d ", perChannel) {
		t.Fatalf("node-postgres: %q", line)
	}
	if line := node.next(t); line != "unlistened" {
		t.Fatalf("node-postgres: %q", line)
	}

	// UNLISTEN, by name and with *: nothing more arrives.
	for i, c := range conns {
		q := "UNLISTEN *"
		if i%2 == 0 {
			q = `UNLISTEN jobs; UNLISTEN "Mixed Case"`
		}
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, func() bool {
		st := p.Pools()[0]
		return st.ClientsListening == 0 && st.ListenChannels == 0
	})
	s.send(t, "jobs", 100)
	s.send(t, "Mixed Case", 3)
	node.stdin.Close()
	if line := node.next(t); line != "extra 0" {
		t.Fatalf("node-postgres after UNLISTEN: %q", line)
	}
	for i, c := range conns {
		wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		n, err := c.WaitForNotification(wctx)
		cancel()
		if err == nil {
			t.Fatalf("listener %d got %+v after UNLISTEN", i, n)
		}
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("listener %d after UNLISTEN: %v", i, err)
		}
	}
	// The listening connection is closed once no one listens.
	waitFor(t, 5*time.Second, func() bool {
		for _, sv := range p.Servers() {
			if sv.State == "listen" {
				return false
			}
		}
		return true
	})
}

// psqlListener is psql, reading its commands from a pipe.
type psqlListener struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

// startLines starts cmd with a pipe to its standard input and its output
// (standard error too) as lines on a channel of n, closed at its end; the
// test's end kills it.
func startLines(t *testing.T, cmd *exec.Cmd, n int) (io.WriteCloser, chan string) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, n)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return stdin, lines
}

// startPsqlListener starts psql through pgmux and makes it LISTEN on ch.
func startPsqlListener(t *testing.T, p *testProxy, ch string) *psqlListener {
	t.Helper()
	path, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql is needed: apt-get install postgresql-client")
	}
	cmd := exec.Command(path, "-X", "-q", "-v", "ON_ERROR_STOP=1", fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", p.port))
	stdin, lines := startLines(t, cmd, 1<<16)
	l := &psqlListener{cmd: cmd, stdin: stdin, lines: lines}
	fmt.Fprintf(stdin, "LISTEN %s;\n\\echo listening\n", ch)
	for line := range l.lines {
		if line == "listening" {
			return l
		}
		t.Fatalf("psql: %s", line)
	}
	t.Fatal("psql ended")
	return nil
}

// finish has psql run a statement, after which it prints the notifications
// it has received, and quit; it returns how many it printed and whether
// they were in order.
func (l *psqlListener) finish(t *testing.T) (int, string) {
	fmt.Fprintf(l.stdin, "SELECT 1 AS one \\g /dev/null\n\\q\n")
	l.stdin.Close()
	n, order := 0, ""
	for line := range l.lines {
		// Asynchronous notification "jobs" with payload "jobs:17" received from server process with PID 123.
		_, rest, ok := strings.Cut(line, `with payload "`)
		if !ok {
			t.Logf("psql: %s", line)
			continue
		}
		payload, _, _ := strings.Cut(rest, `"`)
		_, num, _ := strings.Cut(payload, ":")
		if i, _ := strconv.Atoi(num); i != n && order == "" {
			order = fmt.Sprintf("got %d, want %d", i, n)
		}
		n++
	}
	l.cmd.Wait()
	return n, order
}

// nodeListener is testdata/listen.cjs run by Node.js with node-postgres.
type nodeListener struct {
	stdin io.WriteCloser
	lines chan string
}

// startNodeListener starts it on channel ch, to receive want
// notifications; node-postgres is installed with npm the first time.
func startNodeListener(t *testing.T, p *testProxy, ch string, want int) *nodeListener {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("Node.js is needed for node-postgres: apt-get install nodejs npm")
	}
	dir := filepath.Join(os.TempDir(), "pgmux-test-node-pg")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "pg")); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "npm", "install", "--prefix", dir, "--no-audit", "--no-fund", "pg@8").CombinedOutput()
		if err != nil {
			t.Fatalf("npm install pg: %v\n%s", err, out)
		}
	}
	cmd := exec.Command(node, "testdata/listen.cjs")
	cmd.Env = append(os.Environ(), "NODE_PATH="+filepath.Join(dir, "node_modules"),
		fmt.Sprintf("PGMUX_PORT=%d", p.port), "CHANNEL="+ch, fmt.Sprintf("WANT=%d", want))
	stdin, lines := startLines(t, cmd, 100)
	l := &nodeListener{stdin: stdin, lines: lines}
	if line := l.next(t); line != "listening" {
		t.Fatalf("node-postgres: %q", line)
	}
	return l
}

// next returns the script's next line.
func (l *nodeListener) next(t *testing.T) string {
	t.Helper()
	select {
	case line, ok := <-l.lines:
		if !ok {
			t.Fatal("node-postgres ended")
		}
		return line
	case <-time.After(60 * time.Second):
		t.Fatal("node-postgres said nothing for a minute")
	}
	return ""
}

// TestListenInTransaction: a LISTEN inside a transaction goes to the server
// and pins it; notifications reach a client through pgmux between its
// transactions only, and a client that leaves listens no more.
func TestListenInTransaction(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 2 })
	ctx := context.Background()
	a := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	b := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	s := &notifySender{conn: p.connect(t, "postgres", pgx.QueryExecModeCacheStatement), next: map[string]int{}}

	if _, err := a.Exec(ctx, "LISTEN tx_a"); err != nil {
		t.Fatal(err)
	}
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.send(t, "tx_a", 3)
	if _, err := tx.Exec(ctx, "SELECT pg_sleep(0.1)"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if n, err := a.WaitForNotification(wctx); err == nil {
		t.Fatalf("a notification reached a client inside its transaction: %+v", n)
	}
	cancel()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var r received
	for range 3 {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := a.WaitForNotification(wctx)
		cancel()
		if err != nil {
			t.Fatalf("after COMMIT: %v", err)
		}
		r.take(t, n)
	}
	if r.disorder != "" {
		t.Fatal(r.disorder)
	}

	// In a transaction LISTEN reaches the server, which stays b's.
	tx, err = b.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LISTEN tx_b"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if st := p.Pools()[0]; st.ClientsPinned != 1 || st.ClientsListening != 1 {
		t.Fatalf("pinned %d, listening %d; want 1, 1", st.ClientsPinned, st.ClientsListening)
	}
	s.send(t, "tx_b", 1)
	wctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	n, err := b.WaitForNotification(wctx)
	cancel()
	if err != nil || n.Payload != "tx_b:0" {
		t.Fatalf("b, pinned: %+v %v", n, err)
	}

	a.Close(ctx)
	waitFor(t, 5*time.Second, func() bool { return p.Pools()[0].ClientsListening == 0 })
}

// TestListenSlowReader: a client that LISTENs and stops reading is closed
// once notify_queue_bytes of notifications wait for it, and pgmux's memory
// stays bounded; the others are served.
func TestListenSlowReader(t *testing.T) {
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 2 }) // notify_queue_bytes 1 MiB
	ctx := context.Background()
	slow := loggedIn(t, p)
	if err := slow.query("LISTEN flood"); err != nil {
		t.Fatal(err)
	}
	other := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	if _, err := other.Exec(ctx, "LISTEN flood"); err != nil {
		t.Fatal(err)
	}
	sender := p.connect(t, "postgres", pgx.QueryExecModeCacheStatement)
	payload := strings.Repeat("x", 7000)
	var got atomic.Int64
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := other.WaitForNotification(ctx); err != nil {
				done <- err
				return
			}
			if got.Add(1) == 3000 {
				done <- nil
				return
			}
		}
	}()
	// 21 MB: more than the slow client's socket buffers take. The sender
	// waits for the reading client to have the batch before last, so at
	// most two batches (700 kB) wait for it however slowly it is scheduled;
	// the slow client's queue passes 1 MiB all the same.
	var readErr error
	read := false // the reading client's goroutine has ended, with readErr
	for i := 0; i < 3000; i += 50 {
		if _, err := sender.Exec(ctx, "SELECT pg_notify('flood', $1 || i) FROM generate_series($2::int, $3::int) i", payload, i, i+49); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); !read && got.Load() < int64(i); {
			select {
			case readErr = <-done:
				read = true
			case <-time.After(5 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("the client that reads has %d notifications of %d", got.Load(), i)
			}
		}
	}
	if !read {
		readErr = <-done
	}
	if readErr != nil {
		t.Fatalf("the client that reads: %v after %d", readErr, got.Load())
	}
	waitFor(t, 5*time.Second, func() bool { return p.Pools()[0].ClientsListening == 1 })
	// The slow client finds its notifications, then the error or the end.
	var fatal *pgproto3.ErrorResponse
	for {
		m, err := slow.fe.Receive()
		if err != nil {
			break
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			fatal = e
			break
		}
	}
	if fatal == nil || fatal.Code != "54000" {
		t.Fatalf("the slow client was told %+v", fatal)
	}
	t.Logf("slow listener told: %s %s", fatal.Code, fatal.Message)
}
