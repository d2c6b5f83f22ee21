package supervisor

import (
	"context"
	"syscall"
	"time"

	"agent/internal/procfs"
)

// killRounds bounds how often the stop looks again for processes to
// SIGKILL: each round kills what it finds, and a process can fork only
// until it is killed.
const killRounds = 5

// goStopTree stops c's process tree in the background (see stopTree), then
// reaps the orphans it leaves and reports evTreeGone. With c.gate set (a
// gated stop of a process still running), the stop waits first for the
// answer to EventStopping and runs its drain.
func (s *Supervisor[L]) goStopTree(c *Child[L]) {
	cfg := s.Config(c.Slot)
	gate := c.gate
	go func() {
		if gate != nil {
			ctx, cancel := context.WithTimeout(context.Background(), cfg.StopTimeout)
			select {
			case drain := <-gate:
				if drain != nil {
					if left := drain(ctx); left > 0 {
						r, _ := c.requested()
						s.log.Warn().Int("pid", c.PID).Str("reason", string(r)).Int("in_flight", left).Msg("stopping the app with requests still in flight (stop.timeout)")
					}
				}
			case <-ctx.Done():
			}
			cancel()
		}
		s.stopTree(c, cfg.StopSignal, cfg.StopTimeout)
		if c.leader != nil {
			c.leader.Close()
		}
		s.table.gone(c.PID)
		s.reap()
		s.send(event[L]{kind: evTreeGone, child: c})
	}()
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
func (s *Supervisor[L]) stopTree(c *Child[L], sig syscall.Signal, timeout time.Duration) {
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	hs := s.scanTree(c.PID)
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
		hs := s.scanTree(c.PID)
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

// signalTree sends sig to c's process group, through the leader's pidfd,
// and to each of hs outside that group; to all of hs when the kernel
// cannot signal a group through a pidfd (before Linux 6.9). No process gets
// the signal twice: a second SIGTERM means "now" to some apps.
func (c *Child[L]) signalTree(hs []*procfs.Handle, sig syscall.Signal) {
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
