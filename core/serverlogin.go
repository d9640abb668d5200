package core

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/auth"
	"github.com/pgmux/pgmux/protocol"
)

// ServerCred is how pgmux proves a user to a server: a password, else an
// md5 hash (md5 pass-through), else SCRAM keys (SCRAM pass-through).
type ServerCred struct {
	Password string
	MD5      string
	Keys     *auth.ScramKeys
}

// ServerLogin is pgmux's login to a server as User of Database: the startup
// packet, the answers to whatever authentication the server asks for, and
// what it tells of itself up to its first ReadyForQuery. pgmux logs in
// itself rather than through pgconn so that it can prove a user with the
// keys a client's SCRAM proof revealed (pass-through, as PgBouncer). The
// driver writes Startup, then each answer Take returns, until Take says the
// login is done.
type ServerLogin struct {
	User, Database string
	Cred           ServerCred
	PID            uint32 // BackendKeyData's, for cancels
	Key            []byte
	params         map[string]string
	scram          *auth.ScramClient
}

// errNoPassword is a server login that needs a secret pgmux has not got.
var errNoPassword = errors.New("the server asks for a password and pgmux has none for this user: " +
	"give one in auth_file or the database's password, or a SCRAM secret its clients log in with")

// Startup is the StartupMessage that opens the login.
func (l *ServerLogin) Startup() []byte {
	var b []byte
	for _, kv := range [][2]string{{"user", l.User}, {"database", l.Database}} {
		b = append(append(append(append(b, kv[0]...), 0), kv[1]...), 0)
	}
	return protocol.AppendStartupPacket(nil, 196608, append(b, 0))
}

// Take takes the server's next message and returns what to answer it, if
// anything, and whether the login is over. A server's ErrorResponse is err.
func (l *ServerLogin) Take(typ byte, body []byte) (out []byte, done bool, err error) {
	switch typ {
	case 'R':
		out, err = l.answer(body)
	case 'S':
		if name, value, ok := strings.Cut(strings.TrimSuffix(string(body), "\x00"), "\x00"); ok {
			if l.params == nil {
				l.params = map[string]string{}
			}
			l.params[name] = value
		}
	case 'K':
		if len(body) >= 8 {
			l.PID, l.Key = binary.BigEndian.Uint32(body), slices.Clone(body[4:])
		}
	case 'E':
		err = protocol.DecodeError(body)
	case 'Z':
		done = true
	}
	return out, done, err
}

// Server is the server as the login left it: idle, with the settings it
// reported.
func (l *ServerLogin) Server() Server {
	return Server{TxStatus: 'I', Settings: NewServerSettings(l.params)}
}

// answer answers an authentication request (the body of an 'R' message).
func (l *ServerLogin) answer(body []byte) ([]byte, error) {
	if len(body) < 4 {
		return nil, errors.New("malformed authentication request")
	}
	var msg pgproto3.FrontendMessage
	c := l.Cred
	switch code := binary.BigEndian.Uint32(body); code {
	case 0: // AuthenticationOk
		return nil, nil
	case 3: // cleartext password
		if c.Password == "" {
			return nil, errNoPassword
		}
		msg = &pgproto3.PasswordMessage{Password: c.Password}
	case 5: // md5
		secret := c.MD5
		if c.Password != "" {
			secret = auth.MD5Secret(l.User, c.Password)
		}
		if secret == "" || len(body) < 8 {
			return nil, errNoPassword
		}
		msg = &pgproto3.PasswordMessage{Password: auth.MD5Response(secret, [4]byte(body[4:8]))}
	case 10: // SASL
		var a pgproto3.AuthenticationSASL
		if err := a.Decode(body); err != nil || !slices.Contains(a.AuthMechanisms, "SCRAM-SHA-256") {
			return nil, fmt.Errorf("the server offers no SASL mechanism pgmux knows: %v", a.AuthMechanisms)
		}
		switch {
		case c.Password != "":
			l.scram = auth.NewScramClient(c.Password)
		case c.Keys != nil:
			l.scram = auth.NewScramClientKeys(c.Keys)
		default:
			return nil, errNoPassword
		}
		msg = &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: l.scram.First()}
	case 11: // SASL continue
		if l.scram == nil {
			return nil, errors.New("SASL continue out of turn")
		}
		final, err := l.scram.Final(body[4:])
		if err != nil {
			return nil, err
		}
		msg = &pgproto3.SASLResponse{Data: final}
	case 12: // SASL final
		if l.scram == nil {
			return nil, errors.New("SASL final out of turn")
		}
		return nil, l.scram.Verify(body[4:])
	default:
		return nil, fmt.Errorf("the server asks for authentication pgmux does not speak (code %d)", code)
	}
	return msg.Encode(nil)
}

// ServerEncryption is what the server's one-byte answer to pgmux's
// SSLRequest means: whether to go on with TLS, or in plain text on the same
// connection, or neither when server_tls_sslmode requires TLS (required).
func ServerEncryption(answer byte, required bool) (useTLS bool, err error) {
	switch {
	case answer == 'S':
		return true, nil
	case answer == 'N' && !required:
		return false, nil
	case answer == 'N':
		return false, errors.New("the server refused TLS, which server_tls_sslmode requires")
	}
	return false, fmt.Errorf("unexpected answer %q to SSLRequest", answer)
}
