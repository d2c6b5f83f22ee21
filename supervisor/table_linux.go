package supervisor

import (
	"os"
	"os/exec"
	"sync"

	"github.com/rs/zerolog"

	"agent/internal/procfs"
)

// table knows which of the agent's children are app processes: the live
// ones (started and not yet fully gone: two during a reload), whose trees
// the stop and the RSS sample of another leave alone, and the owned ones,
// whose exit status belongs to their cmd.Wait, never to the reaper of
// orphans.
type table struct {
	log zerolog.Logger

	liveMu sync.Mutex
	live   map[int]bool
}

// The owned processes are the process's, not one supervisor's: any
// supervisor's reaper (a test runs several) must leave every supervisor's
// app processes to their own wait.
var (
	ownMu sync.Mutex
	owned = map[int]bool{}
)

func newTable(log zerolog.Logger) *table {
	return &table{log: log, live: map[int]bool{}}
}

// start starts cmd and records it as live and owned. It starts under
// liveMu, so it is known as live before a scan of another process's tree
// can see it (scanTree holds liveMu while it reads), and under ownMu, so the
// reaper never takes its exit status.
func (t *table) start(cmd *exec.Cmd) error {
	t.liveMu.Lock()
	defer t.liveMu.Unlock()
	ownMu.Lock()
	defer ownMu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	owned[cmd.Process.Pid] = true
	t.live[cmd.Process.Pid] = true
	return nil
}

// adopt records pid, a process handed over by the program before this
// one, as live, and as owned unless it was reaped already.
func (t *table) adopt(pid int, unreaped bool) {
	t.liveMu.Lock()
	defer t.liveMu.Unlock()
	ownMu.Lock()
	defer ownMu.Unlock()
	t.live[pid] = true
	if unreaped {
		owned[pid] = true
	}
}

// disown hands pid's exit status back: it was reaped.
func (t *table) disown(pid int) {
	ownMu.Lock()
	delete(owned, pid)
	ownMu.Unlock()
}

// gone forgets pid as live: its whole tree is gone.
func (t *table) gone(pid int) {
	t.liveMu.Lock()
	delete(t.live, pid)
	t.liveMu.Unlock()
}

// othersLocked returns the PIDs of the live app processes other than pid.
// The caller holds liveMu.
func (t *table) othersLocked(pid int) []int {
	var pids []int
	for p := range t.live {
		if p != pid {
			pids = append(pids, p)
		}
	}
	return pids
}

// Others returns the PIDs of the live app processes other than pid.
func (t *table) Others(pid int) []int {
	t.liveMu.Lock()
	defer t.liveMu.Unlock()
	return t.othersLocked(pid)
}

// scanTree opens handles for the live descendants of the agent but the
// trees of the other live app processes: pid's whole tree, with what
// escaped it (re-parented to the agent as child subreaper).
func (t *table) scanTree(pid int) []*procfs.Handle {
	// liveMu is held through the scan: a process started meanwhile is
	// either known as another's (and left out) or not yet there.
	t.liveMu.Lock()
	hs, err := procfs.OpenDescendantsExcept(os.Getpid(), t.othersLocked(pid))
	t.liveMu.Unlock()
	if err != nil {
		t.log.Warn().Err(err).Msg("read the app's process tree")
	}
	return hs
}
