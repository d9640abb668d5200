package tracing

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"

	"go.opentelemetry.io/otel/trace"
)

// sampler decides which transactions are traced, as OpenTelemetry's
// samplers do: by the parent's sampled flag (parent-based), else by the
// trace id against a ratio, so that every service keeps or drops a trace
// alike.
type sampler struct {
	parentBased bool
	bound       uint64 // a trace id whose last 8 bytes, shifted right by one, are below it is sampled
}

// newSampler is parentbased_traceidratio at ratio, unless
// OTEL_TRACES_SAMPLER (and OTEL_TRACES_SAMPLER_ARG) name another.
func newSampler(ratio float64) (sampler, error) {
	name, arg := os.Getenv("OTEL_TRACES_SAMPLER"), os.Getenv("OTEL_TRACES_SAMPLER_ARG")
	if arg != "" && (name == "traceidratio" || name == "parentbased_traceidratio") {
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return sampler{}, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG %q is not a ratio between 0 and 1", arg)
		}
		ratio = r
	}
	switch name {
	case "", "parentbased_traceidratio":
		return sampler{parentBased: true, bound: ratioBound(ratio)}, nil
	case "traceidratio":
		return sampler{bound: ratioBound(ratio)}, nil
	case "always_on":
		return sampler{bound: ratioBound(1)}, nil
	case "always_off":
		return sampler{}, nil
	case "parentbased_always_on":
		return sampler{parentBased: true, bound: ratioBound(1)}, nil
	case "parentbased_always_off":
		return sampler{parentBased: true}, nil
	}
	return sampler{}, fmt.Errorf("OTEL_TRACES_SAMPLER %q is not a sampler pgmux knows", name)
}

// ratioBound is OpenTelemetry's TraceIDRatioBased bound for ratio.
func ratioBound(ratio float64) uint64 {
	if ratio >= 1 {
		return 1 << 63
	}
	return uint64(ratio * (1 << 63))
}

func (s sampler) sampled(traceID [16]byte, parent trace.SpanContext) bool {
	if s.parentBased && parent.IsValid() {
		return parent.IsSampled()
	}
	return binary.BigEndian.Uint64(traceID[8:])>>1 < s.bound
}
