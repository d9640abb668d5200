package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/pgmux/pgmux/stats"
)

// fake stands in for the proxy.
type fake struct {
	ready   error
	paused  bool
	reloads int
	drained bool
}

func (f *fake) Pools() []stats.Pool {
	return []stats.Pool{
		{Database: "a", User: "u", Transactions: 3, Queries: 5, ClientsActive: 1, Errors: map[string]int64{"22": 1}},
		{Database: "b", User: "u", Transactions: 4, Queries: 6, ClientsIdle: 2, Errors: map[string]int64{"22": 2, "40": 1}},
	}
}
func (f *fake) Clients() []stats.Client         { return nil }
func (f *fake) Servers() []stats.Server         { return nil }
func (f *fake) Prepared() stats.Prepared        { return stats.Prepared{Hits: 7} }
func (f *fake) Ready(ctx context.Context) error { return f.ready }
func (f *fake) Pause(ctx context.Context) error { f.paused = true; return nil }
func (f *fake) Resume()                         { f.paused = false }
func (f *fake) Reload() error                   { f.reloads++; return errors.New("bad file") }
func (f *fake) Drain()                          { f.drained = true }

func call(t *testing.T, h http.Handler, method, path, token string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestStatsTotals(t *testing.T) {
	f := &fake{}
	h := Handler(Options{Source: f, Control: f, Config: func() any { return nil }})
	rec := call(t, h, "GET", "/stats", "")
	var r Report
	if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if r.Totals.Transactions != 7 || r.Totals.Queries != 11 || r.Totals.ClientsActive != 1 || r.Totals.ClientsIdle != 2 {
		t.Fatalf("totals %+v", r.Totals)
	}
	if r.Totals.Errors["22"] != 3 || r.Totals.Errors["40"] != 1 || r.Prepared.Hits != 7 || len(r.Pools) != 2 {
		t.Fatalf("report %+v", r)
	}
}

func TestControlAndReadiness(t *testing.T) {
	f := &fake{}
	h := Handler(Options{Source: f, Control: f, Config: func() any { return nil }})
	if rec := call(t, h, "GET", "/readyz", ""); rec.Code != 200 {
		t.Fatalf("ready: %d", rec.Code)
	}
	f.ready = errors.New("draining")
	if rec := call(t, h, "GET", "/readyz", ""); rec.Code != 503 {
		t.Fatalf("not ready: %d", rec.Code)
	}
	if call(t, h, "POST", "/pause", "").Code != 200 || !f.paused {
		t.Fatal("pause")
	}
	if call(t, h, "POST", "/resume", "").Code != 200 || f.paused {
		t.Fatal("resume")
	}
	if rec := call(t, h, "POST", "/reload", ""); rec.Code != 422 || f.reloads != 1 {
		t.Fatalf("refused reload: %d", rec.Code)
	}
	if call(t, h, "GET", "/reload", "").Code != 405 {
		t.Fatal("GET /reload allowed")
	}
	if call(t, h, "POST", "/drain", "").Code != 202 || !f.drained {
		t.Fatal("drain")
	}
}

func TestToken(t *testing.T) {
	f := &fake{}
	h := Handler(Options{Source: f, Control: f, Config: func() any { return map[string]string{} }, Token: "tok"})
	for _, path := range []string{"/healthz", "/stats", "/config"} {
		if rec := call(t, h, "GET", path, ""); rec.Code != 401 {
			t.Errorf("%s without token: %d", path, rec.Code)
		}
		if rec := call(t, h, "GET", path, "wrong"); rec.Code != 401 {
			t.Errorf("%s with a wrong token: %d", path, rec.Code)
		}
		if rec := call(t, h, "GET", path, "tok"); rec.Code != 200 {
			t.Errorf("%s with the token: %d", path, rec.Code)
		}
	}
}
