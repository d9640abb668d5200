package proxy

import (
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/protocol"
)

// The end of a session: the server it holds settled (core.SettleFor plans
// it) or closed, the client told why, the session forgotten.

// finish ends the session: it settles the server it holds (see settle),
// tells the client why it is closed if there is something to say, and
// forgets the session.
func (ss *session) finish(err error) {
	ss.mu.Lock()
	lease := ss.lease
	ss.lease = nil
	ss.stopping = true
	acct, serverDead := ss.Acct, ss.serverDead
	done := ss.readerDone
	ss.mu.Unlock()

	if done != nil {
		if lease != nil {
			// Wake relayServer whether it waits on the server or the client.
			lease.Conn().conn.SetReadDeadline(pastDeadline)
			ss.conn.SetWriteDeadline(pastDeadline)
		}
		<-done
	}
	if lease != nil {
		if !lease.Conn().torn && ss.settle(lease.Conn(), acct) {
			lease.Conn().cancels.Wait()
			releaseLease(lease)
		} else {
			destroyLease(lease)
		}
	}
	if ss.Pinned {
		ss.pool.clientsPinned.Add(-1)
	}
	if ss.lis != nil {
		ss.pool.listen.leave(ss)
	}
	refused := ss.getPhase() == core.PhaseLogin
	ss.setPhase(core.PhaseClosed)
	var pgErr *protocol.PgError
	isPg := err != errQuiet && errors.As(err, &pgErr) // once: errors.As is dear, and every logout comes here
	reason := reasonClient
	switch {
	case isPg && pgErr.Code == protocol.CodeAdminShutdown:
		reason = reasonShutdown
	case isPg:
		reason = reasonError
	case serverDead:
		reason = reasonServer
	}
	ss.srv.metrics.disconnects.WithLabelValues(reason).Inc()
	if isPg {
		if refused {
			// Counted before the client is told: whoever it tells may
			// read the count next.
			ss.srv.metrics.refusals.WithLabelValues(pgErr.Code).Inc()
		}
		wait := time.Second
		if pgErr.Code == protocol.CodeProgramLimitExceeded {
			wait = notifyTellTimeout // behind the notifications it did not read
		}
		ss.conn.SetWriteDeadline(time.Now().Add(wait))
		ss.writer().Reset(ss.sockOut)
		ss.bw.Write(pgErr.AppendTo(nil))
		ss.bw.Flush()
		switch {
		case refused:
			if ok, more := ss.srv.refusalLog.allow(pgErr.Code, time.Now()); ok {
				ss.logger().Info("client refused", zap.String("sqlstate", pgErr.Code), zap.String("reason", pgErr.Message),
					zap.Int("more_since_last", more))
			}
		case pgErr.Code != protocol.CodeAdminShutdown:
			ss.logger().Info("client closed", zap.String("sqlstate", pgErr.Code), zap.String("reason", pgErr.Message))
		}
	}
	ss.putWriter()
	ss.srv.remove(ss)
	if !refused && !isPg && ss.pool != nil && ss.srv.options().LogDisconnections && ss.srv.log.Core().Enabled(zap.InfoLevel) {
		ss.logger().Info("logout", zap.String("reason", reason), zap.Duration("age", time.Since(time.Unix(0, ss.start))))
	} else {
		ss.debug("session closed", zap.Duration("duration", time.Since(time.Unix(0, ss.start))))
	}
}

// settleTimeout bounds how long a server left by its client may take to
// come back to idle before it is closed instead.
const settleTimeout = 5 * time.Second

// settle brings a server whose client has gone back to a clean idle state
// (core.SettleFor plans it), so that it can return to the pool, and reports
// whether it did; if not, the caller closes the server. acct is the
// session's account of sc.
func (ss *session) settle(sc *serverConn, acct core.Account) bool {
	plan := core.SettleFor(acct, sc.rd.InMessage(), sc.CopyIn,
		ss.Mapping && (!ss.PS.Idle() || sc.Prepared.Pending() || sc.psDirty))
	if plan.Close {
		return false
	}
	sc.conn.SetDeadline(time.Now().Add(settleTimeout))
	defer sc.conn.SetDeadline(time.Time{})
	if plan.Cancel {
		// Wait until the postmaster has taken the cancel: then it cannot
		// arrive after the server has gone to another client.
		if err := sc.cancel(time.Second); err != nil {
			return false
		}
	}
	if plan.CopyFail {
		msg, _ := (&pgproto3.CopyFail{Message: "client disconnected"}).Encode(nil)
		sc.bw.Write(msg)
	}
	if plan.Sync {
		sc.bw.Write([]byte{'S', 0, 0, 0, 4})
	}
	if err := sc.bw.Flush(); err != nil {
		return false
	}
	for n := plan.Answers; n > 0; n-- {
		if a, err := sc.answer(false); err != nil || a.Copy { // what is left of the client's results, rows unkept
			return false // a COPY started by a message not yet answered: give up
		}
	}
	rollback, reset := core.SettleDone(sc.TxStatus, ss.mode == ModeSession, ss.LeftState(), ss.srv.options().ServerResetQuery)
	if rollback {
		if _, err := sc.query("ROLLBACK"); err != nil || sc.TxStatus != 'I' {
			return false
		}
	}
	if reset == "" {
		return true
	}
	sc.conn.SetDeadline(time.Now().Add(settleTimeout)) // the reset query's own
	if _, err := sc.query(reset); err != nil || sc.TxStatus != 'I' {
		return false
	}
	sc.forgetSession() // as DISCARD ALL does
	return true
}

// logLimit lets one log line a key through per interval, and counts the
// rest: a flood of refused connections writes a line a second, not one
// each.
type logLimit struct {
	mu    sync.Mutex
	every time.Duration
	keys  map[string]*limited
}

type limited struct {
	last time.Time
	held int // lines held back since last
}

// allow reports whether a line for key may be written at now, and how many
// were held back since the last one.
func (l *logLimit) allow(key string, now time.Time) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = map[string]*limited{}
	}
	k := l.keys[key]
	if k == nil {
		k = &limited{}
		l.keys[key] = k
	}
	if !k.last.IsZero() && now.Sub(k.last) < l.every {
		k.held++
		return false, 0
	}
	held, k.last, k.held = k.held, now, 0
	return true, held
}
