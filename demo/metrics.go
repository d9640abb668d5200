package demo

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

type metrics struct {
	reg             prometheus.Gatherer
	duration        *prometheus.HistogramVec
	errors          *prometheus.CounterVec
	cacheHits       prometheus.Counter
	cacheMisses     prometheus.Counter
	batches         prometheus.Counter
	eventsWritten   prometheus.Counter
	transferRetries prometheus.Counter
	rateLimited     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "demo_request_duration_seconds", Help: "Time to answer a request, by route.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}, []string{"route"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "demo_request_errors_total", Help: "Requests answered with an error status, by route and status.",
		}, []string{"route", "status"}),
		cacheHits:       prometheus.NewCounter(prometheus.CounterOpts{Name: "demo_cache_hits_total", Help: "Products served from Redis."}),
		cacheMisses:     prometheus.NewCounter(prometheus.CounterOpts{Name: "demo_cache_misses_total", Help: "Products loaded from PostgreSQL."}),
		batches:         prometheus.NewCounter(prometheus.CounterOpts{Name: "demo_event_batches_total", Help: "Multi-row INSERTs of events."}),
		eventsWritten:   prometheus.NewCounter(prometheus.CounterOpts{Name: "demo_events_written_total", Help: "Events written to PostgreSQL."}),
		transferRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "demo_transfer_retries_total", Help: "Transfers tried again after a lock timeout, deadlock or serialization failure."}),
		rateLimited:     prometheus.NewCounter(prometheus.CounterOpts{Name: "demo_rate_limited_total", Help: "Requests refused by the rate limit."}),
	}
	for _, c := range []prometheus.Collector{m.duration, m.errors, m.cacheHits, m.cacheMisses, m.batches, m.eventsWritten, m.transferRetries, m.rateLimited} {
		f(c)
	}
	if r, ok := reg.(*prometheus.Registry); ok {
		r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		m.reg = r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		m.reg = g
	} else {
		m.reg = prometheus.DefaultGatherer
	}
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Stats are the demo's own counters, for tests and the load report.
type Stats struct {
	CacheHits, CacheMisses, EventBatches, EventsWritten, TransferRetries, RateLimited float64
}

// Stats reads the counters.
func (s *Server) Stats() Stats {
	v := func(c prometheus.Counter) float64 {
		var m dto.Metric
		c.Write(&m)
		return m.GetCounter().GetValue()
	}
	return Stats{v(s.metrics.cacheHits), v(s.metrics.cacheMisses), v(s.metrics.batches), v(s.metrics.eventsWritten), v(s.metrics.transferRetries), v(s.metrics.rateLimited)}
}
