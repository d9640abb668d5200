//go:build unix

package pgtest

import (
	"os/exec"
	"syscall"
)

// credential is the OS user PostgreSQL runs as when the tests run as root.
type credential = syscall.Credential

// runAs makes cmd run as cred, if set.
func runAs(cmd *exec.Cmd, cred *credential) {
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
}
