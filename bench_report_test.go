package pgmux_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestBenchReport runs bench/report.sh on made-up rounds whose medians,
// confidence intervals and verdicts are known: five rounds at simple (the
// interval is then the outermost ratios), eleven at extended (the third from
// each end), and pgmux slower than PgBouncer in every round at simple, level
// at extended. A slip in the awk (an interval from the wrong order statistic,
// a verdict's sign) shows as a line missing from table.txt.
func TestBenchReport(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	dir := t.TempDir()
	for _, f := range []string{"results.csv", "memory.csv"} {
		b, err := os.ReadFile(filepath.Join("testdata/bench", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("bash", "bench/report.sh", dir)
	cmd.Env = append(os.Environ(), "BENCH_ROUNDS=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("report.sh: %v\n%s", err, out)
	}
	table, err := os.ReadFile(filepath.Join(dir, "table.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "median of 5-11 rounds") {
		t.Errorf("the title should count 5 to 11 rounds:\n%s", out)
	}
	text := string(table)
	for _, want := range []*regexp.Regexp{
		// Paired TPS ratios 0.99..0.95 (five rounds): interval min..max.
		regexp.MustCompile(`(?m)^select +simple +10 \| 0/5 +5/5 +5/5 +\| 0\.97 +0\.95\.\.0\.99 +1\.00 +1\.00\.\.1\.00 `),
		// Ratios 0.95..1.05 (eleven rounds): the third from each end.
		regexp.MustCompile(`(?m)^select +extended +10 \| 6/11 +6/11 +11/11 +\| 1\.00 +0\.97\.\.1\.03 +1\.00 +0\.97\.\.1\.03 `),
		regexp.MustCompile(`(?m)^tpcb +simple +100 \| 5/5 +5/5 +5/5 +\| 1\.30 +1\.10\.\.1\.50 +0\.80 +0\.60\.\.1\.00 `),
		// Latency added: direct 0.300; PgBouncer +0.100; pgmux +0.130,
		// more in every round (+0.010..+0.050).
		regexp.MustCompile(`(?m)^simple +\| +0\.300 +\+0\.100 +\+0\.130 \| +\+0\.030 \+0\.010\.\.\+0\.050 +more$`),
		// pgmux -0.025..+0.025 off round by round: the interval holds zero.
		regexp.MustCompile(`(?m)^extended +\| +0\.350 +\+0\.100 +[+-]0\.100 \| +[+-]0\.000 -0\.015\.\.\+0\.015 +level$`),
	} {
		if !want.MatchString(text) {
			t.Errorf("table.txt lacks %q:\n%s", want, text)
		}
	}
	// Prepared ran through pgmux only: in the table of medians, not paired.
	medians, paired, _ := strings.Cut(text, "round by round")
	if !strings.Contains(medians, "prepared") || strings.Contains(paired, "prepared") {
		t.Errorf("the prepared point, run through pgmux only, should be in the medians and not paired:\n%s", text)
	}
}
