package tracing

import "go.opentelemetry.io/otel/trace"

// Traceparent finds a W3C traceparent in text, a statement's text or an
// application_name: after the key traceparent and an = or : with an
// optional quote, as sqlcommenter writes it at the end of a query
// (/*traceparent='00-<trace id>-<span id>-<flags>'*/), or text that is a
// traceparent and nothing else. It reports false when none is found whole
// and valid.
func Traceparent[T string | []byte](text T) (trace.SpanContext, bool) {
	const key = "traceparent"
	for i := 0; i+len(key) <= len(text); i++ {
		if text[i] != 't' || string(text[i:i+len(key)]) != key {
			continue
		}
		j := i + len(key)
		for j < len(text) && (text[j] == ' ' || text[j] == '=' || text[j] == ':' || text[j] == '\'' || text[j] == '"') {
			j++
		}
		if sc, ok := parse(text[j:]); ok {
			return sc, true
		}
	}
	if len(text) == valueLen {
		return parse(text)
	}
	return trace.SpanContext{}, false
}

// valueLen is a version 00 traceparent's length.
const valueLen = 55

// parse reads a traceparent value at the start of s:
// 00-<32 hex>-<16 hex>-<2 hex>, not followed by more hex or a dash.
func parse[T string | []byte](s T) (trace.SpanContext, bool) {
	if len(s) < valueLen || s[0] != '0' || s[1] != '0' || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return trace.SpanContext{}, false
	}
	if len(s) > valueLen && (hexValue(s[valueLen]) >= 0 || s[valueLen] == '-') {
		return trace.SpanContext{}, false
	}
	var tid trace.TraceID
	var sid trace.SpanID
	var flags [1]byte
	if !decodeHex(tid[:], s[3:35]) || !decodeHex(sid[:], s[36:52]) || !decodeHex(flags[:], s[53:55]) {
		return trace.SpanContext{}, false
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid,
		TraceFlags: trace.TraceFlags(flags[0]) & trace.FlagsSampled, Remote: true})
	return sc, sc.IsValid()
}

// decodeHex decodes the lower-case or upper-case hex in s into dst, which
// is half its length.
func decodeHex[T string | []byte](dst []byte, s T) bool {
	for i := range dst {
		hi, lo := hexValue(s[2*i]), hexValue(s[2*i+1])
		if hi < 0 || lo < 0 {
			return false
		}
		dst[i] = byte(hi<<4 | lo)
	}
	return true
}

func hexValue(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
