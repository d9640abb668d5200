package proxy

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestLatencyHistMatchesPrometheus: the pool's own histogram puts every
// duration in the bucket a Prometheus histogram with the same bounds would,
// and the metric it makes reads as that histogram's.
func TestLatencyHistMatchesPrometheus(t *testing.T) {
	var ds []time.Duration
	for k := range latencyBucketCount + 2 {
		b := latencyBase << k
		ds = append(ds, b-1, b+1)
		if b < time.Second {
			// Above a second, d.Seconds() (whole seconds plus a fraction)
			// may round a bound differently from the bound itself.
			ds = append(ds, b)
		}
	}
	ds = append(ds, 0, 1, time.Hour)
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		ds = append(ds, time.Duration(r.Int64N(int64(40*time.Second))))
	}
	ref := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ref", Buckets: latencyBuckets})
	var h latencyHist
	var sum time.Duration
	for _, d := range ds {
		ref.Observe(d.Seconds())
		h.observe(d)
		sum += d
	}
	var want, got dto.Metric
	if err := ref.Write(&want); err != nil {
		t.Fatal(err)
	}
	desc := prometheus.NewDesc("x", "x", []string{"database", "user"}, nil)
	if err := h.metric(desc, sum, "db", "u").Write(&got); err != nil {
		t.Fatal(err)
	}
	wh, gh := want.GetHistogram(), got.GetHistogram()
	if gh.GetSampleCount() != uint64(len(ds)) || gh.GetSampleCount() != wh.GetSampleCount() {
		t.Errorf("count %d, Prometheus's %d, observed %d", gh.GetSampleCount(), wh.GetSampleCount(), len(ds))
	}
	if len(gh.GetBucket()) != len(wh.GetBucket()) {
		t.Fatalf("%d buckets, Prometheus's %d", len(gh.GetBucket()), len(wh.GetBucket()))
	}
	for i, b := range wh.GetBucket() {
		g := gh.GetBucket()[i]
		if g.GetUpperBound() != b.GetUpperBound() || g.GetCumulativeCount() != b.GetCumulativeCount() {
			t.Errorf("bucket %d: le %v count %d, Prometheus's le %v count %d",
				i, g.GetUpperBound(), g.GetCumulativeCount(), b.GetUpperBound(), b.GetCumulativeCount())
		}
	}
	if d := gh.GetSampleSum() - wh.GetSampleSum(); d > 1e-6 || d < -1e-6 {
		t.Errorf("sum %v, Prometheus's %v", gh.GetSampleSum(), wh.GetSampleSum())
	}
}

// TestLatencyHistAllocs: observing, once per query on the relay path,
// allocates nothing.
func TestLatencyHistAllocs(t *testing.T) {
	var h latencyHist
	if n := testing.AllocsPerRun(100, func() { h.observe(3 * time.Millisecond) }); n != 0 {
		t.Errorf("%v allocations an observation", n)
	}
}
