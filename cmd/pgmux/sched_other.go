//go:build !linux

package main

import (
	"time"

	"go.uber.org/zap"
)

// applySchedSlice: only Linux has a scheduling slice per task.
func applySchedSlice(log *zap.Logger, d time.Duration) {
	if d != 0 {
		log.Debug("sched_slice has no effect on this system", zap.Duration("sched_slice", d))
	}
}
