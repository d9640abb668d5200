package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmux/pgmux/internal/testcert"
)

// TestTLSReload: clients on TLS run transactions while pgmux's certificate
// is replaced on disk and reloaded: none sees an error, and new clients get
// the new certificate. A broken key is refused with 422 and the key named,
// and the certificate in force stays.
func TestTLSReload(t *testing.T) {
	dir := t.TempDir()
	oldCA, err := testcert.NewCA(dir, "old-ca")
	if err != nil {
		t.Fatal(err)
	}
	newCA, err := testcert.NewCA(dir, "new-ca")
	if err != nil {
		t.Fatal(err)
	}
	oldPair, err := oldCA.Issue("old", "pgmux", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	newPair, err := newCA.Issue("new", "pgmux", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "pgmux.crt"), filepath.Join(dir, "pgmux.key")
	install := func(p testcert.Pair) {
		for src, dst := range map[string]string{p.CertFile: cert, p.KeyFile: key} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	both := filepath.Join(dir, "both.crt")
	a, _ := os.ReadFile(oldCA.CertFile)
	b, _ := os.ReadFile(newCA.CertFile)
	if err := os.WriteFile(both, append(a, b...), 0o600); err != nil {
		t.Fatal(err)
	}
	install(oldPair)
	if err := needPG(t).CreateDatabase("tlsreload"); err != nil {
		t.Fatal(err)
	}
	config := strings.Replace(opsConfig, "databases:", "client_tls_sslmode: require\nclient_tls_cert_file: "+cert+
		"\nclient_tls_key_file: "+key+"\ndatabases:\n  tlsreload: {host: 127.0.0.1, port: PG_PORT, pool_size: 4}", 1)
	p := startPgmux(t, config)
	p.ssl = "verify-full sslrootcert=" + both
	// trusts reports whether a new client that trusts only ca gets in.
	trusts := func(ca *testcert.CA) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, strings.Replace(p.dsn(cluster.SuperUserName(), "tlsreload"), both, ca.CertFile, 1))
		if err != nil {
			return false
		}
		conn.Close(ctx)
		return true
	}
	if !trusts(oldCA) || trusts(newCA) {
		t.Fatal("before the reload pgmux should show the old certificate")
	}
	stop := make(chan struct{})
	wait := loopClients(t, p, "tlsreload", 20, stop)
	time.Sleep(300 * time.Millisecond)

	install(newPair)
	if code := p.adminJSON(t, "POST", "/reload", nil); code != 200 {
		t.Fatalf("reload: %d", code)
	}
	if !trusts(newCA) || trusts(oldCA) {
		t.Fatal("after the reload pgmux should show the new certificate")
	}

	if err := os.WriteFile(key, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	var refused map[string]string
	if code := p.adminJSON(t, "POST", "/reload", &refused); code != 422 || !strings.Contains(refused["error"], "client_tls_cert_file") {
		t.Fatalf("reload of a broken key: %d %v", code, refused)
	}
	t.Logf("refused: %s", refused["error"])
	if !trusts(newCA) {
		t.Fatal("after a refused reload pgmux should still show the new certificate")
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	n, err := wait()
	if err != nil {
		t.Fatalf("a TLS client failed across the reloads: %v", err)
	}
	t.Logf("%d transactions by 20 TLS clients across two reloads, no error", n)
}
