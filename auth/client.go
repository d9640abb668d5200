package auth

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ScramKeys are what proves a user to a server by SCRAM-SHA-256 without
// the password: the ClientKey a client's proof reveals to whoever holds its
// verifier (see ScramServer.ClientKey), and the verifier's ServerKey, to
// check the server's signature. They are good for servers whose verifier
// for the user is the same, salt and iterations included.
type ScramKeys struct {
	ClientKey, ServerKey []byte
}

// ScramClient is the client side of one SCRAM-SHA-256 exchange without
// channel binding, logging in with a password or with ScramKeys. It does no
// I/O: the caller moves the messages.
type ScramClient struct {
	password        string
	keys            *ScramKeys
	clientFirstBare string
	serverSignature []byte
}

// NewScramClient starts an exchange with a password.
func NewScramClient(password string) *ScramClient { return &ScramClient{password: password} }

// NewScramClientKeys starts an exchange with keys, as PgBouncer's SCRAM
// pass-through does.
func NewScramClientKeys(keys *ScramKeys) *ScramClient { return &ScramClient{keys: keys} }

// First returns the client-first-message. The user name is left empty, as
// PostgreSQL takes the startup packet's.
func (c *ScramClient) First() []byte {
	var raw [18]byte
	rand.Read(raw[:])
	c.clientFirstBare = "n=,r=" + base64.StdEncoding.EncodeToString(raw[:])
	return []byte("n,," + c.clientFirstBare)
}

// Final takes the server-first-message and returns the client-final-message.
func (c *ScramClient) Final(serverFirst []byte) ([]byte, error) {
	var nonce, saltS, iterS string
	for _, attr := range strings.Split(string(serverFirst), ",") {
		switch {
		case strings.HasPrefix(attr, "r="):
			nonce = attr[2:]
		case strings.HasPrefix(attr, "s="):
			saltS = attr[2:]
		case strings.HasPrefix(attr, "i="):
			iterS = attr[2:]
		}
	}
	clientNonce := strings.TrimPrefix(c.clientFirstBare, "n=,r=")
	salt, err := base64.StdEncoding.DecodeString(saltS)
	iter, ierr := strconv.Atoi(iterS)
	if !strings.HasPrefix(nonce, clientNonce) || len(nonce) == len(clientNonce) || err != nil || ierr != nil || iter < 1 {
		return nil, errors.New("malformed SCRAM server-first-message")
	}
	keys := c.keys
	if keys == nil {
		salted, err := pbkdf2.Key(sha256.New, c.password, salt, iter, sha256.Size)
		if err != nil {
			return nil, err
		}
		keys = &ScramKeys{ClientKey: hmacSHA256(salted, "Client Key"), ServerKey: hmacSHA256(salted, "Server Key")}
	}
	withoutProof := "c=biws,r=" + nonce // biws: base64 of the gs2 header "n,,"
	authMessage := c.clientFirstBare + "," + string(serverFirst) + "," + withoutProof
	stored := sha256.Sum256(keys.ClientKey)
	sig := hmacSHA256(stored[:], authMessage)
	proof := make([]byte, len(sig))
	for i := range proof {
		proof[i] = keys.ClientKey[i] ^ sig[i]
	}
	c.serverSignature = hmacSHA256(keys.ServerKey, authMessage)
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// Verify checks the server-final-message: the server knew the verifier.
func (c *ScramClient) Verify(serverFinal []byte) error {
	v, ok := strings.CutPrefix(string(serverFinal), "v=")
	if !ok {
		return fmt.Errorf("SCRAM server-final-message: %q", serverFinal)
	}
	sig, err := base64.StdEncoding.DecodeString(v)
	if err != nil || !hmac.Equal(sig, c.serverSignature) {
		return errors.New("the server's SCRAM signature is wrong")
	}
	return nil
}

// MockScramSecret is the verifier an exchange for an unknown user runs
// against, as PostgreSQL's mock authentication does: its salt derived from
// the user name and nonce, a secret of pgmux's, so that a name asked twice
// gets the same salt and an unknown user looks like a known one until the
// proof is refused.
func MockScramSecret(user string, nonce []byte) *ScramSecret {
	m := hmac.New(sha256.New, nonce)
	m.Write([]byte(user))
	salt := m.Sum(nil)[:16]
	return &ScramSecret{Iterations: 4096, Salt: salt, StoredKey: make([]byte, sha256.Size), ServerKey: make([]byte, sha256.Size)}
}
