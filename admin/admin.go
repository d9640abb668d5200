// Package admin serves pgmux's HTTP admin API and Prometheus metrics. It
// reads the proxy through the interfaces it declares here, with the value
// types of package stats, and acts on it through Control. It must never
// import the proxy or the configuration.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgmux/pgmux/stats"
)

// Source is what the admin API reads.
type Source interface {
	Pools() []stats.Pool
	Clients() []stats.Client
	Servers() []stats.Server
	Prepared() stats.Prepared
}

// Control is what the admin API can do.
type Control interface {
	Ready(ctx context.Context) error
	Pause(ctx context.Context) error
	Resume()
	Reload() error
	Drain()
}

// Options configures the admin API.
type Options struct {
	Source   Source
	Control  Control
	Config   func() any // the configuration in force, secrets redacted
	Gatherer prometheus.Gatherer
	Token    string // when set, every request must carry "Authorization: Bearer <Token>"
	Pprof    bool   // serve Go's profiles under /debug/pprof/
}

// Handler returns the admin API. Field names of its JSON are stable; the
// README documents them.
func Handler(o Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := o.Control.Ready(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
			return
		}
		writeJSON(w, 200, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, statsReport(o.Source))
	})
	mux.HandleFunc("GET /pools", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, o.Source.Pools()) })
	mux.HandleFunc("GET /clients", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, o.Source.Clients()) })
	mux.HandleFunc("GET /servers", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, o.Source.Servers()) })
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, o.Config()) })
	mux.HandleFunc("POST /pause", func(w http.ResponseWriter, r *http.Request) {
		if err := o.Control.Pause(r.Context()); err != nil {
			writeJSON(w, http.StatusGatewayTimeout, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, 200, map[string]string{"status": "paused"})
	})
	mux.HandleFunc("POST /resume", func(w http.ResponseWriter, r *http.Request) {
		o.Control.Resume()
		writeJSON(w, 200, map[string]string{"status": "resumed"})
	})
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		if err := o.Control.Reload(); err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, 200, map[string]string{"status": "reloaded"})
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		o.Control.Drain()
		writeJSON(w, 202, map[string]string{"status": "draining"})
	})
	if o.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	if o.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	}
	if o.Token == "" {
		return mux
	}
	want := []byte("Bearer " + o.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pgmux"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// Report is the body of GET /stats.
type Report struct {
	WindowSeconds int            `json:"window_seconds"`
	Totals        Totals         `json:"totals"`
	Pools         []stats.Pool   `json:"pools"`
	Prepared      stats.Prepared `json:"prepared_statements"`
}

// Totals adds up the pools.
type Totals struct {
	ClientsActive  int              `json:"clients_active"`
	ClientsWaiting int              `json:"clients_waiting"`
	ClientsIdle    int              `json:"clients_idle"`
	ServersActive  int              `json:"servers_active"`
	ServersIdle    int              `json:"servers_idle"`
	Transactions   int64            `json:"transactions"`
	Queries        int64            `json:"queries"`
	BytesReceived  int64            `json:"bytes_received"`
	BytesSent      int64            `json:"bytes_sent"`
	Errors         map[string]int64 `json:"errors_by_class"`
}

func statsReport(src Source) Report {
	r := Report{WindowSeconds: 60, Pools: src.Pools(), Prepared: src.Prepared()}
	var sum stats.Pool
	for _, p := range r.Pools {
		sum.Add(p)
	}
	r.Totals = Totals{
		ClientsActive: sum.ClientsActive, ClientsWaiting: sum.ClientsWaiting, ClientsIdle: sum.ClientsIdle,
		ServersActive: sum.ServersActive, ServersIdle: sum.ServersIdle,
		Transactions: sum.Transactions, Queries: sum.Queries,
		BytesReceived: sum.BytesReceived, BytesSent: sum.BytesSent, Errors: sum.Errors,
	}
	if r.Totals.Errors == nil {
		r.Totals.Errors = map[string]int64{}
	}
	return r
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
