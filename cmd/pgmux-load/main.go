// Command pgmux-load drives the demo API with a mix of requests and reports
// rate, errors and latency per route, the share of product reads served from
// Redis, and pgmux's own stats when its admin API answers.
//
//	pgmux-load --url http://127.0.0.1:8080 --duration 20s --concurrency 64 \
//	    --mix read=60,multiget=15,write=5,event=15,transfer=5
//
// It exits 1 when any request failed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"
)

type options struct {
	url, adminURL, apiKey string
	duration              time.Duration
	concurrency           int
	products, accounts    int
	mix                   []weighted
	latencySplit          bool
}

type weighted struct {
	op     string
	weight int
}

var ops = []string{"read", "multiget", "write", "event", "transfer"}

func main() {
	var o options
	flag.StringVar(&o.url, "url", "http://127.0.0.1:8080", "demo API")
	flag.StringVar(&o.adminURL, "admin-url", "http://127.0.0.1:9127", "pgmux admin API (its /stats goes in the report when it answers)")
	flag.StringVar(&o.apiKey, "api-key", "load", "X-API-Key sent")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "how long to run")
	flag.IntVar(&o.concurrency, "concurrency", 64, "concurrent clients")
	flag.IntVar(&o.products, "products", 1000, "product ids to use, 1..N")
	flag.IntVar(&o.accounts, "accounts", 100, "account ids to use, 1..N")
	mix := flag.String("mix", "read=60,multiget=15,write=5,event=15,transfer=5", "weights of the operations")
	flag.BoolVar(&o.latencySplit, "latency-split", false, "report where each route's slowest requests spent their time, from the demo API's trace collector (pgmux-demo --collector)")
	flag.Parse()
	var err error
	if o.mix, err = parseMix(*mix); err != nil {
		fmt.Fprintln(os.Stderr, "pgmux-load:", err)
		os.Exit(2)
	}
	r := run(o)
	r.print(os.Stdout, o)
	if r.failed() > 0 {
		os.Exit(1)
	}
}

func parseMix(s string) ([]weighted, error) {
	var out []weighted
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 0 || !slices.Contains(ops, k) {
			return nil, fmt.Errorf("mix: %q is not op=weight with op one of %v", part, ops)
		}
		out = append(out, weighted{k, n})
	}
	return out, nil
}

// result gathers every worker's observations.
type result struct {
	mu        sync.Mutex
	latencies map[string][]time.Duration
	outcomes  map[string]int // "ok", "declined" (409: insufficient funds), "http 429", "http 5xx", "transport"
	elapsed   time.Duration
	demo      map[string]float64
	pgmux     json.RawMessage
	split     []routeSplit // with --latency-split
}

func (r *result) failed() int {
	n := 0
	for k, v := range r.outcomes {
		if k != "ok" && k != "declined" {
			n += v
		}
	}
	return n
}

func run(o options) *result {
	res := &result{latencies: map[string][]time.Duration{}, outcomes: map[string]int{}}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.concurrency, MaxConnsPerHost: o.concurrency}, Timeout: 30 * time.Second}
	// Ctrl-C or SIGTERM ends the run early; the report covers what ran.
	sig, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(sig, o.duration)
	defer cancel()
	var done atomic.Int64
	var failed atomic.Int64
	total := 0
	for _, w := range o.mix {
		total += w.weight
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range o.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			lat := map[string][]time.Duration{}
			outcomes := map[string]int{}
			for seq := 0; ctx.Err() == nil; seq++ {
				op := pick(o.mix, total, rng)
				t0 := time.Now()
				outcome := do(ctx, client, o, op, rng, w, seq)
				if ctx.Err() != nil && outcome == "transport" {
					break // cut off by the end of the run
				}
				lat[op] = append(lat[op], time.Since(t0))
				outcomes[outcome]++
				done.Add(1)
				if outcome != "ok" && outcome != "declined" {
					failed.Add(1)
				}
			}
			res.mu.Lock()
			for k, v := range lat {
				res.latencies[k] = append(res.latencies[k], v...)
			}
			for k, v := range outcomes {
				res.outcomes[k] += v
			}
			res.mu.Unlock()
		}()
	}
	progress := time.NewTicker(time.Second)
	stopProgress := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopProgress:
				return
			case <-progress.C:
				el := time.Since(start)
				fmt.Fprintf(os.Stderr, "\r%5.1fs  %8d requests  %7.0f req/s  %d errors ", el.Seconds(), done.Load(), float64(done.Load())/el.Seconds(), failed.Load())
			}
		}
	}()
	wg.Wait()
	res.elapsed = time.Since(start)
	progress.Stop()
	close(stopProgress)
	fmt.Fprintln(os.Stderr)
	res.demo = scrape(client, o.url+"/metrics")
	if o.latencySplit {
		time.Sleep(splitWait)
		res.split = fetchSplit(client, o.url+"/debug/latency-split")
	}
	if resp, err := client.Get(o.adminURL + "/stats"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 && json.Valid(b) {
			res.pgmux = b
		}
	}
	return res
}

func pick(mix []weighted, total int, rng *rand.Rand) string {
	n := rng.IntN(total)
	for _, w := range mix {
		if n < w.weight {
			return w.op
		}
		n -= w.weight
	}
	return mix[0].op
}

