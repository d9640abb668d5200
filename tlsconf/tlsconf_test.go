package tlsconf

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"

	"github.com/pgmux/pgmux/internal/testcert"
)

func TestProtocols(t *testing.T) {
	for _, c := range []struct {
		in       string
		min, max uint16
		bad      bool
	}{
		{"", tls.VersionTLS12, tls.VersionTLS13, false},
		{"secure", tls.VersionTLS12, tls.VersionTLS13, false},
		{"all", tls.VersionTLS10, tls.VersionTLS13, false},
		{"tlsv1.3", tls.VersionTLS13, tls.VersionTLS13, false},
		{"tlsv1.1,tlsv1.2", tls.VersionTLS11, tls.VersionTLS12, false},
		{"sslv3", 0, 0, true},
	} {
		min, max, err := Protocols(c.in)
		if (err != nil) != c.bad || min != c.min || max != c.max {
			t.Errorf("Protocols(%q) = %x, %x, %v", c.in, min, max, err)
		}
	}
}

func TestCiphers(t *testing.T) {
	if ids, err := Ciphers("secure"); ids != nil || err != nil {
		t.Errorf("secure: %v %v, want Go's default", ids, err)
	}
	ids, err := Ciphers("ECDHE-RSA-AES128-GCM-SHA256:TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")
	if err != nil || len(ids) != 2 || ids[0] != tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 || ids[1] != tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 {
		t.Errorf("two suites: %v %v", ids, err)
	}
	if _, err := Ciphers("HIGH:!aNULL"); err == nil {
		t.Error("an OpenSSL expression was taken")
	}
}

// TestSettingsErrors: every bad setting is refused with its key named.
func TestSettingsErrors(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("srv", "localhost", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		s    Settings
		want string
	}{
		{Settings{Key: "client_tls", Mode: "required"}, "client_tls_sslmode"},
		{Settings{Key: "client_tls", Mode: "require"}, "client_tls_cert_file"},
		{Settings{Key: "client_tls", Mode: "require", CertFile: dir + "/none.crt", KeyFile: pair.KeyFile}, "client_tls_cert_file"},
		{Settings{Key: "client_tls", Mode: "verify-ca", CertFile: pair.CertFile, KeyFile: pair.KeyFile}, "client_tls_ca_file"},
		{Settings{Key: "client_tls", Mode: "require", CertFile: pair.CertFile, KeyFile: pair.KeyFile, Protocols: "tlsv9"}, "client_tls_protocols"},
		{Settings{Key: "server_tls", Mode: "verify-full", CAFile: pair.KeyFile}, "server_tls_ca_file"},
		{Settings{Key: "server_tls", Mode: "require", CertFile: pair.CertFile}, "server_tls_cert_file"},
		{Settings{Key: "server_tls", Mode: "prefer", Ciphers: "RC4"}, "server_tls_ciphers"},
	} {
		var err error
		if strings.HasPrefix(c.s.Key, "client") {
			_, err = ForClients(c.s)
		} else {
			_, err = ForServers(c.s)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %s", c.s, err, c.want)
		}
	}
}

// TestServerVerification: each sslmode checks what libpq's does, against a
// server whose certificate names localhost only.
func TestServerVerification(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	other, err := testcert.NewCA(dir, "other")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("srv", "localhost", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	clients, err := ForClients(Settings{Key: "client_tls", Mode: "require", CertFile: pair.CertFile, KeyFile: pair.KeyFile})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		mode, ca, host string
		ok             bool
	}{
		{"require", "", "127.0.0.1", true},              // no check at all
		{"require", other.CertFile, "localhost", false}, // a CA file makes require check the chain
		{"verify-ca", ca.CertFile, "127.0.0.1", true},   // the chain, not the name
		{"verify-ca", other.CertFile, "localhost", false},
		{"verify-full", ca.CertFile, "localhost", true},
		{"verify-full", ca.CertFile, "127.0.0.1", false}, // not a name in the certificate
	} {
		servers, err := ForServers(Settings{Key: "server_tls", Mode: c.mode, CAFile: c.ca})
		if err != nil {
			t.Fatal(err)
		}
		// Over TCP, not net.Pipe: a failing side writes its alert while
		// the other may still be writing.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			s := tls.Server(a, clients.Config)
			s.Handshake()
			s.Close()
		}()
		b, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		err = tls.Client(b, servers.For(c.host)).Handshake()
		b.Close()
		ln.Close()
		if (err == nil) != c.ok {
			t.Errorf("%s with CA %s to %s: handshake error %v, want ok %v", c.mode, c.ca, c.host, err, c.ok)
		}
	}
	if d, _ := ForServers(Settings{Key: "server_tls", Mode: "disable"}); d.For("localhost") != nil {
		t.Error("disable gave a TLS configuration")
	}
}
