package main

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestMakeDemo runs `make demo` for a few seconds: it must start everything,
// print a report with the request rate, P99 and where the slowest requests
// spent their time, count no error, and leave nothing running.
func TestMakeDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, Redis, pgmux and the demo API")
	}
	cmd := exec.Command("make", "-C", "../..", "demo")
	cmd.Env = append(cmd.Environ(), "DEMO_DURATION=3s", "DEMO_CONCURRENCY=16")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make demo: %v\n%s", err, out)
	}
	report := string(out)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`requests: [1-9]\d*, \d+ req/s, errors: 0\n`),
		regexp.MustCompile(`route\s+requests\s+P50\s+P90\s+P99\s+max`),
		regexp.MustCompile(`product reads served from Redis without PostgreSQL: \d`),
		// The time split from the traces, with every share.
		regexp.MustCompile(`route\s+traced\s+P99\s+app\s+Redis\s+pgmux pool wait\s+PostgreSQL`),
		regexp.MustCompile(`GET /products/\{id\}\s+[1-9]\d*\s+[\d.]+ms(\s+\d+%){4}`),
		regexp.MustCompile(`POST /transfers\s+[1-9]\d*\s+[\d.]+ms(\s+\d+%){4}`),
	} {
		if !want.MatchString(report) {
			t.Errorf("report lacks %s:\n%s", want, report)
		}
	}
	t.Logf("make demo took %s", time.Since(start).Round(time.Second))
	if out, _ := exec.Command("pgrep", "-f", "pgmux-demo --listen|bin/pgmux --config /tmp/pgmux-demo").Output(); strings.TrimSpace(string(out)) != "" {
		t.Fatalf("processes left running: %s", out)
	}
}
