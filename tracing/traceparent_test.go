package tracing

import (
	"strings"
	"testing"
)

func TestTraceparent(t *testing.T) {
	const tid, sid = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	valid := "00-" + tid + "-" + sid + "-01"
	for _, c := range []struct {
		text    string
		ok      bool
		sampled bool
	}{
		{"SELECT 1 /*traceparent='" + valid + "'*/", true, true},                          // sqlcommenter, at the end
		{"/*traceparent='" + valid + "',tracestate='x=1'*/ SELECT 1", true, true},         // at the start, with tracestate
		{"SELECT 1 /*db_driver='pgx',traceparent='" + valid + "'*/", true, true},          // among other keys
		{"web traceparent=" + valid, true, true},                                          // an application_name
		{valid, true, true},                                                               // nothing but the value
		{"traceparent: \"" + strings.TrimSuffix(valid, "01") + "00\"", true, false},       // not sampled
		{"traceparent='" + strings.ToUpper(valid) + "'", true, true},                      // upper-case hex
		{"SELECT 1", false, false},                                                        // none
		{"traceparent='01-" + tid + "-" + sid + "-01'", false, false},                     // another version
		{"traceparent='00-" + strings.Repeat("0", 32) + "-" + sid + "-01'", false, false}, // zero trace id
		{"traceparent='00-" + tid + "-" + strings.Repeat("0", 16) + "-01'", false, false}, // zero span id
		{"traceparent='00-" + tid[:31] + "g-" + sid + "-01'", false, false},               // not hex
		{"traceparent='" + valid + "0'", false, false},                                    // longer
		{"traceparent='" + valid[:50], false, false},                                      // cut short
		{"traceparent=x traceparent='" + valid + "'", true, true},                         // the second is good
	} {
		sc, ok := Traceparent(c.text)
		if ok != c.ok {
			t.Errorf("%q: found %v, want %v", c.text, ok, c.ok)
			continue
		}
		if !ok {
			continue
		}
		if sc.TraceID().String() != tid || sc.SpanID().String() != sid || sc.IsSampled() != c.sampled || !sc.IsRemote() {
			t.Errorf("%q: got %s %s sampled %v", c.text, sc.TraceID(), sc.SpanID(), sc.IsSampled())
		}
		if sc2, ok2 := Traceparent([]byte(c.text)); !ok2 || !sc2.Equal(sc) {
			t.Errorf("%q: bytes and string disagree", c.text)
		}
	}
}

// FuzzTraceparent: any text is read without a panic, and a context found
// is one whose trace and span ids appear in the text.
func FuzzTraceparent(f *testing.F) {
	f.Add("SELECT 1 /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/")
	f.Add("traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
	f.Add("traceparenttraceparent='00-")
	f.Fuzz(func(t *testing.T, text string) {
		sc, ok := Traceparent(text)
		if !ok {
			return
		}
		lower := strings.ToLower(text)
		if !sc.IsValid() || !strings.Contains(lower, sc.TraceID().String()) || !strings.Contains(lower, sc.SpanID().String()) {
			t.Fatalf("%q gave %v", text, sc)
		}
	})
}
