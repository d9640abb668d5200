package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are pgmux's Prometheus metrics. Counters and histograms are fed
// once per query or transaction through children obtained once per pool;
// gauges are read from pool snapshots at scrape time.
type metrics struct {
	transactions, queries, bytesIn, bytesOut *prometheus.CounterVec
	wait, transaction, query                 *prometheus.HistogramVec
	errors                                   *prometheus.CounterVec
	connects                                 *prometheus.CounterVec
	disconnects                              *prometheus.CounterVec
}

var latencyBuckets = prometheus.ExponentialBuckets(0.00005, 2, 20) // 50µs to about 26s

func newMetrics(reg prometheus.Registerer, src *Server) *metrics {
	labels := []string{"database", "user"}
	m := &metrics{
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_transactions_total",
			Help: "Transactions ended (ReadyForQuery 'I'), a statement outside a transaction counting as one."}, labels),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_queries_total",
			Help: "Requests answered (ReadyForQuery), one per Query or Sync."}, labels),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_client_received_bytes_total",
			Help: "Bytes received from clients and relayed to servers."}, labels),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_client_sent_bytes_total",
			Help: "Bytes relayed from servers to clients."}, labels),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pgmux_client_wait_seconds",
			Help: "Time a client waited for a server.", Buckets: latencyBuckets}, labels),
		transaction: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pgmux_transaction_duration_seconds",
			Help: "Time from a transaction's first message to its end.", Buckets: latencyBuckets}, labels),
		query: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pgmux_query_duration_seconds",
			Help: "Time from a Query or Sync to its ReadyForQuery.", Buckets: latencyBuckets}, labels),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_server_errors_total",
			Help: "ErrorResponse messages from servers, by SQLSTATE class."}, append(labels, "class")),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_server_connects_total",
			Help: "Server connection attempts."}, []string{"result"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgmux_client_disconnects_total",
			Help: "Client connections ended, by reason."}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.transactions, m.queries, m.bytesIn, m.bytesOut, m.wait, m.transaction, m.query,
			m.errors, m.connects, m.disconnects, &gauges{src})
	}
	return m
}

func (m *metrics) forPool(database, user string) poolMetrics {
	return poolMetrics{
		transactions: m.transactions.WithLabelValues(database, user),
		queries:      m.queries.WithLabelValues(database, user),
		bytesIn:      m.bytesIn.WithLabelValues(database, user),
		bytesOut:     m.bytesOut.WithLabelValues(database, user),
		wait:         m.wait.WithLabelValues(database, user),
		transaction:  m.transaction.WithLabelValues(database, user),
		query:        m.query.WithLabelValues(database, user),
		errors:       m.errors.MustCurryWith(prometheus.Labels{"database": database, "user": user}),
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
