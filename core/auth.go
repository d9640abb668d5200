package core

import (
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/protocol"
)

// ClientAuth is a client's authentication after its StartupMessage, as its
// method (auth_type, or the one auth_hba_file's line for it names) says:
// what pgmux sends and what it makes of each answer (package auth checks
// the answers). The driver finds the user's secret when NeedsSecret says
// so, writes each step's Out, and reads the client's next message while the
// step is neither Done nor failed.
//
// An unknown user goes through a whole exchange against a mock secret
// before 28P01, as with PostgreSQL, so that user names cannot be probed.
type ClientAuth struct {
	AuthFor
	secret auth.Secret
	known  bool
	salt   [4]byte // md5's
	scram  *auth.ScramServer
	keys   *auth.ScramKeys // what the client's SCRAM proof revealed
	turn   int8            // answers taken
}

// AuthFor is what a client's authentication is decided from.
type AuthFor struct {
	Method    string // "trust" (or empty), "cert", "md5", "scram-sha-256" or "reject"
	User      string
	Database  string
	Host      string // the client's address, "invalid IP" on a Unix socket
	TLS       bool
	CertNames bool   // cert: the client's verified certificate names User
	CBind     []byte // SCRAM channel binding: the end point of the TLS certificate the client was shown, if any
	MockNonce []byte // the seed of an unknown user's mock SCRAM secret (auth.MockScramSecret)
}

// AuthStep is what to do after a step of a client's authentication.
type AuthStep struct {
	Out  []byte // for the client, before anything else is read
	Done bool   // authenticated: Out ends with AuthenticationOk
	Err  error  // refused: the client is told Err and closed
	Warn string // a misconfiguration to log, not for the client
}

// AuthOK is AuthenticationOk.
var AuthOK = []byte{'R', 0, 0, 0, 8, 0, 0, 0, 0}

// mockMD5 is the md5 secret an unknown user's answer is checked against:
// no password hashes to it.
const mockMD5 = "md5" + "00000000000000000000000000000000"

// NewClientAuth starts authenticating a client as f says.
func NewClientAuth(f AuthFor) *ClientAuth { return &ClientAuth{AuthFor: f} }

// NeedsSecret reports whether the method checks a password, so that the
// driver must find the user's secret before Begin.
func (a *ClientAuth) NeedsSecret() bool {
	return a.Method == "md5" || a.Method == "scram-sha-256"
}

// Begin starts the exchange with the user's secret, where NeedsSecret asked
// for it (known: the auth file or auth_query has one).
func (a *ClientAuth) Begin(secret auth.Secret, known bool) AuthStep {
	a.secret, a.known = secret, known
	switch a.Method {
	case "trust", "":
		return AuthStep{Out: AuthOK, Done: true}
	case "cert":
		// The client's certificate, verified in the handshake against
		// client_tls_ca_file, names the user, as PostgreSQL's cert method.
		if !a.CertNames {
			return AuthStep{Err: protocol.Fatal(protocol.CodeInvalidAuthorization, fmt.Sprintf("certificate authentication failed for user %q", a.User))}
		}
		return AuthStep{Out: AuthOK, Done: true}
	case "reject":
		return AuthStep{Err: protocol.Fatal(protocol.CodeInvalidAuthorization, fmt.Sprintf(
			"auth_hba_file rejects connection for host %q, user %q, database %q, TLS %v", a.Host, a.User, a.Database, a.TLS))}
	case "md5", "scram-sha-256":
	default:
		return AuthStep{Err: protocol.Fatal(protocol.CodeInternalError, "unknown auth_type")}
	}
	if a.md5() {
		rand.Read(a.salt[:])
		msg, _ := (&pgproto3.AuthenticationMD5Password{Salt: a.salt}).Encode(nil)
		return AuthStep{Out: msg}
	}
	// As PostgreSQL does, a SCRAM secret gets SCRAM even under md5.
	var st AuthStep
	if known && secret.SCRAM == nil {
		st.Warn = "the secret for this user is md5; scram-sha-256 needs the password or a SCRAM secret"
	}
	st.Out, _ = (&pgproto3.AuthenticationSASL{AuthMechanisms: auth.Mechanisms(a.CBind)}).Encode(nil)
	return st
}

// md5 reports whether the exchange is md5's: the method's, for a user with
// an md5 secret or unknown.
func (a *ClientAuth) md5() bool {
	return a.Method == "md5" && (!a.known || a.secret.MD5 != "")
}

// Header checks the header of the client's next message, before its body is
// read: a password response (SASL's share its type) of a sensible size.
func (a *ClientAuth) Header(typ byte, n int) error {
	if typ != 'p' {
		return protocol.Fatal(protocol.CodeProtocolViolation, fmt.Sprintf("expected password response, got message type %q", typ))
	}
	if n > protocol.MaxStartupPacketLen {
		return protocol.Fatal(protocol.CodeProtocolViolation, "password response too long")
	}
	return nil
}

// Answer takes the body of the client's answer and returns the next step.
func (a *ClientAuth) Answer(body []byte) AuthStep {
	failed := protocol.Fatal(protocol.CodeInvalidPassword, fmt.Sprintf("password authentication failed for user %q", a.User))
	a.turn++
	if a.md5() {
		secret := a.secret.MD5
		if !a.known {
			secret = mockMD5 // fails: no answer matches
		}
		if !auth.CheckMD5(secret, a.salt, body) {
			return AuthStep{Err: failed}
		}
		return AuthStep{Out: AuthOK, Done: true}
	}
	violation := func(err error) AuthStep {
		return AuthStep{Err: protocol.Fatal(protocol.CodeProtocolViolation, err.Error())}
	}
	if a.turn == 1 {
		var initial pgproto3.SASLInitialResponse
		if err := initial.Decode(body); err != nil {
			return violation(errors.New("malformed SASL initial response"))
		}
		secret := a.secret.SCRAM
		if secret == nil {
			secret = auth.MockScramSecret(a.User, a.MockNonce)
		}
		sv, err := auth.NewScramServerFor(secret, initial.AuthMechanism, a.CBind)
		if err != nil {
			return violation(err)
		}
		first, err := sv.First(initial.Data)
		if err != nil {
			return violation(err)
		}
		a.scram = sv
		msg, _ := (&pgproto3.AuthenticationSASLContinue{Data: first}).Encode(nil)
		return AuthStep{Out: msg}
	}
	if a.scram == nil || a.turn > 2 {
		return violation(errors.New("SASL response out of turn"))
	}
	final, err := a.scram.Final(body)
	switch {
	case errors.Is(err, auth.ErrAuthFailed):
		return AuthStep{Err: failed}
	case err != nil:
		return violation(err)
	case !a.known || a.secret.SCRAM == nil:
		return AuthStep{Err: failed} // never: a mock secret matches no proof
	}
	a.keys = &auth.ScramKeys{ClientKey: a.scram.ClientKey(), ServerKey: a.secret.SCRAM.ServerKey}
	msg, _ := (&pgproto3.AuthenticationSASLFinal{Data: final}).Encode(nil)
	return AuthStep{Out: append(msg, AuthOK...), Done: true}
}

// Proved is what the client's SCRAM proof revealed, after an exchange that
// succeeded: the keys that log in to a server as the same user.
func (a *ClientAuth) Proved() *auth.ScramKeys { return a.keys }
