package proxy

import (
	"cmp"
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/pgmux/pgmux/console"
	"github.com/pgmux/pgmux/core"
	"github.com/pgmux/pgmux/pool"
	"github.com/pgmux/pgmux/protocol"
	"github.com/pgmux/pgmux/tlsconf"
)

// Login: the startup packet read (core.ParseStartup), the client
// authenticated as auth_type says (package auth checks the answers), and
// the server's settings shown to the client as its own make them.

// login runs the startup and authentication phase, up to the client's first
// ReadyForQuery.
func (ss *session) login() error {
	ss.writer()
	loginBy := time.Time{}
	if t := ss.srv.options().ClientLoginTimeout; t > 0 {
		loginBy = time.Unix(0, ss.start).Add(t)
	}
	if silent := time.Unix(0, ss.start).Add(startupSilence); loginBy.IsZero() || silent.Before(loginBy) {
		ss.conn.SetDeadline(silent) // a socket that says nothing goes soon
	} else {
		ss.conn.SetDeadline(loginBy)
	}
	tlsOn := ss.srv.options().ClientTLS
	if tlsOn != nil && tlsOn.Mode == tlsconf.Disable {
		tlsOn = nil
	}
	if first, err := ss.rd.Peek(1); err != nil {
		return clientReadError(err, "client_login_timeout")
	} else if first[0] == tlsRecord {
		if tlsOn == nil {
			return errQuiet // TLS, which is off: nothing to say it in
		}
		pre := append([]byte(nil), ss.rd.BufferedBytes()...)
		ss.rd.Discard(len(pre))
		if err := ss.startTLS(tlsOn.Config, pre, true); err != nil {
			ss.debug("TLS handshake failed", zap.Error(err))
			return errQuiet
		}
	}
	var st *protocol.Startup
	for tries := 0; ; tries++ {
		var err error
		st, err = protocol.ReadStartup(ss.rd)
		if err != nil {
			return clientReadError(err, "client_login_timeout")
		}
		if tries == 0 {
			ss.conn.SetDeadline(loginBy)
		}
		if st.Kind != protocol.KindSSLRequest && st.Kind != protocol.KindGSSENCRequest {
			break
		}
		enc, err := core.AnswerEncryption(st.Kind == protocol.KindSSLRequest, tries, tlsOn != nil, ss.tls, ss.rd.Buffered() > 0)
		if err != nil {
			return err
		}
		if enc == core.EncryptTLS {
			if _, err := ss.sock.Write([]byte{'S'}); err != nil {
				return errQuiet
			}
			if err := ss.startTLS(tlsOn.Config, nil, false); err != nil {
				ss.debug("TLS handshake failed", zap.Error(err))
				return errQuiet
			}
			continue
		}
		if _, err := ss.sock.Write([]byte{'N'}); err != nil {
			return errQuiet
		}
	}
	if st.Kind == protocol.KindCancelRequest {
		ss.srv.cancel(st.ProcessID, st.SecretKey)
		return errQuiet
	}
	var cbind []byte // SCRAM's channel binding: the end point of the certificate the client was shown
	if ss.tls && len(tlsOn.Config.Certificates) > 0 {
		cbind = tlsconf.EndPoint(tlsOn.Config.Certificates[0].Certificate[0])
	}
	o := ss.srv.options()
	ss.counted = true
	ss.srv.prelogin.Add(-1)
	adm := core.Gate{Secure: ss.tls || ss.onUnixSocket(), OverLimit: ss.srv.loggedIn.Add(1) > int64(o.MaxClientConn)}
	if tlsOn.Required() {
		adm.TLSRequired = tlsOn.Mode.String()
	}
	lg, err := core.ParseStartup(st)
	isConsole := console.IsDatabase(lg.Database)
	db, known := o.Databases(lg.Database)
	adm.Known = known || isConsole
	if err == nil && known && !isConsole {
		ss.dbc = ss.srv.control(lg.Database)
		adm.Disabled = ss.dbc.disabled.Load()
	}
	out, err := adm.Check(lg, err)
	ss.bw.Write(out)
	if err != nil {
		return err
	}
	host := ""
	if o.AppNameAddHost {
		host = ss.conn.RemoteAddr().String()
	}
	lg.Adjust(o.IgnoreStartupParameters, host)
	user, dbName, want := lg.User, lg.Database, lg.Settings
	if isConsole {
		ss.user = user
		return ss.console(user, dbName, cbind)
	}
	ss.user, ss.dbName, ss.Want = user, dbName, core.NewWanted(want)
	ss.appName = want["application_name"]
	proved, err := ss.authenticate(user, dbName, cbind)
	if err != nil {
		return err
	}
	backendUser := cmp.Or(db.User, user)
	db, _ = ss.srv.options().forUser(db, backendUser)
	cred := credFor(ss.srv.options(), db, backendUser)
	ss.mode = db.PoolMode
	ss.Pooled = ss.mode == ModeTransaction
	ss.NoLook = ss.srv.options().NoSessionStateLook
	if ss.mode == ModeTransaction && ss.srv.options().MaxPreparedStatements > 0 {
		ss.Mapping = true
	}
	ss.pool, err = ss.srv.poolFor(dbName, db, backendUser, cred)
	if err != nil {
		return protocol.Fatal(protocol.CodeCannotConnectNow, "pgmux is shutting down")
	}
	if backendUser == user && cred.Password == "" && cred.MD5 == "" && proved != nil {
		ss.pool.learned.Store(proved) // the servers are logged in to as the client proved itself
	}
	ss.statsPool.Store(ss.pool)
	ss.PS.Counters = &ss.pool.ps // per pool, for SHOW STATS
	params, err := ss.serverParams()
	if err != nil {
		return err
	}
	var lease *pool.Lease[*serverConn]
	if ss.mode == ModeSession {
		if lease, err = ss.acquireSynced(ss.ctx); err != nil {
			return err
		}
	}
	var sc *serverConn
	if lease != nil {
		sc = lease.Conn()
	}
	ss.startTrace() // after a session-mode login's wait, which is no transaction's
	ss.srv.register(ss, sc)
	// Into the writer's buffer: no array made for it.
	buf := core.Welcome(ss.bw.AvailableBuffer(), params, &ss.Want, ss.pid, ss.secret)
	ss.bw.Write(buf)
	if err := ss.bw.Flush(); err != nil {
		if lease != nil {
			releaseLease(lease)
		}
		return errQuiet
	}
	ss.conn.SetDeadline(time.Time{})
	ss.setPhase(core.PhaseIdle)
	if lease != nil {
		ss.attach(lease) // from now on relayServer owns the client's writer
	} else {
		ss.putWriter()
	}
	ss.mu.Lock()
	ss.armDeadlineLocked()
	ss.mu.Unlock()
	if ss.srv.options().LogConnections && ss.srv.log.Core().Enabled(zap.InfoLevel) { // the logger is dear to build
		ss.logger().Info("login", zap.String("pool_mode", ss.mode), zap.Bool("tls", ss.tls))
	} else {
		ss.debug("session opened", zap.String("pool_mode", ss.mode))
	}
	return nil
}

