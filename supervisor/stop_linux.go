package supervisor

import (
	"context"
	"os"
	"syscall"
	"time"

	"agent/internal/procfs"
)

// killRounds bounds how often the stop looks again for processes to
// SIGKILL: each round kills what it finds, and a process can fork only
// until it is killed.
const killRounds = 5

// goStopTree stops c's process tree in the background (see stopTree), then
// reaps the orphans it leaves and reports evTreeGone. With gate, the stop
// was asked for while c still runs: Options.Gate is called first.
func (s *Supervisor) goStopTree(c *Child, gate bool) {
	cfg := s.config()
	go func() {
		if r, _ := c.requested(); gate && r != "" && s.opts.Gate != nil {
			ctx, cancel := context.WithTimeout(context.Background(), cfg.StopTimeout)
			s.opts.Gate(ctx, c, r)
			cancel()
		}
		s.stopTree(c, cfg.StopSignal, cfg.StopTimeout)
		if c.leader != nil {
			c.leader.Close()
		}
		s.liveMu.Lock()
		delete(s.live, c)
		s.liveMu.Unlock()
		s.reap()
		s.send(event{kind: evTreeGone, child: c})
	}()
}

// otherLeaders returns the PIDs of the live app processes other than c:
// during a reload, the stop of one tree must leave the other alone.
func (s *Supervisor) otherLeaders(c *Child) []int {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	var pids []int
	for o := range s.live {
		if o != c {
			pids = append(pids, o.PID)
		}
	}
	return pids
}

// stopTree sends sig to the app's process group and to every descendant of
// the agent outside it (the agent is the child subreaper of the app, so
// processes that left the group or were orphaned are still its
// descendants), waits up to timeout for them to exit, then SIGKILLs the
// group and whatever is left, looking again after each round since a
// process may fork while it is signalled. Every process is signalled and
// waited on through a pidfd opened while the tree was read, and the group
// through the pidfd of its leader, so a PID that was reused meanwhile is
// never touched, and a wait ends as soon as the last process exits.
func (s *Supervisor) stopTree(c *Child, sig syscall.Signal, timeout time.Duration) {
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	hs := s.scanTree(c)
	defer procfs.CloseAll(hs)
	c.signalTree(hs, sig)
	if sig != syscall.SIGKILL && sig != syscall.SIGCONT {
		// A stopped process (SIGSTOP, a debugger) acts on the signal only
		// once it runs again, as systemd knows.
		c.signalTree(hs, syscall.SIGCONT)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	left, _ := procfs.Wait(ctx, hs...)
	cancel()
	if len(left) > 0 {
		s.log.Warn().Ints("pids", pidsOf(left)).Dur("timeout", timeout).Msg("app did not stop in time; killing its process tree")
	}
	for range killRounds {
		hs := s.scanTree(c)
		if len(hs) == 0 {
			return
		}
		c.signalTree(hs, syscall.SIGKILL)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		procfs.Wait(ctx, hs...)
		cancel()
		procfs.CloseAll(hs)
	}
}

// scanTree opens handles for the live descendants of the agent but the
// trees of the other live app processes: c's whole tree, with what escaped
// it (re-parented to the agent as child subreaper).
func (s *Supervisor) scanTree(c *Child) []*procfs.Handle {
	hs, err := procfs.OpenDescendantsExcept(os.Getpid(), s.otherLeaders(c))
	if err != nil {
		s.log.Warn().Err(err).Msg("read the app's process tree")
	}
	return hs
}

// signalTree sends sig to c's process group, through the leader's pidfd,
// and to each of hs outside that group; to all of hs when the kernel
// cannot signal a group through a pidfd (before Linux 6.9). No process gets
// the signal twice: a second SIGTERM means "now" to some apps.
func (c *Child) signalTree(hs []*procfs.Handle, sig syscall.Signal) {
	group := false
	if c.leader != nil {
		err := c.leader.SignalGroup(sig)
		group = err == nil
	}
	for _, h := range hs {
		if group && h.PGID == c.PID {
			continue
		}
		_ = h.Signal(sig) // ESRCH: it exited meanwhile
	}
}

func pidsOf(hs []*procfs.Handle) []int {
	out := make([]int, len(hs))
	for i, h := range hs {
		out[i] = h.PID
	}
	return out
}
