package proxy

import (
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are pgmux's Prometheus metrics. The per-pool counters and latency
// histograms are read at scrape time from the counts each pool keeps anyway
// (see poolCounters): the relay path adds to them once per query or
// transaction, and does not keep every figure a second time in Prometheus's
// own counters and histograms. The rest are ordinary counters, fed off the
// hot path.
type metrics struct {
	errors      *prometheus.CounterVec
	connects    *prometheus.CounterVec
	disconnects *prometheus.CounterVec
	refusals    *prometheus.CounterVec
}

// latencyBuckets are the latency histograms' upper bounds: 50µs to about
// 26s, doubling (see latencyHist).
var latencyBuckets = prometheus.ExponentialBuckets(latencyBase.Seconds(), 2, latencyBucketCount)

const (
	latencyBase        = 50 * time.Microsecond
	latencyBucketCount = 20
)

// latencyHist counts durations by latencyBuckets' bounds (the last count:
// above them all). Finding the bucket is a division and a bit count, not
// a search, and observing is one atomic add.
type latencyHist struct {
	counts [latencyBucketCount + 1]atomic.Int64
}

// bucketOf returns the index of the smallest bound d is within.
func bucketOf(d time.Duration) int {
	if d <= latencyBase {
		return 0
	}
	// The smallest k with d <= base<<k.
	return min(bits.Len64(uint64((d-1)/latencyBase)), latencyBucketCount)
}

func (h *latencyHist) observe(d time.Duration) { h.counts[bucketOf(d)].Add(1) }

// metric makes the histogram's Prometheus metric, with sum the durations'
// total; its count is the sum of its buckets, read once each.
func (h *latencyHist) metric(desc *prometheus.Desc, sum time.Duration, labels ...string) prometheus.Metric {
	cum := make(map[float64]uint64, latencyBucketCount)
	var n uint64
	for i := range h.counts {
		n += uint64(h.counts[i].Load())
		if i < latencyBucketCount {
			cum[latencyBuckets[i]] = n
		}
	}
	return prometheus.MustNewConstHistogram(desc, n, sum.Seconds(), cum, labels...)
}

func newMetrics(reg prometheus.Registerer, src *Server) *metrics {
	labels := []string{"database", "user"}
	m := &metrics{
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_server_errors_total",
			Help: "ErrorResponse messages from servers, by SQLSTATE class."}, append(labels, "class")),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_server_connects_total",
			Help: "Server connection attempts."}, []string{"result"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_client_disconnects_total",
			Help: "Client connections ended, by reason."}, []string{"reason"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_client_refusals_total",
			Help: "Client connections refused at login, by SQLSTATE."}, []string{"sqlstate"}),
	}
	if reg != nil {
		reg.MustRegister(m.errors, m.connects, m.disconnects, m.refusals, &gauges{src}, &poolCounters{src})
	}
	return m
}

func (m *metrics) forPool(database, user string) poolMetrics {
	return poolMetrics{
		errors: m.errors.MustCurryWith(prometheus.Labels{"database": database, "user": user}),
	}
}

func (m *metrics) serverConnects(err error) {
	if err != nil {
		m.connects.WithLabelValues("error").Inc()
	} else {
		m.connects.WithLabelValues("ok").Inc()
	}
}

// Reasons a client connection ends, a closed set for the disconnect metric.
const (
	reasonClient   = "client"   // Terminate or end of file
	reasonError    = "error"    // pgmux sent an error (timeout, bad input, auth…)
	reasonServer   = "server"   // the server connection failed
	reasonShutdown = "shutdown" // drain or shutdown
)

// gauges reports client and server connections by state from pool
// snapshots at scrape time.
type gauges struct{ s *Server }

var (
	clientConnsDesc = prometheus.NewDesc("pgmux_client_connections", "Client connections by state.", []string{"database", "user", "state"}, nil)
	serverConnsDesc = prometheus.NewDesc("pgmux_server_connections", "Server connections by state.", []string{"database", "user", "state"}, nil)
	poolSizeDesc    = prometheus.NewDesc("pgmux_pool_size", "Server connections a pool may open.", []string{"database", "user"}, nil)
)

