package supervisor

import "fmt"

// A reload is a plan over a slot: the incoming process starts beside the
// current one with the reload's config and is watched like any other. Once
// it is ready it takes the slot (EventSwapped) and the old one retires: it
// is stopped, gated, and the reload answers once it is gone. If the
// incoming process fails first (it exits, asks for a restart, or is not
// ready in time), it is the one that retires and the reload answers why.

// reloadPlan is the reload under way in a slot.
type reloadPlan[L any] struct {
	reply chan error
	in    *Child[L] // the incoming process
	timer *timer    // its readiness deadline
	old   *Child[L] // the process it replaced, once swapped
}

// beginReload starts the reload asked for by r.
func (sl *slot[L]) beginReload(r request[L]) {
	l := sl.l
	switch {
	case sl.reload != nil:
		r.reply <- ErrReloadBusy
		return
	case sl.cur == nil || sl.cur.stopping || !sl.cur.ready:
		r.reply <- ErrNotServing
		return
	}
	c, err := l.spawn(sl, r.cfg)
	if err != nil {
		r.reply <- fmt.Errorf("%w: %v", ErrReloadFailed, err)
		return
	}
	rl := &reloadPlan[L]{reply: r.reply, in: c}
	rl.timer = l.newTimer(r.timeout, func() {
		sl.failIncoming(c, ReasonStartTimeout, fmt.Sprintf("not ready within %s", r.timeout))
	})
	sl.reload = rl
	sl.side = append(sl.side, c)
	sl.msg = fmt.Sprintf("reloading: new process %d starting", c.PID)
	l.s.log.Info().Int("pid", c.PID).Int("old_pid", sl.cur.PID).Msg("reload: new process started beside the running one")
	l.emit(Event[L]{Kind: EventStarted, Slot: sl.index, Proc: c})
	l.watch(c)
}

// incomingReady swaps the ready incoming process c into the slot and
// retires the old one.
func (sl *slot[L]) incomingReady(c *Child[L]) {
	l := sl.l
	rl := sl.reload
	if rl == nil || rl.in != c || rl.old != nil {
		return
	}
	rl.timer.Stop()
	old := sl.cur
	rl.old = old
	sl.side = append(deleteChild(sl.side, c), old)
	sl.cur = c
	sl.state, sl.msg = Running, ""
	l.restarts++
	sl.restarts++
	l.s.log.Info().Int("pid", c.PID).Int("old_pid", old.PID).Msg("reload: new process serves; stopping the old one")
	l.emit(Event[L]{Kind: EventSwapped, Slot: sl.index, Proc: c, Old: old})
	l.stopProc(old, ReasonReload, fmt.Sprintf("replaced by %d in a reload", c.PID))
	sl.settle()
}

// failIncoming gives up on the reload's incoming process c before it took
// the slot: it is stopped, and the reload answers why once it is gone.
func (sl *slot[L]) failIncoming(c *Child[L], r Reason, detail string) {
	rl := sl.reload
	if rl == nil || rl.in != c || rl.old != nil || c.stopping {
		return
	}
	rl.timer.Stop()
	sl.l.s.log.Warn().Int("pid", c.PID).Str("reason", string(r)).Str("detail", detail).Msg("reload: new process failed; the old one keeps serving")
	sl.l.stopProc(c, r, detail)
}

// abortReload gives up on a reload whose incoming process has not taken
// the slot yet (the app is being stopped or restarted, or its process
// exited).
func (sl *slot[L]) abortReload(why string) {
	if rl := sl.reload; rl != nil && rl.old == nil {
		if rl.in.stopping {
			return // failing already
		}
		sl.failIncoming(rl.in, ReasonReload, "reload abandoned: "+why)
	}
}

// finishSide answers the reload that c, a side process now gone with ex,
// belonged to: done when it was the old process, failed when the new one.
func (sl *slot[L]) finishSide(c *Child[L], ex Exit) {
	l := sl.l
	rl := sl.reload
	var answer error
	switch {
	case rl != nil && c == rl.old:
		sl.reload = nil
	case rl != nil && c == rl.in:
		sl.reload = nil
		answer = fmt.Errorf("%w: the new process failed: %s%s; the old one keeps serving", ErrReloadFailed, describe(ex), detailSuffix(ex))
		if l.shutdown {
			answer = ErrShuttingDown
		}
	default:
		rl = nil
	}
	if sl.reload == nil && (sl.state == Running || sl.state == Starting) {
		sl.msg = ""
	}
	l.emit(Event[L]{Kind: EventGone, Slot: sl.index, Proc: c, Reason: ex.Reason})
	if rl != nil {
		rl.reply <- answer // after the status that shows it
	}
	sl.settle()
}

func deleteChild[L any](cs []*Child[L], c *Child[L]) []*Child[L] {
	out := cs[:0]
	for _, o := range cs {
		if o != c {
			out = append(out, o)
		}
	}
	return out
}

func detailSuffix(ex Exit) string {
	if ex.Detail == "" {
		return ""
	}
	return ": " + ex.Detail
}
