//go:build linux

package main

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadSlices returns the scheduling slice (ns) of each of pid's threads.
func threadSlices(t *testing.T, pid int) map[int]uint64 {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	slices := map[int]uint64{}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if attr, err := unix.SchedGetAttr(tid, 0); err == nil {
			slices[tid] = attr.Runtime
		}
	}
	return slices
}

// TestSchedSlice: every thread of pgmux, those the Go runtime starts under
// load included, has the slice sched_slice asks for, and a reload to 0 gives
// them back the kernel's default.
func TestSchedSlice(t *testing.T) {
	self, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if self.Runtime == 0 {
		t.Skip("this kernel keeps no scheduling slice per task (Linux 6.12 and later do)")
	}
	const want = 300 * time.Microsecond
	p := startPgmux(t, baseConfig+"sched_slice: 300us\n")
	runTransactions(t, p, "postgres", 20, 20, "SELECT 1")
	slices := threadSlices(t, p.cmd.Process.Pid)
	if len(slices) == 0 {
		t.Fatal("no thread of pgmux could be read")
	}
	for tid, s := range slices {
		if s != uint64(want) {
			t.Errorf("thread %d: slice %d ns, want %d", tid, s, want)
		}
	}
	t.Logf("%d threads at %s", len(slices), want)

	p.writeConfig(t, baseConfig+"sched_slice: 0\n")
	if code := p.adminJSON(t, "POST", "/reload", nil); code != 200 {
		t.Fatalf("reload: %d", code)
	}
	after := threadSlices(t, p.cmd.Process.Pid)
	if len(after) == 0 {
		t.Fatal("no thread of pgmux could be read after the reload")
	}
	for tid, s := range after {
		if s != self.Runtime {
			t.Errorf("after reload to 0, thread %d: slice %d ns, want the default %d", tid, s, self.Runtime)
		}
	}
}
