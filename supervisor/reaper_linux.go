package supervisor

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"agent/internal/procfs"
)

// BecomeSubreaper makes the calling process the reaper of its orphaned
// descendants: an app's child that daemonizes (fork, setsid, parent exits)
// is re-parented to the agent instead of PID 1, so it stays visible as part
// of the app's tree and can be killed with it.
func BecomeSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set child subreaper: %w", err)
	}
	return nil
}

// The reaper of orphans. As child subreaper the agent inherits the app's
// orphaned descendants, and must collect their exit status or they stay
// zombies. It must never take an exit status that a cmd.Wait owns: that
// Wait would then fail (ECHILD) and the exit would be lost. The invariant:
//
//	The reaper waits only for a child of the agent that is a zombie, is
//	not in the agent's own process group, and is not in owned.
//
// Why that is enough: a process the agent process starts itself with
// os/exec (a helper command, a test's exec.Cmd) stays in the agent's
// process group unless it asks for another, so the reaper leaves it to its
// cmd.Wait. The app is started in a group of its own, but spawn marks it
// owned under ownMu before it can be seen at all (cmd.Start and the mark
// happen with ownMu held) until its cmd.Wait has returned; reap holds ownMu
// from the read of the children to the last wait4. An orphan of the app is
// in the app's group or in one it made (setsid daemons), never in the
// agent's. And since nobody but the reaper waits for such a zombie, its
// PID cannot be reused between the read and the wait4.
//
// A process the agent starts in a group of its own (Setpgid or Setsid)
// outside spawn must be marked owned the same way.

// reap collects the exit status of the app's orphans that have exited.
func (t *table) reap() {
	ownMu.Lock()
	defer ownMu.Unlock()
	kids, err := procfs.Children(os.Getpid())
	if err != nil {
		t.log.Debug().Err(err).Msg("read the agent's children to reap orphans")
	}
	own := unix.Getpgrp()
	for _, k := range kids {
		if k.Zombie() && k.PGID != own && !owned[k.PID] {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(k.PID, &ws, unix.WNOHANG, nil)
		}
	}
}

// reapOnSIGCHLD reaps orphans as they exit while Run runs, so that an app
// that keeps spawning detached processes does not fill the process table
// with zombies of the agent.
func (t *table) reapOnSIGCHLD(done <-chan struct{}) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGCHLD)
	defer signal.Stop(c)
	for {
		select {
		case <-c:
			t.reap()
		case <-done:
			return
		}
	}
}
