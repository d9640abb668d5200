//go:build linux

package main

import (
	"errors"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// setSchedSlice asks the kernel for a scheduling slice of d for each of
// pgmux's threads (0: the kernel's default), keeping each thread's policy
// and nice value; threads made later inherit it from the thread that makes
// them. It returns how many threads were set and whether the kernel keeps a
// slice per task (Linux 6.12 and later; before, it accepts the call and
// ignores the slice).
//
// Why: pgmux shares its cores with PostgreSQL's backends. Under the kernel's
// EEVDF scheduler a task's slice sets how soon after it wakes it is picked,
// not how much CPU it gets: a waking task with a shorter slice than the one
// running may preempt it. pgmux wakes for every client query and server
// answer, briefly, and while it waits for a core, answers that have come in
// wait with it, and so do the servers they would free. With 100 us, its
// delays over 0.5 ms after a wake-up fell from 62-141 to 18-21 in 4 s of
// TPC-B at 100 clients (perf sched; docs/relay.md).
func setSchedSlice(d time.Duration) (n int, kept bool, err error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, false, err
	}
	var errs []error
	kept = true
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		attr, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			if errors.Is(err, unix.ESRCH) {
				continue // the thread has exited
			}
			errs = append(errs, err)
			continue
		}
		if attr.Policy != unix.SCHED_NORMAL && attr.Policy != unix.SCHED_BATCH {
			continue // real-time or idle, as whoever started pgmux chose
		}
		attr.Size = unix.SizeofSchedAttr
		attr.Runtime = uint64(d)
		attr.Deadline, attr.Period = 0, 0
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil {
			if errors.Is(err, unix.ESRCH) {
				continue
			}
			errs = append(errs, err)
			continue
		}
		n++
		if got, err := unix.SchedGetAttr(tid, 0); err == nil && d != 0 && got.Runtime != uint64(d) {
			kept = false
		}
	}
	return n, kept, errors.Join(errs...)
}

// applySchedSlice is setSchedSlice with what happened logged: a refusal
// (a seccomp filter, say) costs latency, not correctness, so it is a
// warning and pgmux goes on.
func applySchedSlice(log *zap.Logger, d time.Duration) {
	n, kept, err := setSchedSlice(d)
	switch {
	case err != nil:
		log.Warn("sched_slice: the kernel refused it for some threads; they keep its default", zap.Duration("sched_slice", d), zap.Int("threads_set", n), zap.Error(err))
	case d != 0 && !kept:
		log.Info("sched_slice: this kernel keeps no slice per task (Linux 6.12 and later do); its default applies", zap.Duration("sched_slice", d))
	default:
		log.Debug("sched_slice set", zap.Duration("sched_slice", d), zap.Int("threads", n))
	}
}
