package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sync/errgroup"

	"github.com/pgmux/pgmux/internal/pgtest"
	"github.com/pgmux/pgmux/internal/redistest"
	"github.com/pgmux/pgmux/proxy"
	"github.com/pgmux/pgmux/tracing"
)

var (
	cluster   *pgtest.Cluster
	redisSrv  *redistest.Server
	pgmuxPort int // a pgmux in transaction mode in front of cluster
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if testing.Short() {
			return m.Run()
		}
		var err error
		if cluster, err = pgtest.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "start PostgreSQL:", err)
			return 1
		}
		defer cluster.Close()
		if redisSrv, err = redistest.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "start Redis:", err)
			return 1
		}
		defer redisSrv.Close()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		pgmuxPort = ln.Addr().(*net.TCPAddr).Port
		srv := proxy.New(pgmuxOptions(nil))
		go srv.Serve(ln)
		defer srv.Shutdown(context.Background())
		return m.Run()
	}()
	os.Exit(code)
}

// pgmuxOptions are the tests' pgmux's: transaction mode in front of
// cluster, its spans to tr if not nil.
func pgmuxOptions(tr *tracing.Tracer) proxy.Options {
	return proxy.Options{
		AuthType: "trust",
		Databases: func(name string) (proxy.Database, bool) {
			return proxy.Database{Host: cluster.Host, Port: cluster.Port, DBName: name, PoolMode: proxy.ModeTransaction, PoolSize: 10}, true
		},
		QueryWaitTimeout:      time.Minute,
		ServerConnectTimeout:  5 * time.Second,
		ClientLoginTimeout:    10 * time.Second,
		MaxPreparedStatements: 200,
		Tracer:                tr,
	}
}

// demoServer is a demo API served over HTTP, through pgmux.
type demoServer struct {
	api  *Server
	http *httptest.Server
	db   string
}

