package proxy

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestReportsUnderLoad reads the reports (pools, clients, servers) while
// clients log in, run transactions and leave, so that the race detector sees
// the report paths beside the session paths; and checks the counts add up.
func TestReportsUnderLoad(t *testing.T) {
	const dbName = "reports"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(o *Options, db *Database) { db.PoolSize = 2 })
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			p.Pools()
			p.Clients()
			p.Servers()
			p.Prepared()
			time.Sleep(time.Millisecond)
		}
	}()
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				conn := p.connect(t, dbName, pgx.QueryExecModeCacheStatement)
				for range 4 {
					if err := pgx.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
						_, err := tx.Exec(context.Background(), "SELECT pg_sleep(0.001)")
						return err
					}); err != nil {
						t.Error(err)
						return
					}
				}
				conn.Close(context.Background())
			}
		}()
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	var got int64
	for _, ps := range p.Pools() {
		if ps.Database == dbName {
			got = ps.Transactions
			if ps.ClientsActive != 0 || ps.ClientsWaiting != 0 {
				t.Errorf("after the clients left: %d active, %d waiting", ps.ClientsActive, ps.ClientsWaiting)
			}
		}
	}
	if got != 20*5*4 {
		t.Fatalf("%d transactions counted; the clients ran %d", got, 20*5*4)
	}
}
