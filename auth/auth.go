package auth

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Secret is what pgmux knows of a user's password: the password itself, its
// md5 hash as in pg_authid ("md5" + hex), or a SCRAM-SHA-256 verifier.
type Secret struct {
	Plain string       // set for a plain-text password
	MD5   string       // "md5…" hash, set when given or derivable
	SCRAM *ScramSecret // set when given, or derived from Plain
}

// ParseSecret interprets a password as written in an auth file.
func ParseSecret(user, s string) (Secret, error) {
	switch {
	case strings.HasPrefix(s, "SCRAM-SHA-256$"):
		sc, err := ParseScramSecret(s)
		if err != nil {
			return Secret{}, err
		}
		return Secret{SCRAM: sc}, nil
	case len(s) == 35 && strings.HasPrefix(s, "md5") && isHex(s[3:]):
		return Secret{MD5: s}, nil
	default:
		sc, err := NewScramSecret(s, nil, 4096)
		if err != nil {
			return Secret{}, err
		}
		return Secret{Plain: s, MD5: MD5Secret(user, s), SCRAM: sc}, nil
	}
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// ParseUserlist reads a PgBouncer-style userlist.txt: one `"user" "secret"`
// per line, with "" standing for a literal quote inside a field, and lines
// starting with ';' or '#' ignored.
func ParseUserlist(r io.Reader) (map[string]Secret, error) {
	users := make(map[string]Secret)
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == ';' || text[0] == '#' {
			continue
		}
		fields, err := quotedFields(text)
		if err != nil || len(fields) < 2 {
			return nil, fmt.Errorf("line %d: want \"user\" \"password\"", line)
		}
		s, err := ParseSecret(fields[0], fields[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: user %q: %w", line, fields[0], err)
		}
		users[fields[0]] = s
	}
	return users, sc.Err()
}

func quotedFields(s string) ([]string, error) {
	var out []string
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return out, nil
		}
		if s[0] != '"' {
			return nil, errors.New("field not quoted")
		}
		var b strings.Builder
		i := 1
		for {
			if i >= len(s) {
				return nil, errors.New("unterminated quote")
			}
			if s[i] == '"' {
				if i+1 < len(s) && s[i+1] == '"' {
					b.WriteByte('"')
					i += 2
					continue
				}
				i++
				break
			}
			b.WriteByte(s[i])
			i++
		}
		out = append(out, b.String())
		s = s[i:]
	}
}

// MD5Secret returns the pg_authid form of an md5 password: "md5" + md5(password + user).
func MD5Secret(user, password string) string {
	sum := md5.Sum([]byte(password + user))
	return "md5" + hex.EncodeToString(sum[:])
}

// MD5Response returns what a client sends in answer to AuthenticationMD5Password
// with salt, given the stored md5 secret.
func MD5Response(md5Secret string, salt [4]byte) string {
	h := md5.New()
	h.Write([]byte(md5Secret[3:]))
	h.Write(salt[:])
	return "md5" + hex.EncodeToString(h.Sum(nil))
}

// CheckMD5 reports whether a client's PasswordMessage body answers the salt
// for the stored md5 secret.
func CheckMD5(md5Secret string, salt [4]byte, response []byte) bool {
	response = bytes.TrimSuffix(response, []byte{0})
	want := MD5Response(md5Secret, salt)
	return subtle.ConstantTimeCompare([]byte(want), response) == 1
}

// ScramSecret is a SCRAM-SHA-256 verifier as stored in pg_authid.
type ScramSecret struct {
	Iterations int
	Salt       []byte
	StoredKey  []byte
	ServerKey  []byte
}

// ParseScramSecret parses "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>".
func ParseScramSecret(s string) (*ScramSecret, error) {
	bad := errors.New("invalid SCRAM-SHA-256 secret")
	rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !ok {
		return nil, bad
	}
	iterSalt, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return nil, bad
	}
	iterS, saltS, ok1 := strings.Cut(iterSalt, ":")
	storedS, serverS, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return nil, bad
	}
	iter, err := strconv.Atoi(iterS)
	if err != nil || iter < 1 {
		return nil, bad
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltS)
	stored, err2 := base64.StdEncoding.DecodeString(storedS)
	server, err3 := base64.StdEncoding.DecodeString(serverS)
	if err1 != nil || err2 != nil || err3 != nil || len(stored) != sha256.Size || len(server) != sha256.Size {
		return nil, bad
	}
	return &ScramSecret{Iterations: iter, Salt: salt, StoredKey: stored, ServerKey: server}, nil
}

