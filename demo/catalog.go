package demo

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// Product is a catalog entry.
type Product struct {
	ID         int64     `json:"id"`
	Name       string    `json:"name"`
	PriceCents int64     `json:"price_cents"`
	Version    int64     `json:"version"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// The cache is read aside: a miss is loaded from PostgreSQL and written back
// with a TTL. A write updates PostgreSQL, then bumps the product's
// generation and deletes its entry. A reader writes back only if the
// generation it saw before reading PostgreSQL is still current (setIfGen, run
// atomically in Redis), so a reader that read the old row cannot put it back
// after the write: it either writes before the delete, which removes it, or
// after the bump, which stops it.
var setIfGen = redis.NewScript(`
local gen = redis.call('GET', KEYS[2]) or '0'
if gen == ARGV[2] then
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
	return 1
end
return 0`)

func cacheKey(id int64) string { return "demo:product:" + strconv.FormatInt(id, 10) }
func genKey(id int64) string   { return "demo:product-gen:" + strconv.FormatInt(id, 10) }

func (s *Server) getProduct(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		return errStatus(400, "bad product id")
	}
	ps, err := s.products(r.Context(), []int64{id})
	if err != nil {
		return err
	}
	if len(ps) == 0 {
		return errStatus(404, "no product %d", id)
	}
	writeJSON(w, 200, ps[0])
	return nil
}

// getProducts answers GET /products?ids=1,2,3.
func (s *Server) getProducts(w http.ResponseWriter, r *http.Request) error {
	var ids []int64
	for _, f := range strings.Split(r.URL.Query().Get("ids"), ",") {
		if f == "" {
			continue
		}
		id, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return errStatus(400, "bad product id %q", f)
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 || len(ids) > 100 {
		return errStatus(400, "give 1 to 100 ids")
	}
	ps, err := s.products(r.Context(), ids)
	if err != nil {
		return err
	}
	writeJSON(w, 200, ps)
	return nil
}

// products returns the products that exist among ids, in the order asked:
// one pipelined round trip to Redis for entries and generations, one query
// for the misses, one pipelined write-back.
func (s *Server) products(ctx context.Context, ids []int64) ([]Product, error) {
	pipe := s.rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(ids))
	gens := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		gets[i] = pipe.Get(ctx, cacheKey(id))
		gens[i] = pipe.Get(ctx, genKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	found := make(map[int64]Product, len(ids))
	var missing []int64
	missGen := map[int64]string{}
	for i, id := range ids {
		if b, err := gets[i].Bytes(); err == nil {
			var p Product
			if json.Unmarshal(b, &p) == nil {
				found[id] = p
				continue
			}
		}
		gen, err := gens[i].Result()
		if err != nil {
			gen = "0"
		}
		missing = append(missing, id)
		missGen[id] = gen
	}
	s.metrics.cacheHits.Add(float64(len(ids) - len(missing)))
	s.metrics.cacheMisses.Add(float64(len(missing)))
	if len(missing) > 0 {
		rows, _ := s.db.Query(ctx, "SELECT id, name, price_cents, version, updated_at FROM products WHERE id = ANY($1)", s.args(missing)...)
		loaded, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Product])
		if err != nil {
			return nil, err
		}
		pipe := s.rdb.Pipeline()
		ttl := strconv.FormatInt(s.cfg.CacheTTL.Milliseconds(), 10)
		for _, p := range loaded {
			found[p.ID] = p
			b, _ := json.Marshal(p)
			setIfGen.Eval(ctx, pipe, []string{cacheKey(p.ID), genKey(p.ID)}, b, missGen[p.ID], ttl)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
	}
	out := make([]Product, 0, len(ids))
	for _, id := range ids {
		if p, ok := found[id]; ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// putProduct answers PUT /products/{id} with {"name": …, "price_cents": …}.
func (s *Server) putProduct(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		return errStatus(400, "bad product id")
	}
	var in struct {
		Name       *string `json:"name"`
		PriceCents *int64  `json:"price_cents"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		return errStatus(400, "bad body: %v", err)
	}
	var p Product
	err = s.db.QueryRow(r.Context(), `UPDATE products SET
			name = coalesce($2, name), price_cents = coalesce($3, price_cents),
			version = version + 1, updated_at = now()
		WHERE id = $1 RETURNING id, name, price_cents, version, updated_at`, s.args(id, in.Name, in.PriceCents)...).
		Scan(&p.ID, &p.Name, &p.PriceCents, &p.Version, &p.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return errStatus(404, "no product %d", id)
	}
	if err != nil {
		return err
	}
	// Committed: now stop stale write-backs, then drop the entry.
	pipe := s.rdb.TxPipeline()
	pipe.Incr(r.Context(), genKey(id))
	pipe.Del(r.Context(), cacheKey(id))
	if _, err := pipe.Exec(r.Context()); err != nil {
		return err
	}
	writeJSON(w, 200, p)
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
