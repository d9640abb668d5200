// Package tlsconf turns PgBouncer's TLS keys (an sslmode, certificate and key
// files, a CA file, protocols and ciphers) into crypto/tls configurations for
// both legs: pgmux as the TLS server its clients reach, and pgmux as the TLS
// client of its PostgreSQL servers, verifying them as libpq's sslmode says.
// Files are read once, when the configuration is built, so that a file
// broken on disk later changes nothing until the next reload.
//
// It must never import the proxy, the pools, the configuration or a logger:
// cmd builds the configurations and the proxy uses them.
package tlsconf

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
	"os"
	"strings"
)

// Mode is an sslmode, in libpq's order of strictness.
type Mode int

// The sslmodes.
const (
	Disable Mode = iota
	Allow
	Prefer
	Require
	VerifyCA
	VerifyFull
)

var modeNames = [...]string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

func (m Mode) String() string { return modeNames[m] }

// ParseMode reads an sslmode by its libpq name.
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if s == n {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("%q is not one of %s", s, strings.Join(modeNames[:], ", "))
}

// Settings are one leg's keys, as in the configuration file; Key names them
// in errors (client_tls or server_tls, or a database's).
type Settings struct {
	Key       string
	Mode      string
	CertFile  string
	KeyFile   string
	CAFile    string
	Protocols string // PgBouncer's: secure (the default), all, legacy, or a list of tlsv1.0 … tlsv1.3
	Ciphers   string // default, secure, fast, normal, all, or a colon-separated list of suite names
}

// Clients is the leg between clients and pgmux.
type Clients struct {
	Mode Mode
	// Config serves the handshake; nil when Mode is Disable. Its
	// NextProtos is ALPN "postgresql", which direct TLS negotiation needs.
	Config *tls.Config
}

// Required reports whether a client must use TLS (require or stricter).
func (c *Clients) Required() bool { return c != nil && c.Mode >= Require }

// ForClients builds the client leg. Any mode but disable needs a certificate
// and key; verify-ca and verify-full also a CA file, against which clients
// must then show a certificate.
func ForClients(s Settings) (*Clients, error) {
	mode, err := ParseMode(s.Mode)
	if err != nil {
		return nil, fmt.Errorf("%s_sslmode: %w", s.Key, err)
	}
	if mode == Disable {
		return &Clients{}, nil
	}
	if s.CertFile == "" || s.KeyFile == "" {
		return nil, fmt.Errorf("%s_cert_file and %s_key_file: required with %s_sslmode %s", s.Key, s.Key, s.Key, mode)
	}
	cfg, err := base(s)
	if err != nil {
		return nil, err
	}
	cfg.NextProtos = []string{"postgresql"}
	if s.CAFile != "" {
		if cfg.ClientCAs, err = loadCA(s.Key, s.CAFile); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	if mode >= VerifyCA {
		if s.CAFile == "" {
			return nil, fmt.Errorf("%s_ca_file: required with %s_sslmode %s", s.Key, s.Key, mode)
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return &Clients{Mode: mode, Config: cfg}, nil
}

// Servers is the leg between pgmux and its PostgreSQL servers.
type Servers struct {
	Mode   Mode
	config *tls.Config
}

// ForServers builds the server leg. A CA file makes require verify the
// chain, as libpq does; verify-ca and verify-full without one use the
// system's roots.
func ForServers(s Settings) (*Servers, error) {
	mode, err := ParseMode(s.Mode)
	if err != nil {
		return nil, fmt.Errorf("%s_sslmode: %w", s.Key, err)
	}
	if mode == Disable {
		return &Servers{}, nil
	}
	if (s.CertFile == "") != (s.KeyFile == "") {
		return nil, fmt.Errorf("%s_cert_file and %s_key_file: give both or neither", s.Key, s.Key)
	}
	cfg, err := base(s)
	if err != nil {
		return nil, err
	}
	if s.CAFile != "" {
		if cfg.RootCAs, err = loadCA(s.Key, s.CAFile); err != nil {
			return nil, err
		}
	}
	if mode < VerifyFull {
		// Checked by verifyChain, without the host name; not at all
		// below require unless a CA file was given.
		cfg.InsecureSkipVerify = true
		if mode >= VerifyCA || s.CAFile != "" {
			cfg.VerifyConnection = verifyChain(cfg.RootCAs)
		}
	}
	return &Servers{Mode: mode, config: cfg}, nil
}

// For returns the configuration to reach host with, or nil when the leg
// does not use TLS. verify-full checks host against the certificate.
func (s *Servers) For(host string) *tls.Config {
	if s == nil || s.config == nil {
		return nil
	}
	c := s.config.Clone()
	c.ServerName = host
	return c
}

// verifyChain checks the server's chain against roots (the system's if nil)
// without its name, as verify-ca does.
func verifyChain(roots *x509.CertPool) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the server sent no certificate")
		}
		opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool()}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(opts)
		return err
	}
}

