// Package admin serves pgmux's HTTP admin API. For now it answers the
// liveness probe; stats, pools and metrics come with the operations work.
package admin

import (
	"net/http"
)

// StatsSource is what the admin API reads from the proxy.
type StatsSource interface {
	ClientCount() int
}

// Handler returns the admin API's routes.
func Handler(src StatsSource) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	return mux
}
