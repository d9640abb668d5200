package proxy

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmux/pgmux/internal/pgtest"
)

// replicas starts n streaming replicas of the tests' server.
func replicas(t *testing.T, n int) []*pgtest.Cluster {
	t.Helper()
	if needPG(t).External() {
		t.Skip("PGMUX_TEST_DSN's server: replicas are not made of it")
	}
	var out []*pgtest.Cluster
	for range n {
		r, err := cluster.StartReplica()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Close)
		out = append(out, r)
	}
	return out
}

// addr is a cluster's host:port, as a host list takes it.
func addr(c *pgtest.Cluster) string { return fmt.Sprintf("%s:%d", c.Host, c.Port) }

// serverPorts runs n transactions at once through p on database and
// returns the ports of the servers they ran on, and what
// pg_is_in_recovery() said there.
func serverPorts(t *testing.T, p *testProxy, database string, n int) (map[int]int, map[bool]int) {
	t.Helper()
	ctx := context.Background()
	ports, recovery := map[int]int{}, map[bool]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var ready sync.WaitGroup
	ready.Add(n)
	for range n {
		conn := p.connect(t, database, pgx.QueryExecModeSimpleProtocol)
		wg.Go(func() {
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Error(err)
				ready.Done()
				return
			}
			defer tx.Rollback(ctx)
			var port int
			var inRecovery bool
			err = tx.QueryRow(ctx, "SELECT inet_server_port(), pg_is_in_recovery()").Scan(&port, &inRecovery)
			ready.Done()
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ports[port]++
			recovery[inRecovery]++
			mu.Unlock()
			ready.Wait() // every transaction holds its server at once
		})
	}
	wg.Wait()
	return ports, recovery
}

// TestHostRoles: a primary database reaches the primary among its hosts;
// a replica database the replicas, both in turn with round-robin.
func TestHostRoles(t *testing.T) {
	rs := replicas(t, 2)
	primary := addr(cluster)
	p := startProxy(t, func(o *Options, db *Database) {
		db.PoolSize = 8
		o.Databases = func(name string) (Database, bool) {
			d := *db
			d.DBName = "postgres"
			switch name {
			case "prim":
				d.Host, d.Role = addr(rs[0])+","+primary+","+addr(rs[1]), "primary"
			case "rep":
				d.Host, d.Role, d.LoadBalanceHosts = primary+","+addr(rs[0])+","+addr(rs[1]), "replica", "round-robin"
			default:
				d.DBName = name
			}
			return d, true
		}
	})
	ports, recovery := serverPorts(t, p, "prim", 4)
	if len(ports) != 1 || ports[cluster.Port] != 4 || recovery[true] != 0 {
		t.Fatalf("primary database: transactions on ports %v (primary %d), in recovery %v", ports, cluster.Port, recovery)
	}
	ports, recovery = serverPorts(t, p, "rep", 4)
	if ports[rs[0].Port] == 0 || ports[rs[1].Port] == 0 || ports[cluster.Port] != 0 || recovery[false] != 0 {
		t.Fatalf("replica database: transactions on ports %v (replicas %d and %d), in recovery %v", ports, rs[0].Port, rs[1].Port, recovery)
	}
	t.Logf("primary database: %v; replica database, round-robin: %v", map[int]int{cluster.Port: 4}, ports)
}

