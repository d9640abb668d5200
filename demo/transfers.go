package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TransferRequest is the body of POST /transfers.
type TransferRequest struct {
	From           int64  `json:"from"`
	To             int64  `json:"to"`
	AmountCents    int64  `json:"amount_cents"`
	IdempotencyKey string `json:"idempotency_key"`
}

// TransferResult is the answer: applied is false when the key had been used
// before, in which case nothing was moved this time.
type TransferResult struct {
	Applied bool `json:"applied"`
	TransferRequest
}

// errInsufficientFunds refuses a transfer that would take a balance below 0.
var errInsufficientFunds = errStatus(http.StatusConflict, "insufficient funds")

func (s *Server) postTransfer(w http.ResponseWriter, r *http.Request) error {
	var in TransferRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&in); err != nil {
		return errStatus(400, "bad body: %v", err)
	}
	if in.From == in.To || in.AmountCents <= 0 || in.IdempotencyKey == "" {
		return errStatus(400, "want two different accounts, a positive amount_cents and an idempotency_key")
	}
	var applied bool
	var err error
	for try := 1; ; try++ {
		applied, err = s.transfer(r.Context(), in)
		if err == nil || !retryable(err) || try >= s.cfg.TransferTries {
			break
		}
		s.metrics.transferRetries.Inc()
		time.Sleep(time.Duration(try*try) * 5 * time.Millisecond)
	}
	if err != nil {
		if retryable(err) {
			return errStatus(http.StatusServiceUnavailable, "accounts busy, try again: %v", err)
		}
		return err
	}
	writeJSON(w, 200, TransferResult{Applied: applied, TransferRequest: in})
	return nil
}

// retryable reports a lock timeout (55P03), a deadlock (40P01) or a
// serialization failure (40001).
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "55P03" || pgErr.Code == "40P01" || pgErr.Code == "40001")
}

// transfer moves the money in one transaction. Both rows are locked in id
// order, so two transfers between the same accounts never wait on each other
// in a cycle; the idempotency key is claimed in the same transaction, so a
// retried request is applied once.
func (s *Server) transfer(ctx context.Context, in TransferRequest) (applied bool, err error) {
	err = s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = '%dms'", s.cfg.LockTimeout.Milliseconds()), s.args()...); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO transfers (idempotency_key, from_id, to_id, amount) VALUES ($1, $2, $3, $4)
			ON CONFLICT (idempotency_key) DO NOTHING`, s.args(in.IdempotencyKey, in.From, in.To, in.AmountCents)...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return nil // applied before
		}
		first, second := min(in.From, in.To), max(in.From, in.To)
		rows, _ := tx.Query(ctx, "SELECT id, balance FROM accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE", s.args(first, second)...)
		balances := map[int64]int64{}
		var id, bal int64
		_, err = pgx.ForEachRow(rows, []any{&id, &bal}, func() error { balances[id] = bal; return nil })
		if err != nil {
			return err
		}
		if len(balances) != 2 {
			return errStatus(404, "no such account")
		}
		if balances[in.From] < in.AmountCents {
			return errInsufficientFunds
		}
		if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance - $2 WHERE id = $1", s.args(in.From, in.AmountCents)...); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + $2 WHERE id = $1", s.args(in.To, in.AmountCents)...); err != nil {
			return err
		}
		applied = true
		return nil
	})
	return applied, err
}
