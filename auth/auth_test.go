package auth

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// TestScramRFC7677 replays the SCRAM-SHA-256 example exchange of RFC 7677
// section 3 (user "user", password "pencil").
func TestScramRFC7677(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	secret, err := NewScramSecret("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	sv := NewScramServer(secret)
	const clientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
	if _, err := sv.First([]byte(clientFirst)); err != nil {
		t.Fatal(err)
	}
	got := string(sv.first("rOprNGfwEbeRWgbNEkqO", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"))
	if want := "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"; got != want {
		t.Fatalf("server-first:\n got %s\nwant %s", got, want)
	}
	final, err := sv.Final([]byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
	if err != nil {
		t.Fatal(err)
	}
	if want := "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="; string(final) != want {
		t.Fatalf("server-final: got %s want %s", final, want)
	}
	// The same exchange with a wrong proof fails as a bad password.
	sv = NewScramServer(secret)
	sv.First([]byte(clientFirst))
	sv.first("rOprNGfwEbeRWgbNEkqO", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
	_, err = sv.Final([]byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong proof: got %v", err)
	}
	// The stored form round-trips.
	back, err := ParseScramSecret(secret.String())
	if err != nil || back.String() != secret.String() {
		t.Fatalf("round trip: %v", err)
	}
}

func TestScramRejects(t *testing.T) {
	secret, _ := NewScramSecret("pw", nil, 4096)
	for _, first := range []string{"", "n", "p=tls-server-end-point,,n=u,r=x", "x,,n=u,r=abc", "n,,n=u", "n,,r=abc", "n,,n=u,r=abc,m=ext"} {
		if _, err := NewScramServer(secret).First([]byte(first)); err == nil {
			t.Errorf("client-first %q accepted", first)
		}
	}
	sv := NewScramServer(secret)
	sv.First([]byte("n,,n=u,r=abc"))
	for _, final := range []string{"", "c=biws,r=abc,p=xx", "c=eSws,r=" + sv.nonce + ",p=AAAA", "c=biws,r=" + sv.nonce + ",p=!!"} {
		if _, err := sv.Final([]byte(final)); err == nil {
			t.Errorf("client-final %q accepted", final)
		}
	}
}

func TestMD5(t *testing.T) {
	secret := MD5Secret("alice", "wonder")
	salt := [4]byte{1, 2, 3, 4}
	resp := MD5Response(secret, salt)
	if !CheckMD5(secret, salt, append([]byte(resp), 0)) {
		t.Fatal("right answer refused")
	}
	if CheckMD5(secret, [4]byte{4, 3, 2, 1}, []byte(resp)) {
		t.Fatal("answer to another salt accepted")
	}
}

func TestParseUserlist(t *testing.T) {
	scram, _ := NewScramSecret("x", nil, 4096)
	in := `; comment
# another
"alice" "plain ""quoted"" pw"
"bob"   "` + MD5Secret("bob", "pw") + `"
"carol" "` + scram.String() + `"
`
	users, err := ParseUserlist(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if a := users["alice"]; a.Plain != `plain "quoted" pw` || a.SCRAM == nil || a.MD5 != MD5Secret("alice", `plain "quoted" pw`) {
		t.Errorf("alice: %+v", a)
	}
	if b := users["bob"]; b.Plain != "" || b.MD5 != MD5Secret("bob", "pw") || b.SCRAM != nil {
		t.Errorf("bob: %+v", b)
	}
	if c := users["carol"]; c.SCRAM == nil || c.SCRAM.String() != scram.String() || c.MD5 != "" {
		t.Errorf("carol: %+v", c)
	}
	for _, bad := range []string{`alice pw`, `"alice"`, `"alice" "pw`, `"carol" "SCRAM-SHA-256$x"`} {
		if _, err := ParseUserlist(strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// exchange runs a whole SCRAM exchange between c and a server holding
// secret, and returns the server (for its ClientKey) and the first error.
func exchange(c *ScramClient, secret *ScramSecret) (*ScramServer, error) {
	sv := NewScramServer(secret)
	first, err := sv.First(c.First())
	if err != nil {
		return sv, err
	}
	final, err := c.Final(first)
	if err != nil {
		return sv, err
	}
	last, err := sv.Final(final)
	if err != nil {
		return sv, err
	}
	return sv, c.Verify(last)
}

// TestScramPassThrough: the ClientKey a client's proof reveals logs in to
// another server with the same verifier, and only to one.
func TestScramPassThrough(t *testing.T) {
	secret, _ := NewScramSecret("pencil", nil, 4096)
	sv, err := exchange(NewScramClient("pencil"), secret)
	if err != nil {
		t.Fatal(err)
	}
	keys := &ScramKeys{ClientKey: sv.ClientKey(), ServerKey: secret.ServerKey}
	if _, err := exchange(NewScramClientKeys(keys), secret); err != nil {
		t.Fatalf("pass-through to the same verifier: %v", err)
	}
	resalted, _ := NewScramSecret("pencil", nil, 4096)
	if _, err := exchange(NewScramClientKeys(keys), resalted); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("pass-through to a verifier with another salt: %v, want ErrAuthFailed", err)
	}
	if _, err := exchange(NewScramClient("wrong"), secret); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: %v", err)
	}
	// A server that does not know the verifier cannot sign.
	c := NewScramClient("pencil")
	sv = NewScramServer(secret)
	first, _ := sv.First(c.First())
	c.Final(first)
	if err := c.Verify([]byte("v=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))); err == nil {
		t.Fatal("a wrong server signature was taken")
	}
}

// TestMockScramSecret: an unknown user's exchange fails as a wrong password
// would, with the same salt each time for the same name.
func TestMockScramSecret(t *testing.T) {
	nonce := []byte("pgmux's secret")
	a, b := MockScramSecret("nobody", nonce), MockScramSecret("nobody", nonce)
	if string(a.Salt) != string(b.Salt) || string(a.Salt) == string(MockScramSecret("other", nonce).Salt) {
		t.Fatal("the mock salt is not a function of the user name")
	}
	if _, err := exchange(NewScramClient(""), a); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("mock exchange: %v, want ErrAuthFailed", err)
	}
}

// TestScramChannelBinding: with SCRAM-SHA-256-PLUS the client's binding
// must be the end point pgmux's certificate gives; a client that says it
// would have bound, had binding been offered, is refused when it was.
func TestScramChannelBinding(t *testing.T) {
	secret, _ := NewScramSecret("pencil", nil, 4096)
	endPoint := []byte("the certificate's hash")
	if m := Mechanisms(endPoint); len(m) != 2 || m[0] != "SCRAM-SHA-256-PLUS" {
		t.Fatalf("mechanisms offered over TLS: %v", m)
	}
	if _, err := NewScramServerFor(secret, "SCRAM-SHA-256-PLUS", nil); err == nil {
		t.Fatal("PLUS chosen where it was not offered")
	}
	final := func(gs2 string, bound []byte) error {
		sv, err := NewScramServerFor(secret, "SCRAM-SHA-256-PLUS", endPoint)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sv.First([]byte(gs2 + "n=,r=abc")); err != nil {
			return err
		}
		c := base64.StdEncoding.EncodeToString(append([]byte(gs2), bound...))
		_, err = sv.Final([]byte("c=" + c + ",r=" + sv.nonce + ",p=" + base64.StdEncoding.EncodeToString(make([]byte, 32))))
		return err
	}
	if err := final("p=tls-server-end-point,,", endPoint); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("the right binding (and a wrong proof): %v, want ErrAuthFailed after the binding passed", err)
	}
	if err := final("p=tls-server-end-point,,", []byte("another certificate's")); err == nil || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("a binding to another certificate: %v", err)
	}
	if err := final("n,,", nil); err == nil {
		t.Fatal("PLUS without binding accepted")
	}
	sv, _ := NewScramServerFor(secret, "SCRAM-SHA-256", endPoint)
	if _, err := sv.First([]byte("y,,n=,r=abc")); err == nil {
		t.Fatal("y (binding not seen offered) accepted where it was")
	}
}
