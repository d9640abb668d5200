package pgmux_test

import (
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// badDeps says, per package, which imports would break the layout in
// DEVELOPERS.md and shared/STYLE.md, and why.
var badDeps = map[string]map[string]string{
	"github.com/pgmux/pgmux/protocol": {
		"go.uber.org/zap":                "protocol does not log",
		"github.com/prometheus/":         "protocol has no metrics",
		"github.com/pgmux/pgmux/pool":    "protocol knows nothing of pools",
		"github.com/pgmux/pgmux/proxy":   "protocol knows nothing of sessions",
		"github.com/pgmux/pgmux/config":  "only cmd imports config",
		"github.com/jackc/pgx/v5/pgconn": "protocol stays on pgproto3",
	},
	"github.com/pgmux/pgmux/pool": {
		"github.com/jackc/pgx/v5/pgproto3": "pool knows nothing of the wire",
		"github.com/pgmux/pgmux/protocol":  "pool knows nothing of the wire",
		"github.com/pgmux/pgmux/proxy":     "pool knows nothing of sessions",
		"github.com/prometheus/":           "pool exposes Stats; admin turns them into metrics",
		"github.com/pgmux/pgmux/config":    "only cmd imports config",
	},
	"github.com/pgmux/pgmux/auth": {
		"net":                           "auth checks answers; the session carries them",
		"go.uber.org/zap":               "auth does not log",
		"github.com/prometheus/":        "auth has no metrics",
		"github.com/pgmux/pgmux/pool":   "auth knows nothing of pools",
		"github.com/pgmux/pgmux/proxy":  "auth knows nothing of sessions",
		"github.com/pgmux/pgmux/config": "only cmd imports config",
	},
	"github.com/pgmux/pgmux/console": {
		"go.uber.org/zap":               "the console answers; the proxy logs",
		"github.com/pgmux/pgmux/pool":   "the console reads pools through Source",
		"github.com/pgmux/pgmux/proxy":  "the console reads the proxy through Source",
		"github.com/pgmux/pgmux/config": "only cmd imports config",
	},
	"github.com/pgmux/pgmux/core": {
		"net":                           "the core decides; the drivers do the I/O",
		"go.uber.org/zap":               "the core does not log",
		"github.com/prometheus/":        "the core has no metrics",
		"github.com/pgmux/pgmux/pool":   "the core is told of servers granted, it does not take them",
		"github.com/pgmux/pgmux/proxy":  "the drivers call the core, not the other way",
		"github.com/pgmux/pgmux/config": "only cmd imports config",
	},
	"github.com/pgmux/pgmux/prepared": {
		"net":                           "prepared rewrites messages; the drivers do the I/O",
		"go.uber.org/zap":               "prepared does not log",
		"github.com/prometheus/":        "prepared has counters; admin turns them into metrics",
		"github.com/pgmux/pgmux/pool":   "prepared knows nothing of pools",
		"github.com/pgmux/pgmux/proxy":  "prepared knows nothing of sessions",
		"github.com/pgmux/pgmux/config": "only cmd imports config",
	},
	"github.com/pgmux/pgmux/hba": {
		"go.uber.org/zap":               "hba says a method; the proxy logs",
		"github.com/pgmux/pgmux/pool":   "hba knows nothing of pools",
		"github.com/pgmux/pgmux/proxy":  "the proxy uses hba, not the other way",
		"github.com/pgmux/pgmux/config": "only cmd imports config",
	},
	"github.com/pgmux/pgmux/tlsconf": {
		"go.uber.org/zap":               "tlsconf builds configurations; cmd logs",
		"github.com/pgmux/pgmux/pool":   "tlsconf knows nothing of pools",
		"github.com/pgmux/pgmux/proxy":  "the proxy uses tlsconf, not the other way",
		"github.com/pgmux/pgmux/config": "only cmd imports config",
	},
	"github.com/pgmux/pgmux/hosts": {
		"net":                             "hosts decides; the proxy checks the hosts and dials",
		"go.uber.org/zap":                 "hosts does not log",
		"github.com/pgmux/pgmux/proxy":    "the proxy reports to hosts, not the other way",
		"github.com/pgmux/pgmux/pool":     "hosts knows nothing of pools",
		"github.com/pgmux/pgmux/protocol": "hosts knows nothing of the wire",
		"github.com/pgmux/pgmux/config":   "only cmd imports config",
	},
	"github.com/pgmux/pgmux/tracing": {
		"github.com/pgmux/pgmux/proxy":    "tracing is handed transactions; it knows nothing of sessions",
		"github.com/pgmux/pgmux/pool":     "tracing knows nothing of pools",
		"github.com/pgmux/pgmux/protocol": "tracing knows nothing of the wire",
		"github.com/pgmux/pgmux/core":     "tracing knows nothing of the session core",
		"github.com/pgmux/pgmux/config":   "only cmd imports config",
	},
	"github.com/pgmux/pgmux/rawio": {
		"github.com/pgmux/pgmux/core":     "rawio moves bytes; the core decides what they mean",
		"github.com/pgmux/pgmux/pool":     "rawio knows nothing of pools",
		"github.com/pgmux/pgmux/protocol": "rawio knows nothing of the wire",
		"github.com/pgmux/pgmux/proxy":    "the proxy's drivers use rawio, not the other way",
		"go.uber.org/zap":                 "rawio does not log",
		"github.com/prometheus/":          "rawio has no metrics",
		"github.com/pgmux/pgmux/config":   "only cmd imports config",
	},
	"github.com/pgmux/pgmux/proxy": {
		"github.com/pgmux/pgmux/config": "only cmd imports config",
		"github.com/pgmux/pgmux/admin":  "admin reads the proxy, not the other way",
	},
	"github.com/pgmux/pgmux/admin": {
		"github.com/pgmux/pgmux/proxy":  "admin reads stats through its own interface",
		"github.com/pgmux/pgmux/config": "only cmd imports config",
	},
	"github.com/pgmux/pgmux/stats": {
		"github.com/pgmux/pgmux/proxy": "stats is the plain data between the proxy and admin",
		"github.com/pgmux/pgmux/pool":  "stats is the plain data between the proxy and admin",
		"github.com/prometheus/":       "admin turns stats into metrics",
	},
	"github.com/pgmux/pgmux/config": {
		"github.com/pgmux/pgmux/proxy": "cmd reads config and hands each package its options",
		"github.com/pgmux/pgmux/pool":  "cmd reads config and hands each package its options",
		"github.com/pgmux/pgmux/core":  "cmd reads config and hands each package its options",
	},
}

// TestDependencies checks the arrows between packages with go list -deps.
func TestDependencies(t *testing.T) {
	for pkg, banned := range badDeps {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for prefix, why := range banned {
				if strings.HasPrefix(dep, prefix) {
					t.Errorf("%s depends on %s: %s", pkg, dep, why)
				}
			}
		}
	}
}

// TestPackageComments: every package says what it is.
func TestPackageComments(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.Dir}}", "./...").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range strings.Fields(string(out)) {
		pkgs, err := parser.ParseDir(token.NewFileSet(), dir, nil, parser.ParseComments|parser.PackageClauseOnly)
		if err != nil {
			t.Fatal(err)
		}
		for name, p := range pkgs {
			if strings.HasSuffix(name, "_test") {
				continue
			}
			documented := false
			for _, f := range p.Files {
				if f.Doc != nil {
					documented = true
				}
			}
			if !documented {
				t.Errorf("package %s in %s has no package comment", name, filepath.Base(dir))
			}
		}
	}
}