func (g *gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- clientConnsDesc
	ch <- serverConnsDesc
	ch <- poolSizeDesc
}

func (g *gauges) Collect(ch chan<- prometheus.Metric) {
	for _, p := range g.s.Pools() {
		for state, n := range map[string]int{"idle": p.ClientsIdle, "waiting": p.ClientsWaiting, "active": p.ClientsActive} {
			ch <- prometheus.MustNewConstMetric(clientConnsDesc, prometheus.GaugeValue, float64(n), p.Database, p.User, state)
		}
		for state, n := range map[string]int{"idle": p.ServersIdle, "active": p.ServersActive, "connecting": p.ServersConnecting} {
			ch <- prometheus.MustNewConstMetric(serverConnsDesc, prometheus.GaugeValue, float64(n), p.Database, p.User, state)
		}
		ch <- prometheus.MustNewConstMetric(poolSizeDesc, prometheus.GaugeValue, float64(p.PoolSize), p.Database, p.User)
	}
}

// poolCounters reports each pool's counters and latency histograms, read
// from the pool at scrape time. Pools are never removed, so the counters
// only grow.
type poolCounters struct{ s *Server }

var (
	transactionsDesc = prometheus.NewDesc("pgmux_transactions_total",
		"Transactions ended (ReadyForQuery 'I'), a statement outside a transaction counting as one.", []string{"database", "user"}, nil)
	queriesDesc = prometheus.NewDesc("pgmux_queries_total",
		"Requests answered (ReadyForQuery), one per Query or Sync.", []string{"database", "user"}, nil)
	bytesInDesc = prometheus.NewDesc("pgmux_client_received_bytes_total",
		"Bytes received from clients and relayed to servers.", []string{"database", "user"}, nil)
	bytesOutDesc = prometheus.NewDesc("pgmux_client_sent_bytes_total",
		"Bytes relayed from servers to clients.", []string{"database", "user"}, nil)
	waitDesc = prometheus.NewDesc("pgmux_client_wait_seconds",
		"Time a client waited for a server.", []string{"database", "user"}, nil)
	transactionDesc = prometheus.NewDesc("pgmux_transaction_duration_seconds",
		"Time from a transaction's first message to its end.", []string{"database", "user"}, nil)
	queryDesc = prometheus.NewDesc("pgmux_query_duration_seconds",
		"Time from a Query or Sync to its ReadyForQuery.", []string{"database", "user"}, nil)
)

func (c *poolCounters) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{transactionsDesc, queriesDesc, bytesInDesc, bytesOutDesc, waitDesc, transactionDesc, queryDesc} {
		ch <- d
	}
}

func (c *poolCounters) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.Lock()
	pools := make([]*dbPool, 0, len(c.s.pools))
	for _, p := range c.s.pools {
		pools = append(pools, p)
	}
	c.s.mu.Unlock()
	for _, p := range pools {
		db, user := p.key.database, p.key.user
		ch <- prometheus.MustNewConstMetric(transactionsDesc, prometheus.CounterValue, float64(p.transactions.Load()), db, user)
		ch <- prometheus.MustNewConstMetric(queriesDesc, prometheus.CounterValue, float64(p.queries.Load()), db, user)
		ch <- prometheus.MustNewConstMetric(bytesInDesc, prometheus.CounterValue, float64(p.bytesIn.Load()), db, user)
		ch <- prometheus.MustNewConstMetric(bytesOutDesc, prometheus.CounterValue, float64(p.bytesOut.Load()), db, user)
		ch <- p.waitHist.metric(waitDesc, time.Duration(p.waitNanos.Load()), db, user)
		ch <- p.txHist.metric(transactionDesc, time.Duration(p.txNanos.Load()), db, user)
		ch <- p.queryHist.metric(queryDesc, time.Duration(p.queryNanos.Load()), db, user)
	}
}