// newDemo creates database dbName (unless it exists and keep is set) and
// serves a demo API on it.
func newDemo(t *testing.T, dbName string, fresh bool, edit func(*Config)) *demoServer {
	t.Helper()
	if cluster == nil {
		t.Skip("needs PostgreSQL and Redis (not started under -short)")
	}
	if fresh {
		if err := cluster.CreateDatabase(dbName); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{
		DatabaseURL: fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", cluster.SuperUserName(), pgmuxPort, dbName),
		RedisURL:    redisSrv.URL,
		Logger:      zaptest.NewLogger(t),
		MaxConns:    40,
		Products:    50,
		Accounts:    20,
	}
	if edit != nil {
		edit(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	api, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := &demoServer{api: api, http: httptest.NewServer(api.Handler()), db: dbName}
	t.Cleanup(d.close)
	return d
}

// close stops HTTP (waiting for requests under way), then the API.
func (d *demoServer) close() {
	d.http.Close()
	d.api.Close()
}

func (d *demoServer) do(t testing.TB, method, path string, body any, hdr ...string) (int, []byte) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, d.http.URL+path, rd)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := d.http.Client().Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, path, err)
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func queryInt(t *testing.T, db, sql string) int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, cluster.SuperDSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMoneyConserved: 200 concurrent random transfers among 20 accounts,
// some sent twice with the same idempotency key: the total is unchanged, no
// balance is negative, every transfer answered as applied is in the table
// exactly once, and nothing fails (no deadlock, no busy error).
func TestMoneyConserved(t *testing.T) {
	d := newDemo(t, "demo_money", true, func(c *Config) { c.InitialBalance = 1000 })
	total := queryInt(t, d.db, "SELECT sum(balance) FROM accounts")
	type sent struct {
		key     string
		applied bool
		status  int
	}
	results := make(chan sent, 400)
	var g errgroup.Group
	g.SetLimit(100)
	for i := range 200 {
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		from := rng.Int64N(20) + 1
		to := rng.Int64N(19) + 1
		if to >= from {
			to++
		}
		req := TransferRequest{From: from, To: to, AmountCents: rng.Int64N(300) + 1, IdempotencyKey: fmt.Sprintf("t-%d", i)}
		copies := 1
		if i%10 == 0 {
			copies = 2 // a client retrying: same key, at the same time
		}
		for range copies {
			g.Go(func() error {
				status, body := d.do(t, "POST", "/transfers", req)
				var res TransferResult
				json.Unmarshal(body, &res)
				results <- sent{req.IdempotencyKey, res.Applied, status}
				if status != 200 && status != 409 {
					return fmt.Errorf("transfer %s: %d %s", req.IdempotencyKey, status, body)
				}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	close(results)
	appliedBy := map[string]int{}
	declined := 0
	for r := range results {
		if r.status == 409 {
			declined++
		}
		if r.applied {
			appliedBy[r.key]++
		}
	}
	for k, n := range appliedBy {
		if n != 1 {
			t.Errorf("transfer %s answered as applied %d times", k, n)
		}
	}
	if got := queryInt(t, d.db, "SELECT sum(balance) FROM accounts"); got != total {
		t.Fatalf("money not conserved: %d before, %d after", total, got)
	}
	if neg := queryInt(t, d.db, "SELECT count(*) FROM accounts WHERE balance < 0"); neg != 0 {
		t.Fatalf("%d negative balances", neg)
	}
	if rows := queryInt(t, d.db, "SELECT count(*) FROM transfers"); rows != int64(len(appliedBy)) {
		t.Fatalf("%d transfers in the table, %d answered as applied", rows, len(appliedBy))
	}
	t.Logf("%d transfers applied, %d declined for funds, %d lock retries", len(appliedBy), declined, int(d.api.Stats().TransferRetries))
}

// TestReadAfterWrite: while readers hammer a product (single and multi-get),
// a writer updates its price 100 times; a read made after an update returned
// never shows an older price.
func TestReadAfterWrite(t *testing.T) {
	d := newDemo(t, "demo_raw", true, nil)
	var floor atomic.Int64 // the last price whose PUT has returned
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stale atomic.Int64
	var reads atomic.Int64
	for r := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				min := floor.Load()
				path := "/products/1"
				if r%2 == 1 {
					path = "/products?ids=2,1,3"
				}
				status, body := d.do(t, "GET", path, nil)
				if status != 200 {
					t.Errorf("GET %s: %d %s", path, status, body)
					return
				}
				var ps []Product
				if r%2 == 1 {
					json.Unmarshal(body, &ps)
				} else {
					var p Product
					json.Unmarshal(body, &p)
					ps = []Product{p}
				}
				for _, p := range ps {
					if p.ID == 1 && p.PriceCents < min {
						stale.Add(1)
						t.Errorf("read price %d after %d was written", p.PriceCents, min)
					}
				}
				reads.Add(1)
			}
		}()
	}
	for i := range 100 {
		price := int64(10_000 + i)
		if status, body := d.do(t, "PUT", "/products/1", map[string]int64{"price_cents": price}); status != 200 {
			t.Fatalf("PUT: %d %s", status, body)
		}
		floor.Store(price)
		status, body := d.do(t, "GET", "/products/1", nil)
		var p Product
		json.Unmarshal(body, &p)
		if status != 200 || p.PriceCents != price {
			t.Fatalf("read after write %d: got %d (%d)", price, p.PriceCents, status)
		}
	}
	close(stop)
	wg.Wait()
	st := d.api.Stats()
	t.Logf("%d concurrent reads; cache hits %.0f, misses %.0f", reads.Load(), st.CacheHits, st.CacheMisses)
	if st.CacheHits == 0 {
		t.Fatal("no read was served from the cache")
	}
}

// TestEventsBatched posts 10,000 events concurrently, shuts the API down
// gracefully, and finds every accepted event in the table, written in far
// fewer INSERTs than events.
func TestEventsBatched(t *testing.T) {
	d := newDemo(t, "demo_events", true, func(c *Config) { c.BatchSize = 500; c.FlushInterval = 20 * time.Millisecond })
	var accepted atomic.Int64
	var g errgroup.Group
	g.SetLimit(64)
	for i := range 10_000 {
		g.Go(func() error {
			status, body := d.do(t, "POST", "/events", map[string]any{"kind": "click", "payload": map[string]int{"i": i}})
			if status != http.StatusAccepted {
				return fmt.Errorf("event %d: %d %s", i, status, body)
			}
			accepted.Add(1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	d.close() // graceful: HTTP first, then the buffer is flushed
	rows := queryInt(t, d.db, "SELECT count(*) FROM events")
	batches := d.api.Stats().EventBatches
	if rows != accepted.Load() || rows != 10_000 {
		t.Fatalf("%d events accepted, %d in the table", accepted.Load(), rows)
	}
	if batches == 0 || batches > float64(rows)/10 {
		t.Fatalf("%d events took %.0f INSERTs", rows, batches)
	}
	t.Logf("10000 events in %.0f INSERTs", batches)
}

// TestRateLimitShared: two demo instances share one Redis, so one API key
// gets its limit once, not once per instance.
func TestRateLimitShared(t *testing.T) {
	edit := func(c *Config) { c.RateLimit = 20; c.RateWindow = 24 * time.Hour }
	a := newDemo(t, "demo_rate", true, edit)
	b := newDemo(t, "demo_rate", false, edit)
	key := fmt.Sprintf("key-%d", time.Now().UnixNano())
	ok, limited := 0, 0
	for i := range 60 {
		d := a
		if i%2 == 1 {
			d = b
		}
		switch status, body := d.do(t, "GET", "/products/1", nil, "X-API-Key", key); status {
		case 200:
			ok++
		case 429:
			limited++
		default:
			t.Fatalf("status %d %s", status, body)
		}
	}
	if ok != 20 || limited != 40 {
		t.Fatalf("limit 20 over two instances: %d served, %d refused", ok, limited)
	}
	// Another key has its own budget.
	if status, _ := a.do(t, "GET", "/products/1", nil, "X-API-Key", key+"-other"); status != 200 {
		t.Fatalf("another key refused: %d", status)
	}
}
