package proxy

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmux/pgmux/internal/pgtest"
)

// commits returns how many transactions database dbName has committed on
// each of servers (pg_stat_database, a replica's counting its own).
func commits(t *testing.T, servers []*pgtest.Cluster, dbName string) []int64 {
	t.Helper()
	out := make([]int64, len(servers))
	for i, c := range servers {
		conn, err := pgx.Connect(context.Background(), c.SuperDSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		conn.Exec(context.Background(), "SELECT pg_stat_clear_snapshot()")
		if err := conn.QueryRow(context.Background(), "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", dbName).Scan(&out[i]); err != nil {
			t.Fatal(err)
		}
		conn.Close(context.Background())
	}
	return out
}

// during runs run through p and returns how many transactions dbName
// committed on each of servers meanwhile.
func during(t *testing.T, p *testProxy, servers []*pgtest.Cluster, dbName string, run func()) []int64 {
	t.Helper()
	before := commits(t, servers, dbName)
	run()
	// An idle backend holds its statistics for up to 10 s; one that exits
	// hands them over.
	if err := p.Reconnect(dbName); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitClose(ctx, dbName); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	after := commits(t, servers, dbName)
	for i := range after {
		after[i] -= before[i]
	}
	return after
}

// TestRouteReads: with route_reads, a read-only pgbench (-S, simple,
// extended and prepared) runs on the replica and TPC-B on the primary, and a client that
// writes then reads within read_after_write_window sees its write, though
// the replica has not replayed it.
func TestRouteReads(t *testing.T) {
	const dbName = "routedb"
	if err := needPG(t).CreateDatabase(dbName); err != nil {
		t.Fatal(err)
	}
	bin := pgbenchPath(t)
	if out, err := exec.Command(bin, "-i", "-q", "-s", "1", "-h", cluster.Host, "-p", strconv.Itoa(cluster.Port), "-U", cluster.SuperUserName(), dbName).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	rs := replicas(t, 1)
	p := startProxy(t, func(o *Options, db *Database) {
		o.ReadAfterWriteWindow = 500 * time.Millisecond
		db.Host, db.RouteReads, db.PoolSize = addr(cluster)+","+addr(rs[0]), true, 8
	})
	servers := []*pgtest.Cluster{cluster, rs[0]}
	for _, mode := range []string{"simple", "extended", "prepared"} {
		var tx int
		n := during(t, p, servers, dbName, func() { tx = runPgbenchCount(t, bin, p, dbName, "-S", "-c", "4", "-T", "2", "-M", mode) })
		if n[1] < int64(tx)*9/10 || n[0] > int64(tx)/20 {
			t.Fatalf("-S -M %s, %d transactions: %d committed on the primary, %d on the replica", mode, tx, n[0], n[1])
		}
		t.Logf("pgbench -S -M %s: %d transactions; committed on the primary %d, on the replica %d", mode, tx, n[0], n[1])
	}
	var tx int
	n := during(t, p, servers, dbName, func() { tx = runPgbenchCount(t, bin, p, dbName, "-c", "4", "-T", "2") })
	if n[0] < int64(tx) {
		t.Fatalf("TPC-B, %d transactions: %d committed on the primary, %d on the replica", tx, n[0], n[1])
	}
	t.Logf("pgbench TPC-B: %d transactions, none failed; committed on the primary %d, on the replica %d", tx, n[0], n[1])

	// The TPS of -S with the routing on, against a database of the primary
	// alone, side by side in rounds (figures only: this machine is shared).
	p.Update(func() Options {
		o := *p.options()
		inner := o.Databases
		o.Databases = func(name string) (Database, bool) {
			d, ok := inner(name)
			if name == dbName+"_direct" {
				d.Host, d.RouteReads, d.DBName = addr(cluster), false, dbName
			}
			return d, ok
		}
		return o
	}())
	for round := range 3 {
		on := runPgbenchCount(t, bin, p, dbName, "-S", "-c", "4", "-T", "3")
		off := runPgbenchCount(t, bin, p, dbName+"_direct", "-S", "-c", "4", "-T", "3")
		t.Logf("round %d, pgbench -S, 4 clients, 3 s: route_reads on %.0f TPS (replica), off %.0f TPS (primary), ratio %.2f",
			round+1, float64(on)/3, float64(off)/3, float64(on)/float64(off))
	}

	// Read your writes, from a replica that replays nothing meanwhile.
	ctx := context.Background()
	if err := cluster.Exec(dbName, "CREATE TABLE raw (id int)"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the table reaches the replica
	if err := rs[0].Exec("postgres", "SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatal(err)
	}
	defer rs[0].Exec("postgres", "SELECT pg_wal_replay_resume()")
	conn := p.connect(t, dbName, pgx.QueryExecModeSimpleProtocol)
	for i := range 3 {
		if _, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO raw VALUES (%d)", i)); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM raw WHERE id = %d", i)).Scan(&n); err != nil || n != 1 {
			t.Fatalf("a read right after the write sees %d rows (%v)", n, err)
		}
	}
	time.Sleep(600 * time.Millisecond) // past the window: reads go to the replica, which has none of them
	var rows int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM raw").Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("a read past the window sees %d rows (%v): not on the paused replica", rows, err)
	}
	t.Log("writes read back at once from the primary; past the window, reads from the replica")
}