// base is what both legs share: the certificate, protocols and ciphers.
func base(s Settings) (*tls.Config, error) {
	cfg := &tls.Config{}
	if s.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s_cert_file, %s_key_file: %w", s.Key, s.Key, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	var err error
	if cfg.MinVersion, cfg.MaxVersion, err = Protocols(s.Protocols); err != nil {
		return nil, fmt.Errorf("%s_protocols: %w", s.Key, err)
	}
	if cfg.CipherSuites, err = Ciphers(s.Ciphers); err != nil {
		return nil, fmt.Errorf("%s_ciphers: %w", s.Key, err)
	}
	return cfg, nil
}

func loadCA(key, file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s_ca_file: %w", key, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s_ca_file: no PEM certificate in %s", key, file)
	}
	return pool, nil
}

var versions = map[string]uint16{
	"tlsv1.0": tls.VersionTLS10, "tlsv1.1": tls.VersionTLS11, "tlsv1.2": tls.VersionTLS12, "tlsv1.3": tls.VersionTLS13,
}

// Protocols reads PgBouncer's protocols value as the lowest and highest
// version allowed: "secure" (or empty) is TLS 1.2 and 1.3, "all" and
// "legacy" every version, else a list of tlsv1.0 … tlsv1.3 separated by
// commas or colons, of which the lowest and highest count.
func Protocols(s string) (min, max uint16, err error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "secure", "default":
		return tls.VersionTLS12, tls.VersionTLS13, nil
	case "all", "legacy":
		return tls.VersionTLS10, tls.VersionTLS13, nil
	}
	for _, f := range strings.FieldsFunc(strings.ToLower(s), func(r rune) bool { return r == ',' || r == ':' || r == ' ' }) {
		v, ok := versions[f]
		if !ok {
			return 0, 0, fmt.Errorf("%q is not secure, all, legacy or one of tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3", f)
		}
		if min == 0 || v < min {
			min = v
		}
		max = maxOf(max, v)
	}
	return min, max, nil
}

func maxOf(a, b uint16) uint16 {
	if a > b {
		return a
	}
	return b
}

// Ciphers reads PgBouncer's ciphers value as TLS 1.2 suites (Go chooses TLS
// 1.3's itself): "default", "secure", "fast" and "normal" (or empty) are
// Go's secure list (nil), "all" adds the insecure ones; else a list of
// suite names, IANA's (TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256) or OpenSSL's
// (ECDHE-RSA-AES128-GCM-SHA256), separated by colons or commas.
func Ciphers(s string) ([]uint16, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "default", "secure", "fast", "normal":
		return nil, nil
	case "all":
		var ids []uint16
		for _, c := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
			ids = append(ids, c.ID)
		}
		return ids, nil
	}
	byName := map[string]uint16{}
	for _, c := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		byName[c.Name] = c.ID
	}
	var ids []uint16
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ':' || r == ',' || r == ' ' }) {
		name := f
		if n, ok := opensslNames[f]; ok {
			name = n
		}
		id, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("%q is not a cipher suite Go knows (see docs/tls.md)", f)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// opensslNames maps OpenSSL's names of the TLS 1.2 suites Go offers to
// IANA's.
var opensslNames = map[string]string{
	"ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
	"ECDHE-RSA-AES128-GCM-SHA256":   "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
	"ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
	"ECDHE-RSA-AES256-GCM-SHA384":   "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
	"ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
	"ECDHE-RSA-CHACHA20-POLY1305":   "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
	"ECDHE-ECDSA-AES128-SHA":        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
	"ECDHE-RSA-AES128-SHA":          "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
	"ECDHE-ECDSA-AES256-SHA":        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
	"ECDHE-RSA-AES256-SHA":          "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
}

// EndPoint is the channel-binding data tls-server-end-point (RFC 5929) of a
// certificate, DER: its hash by the hash of its signature algorithm, SHA-256
// for MD5 and SHA-1. It is nil for an algorithm without such a hash
// (Ed25519), for which SCRAM-SHA-256-PLUS is not offered.
func EndPoint(der []byte) []byte {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil
	}
	var h hash.Hash
	switch cert.SignatureAlgorithm {
	case x509.MD5WithRSA, x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1,
		x509.SHA256WithRSA, x509.SHA256WithRSAPSS, x509.ECDSAWithSHA256, x509.DSAWithSHA256:
		h = sha256.New()
	case x509.SHA384WithRSA, x509.SHA384WithRSAPSS, x509.ECDSAWithSHA384:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.SHA512WithRSAPSS, x509.ECDSAWithSHA512:
		h = sha512.New()
	default:
		return nil
	}
	h.Write(der)
	return h.Sum(nil)
}