// NewScramSecret derives a verifier from a password. A nil salt is replaced
// by 16 random bytes. The password is used as given (no SASLprep), which is
// what PostgreSQL does for ASCII passwords.
func NewScramSecret(password string, salt []byte, iterations int) (*ScramSecret, error) {
	if salt == nil {
		salt = make([]byte, 16)
		rand.Read(salt)
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return nil, err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	return &ScramSecret{
		Iterations: iterations,
		Salt:       salt,
		StoredKey:  stored[:],
		ServerKey:  hmacSHA256(salted, "Server Key"),
	}, nil
}

// String returns the pg_authid form of the verifier.
func (s *ScramSecret) String() string {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", s.Iterations, b64(s.Salt), b64(s.StoredKey), b64(s.ServerKey))
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// ErrAuthFailed is returned by ScramServer.Final for a wrong password.
var ErrAuthFailed = errors.New("password authentication failed")

// ScramServer is the server side of one SCRAM-SHA-256 exchange (RFC 5802,
// RFC 7677), with channel binding tls-server-end-point (RFC 5929) when the
// client chose SCRAM-SHA-256-PLUS. It does no I/O: the caller moves the
// messages.
type ScramServer struct {
	secret          *ScramSecret
	cbindData       []byte // the TLS server end point, when offered
	plus            bool   // the client chose SCRAM-SHA-256-PLUS
	gs2Header       string
	clientFirstBare string
	serverFirst     string
	nonce           string
	clientKey       []byte
}

// ClientKey is what the client's proof revealed, after a Final that
// succeeded: with the verifier's ServerKey, it logs in to a server that has
// the same verifier (ScramKeys).
func (s *ScramServer) ClientKey() []byte { return s.clientKey }

// NewScramServer starts an exchange against secret.
func NewScramServer(secret *ScramSecret) *ScramServer { return &ScramServer{secret: secret} }

// Mechanisms are the SASL mechanisms to offer: with cbindData (the hash of
// the TLS certificate, see tlsconf.EndPoint) SCRAM-SHA-256-PLUS first.
func Mechanisms(cbindData []byte) []string {
	if cbindData != nil {
		return []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}
	}
	return []string{"SCRAM-SHA-256"}
}

// NewScramServerFor starts an exchange against secret for the mechanism the
// client chose among Mechanisms(cbindData).
func NewScramServerFor(secret *ScramSecret, mechanism string, cbindData []byte) (*ScramServer, error) {
	switch mechanism {
	case "SCRAM-SHA-256":
		return &ScramServer{secret: secret, cbindData: cbindData}, nil
	case "SCRAM-SHA-256-PLUS":
		if cbindData != nil {
			return &ScramServer{secret: secret, cbindData: cbindData, plus: true}, nil
		}
	}
	return nil, errors.New("client selected an invalid SASL authentication mechanism")
}

// First takes the client-first-message and returns the server-first-message.
func (s *ScramServer) First(clientFirst []byte) ([]byte, error) {
	msg := string(clientFirst)
	// gs2-header: cbind-flag "," [authzid] ","
	flag, rest, ok := strings.Cut(msg, ",")
	if !ok {
		return nil, errors.New("malformed SCRAM client-first-message")
	}
	switch {
	case s.plus && flag != "p=tls-server-end-point":
		return nil, errors.New("SCRAM-SHA-256-PLUS needs channel binding tls-server-end-point")
	case s.plus:
	case flag == "y" && s.cbindData != nil:
		// The client would have bound the channel, had it seen the
		// offer: someone between took it away.
		return nil, errors.New("SCRAM channel binding negotiation error")
	case flag == "n" || flag == "y":
	case strings.HasPrefix(flag, "p="):
		return nil, errors.New("SCRAM channel binding was not offered")
	default:
		return nil, errors.New("malformed SCRAM client-first-message")
	}
	authzid, bare, ok := strings.Cut(rest, ",")
	if !ok || (authzid != "" && !strings.HasPrefix(authzid, "a=")) {
		return nil, errors.New("malformed SCRAM client-first-message")
	}
	s.gs2Header = msg[:len(msg)-len(bare)]
	s.clientFirstBare = bare
	var clientNonce string
	for _, attr := range strings.Split(bare, ",") {
		if v, ok := strings.CutPrefix(attr, "r="); ok {
			clientNonce = v
		}
		if strings.HasPrefix(attr, "m=") {
			return nil, errors.New("SCRAM extensions are not supported")
		}
	}
	if clientNonce == "" || !strings.HasPrefix(bare, "n=") {
		return nil, errors.New("malformed SCRAM client-first-message")
	}
	var raw [18]byte
	rand.Read(raw[:])
	return s.first(clientNonce, base64.StdEncoding.EncodeToString(raw[:])), nil
}

// first completes First with the server's part of the nonce.
func (s *ScramServer) first(clientNonce, serverNonce string) []byte {
	s.nonce = clientNonce + serverNonce
	s.serverFirst = fmt.Sprintf("r=%s,s=%s,i=%d", s.nonce, base64.StdEncoding.EncodeToString(s.secret.Salt), s.secret.Iterations)
	return []byte(s.serverFirst)
}

// Final takes the client-final-message and returns the server-final-message,
// or ErrAuthFailed when the proof does not match.
func (s *ScramServer) Final(clientFinal []byte) ([]byte, error) {
	msg := string(clientFinal)
	withoutProof, proofS, ok := strings.Cut(msg, ",p=")
	if !ok {
		return nil, errors.New("malformed SCRAM client-final-message")
	}
	var cbind, nonce string
	for _, attr := range strings.Split(withoutProof, ",") {
		switch {
		case strings.HasPrefix(attr, "c="):
			cbind = attr[2:]
		case strings.HasPrefix(attr, "r="):
			nonce = attr[2:]
		}
	}
	want := []byte(s.gs2Header)
	if s.plus {
		want = append(want, s.cbindData...)
	}
	if cbind != base64.StdEncoding.EncodeToString(want) {
		return nil, errors.New("SCRAM channel binding check failed")
	}
	if nonce != s.nonce {
		return nil, errors.New("SCRAM nonce mismatch")
	}
	proof, err := base64.StdEncoding.DecodeString(proofS)
	if err != nil || len(proof) != sha256.Size {
		return nil, errors.New("malformed SCRAM proof")
	}
	authMessage := s.clientFirstBare + "," + s.serverFirst + "," + withoutProof
	clientSig := hmacSHA256(s.secret.StoredKey, authMessage)
	clientKey := make([]byte, sha256.Size)
	for i := range clientKey {
		clientKey[i] = proof[i] ^ clientSig[i]
	}
	got := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(got[:], s.secret.StoredKey) != 1 {
		return nil, ErrAuthFailed
	}
	s.clientKey = clientKey
	serverSig := hmacSHA256(s.secret.ServerKey, authMessage)
	return []byte("v=" + base64.StdEncoding.EncodeToString(serverSig)), nil
}
