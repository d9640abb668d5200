package stats

import (
	"math"
	"testing"
	"time"
)

func TestWindowQuantiles(t *testing.T) {
	var w Window
	// 990 fast observations and 10 slow ones.
	for range 990 {
		w.Observe(1 * time.Millisecond)
	}
	for range 10 {
		w.Observe(200 * time.Millisecond)
	}
	s := w.Summary()
	if s.Count != 1000 {
		t.Fatalf("count %d", s.Count)
	}
	near := func(got, want float64) bool { return math.Abs(got-want)/want < 0.25 }
	if !near(s.P50, 0.001) {
		t.Errorf("P50 %g, want about 1ms", s.P50)
	}
	if !near(s.P99, 0.001) {
		t.Errorf("P99 %g, want about 1ms (990 of 1000 are)", s.P99)
	}
	if s.Max != 0.2 {
		t.Errorf("max %g", s.Max)
	}
	for range 20 {
		w.Observe(200 * time.Millisecond)
	}
	if s := w.Summary(); !near(s.P99, 0.2) {
		t.Errorf("P99 with 3%% slow: %g, want about 200ms", s.P99)
	}
}

func TestBucketsMonotonic(t *testing.T) {
	prev := -1
	for ns := int64(1); ns < int64(1000*time.Second); ns = ns*11/10 + 1 {
		b := bucket(ns)
		if b < prev {
			t.Fatalf("bucket(%d) = %d after %d", ns, b, prev)
		}
		if v := bucketValue(b); v*1e9 < float64(ns)*0.999 || v*1e9 > float64(ns)*1.26+1 {
			t.Fatalf("bucket %d value %gs for %dns", b, v, ns)
		}
		prev = b
	}
}
