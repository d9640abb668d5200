package proxy

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestSmoke(t *testing.T) {
	p := startProxy(t, nil)
	if err := cluster.CreateDatabase("smoke"); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeCacheDescribe} {
		conn := p.connect(t, "smoke", mode)
		var n int
		if err := conn.QueryRow(context.Background(), "SELECT $1::int + 1", 41).Scan(&n); err != nil || n != 42 {
			t.Fatalf("mode %v: got %d, %v", mode, n, err)
		}
	}
}
