package supervisor

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// exitOf turns cmd.Wait's result into an Exit with its raw code or signal.
func exitOf(ps *os.ProcessState, err error, at, started time.Time, pid int) Exit {
	if ps == nil {
		return exitOfStatus(0, err, at, started, pid)
	}
	return exitOfStatus(unix.WaitStatus(ps.Sys().(syscall.WaitStatus)), nil, at, started, pid)
}

// exitOfStatus turns a wait4 result into an Exit with its raw code or
// signal.
func exitOfStatus(ws unix.WaitStatus, err error, at, started time.Time, pid int) Exit {
	e := Exit{At: at, PID: pid, Uptime: at.Sub(started)}
	switch {
	case err != nil:
		e.Reason, e.Detail = ReasonCrashed, fmt.Sprintf("wait for the process: %v", err)
	case ws.Signaled():
		e.Signal, e.Reason = signalName(ws.Signal()), ReasonSignaled
	default:
		code := ws.ExitStatus()
		e.Code = &code
		e.Reason = ReasonCrashed
		if code == 0 {
			e.Reason = ReasonExited
		}
	}
	return e
}

// explain settles the reason of an exit and reports it to the loop.
func (s *Supervisor[L]) explain(ctx context.Context, c *Child[L], e Exit) {
	// The V8 fatal line may still sit in the pipe: give the readers a moment
	// to reach the end of the output (they end when the whole tree is gone).
	waitTimeout(&c.output, time.Second)
	e = s.classify(ctx, c, e)
	s.send(event[L]{kind: evExplained, child: c, exit: e})
	killed := e.Signal == "SIGKILL" || (e.Code != nil && *e.Code == 137)
	if req, _ := c.requested(); req == "" && s.opts.Explain != nil && killed && (e.Reason == ReasonSignaled || e.Reason == ReasonCrashed) {
		if r, d, ok := s.opts.Explain(ctx, c, e, true); ok {
			e.Reason, e.Detail = r, d
			s.send(event[L]{kind: evAmend, child: c, exit: e})
		}
	}
}

// classify settles the reason of an exit from what is known at once. The
// evidence of a memory death (V8's line, the kernel's record) wins over the
// reason the agent was stopping the process for, since a process stopped for
// failed probes may well have been dying of its heap.
func (s *Supervisor[L]) classify(ctx context.Context, c *Child[L], e Exit) Exit {
	req, reqDetail := c.requested()
	during := ""
	if req != "" {
		during = " (while stopping it: " + string(req) + ")"
	}
	if e.Reason == ReasonExited && req == "" {
		return e
	}
	if line := c.heapOOM.Load(); line != nil && e.Reason != ReasonExited {
		e.Reason, e.Detail = ReasonHeapOOM, *line+during
		return e
	}
	if s.opts.Explain != nil && e.Reason != ReasonExited {
		if r, d, ok := s.opts.Explain(ctx, c, e, false); ok {
			e.Reason, e.Detail = r, d+during
			return e
		}
	}
	if req != "" {
		e.Reason, e.Detail = req, reqDetail
	}
	return e
}

func describe(e Exit) string {
	s := string(e.Reason)
	switch {
	case e.Code != nil:
		s += fmt.Sprintf(" (code %d)", *e.Code)
	case e.Signal != "":
		s += " (" + e.Signal + ")"
	}
	return s
}