// do runs one operation and says how it went.
func do(ctx context.Context, c *http.Client, o options, op string, rng *rand.Rand, worker, seq int) string {
	var method, path string
	var body any
	switch op {
	case "read":
		method, path = "GET", fmt.Sprintf("/products/%d", rng.IntN(o.products)+1)
	case "multiget":
		ids := make([]string, 5)
		for i := range ids {
			ids[i] = strconv.Itoa(rng.IntN(o.products) + 1)
		}
		method, path = "GET", "/products?ids="+strings.Join(ids, ",")
	case "write":
		method, path = "PUT", fmt.Sprintf("/products/%d", rng.IntN(o.products)+1)
		body = map[string]int64{"price_cents": int64(rng.IntN(10000) + 1)}
	case "event":
		method, path = "POST", "/events"
		body = map[string]any{"kind": "page_view", "payload": map[string]int{"worker": worker, "seq": seq}}
	case "transfer":
		from := rng.IntN(o.accounts) + 1
		to := rng.IntN(o.accounts-1) + 1
		if to >= from {
			to++
		}
		method, path = "POST", "/transfers"
		body = map[string]any{"from": from, "to": to, "amount_cents": rng.IntN(500) + 1,
			"idempotency_key": fmt.Sprintf("load-%d-%d-%d", os.Getpid(), worker, seq)}
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequestWithContext(ctx, method, o.url+path, rd)
	req.Header.Set("X-API-Key", o.apiKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return "transport"
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case resp.StatusCode < 300:
		return "ok"
	case resp.StatusCode == http.StatusConflict && op == "transfer":
		return "declined"
	case resp.StatusCode >= 500:
		return "http 5xx"
	}
	return "http " + strconv.Itoa(resp.StatusCode)
}

// splitWait is how long the load waits after its last request for the
// traces to reach the collector: pgmux exports within about a second.
const splitWait = 2500 * time.Millisecond

// routeSplit is a row of the demo API's GET /debug/latency-split.
type routeSplit struct {
	Route    string  `json:"route"`
	Requests int     `json:"requests"`
	P99Ms    float64 `json:"p99_ms"`
	App      float64 `json:"app"`
	Redis    float64 `json:"redis"`
	PoolWait float64 `json:"pool_wait"`
	Postgres float64 `json:"postgres"`
}

// fetchSplit reads the demo API's latency split; none if it has none.
func fetchSplit(c *http.Client, url string) []routeSplit {
	resp, err := c.Get(url)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var out []routeSplit
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&out) != nil {
		return nil
	}
	return out
}

// scrape reads the plain counters of a Prometheus text page.
func scrape(c *http.Client, url string) map[string]float64 {
	out := map[string]float64{}
	resp, err := c.Get(url)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.Contains(line, "{") {
			continue
		}
		if name, v, ok := strings.Cut(line, " "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				out[name] = f
			}
		}
	}
	return out
}

func (r *result) print(w io.Writer, o options) {
	n := 0
	for _, v := range r.outcomes {
		n += v
	}
	fmt.Fprintf(w, "\npgmux demo load: %d clients for %s\n", o.concurrency, r.elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "requests: %d, %.0f req/s, errors: %d\n", n, float64(n)/r.elapsed.Seconds(), r.failed())
	var kinds []string
	for k := range r.outcomes {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "  %-10s %d\n", k, r.outcomes[k])
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "route\trequests\tP50\tP90\tP99\tmax\t")
	var all []time.Duration
	for _, op := range ops {
		l := r.latencies[op]
		if len(l) == 0 {
			continue
		}
		all = append(all, l...)
		printRow(tw, op, l)
	}
	printRow(tw, "all", all)
	tw.Flush()
	hits, misses := r.demo["demo_cache_hits_total"], r.demo["demo_cache_misses_total"]
	if hits+misses > 0 {
		fmt.Fprintf(w, "product reads served from Redis without PostgreSQL: %.1f%% (%.0f of %.0f)\n", 100*hits/(hits+misses), hits, hits+misses)
	}
	if b := r.demo["demo_event_batches_total"]; b > 0 {
		fmt.Fprintf(w, "events written: %.0f in %.0f INSERTs (%.0f per batch)\n", r.demo["demo_events_written_total"], b, r.demo["demo_events_written_total"]/b)
	}
	if t := r.demo["demo_transfer_retries_total"]; t > 0 {
		fmt.Fprintf(w, "transfers retried after lock timeout or deadlock: %.0f\n", t)
	}
	if len(r.split) > 0 {
		fmt.Fprintln(w, "where the slowest requests' time went (requests at or above each route's P99, from their traces):")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "route\ttraced\tP99\tapp\tRedis\tpgmux pool wait\tPostgreSQL\t")
		pct := func(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) }
		for _, s := range r.split {
			fmt.Fprintf(tw, "%s\t%d\t%.2fms\t%s\t%s\t%s\t%s\t\n", s.Route, s.Requests, s.P99Ms, pct(s.App), pct(s.Redis), pct(s.PoolWait), pct(s.Postgres))
		}
		tw.Flush()
		fmt.Fprintln(w, "(app: the API's own code, its drivers, the network and pgmux's relaying)")
	}
	if r.pgmux != nil {
		var pretty bytes.Buffer
		json.Indent(&pretty, r.pgmux, "", "  ")
		fmt.Fprintf(w, "pgmux /stats:\n%s\n", pretty.String())
	}
}

func printRow(w io.Writer, name string, l []time.Duration) {
	slices.Sort(l)
	q := func(p float64) time.Duration { return l[min(len(l)-1, int(p*float64(len(l))))] }
	f := func(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d.Microseconds())/1000) }
	fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t\n", name, len(l), f(q(0.50)), f(q(0.90)), f(q(0.99)), f(l[len(l)-1]))
}
