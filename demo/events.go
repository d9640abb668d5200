package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Event is an audit-log entry.
type Event struct {
	Kind    string          `json:"kind"`
	Payload json.RawMessage `json:"payload"`
}

// eventBuffer holds accepted events until the flusher writes them, a batch
// per INSERT: every BatchSize events or FlushInterval, whichever comes
// first. It is bounded: when full, POST /events answers 429.
type eventBuffer struct {
	s    *Server
	ch   chan Event
	done chan error
}

func newEventBuffer(s *Server) *eventBuffer {
	b := &eventBuffer{s: s, ch: make(chan Event, s.cfg.EventBuffer), done: make(chan error, 1)}
	go b.run()
	return b
}

func (s *Server) postEvent(w http.ResponseWriter, r *http.Request) error {
	var e Event
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&e); err != nil || e.Kind == "" {
		return errStatus(400, "want {\"kind\": …, \"payload\": …}")
	}
	if len(e.Payload) == 0 {
		e.Payload = json.RawMessage("null")
	}
	select {
	case s.events.ch <- e:
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "accepted"})
		return nil
	default:
		return errStatus(http.StatusTooManyRequests, "event buffer full")
	}
}

// run flushes batches until the channel is closed and drained.
func (b *eventBuffer) run() {
	batch := make([]Event, 0, b.s.cfg.BatchSize)
	tick := time.NewTicker(b.s.cfg.FlushInterval)
	defer tick.Stop()
	var firstErr error
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := b.flush(batch); err != nil && firstErr == nil {
			firstErr = err
		}
		batch = batch[:0]
	}
	for {
		select {
		case e, ok := <-b.ch:
			if !ok {
				flush()
				b.done <- firstErr
				return
			}
			batch = append(batch, e)
			if len(batch) >= b.s.cfg.BatchSize {
				flush()
			}
		case <-tick.C:
			flush()
		}
	}
}

// flush writes a batch as one multi-row INSERT, retrying a few times: an
// accepted event must not be lost to a passing error.
func (b *eventBuffer) flush(batch []Event) error {
	kinds := make([]string, len(batch))
	payloads := make([]string, len(batch))
	for i, e := range batch {
		kinds[i], payloads[i] = e.Kind, string(e.Payload)
	}
	var err error
	for try := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err = b.s.db.Exec(ctx, "INSERT INTO events (kind, payload) SELECT * FROM unnest($1::text[], $2::text[])", b.s.args(kinds, payloads)...)
		cancel()
		if err == nil {
			b.s.metrics.batches.Inc()
			b.s.metrics.eventsWritten.Add(float64(len(batch)))
			return nil
		}
		b.s.log.Warn("event batch failed", zap.Int("events", len(batch)), zap.Int("try", try+1), zap.Error(err))
		time.Sleep(time.Duration(try+1) * 100 * time.Millisecond)
	}
	return fmt.Errorf("write %d events: %w", len(batch), err)
}

// close stops taking events and waits until every accepted one is written.
func (b *eventBuffer) close() error {
	close(b.ch)
	return <-b.done
}
