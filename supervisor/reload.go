package supervisor

import (
	"errors"
	"fmt"
	"slices"
)

// A reload runs a second process beside the current one: the incoming one
// (loop.in) starts with the reload's config and is watched like any other;
// once it is ready, the caller's swap moves the traffic to it, it becomes
// the current process and the old one joins the retiring processes, which
// are stopped, recorded and otherwise ignored. If the incoming process
// fails first, it is the one that retires and the reload answers why.

// errReloadBusy is returned by Reload while another reload is under way.
var errReloadBusy = errors.New("a reload is already under way")

// beginReload starts the reload asked for by r; r is answered once the
// reload is settled.
func (l *loop) beginReload(r request) {
	rr := r.reload
	rr.reply = r.reply
	switch {
	case l.shutdown:
		rr.reply <- ErrShuttingDown
		return
	case l.reload != nil:
		rr.reply <- errReloadBusy
		return
	case l.cur == nil || l.cur.stopping || !l.cur.ready:
		rr.reply <- ErrNotServing
		return
	}
	c, err := l.s.spawn(rr.cfg)
	if err != nil {
		rr.reply <- fmt.Errorf("reload: %w", err)
		return
	}
	l.reload, l.in, rr.child = rr, c, c
	l.inTimer = l.s.clk.NewTimer(rr.timeout)
	l.s.log.Info().Int("pid", c.PID).Int("old_pid", l.cur.PID).Msg("reload: new process started beside the running one")
	l.setState(l.st.State, fmt.Sprintf("reloading: new process %d starting", c.PID))
	l.watch(c)
}

// incomingEvent handles an event about the reload's new process.
func (l *loop) incomingEvent(e event) {
	c := e.child
	switch e.kind {
	case evReady:
		if c.ready || c.stopping || c.exited {
			return
		}
		c.ready, c.readySince = true, l.s.clk.Now()
		l.stopInTimer()
		swap, ctx := l.reload.swap, l.ctx
		go func() {
			if swap != nil {
				swap(ctx, c)
			}
			l.s.send(event{kind: evSwapped, child: c})
		}()
	case evSwapped:
		old := l.cur
		l.cur, l.in = c, nil
		l.st.Restarts++
		l.st.PID, l.st.Started, l.st.Ready, l.st.ReadySince, l.st.Tag = c.PID, c.Started, true, c.readySince, c.Tag
		l.setState(Running, "")
		l.s.log.Info().Int("pid", c.PID).Int("old_pid", old.PID).Msg("reload: new process serves; stopping the old one")
		l.retire(old, ReasonReload, fmt.Sprintf("replaced by %d in a reload", c.PID), false)
		l.reload.reply <- nil
		l.reload = nil
	case evRestart:
		if !c.ready {
			l.failIncoming(e.reason, e.detail)
		}
	default:
		l.sideEvent(e)
	}
}

// failIncoming gives up on the reload's new process before it took the
// traffic: it is stopped and the reload answers with why, once its exit is
// recorded.
func (l *loop) failIncoming(r Reason, detail string) {
	c := l.in
	if c == nil {
		return
	}
	l.s.log.Warn().Int("pid", c.PID).Str("reason", string(r)).Str("detail", detail).Msg("reload: new process failed; the old one keeps serving")
	l.retire(c, r, detail, false)
}

// abortReload gives up on the reload under way (the app is being stopped
// or restarted, or its process exited): the new process is stopped and the
// reload answers with why.
func (l *loop) abortReload(why string) {
	if l.in == nil {
		return
	}
	l.failIncoming(ReasonReload, "reload abandoned: "+why)
}

// retire moves c out of the current or incoming slot and stops its tree
// (without the gate: its traffic is settled) unless it is gone already.
func (l *loop) retire(c *Child, r Reason, detail string, gate bool) {
	if c == l.in {
		l.in = nil
		l.stopInTimer()
	}
	l.retiring = append(l.retiring, c)
	if !c.exited {
		c.setRequested(r, detail)
	}
	if !c.stopping {
		c.stopping = true
		l.s.goStopTree(c, gate && !c.exited)
	}
	l.finishSide(c)
}

// sideEvent handles an event about a process beside the current one: the
// reload's new process before it serves, or a retiring one. Its exit is
// recorded; it never decides what the app does next.
func (l *loop) sideEvent(e event) {
	c := e.child
	switch e.kind {
	case evExited:
		c.exited, c.exitedAt = true, e.exit.At
		c.cancel()
		if !c.stopping {
			c.stopping = true
			l.s.goStopTree(c, false)
		}
		go l.s.explain(l.ctx, c, e.exit)
		if c == l.in {
			// Died before it was ready: the reload has failed. Its exit,
			// once explained, says why.
			l.in = nil
			l.stopInTimer()
			l.retiring = append(l.retiring, c)
		}
	case evTreeGone:
		c.treeGone = true
		l.finishSide(c)
	case evExplained:
		ex := e.exit
		c.final = &ex
		l.finishSide(c)
	}
}

// finishSide records the exit of a retiring process once it is explained
// and its tree is gone, and answers the reload it failed, if any.
func (l *loop) finishSide(c *Child) {
	if c.final == nil || !c.treeGone || !slices.Contains(l.retiring, c) {
		return
	}
	l.retiring = slices.DeleteFunc(l.retiring, func(o *Child) bool { return o == c })
	ex := *c.final
	l.record(ex)
	failed := l.reload != nil && c == l.reload.child
	rr := l.reload
	if failed {
		l.reload = nil
	}
	l.setState(l.st.State, l.messageAfterReload()) // published before the reload answers
	if failed {
		rr.reply <- fmt.Errorf("the new process failed: %s%s; the old one keeps serving", describe(ex), detailSuffix(ex))
	}
}

func (l *loop) stopInTimer() {
	if l.inTimer != nil {
		l.inTimer.Stop()
		l.inTimer = nil
	}
}

// messageAfterReload keeps the status message of the current state once a
// reload's side process is settled.
func (l *loop) messageAfterReload() string {
	if l.in != nil {
		return fmt.Sprintf("reloading: new process %d starting", l.in.PID)
	}
	if l.st.State == Running || l.st.State == Starting {
		return ""
	}
	return l.st.Message
}

func detailSuffix(ex Exit) string {
	if ex.Detail == "" {
		return ""
	}
	return ": " + ex.Detail
}
