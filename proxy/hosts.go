package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pgmux/pgmux/hosts"
	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/stats"
)

// A database with several hosts, or a role, has a hosts.Set: the proxy
// checks each host in the background (watchHosts) for whether it is up, in
// recovery and how far behind, and dials the one the set picks. When the
// hosts in rotation change (a replica falls behind or catches up, a host
// goes down or comes back, a replica is promoted) the pool is replaced: its
// servers close as their transactions end, and new ones go to the hosts in
// rotation.

// onHost is db with host, an entry of its list, as the one to dial: a
// name, an address or a socket directory on db's port, or host:port (an
// IPv6 address with a port in brackets) on a port of its own.
func onHost(db Database, host string) Database {
	if h, p, err := net.SplitHostPort(host); err == nil && !strings.HasPrefix(host, "/") {
		if port, err := strconv.Atoi(p); err == nil {
			db.Host, db.Port = h, port
			return db
		}
	}
	db.Host = host
	return db
}

// hostSet makes db's hosts.Set, or nil for one host of any role.
func hostSet(db Database) *hosts.Set {
	list := hosts.Split(db.Host)
	role := hosts.Role(db.Role)
	if role == "" {
		role = hosts.Any
	}
	if len(list) < 2 && role == hosts.Any {
		return nil
	}
	balance := hosts.Balance(db.LoadBalanceHosts)
	if balance == "" {
		balance = hosts.Disable
	}
	return hosts.New(list, role, balance, db.MaxReplicaLag)
}

// hostCheckQuery asks a server whether it is a replica and how far behind
// its primary it is in replay: 0 once it has replayed all it received,
// else the age of the last transaction it replayed, or -1 if it has
// replayed none since it started (behind by an unknown amount).
const hostCheckQuery = `SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
	ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), -1) END`

// checkHost checks host of p's database as user.
func (s *Server) checkHost(ctx context.Context, p *dbPool, host, user string, cred serverCred) (inRecovery bool, lag time.Duration, err error) {
	p.mu.Lock()
	d := onHost(p.db, host)
	p.mu.Unlock()
	sc, err := dialServer(ctx, &d, user, cred, s.options().MaxPacketSize)
	if err != nil {
		return false, 0, err
	}
	defer sc.conn.Close()
	sc.conn.SetDeadline(time.Now().Add(s.connectTimeout()))
	a, err := sc.query(hostCheckQuery)
	if err != nil {
		return false, 0, err
	}
	if len(a.Rows) != 1 || len(a.Rows[0]) != 2 {
		return false, 0, errors.New("unexpected answer to the host check")
	}
	row := a.Rows[0]
	secs, _ := strconv.ParseFloat(string(row[1]), 64)
	return string(row[0]) == "t", time.Duration(secs * float64(time.Second)), nil
}

// checkHosts checks every host of p that is due, at once, and reports
// whether the hosts in rotation changed.
func (s *Server) checkHosts(ctx context.Context, p *dbPool, user string, cred serverCred) bool {
	var wg sync.WaitGroup
	var mu sync.Mutex
	changed := false
	now := time.Now()
	for _, h := range p.hosts.Hosts() {
		if !p.hosts.Due(h.Host, now) {
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, s.connectTimeout())
			defer cancel()
			inRecovery, lag, err := s.checkHost(cctx, p, h.Host, user, cred)
			var c bool
			if err != nil {
				c = p.hosts.Failed(h.Host, err, time.Now())
			} else {
				c = p.hosts.Checked(h.Host, inRecovery, lag)
			}
			if c {
				s.log.Info("host rotation changed", zap.String("database", p.key.database), zap.String("host", h.Host),
					zap.Bool("up", err == nil), zap.Bool("in_recovery", inRecovery), zap.Duration("lag", lag), zap.Error(err))
			}
			mu.Lock()
			changed = changed || c
			mu.Unlock()
		})
	}
	wg.Wait()
	return changed
}

// watchHosts checks p's hosts every HostCheckInterval until the server
// shuts down, and replaces p's pool when the hosts in rotation change.
func (s *Server) watchHosts(p *dbPool, user string, cred serverCred) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.doneCh
		cancel()
	}()
	for {
		if s.checkHosts(ctx, p, user, cred) {
			p.mu.Lock()
			db := p.db
			p.mu.Unlock()
			if err := s.replacePool(p, db, s.options()); err != nil {
				return // shutting down
			}
		}
		interval := s.options().HostCheckInterval
		if interval <= 0 {
			interval = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// dialHosts dials a server of p, db, on a host in rotation. Until every
// host has been checked once, it checks them first. While no host is in
// rotation (a primary gone, its replica not yet promoted) it waits, within
// ctx, rather than fail the clients that wait for a server; a host that
// cannot be reached leaves the rotation at once and another is tried.
func (s *Server) dialHosts(ctx context.Context, p *dbPool, db Database, user string, cred serverCred) (*serverConn, error) {
	unchecked := false
	for _, h := range p.hosts.Hosts() {
		unchecked = unchecked || !h.Checked
	}
	if unchecked {
		s.checkHosts(ctx, p, user, cred)
	}
	for {
		host, err := p.hosts.Pick()
		if err != nil {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("database %s: %w", p.key.database, err)
			case <-time.After(hostWaitPoll):
				continue
			}
		}
		d := onHost(db, host)
		sc, err := dialServer(ctx, &d, user, cred, s.options().MaxPacketSize)
		var pgErr *protocol.PgError
		if err == nil || ctx.Err() != nil || errors.As(err, &pgErr) && clientsFault(pgErr.Code) {
			return sc, err
		}
		p.hosts.Failed(host, err, time.Now())
	}
}

// hostWaitPoll is how often a dial that waits for a host in rotation looks.
const hostWaitPoll = 50 * time.Millisecond

// clientsFault reports whether a server's refusal is the client's doing (a
// password, a database that does not exist), not its host's.
func clientsFault(code string) bool {
	return strings.HasPrefix(code, "28") || code == protocol.CodeInvalidCatalogName
}

// hostReport is a host's state for /stats.
func hostReport(h hosts.State) stats.Host {
	r := stats.Host{Host: h.Host, InRotation: h.InRotation, Error: h.Err, LagSeconds: h.Lag.Seconds()}
	switch {
	case !h.Checked:
		r.State = "unchecked"
	case !h.Up:
		r.State = "down"
	case h.InRecovery:
		r.State = "replica"
	default:
		r.State = "primary"
	}
	if h.Lag < 0 {
		r.LagSeconds = -1
	}
	return r
}

// connectTimeout is server_connect_timeout, or 15 s.
func (s *Server) connectTimeout() time.Duration {
	if d := s.options().ServerConnectTimeout; d > 0 {
		return d
	}
	return 15 * time.Second
}
