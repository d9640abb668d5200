package demo

import (
	"net/http"
	"strconv"
	"time"
)

// rateLimit counts the request against its API key (header X-API-Key, else
// "anonymous") in a fixed window kept in Redis, so that every instance of
// the demo shares one limit.
func (s *Server) rateLimit(r *http.Request) error {
	if s.cfg.RateLimit <= 0 {
		return nil
	}
	key := r.Header.Get("X-API-Key")
	if key == "" {
		key = "anonymous"
	}
	window := time.Now().UnixNano() / int64(s.cfg.RateWindow)
	rkey := "demo:rate:" + key + ":" + strconv.FormatInt(window, 10)
	pipe := s.rdb.TxPipeline()
	n := pipe.Incr(r.Context(), rkey)
	pipe.PExpire(r.Context(), rkey, 2*s.cfg.RateWindow)
	if _, err := pipe.Exec(r.Context()); err != nil {
		return err
	}
	if n.Val() > int64(s.cfg.RateLimit) {
		s.metrics.rateLimited.Inc()
		return errStatus(http.StatusTooManyRequests, "rate limit of %d per %s exceeded", s.cfg.RateLimit, s.cfg.RateWindow)
	}
	return nil
}
