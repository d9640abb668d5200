//go:build !unix

package pgtest

import "os/exec"

// credential is the OS user PostgreSQL would run as; outside Unix the tests
// run PostgreSQL as the user running them.
type credential struct{ Uid, Gid uint32 }

func runAs(*exec.Cmd, *credential) {}