// TestReplicaLag: a replica whose replay is paused while the primary writes
// leaves the rotation once it is max_replica_lag behind, and comes back
// once it has caught up.
func TestReplicaLag(t *testing.T) {
	rs := replicas(t, 2)
	p := startProxy(t, func(o *Options, db *Database) {
		o.HostCheckInterval = 200 * time.Millisecond
		db.PoolSize = 8
		o.Databases = func(name string) (Database, bool) {
			d := *db
			d.DBName = "postgres"
			d.Host, d.Role, d.LoadBalanceHosts, d.MaxReplicaLag = addr(rs[0])+","+addr(rs[1]), "replica", "round-robin", time.Second
			return d, true
		}
	})
	if ports, _ := serverPorts(t, p, "lagdb", 4); len(ports) != 2 {
		t.Fatalf("before the pause: transactions on %v, want both replicas", ports)
	}
	// The primary writes all along.
	if err := cluster.Exec("postgres", "CREATE TABLE IF NOT EXISTS lag_writes (at timestamptz)"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				cluster.Exec("postgres", "INSERT INTO lag_writes VALUES (now())")
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	// The replica has replayed a write of the primary's before its replay
	// pauses: its lag is then the age of that write.
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err := pgx.Connect(context.Background(), rs[0].SuperDSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		var n int
		err = conn.QueryRow(context.Background(), "SELECT count(*) FROM lag_writes").Scan(&n)
		conn.Close(context.Background())
		if err == nil && n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica has not replayed the primary's writes: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := rs[0].Exec("postgres", "SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	// Out of the rotation once behind: every transaction on the other.
	deadline := time.Now().Add(10 * time.Second)
	for {
		time.Sleep(200 * time.Millisecond)
		ports, _ := serverPorts(t, p, "lagdb", 4)
		if len(ports) == 1 && ports[rs[1].Port] == 4 {
			t.Logf("replay paused on %d: out of the rotation after %s", rs[0].Port, time.Since(paused).Round(100*time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after replay paused on %d, transactions still on %v", rs[0].Port, ports)
		}
	}
	for _, pl := range p.Pools() { // /stats says so
		for _, h := range pl.Hosts {
			if h.Host == addr(rs[0]) && (h.InRotation || h.State != "replica" || h.LagSeconds < 1) {
				t.Errorf("/stats of the lagging replica: %+v", h)
			}
		}
	}
	for range 5 { // and stays out
		if ports, _ := serverPorts(t, p, "lagdb", 4); ports[rs[0].Port] != 0 {
			t.Fatalf("a transaction on the lagging replica: %v", ports)
		}
	}
	if err := rs[0].Exec("postgres", "SELECT pg_wal_replay_resume()"); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	deadline = time.Now().Add(10 * time.Second)
	for {
		time.Sleep(200 * time.Millisecond)
		if ports, _ := serverPorts(t, p, "lagdb", 4); ports[rs[0].Port] > 0 {
			t.Logf("replay resumed: back in the rotation after %s (%v)", time.Since(resumed).Round(100*time.Millisecond), ports)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after replay resumed, %d is not back in the rotation", rs[0].Port)
		}
	}
}

var (
	pgbenchProgress = regexp.MustCompile(`progress: ([\d.]+) s, ([\d.]+) tps`)
	pgbenchAborted  = regexp.MustCompile(`client \d+ script \d+ aborted`)
)

// TestFailover: the primary stops, its replica is promoted: clients of the
// primary database go on within seconds with no change of theirs; every
// COMMIT a client saw acknowledged is on the new primary; a client inside a
// transaction when the primary went gets an error, never a false success.
func TestFailover(t *testing.T) {
	if needPG(t).External() {
		t.Skip("PGMUX_TEST_DSN's server: it is not stopped")
	}
	prim, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prim.Close)
	rep, err := prim.StartReplica()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rep.Close)
	if err := prim.Exec("postgres", "CREATE TABLE fo (id bigint PRIMARY KEY, client int)"); err != nil {
		t.Fatal(err)
	}
	bin := pgbenchPath(t)
	if out, err := exec.Command(bin, "-i", "-q", "-s", "1", "-h", prim.Host, "-p", strconv.Itoa(prim.Port), "-U", pgtest.SuperUser, "postgres").CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	p := startProxy(t, func(o *Options, db *Database) {
		o.HostCheckInterval = 200 * time.Millisecond
		o.Databases = func(name string) (Database, bool) {
			d := *db
			d.DBName = "postgres"
			d.Host, d.Role, d.PoolSize = addr(prim)+","+addr(rep), "primary", 4
			return d, true
		}
	})
	// pgbench too, 16 clients on the pool of 4: those holding a server when
	// the primary goes are aborted (pgbench gives up a client on any
	// error), those waiting for one go on once a primary is back.
	pgbenchStart := time.Now()
	bench := exec.Command(bin, "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", cluster.SuperUserName(), "-c", "16", "-j", "2",
		"-T", "7", "-P", "1", "-n", "fodb")
	var benchOut bytes.Buffer
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const clients = 8
	var (
		mu       sync.Mutex
		acked    []int64   // ids whose COMMIT a client saw succeed
		failures int       // transactions that failed, ids unknown to have committed
		lastOK   time.Time // the latest acknowledged COMMIT
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		nextID   atomic.Int64
	)
	for c := range clients {
		wg.Go(func() {
			var conn *pgx.Conn
			for {
				select {
				case <-stop:
					if conn != nil {
						conn.Close(ctx)
					}
					return
				default:
				}
				if conn == nil || conn.IsClosed() {
					var err error
					if conn, err = pgx.Connect(ctx, p.dsn(cluster.SuperUserName(), "", "fodb")); err != nil {
						time.Sleep(50 * time.Millisecond) // pgmux itself is up: this does not happen
						continue
					}
				}
				// Half autocommit statements, half transactions of two.
				a, b := nextID.Add(1), nextID.Add(1)
				var err error
				if a%4 == 1 {
					_, err = conn.Exec(ctx, "INSERT INTO fo VALUES ($1, $2)", a, c)
					b = 0
				} else {
					err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
						if _, err := tx.Exec(ctx, "INSERT INTO fo VALUES ($1, $2)", a, c); err != nil {
							return err
						}
						_, err := tx.Exec(ctx, "INSERT INTO fo VALUES ($1, $2)", b, c)
						return err
					})
				}
				mu.Lock()
				if err == nil {
					acked = append(acked, a)
					if b != 0 {
						acked = append(acked, b)
					}
					lastOK = time.Now()
				} else {
					failures++
				}
				mu.Unlock()
			}
		})
	}
	time.Sleep(time.Second)
	stopped := time.Now()
	if err := prim.StopFast(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the database has no primary for a while
	if err := rep.Promote(); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	// Served again within 10 s of the promotion.
	var resumed time.Time
	for deadline := promoted.Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		last := lastOK
		mu.Unlock()
		if last.After(promoted) {
			resumed = last
			break
		}
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("no transaction acknowledged within 10 s of the promotion (%d failed)", failures)
		}
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	// pgbench's progress after the promotion.
	if err := bench.Wait(); err != nil && bench.ProcessState.ExitCode() != 2 { // 2: some clients aborted
		t.Fatalf("pgbench: %v\n%s", err, benchOut.String())
	}
	benchResumed := -1.0
	for _, m := range pgbenchProgress.FindAllStringSubmatch(benchOut.String(), -1) {
		at, _ := strconv.ParseFloat(m[1], 64)
		tps, _ := strconv.ParseFloat(m[2], 64)
		if pgbenchStart.Add(time.Duration(at*float64(time.Second))).After(promoted.Add(time.Second)) && tps > 0 && benchResumed < 0 {
			benchResumed = at - promoted.Sub(pgbenchStart).Seconds()
		}
	}
	aborted := len(pgbenchAborted.FindAllString(benchOut.String(), -1))
	if benchResumed < 0 || benchResumed > 10 {
		t.Fatalf("pgbench did not resume within 10 s of the promotion:\n%s", benchOut.String())
	}
	t.Logf("pgbench, 16 clients on a pool of 4: %d clients aborted (those holding a server at the stop), the rest committing again in the progress report ending %.1f s after the promotion",
		aborted, benchResumed)
	conn, err := pgx.Connect(ctx, rep.SuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT id FROM fo")
	if err != nil {
		t.Fatal(err)
	}
	present := map[int64]bool{}
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		present[id] = true
	}
	missing := 0
	for _, id := range acked {
		if !present[id] {
			missing++
		}
	}
	t.Logf("primary stopped; replica promoted %s later; the Go clients served again %s after the promotion; %d rows acknowledged, %d on the new primary, %d missing; %d transactions failed",
		promoted.Sub(stopped).Round(10*time.Millisecond), resumed.Sub(promoted).Round(10*time.Millisecond), len(acked), len(present), missing, failures)
	if missing > 0 {
		t.Fatalf("%d acknowledged rows are not on the new primary", missing)
	}
}