// authenticate authenticates the client as core.ClientAuth decides, with
// the user's secret from the auth file or else auth_query's, and returns
// what the client proved that logs in to a server as the same user (SCRAM
// keys, or auth_query's md5 secret), if anything.
func (ss *session) authenticate(user, dbName string, cbind []byte) (*serverCred, error) {
	o := ss.srv.options()
	f := core.AuthFor{Method: o.AuthType, User: user, Database: dbName, TLS: ss.tls, CBind: cbind, MockNonce: ss.srv.mockNonce[:]}
	if f.Method == "hba" {
		addr := netip.Addr{}
		if ta, ok := ss.conn.RemoteAddr().(*net.TCPAddr); ok {
			addr = ta.AddrPort().Addr()
		}
		var line int
		f.Method, line = o.HBA.Method(dbName, user, addr, ss.tls, ss.onUnixSocket())
		f.Host = addr.String()
		if f.Method == "reject" {
			ss.debug("auth_hba_file rejects", zap.Int("line", line))
		}
	}
	f.CertNames = f.Method == "cert" && ss.certNames(user)
	a := core.NewClientAuth(f)
	secret, known := o.Users[user]
	var proved *serverCred
	if queryDB := cmp.Or(o.AuthDBName, dbName); a.NeedsSecret() && !known && o.AuthQuery != "" && !console.IsDatabase(queryDB) {
		var err error
		if secret, known, err = ss.srv.authQuery(ss.ctx, user, queryDB); err != nil {
			ss.logger().Warn("auth_query failed", zap.Error(err))
			return nil, protocol.Fatal(protocol.CodeConnectionFailure, "auth_query failed")
		}
		if known && secret.MD5 != "" {
			proved = &serverCred{MD5: secret.MD5}
		}
	}
	for st := a.Begin(secret, known); ; {
		if st.Warn != "" {
			ss.logger().Error(st.Warn)
		}
		ss.bw.Write(st.Out)
		switch {
		case st.Err != nil:
			return nil, st.Err
		case st.Done:
			if keys := a.Proved(); keys != nil {
				proved = &serverCred{Keys: keys}
			}
			return proved, nil
		}
		if err := ss.bw.Flush(); err != nil {
			return nil, errQuiet
		}
		typ, n, err := ss.rd.Next()
		if err != nil {
			return nil, clientReadError(err, "client_login_timeout")
		}
		if err := a.Header(typ, n); err != nil {
			return nil, err
		}
		body, err := ss.rd.Body(n)
		if err != nil {
			return nil, clientReadError(err, "client_login_timeout")
		}
		st = a.Answer(body)
	}
}

// credFor is how the pool for db logs in to its servers as user: the
// database's password, else the auth file's secret for user.
func credFor(o *Options, db Database, user string) serverCred {
	if db.Password != "" {
		return serverCred{Password: db.Password}
	}
	s := o.Users[user]
	return serverCred{Password: s.Plain, MD5: s.MD5}
}

// serverParams returns the parameters a server of the session's pool reports
// at its start, by name, connecting once per pool to learn them. Kept sorted,
// they are not sorted again at every login.
func (ss *session) serverParams() ([]core.Param, error) {
	p := ss.pool
	p.mu.Lock()
	params := p.params
	p.mu.Unlock()
	if params != nil {
		return params, nil
	}
	// Any server will do, as it is: its settings as at connect are known
	// without a word to it.
	lease, err := ss.take(ss.ctx, ss.acquireFrom())
	if err != nil {
		return nil, err
	}
	sc := lease.Conn()
	params = sc.Settings.Params()
	releaseLease(lease)
	p.mu.Lock()
	p.params = params
	p.mu.Unlock()
	return params, nil
}
