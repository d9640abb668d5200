// Package otlp is a small OTLP/HTTP trace receiver: it takes the protobuf
// ExportTraceServiceRequests an OpenTelemetry SDK posts to /v1/traces,
// decodes them with the official go.opentelemetry.io/proto/otlp types, and
// keeps their spans in memory. The demo's in-process collector and the
// tracing tests use it; it is not a collector to run in production.
package otlp

import (
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"
)

// Span is one span received, flattened.
type Span struct {
	Service              string
	TraceID, SpanID      string // hex
	ParentSpanID         string // hex; empty for a root
	Name                 string
	Start, End           time.Time
	Attrs                map[string]string
	StatusError          bool
	StatusMessage        string
	Kind                 int32
	InstrumentationScope string
}

// Duration is the span's length.
func (s Span) Duration() time.Duration { return s.End.Sub(s.Start) }

// Receiver serves /v1/traces and keeps what it is sent.
type Receiver struct {
	URL string // http://host:port, the endpoint to give an exporter

	srv *http.Server
	ln  net.Listener

	mu      sync.Mutex
	spans   []Span
	onSpans func([]Span)
}

// Listen starts a Receiver on addr (127.0.0.1:0 for a free port). If
// onSpans is not nil it is called with each request's spans, which are then
// not kept.
func Listen(addr string, onSpans func([]Span)) (*Receiver, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	r := &Receiver{URL: "http://" + ln.Addr().String(), ln: ln, onSpans: onSpans}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", r.traces)
	r.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go r.srv.Serve(ln)
	return r, nil
}

// Close stops the Receiver.
func (r *Receiver) Close() error { return r.srv.Close() }

// Spans returns the spans kept so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

func (r *Receiver) traces(w http.ResponseWriter, req *http.Request) {
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer gz.Close()
		body = gz
	}
	b, err := io.ReadAll(io.LimitReader(body, 64<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var msg collectorpb.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &msg); err != nil {
		http.Error(w, fmt.Sprintf("not an ExportTraceServiceRequest: %v", err), http.StatusBadRequest)
		return
	}
	spans := Flatten(&msg)
	r.mu.Lock()
	if r.onSpans == nil {
		r.spans = append(r.spans, spans...)
	}
	r.mu.Unlock()
	if r.onSpans != nil {
		r.onSpans(spans)
	}
	out, _ := proto.Marshal(&collectorpb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

// Flatten lists the spans of an export request.
func Flatten(msg *collectorpb.ExportTraceServiceRequest) []Span {
	var out []Span
	for _, rs := range msg.GetResourceSpans() {
		service := attrs(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				out = append(out, Span{
					Service:              service,
					TraceID:              hex.EncodeToString(s.GetTraceId()),
					SpanID:               hex.EncodeToString(s.GetSpanId()),
					ParentSpanID:         hex.EncodeToString(s.GetParentSpanId()),
					Name:                 s.GetName(),
					Start:                time.Unix(0, int64(s.GetStartTimeUnixNano())),
					End:                  time.Unix(0, int64(s.GetEndTimeUnixNano())),
					Attrs:                attrs(s.GetAttributes()),
					StatusError:          s.GetStatus().GetCode() == 2, // STATUS_CODE_ERROR
					StatusMessage:        s.GetStatus().GetMessage(),
					Kind:                 int32(s.GetKind()),
					InstrumentationScope: ss.GetScope().GetName(),
				})
			}
		}
	}
	return out
}

// attrs renders attributes as text.
func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		v := kv.GetValue()
		switch x := v.GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.GetKey()] = x.StringValue
		case *commonpb.AnyValue_IntValue:
			m[kv.GetKey()] = fmt.Sprint(x.IntValue)
		case *commonpb.AnyValue_BoolValue:
			m[kv.GetKey()] = fmt.Sprint(x.BoolValue)
		case *commonpb.AnyValue_DoubleValue:
			m[kv.GetKey()] = fmt.Sprint(x.DoubleValue)
		default:
			m[kv.GetKey()] = v.String()
		}
	}
	return m
}
