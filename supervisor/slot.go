package supervisor

import (
	"fmt"
	"slices"
	"time"
)

// slot is one place for an app process: its restart policy state, its
// state word, its current process and the processes beside it (a reload's
// incoming one, retiring ones). Owned by the loop.
type slot[L any] struct {
	l       *loop[L]
	index   int
	track   Tracker
	state   State
	msg     string
	started time.Time // of the last start, also one that failed to spawn
	// restarts counts the slot's starts after its first, and its reloads.
	restarts int
	removing bool // scaled down: removed once its processes are gone

	cur     *Child[L]
	side    []*Child[L]
	after   afterStop // what to do once cur is gone
	backoff *timer
	reload  *reloadPlan[L] // the reload under way
	waits   []waiter
}

// waiter is a request answered once the slot has settled: its process
// ready (from the process of generation from on), or everything stopped.
type waiter struct {
	stopped bool // wait until stopped; else until ready
	from    uint64
	done    func(error)
}

func (sl *slot[L]) setState(st State, msg string) {
	sl.state, sl.msg = st, msg
	sl.l.emit(Event[L]{Kind: EventChanged, Slot: sl.index})
	sl.settle()
}

// settle answers the waiters whose wait is over.
func (sl *slot[L]) settle() {
	sl.waits = slices.DeleteFunc(sl.waits, func(w waiter) bool {
		var err error
		switch {
		case w.stopped:
			if sl.cur != nil || len(sl.side) > 0 || (sl.state != Stopped && sl.state != Failed) {
				return false
			}
		case sl.cur != nil && sl.cur.ready && !sl.cur.stopping && sl.cur.Gen >= w.from:
		case sl.cur == nil && sl.state == Failed:
			err = fmt.Errorf("%w: %s", ErrStartFailed, sl.msg)
		case sl.cur == nil && sl.state == Stopped:
			err = ErrStopped
		default:
			return false
		}
		w.done(err)
		return true
	})
}

// ended answers the waiters for a ready process that c was meant to be:
// it ended before it was ready.
func (sl *slot[L]) ended(c *Child[L], ex Exit) {
	if c.ready {
		return
	}
	err := fmt.Errorf("%w: %s%s", ErrStartFailed, describe(ex), detailSuffix(ex))
	if ex.Reason == ReasonRestart || ex.Reason == ReasonStop || ex.Reason == ReasonReload {
		err = ErrStopped
	}
	sl.waits = slices.DeleteFunc(sl.waits, func(w waiter) bool {
		if w.stopped || w.from > c.Gen {
			return false
		}
		w.done(err)
		return true
	})
}

// answerReady answers every waiter for a ready process with err.
func (sl *slot[L]) answerReady(err error) {
	sl.waits = slices.DeleteFunc(sl.waits, func(w waiter) bool {
		if w.stopped {
			return false
		}
		w.done(err)
		return true
	})
}

func (sl *slot[L]) answerAll(err error) {
	for _, w := range sl.waits {
		w.done(err)
	}
	sl.waits = nil
}

func (sl *slot[L]) waitReady(from uint64, done func(error)) {
	sl.waits = append(sl.waits, waiter{from: from, done: done})
}

// nextGen is the generation of the next process to be spawned.
func (sl *slot[L]) nextGen() uint64 { return sl.l.s.gen.Load() + 1 }

func (sl *slot[L]) stopReq(done func(error)) {
	sl.abortReload("the app was stopped")
	sl.cancelBackoff()
	sl.answerReady(ErrStopped)
	sl.waits = append(sl.waits, waiter{stopped: true, done: done})
	if sl.cur != nil {
		sl.after = afterStay
		sl.stopCur(ReasonStop, "stopped by request")
		return
	}
	sl.setState(Stopped, "stopped by request")
}

func (sl *slot[L]) restartReq(done func(error)) {
	sl.abortReload("the app was restarted")
	sl.track.Reset()
	sl.waitReady(sl.nextGen(), done)
	if sl.cur != nil {
		sl.after = afterRestart
		sl.stopCur(ReasonRestart, "restarted by request")
		return
	}
	sl.cancelBackoff()
	sl.start()
}

func (sl *slot[L]) startReq(done func(error)) {
	switch c := sl.cur; {
	case c != nil && !c.stopping:
		sl.waitReady(c.Gen, done) // at once when it is ready
		sl.settle()
	case c != nil:
		sl.after = afterRestart // start after the stop under way
		sl.waitReady(sl.nextGen(), done)
	default:
		sl.cancelBackoff()
		sl.track.Reset()
		sl.waitReady(sl.nextGen(), done)
		sl.start()
	}
}

// start spawns the slot's process. A failure to spawn counts as a crash,
// so the restart policy (and in the end the failed state) applies to it too.
func (sl *slot[L]) start() {
	l := sl.l
	if !sl.started.IsZero() {
		l.restarts++
		sl.restarts++
	}
	sl.after = afterDecide
	sl.started = l.s.clk.Now()
	c, err := l.spawn(sl, l.s.Config(sl.index))
	if err != nil {
		l.s.log.Error().Err(err).Msg("cannot start app")
		now := l.s.clk.Now()
		c = &Child[L]{s: l.s, Slot: sl.index, Gen: l.s.gen.Add(1), Started: now, cancel: func() {}}
		c.exited, c.exitedAt, c.treeGone, c.stopping = true, now, true, true
		c.final = &Exit{At: now, Reason: ReasonCrashed, Detail: err.Error()}
		sl.cur = c
		sl.finish(c)
		return
	}
	sl.cur = c
	sl.state, sl.msg = Starting, ""
	l.emit(Event[L]{Kind: EventStarted, Slot: sl.index, Proc: c})
	l.watch(c)
}

// stopCur begins stopping the current process for reason r.
func (sl *slot[L]) stopCur(r Reason, detail string) {
	c := sl.cur
	if !c.stopping {
		sl.state, sl.msg = Stopping, detail
	}
	sl.l.stopProc(c, r, detail)
}

func (sl *slot[L]) cancelBackoff() {
	sl.backoff.Stop()
	sl.backoff = nil
}

// event handles an event about a process of the slot.
func (sl *slot[L]) event(e event[L]) {
	c := e.child
	if c != sl.cur && !slices.Contains(sl.side, c) {
		return // about a process already gone
	}
	l := sl.l
	switch e.kind {
	case evReady:
		if c.ready || c.stopping || c.exited {
			return
		}
		c.ready, c.readySince = true, l.s.clk.Now()
		if c != sl.cur {
			sl.incomingReady(c)
			return
		}
		sl.state, sl.msg = Running, ""
		l.emit(Event[L]{Kind: EventReady, Slot: sl.index, Proc: c})
		sl.settle()
	case evRestart:
		if r, _ := c.requested(); r != "" || c.stopping {
			return
		}
		if c != sl.cur {
			sl.failIncoming(c, e.reason, e.detail)
			return
		}
		l.s.log.Warn().Str("reason", string(e.reason)).Str("detail", e.detail).Int("pid", c.PID).Msg("restarting app")
		sl.after = afterDecide
		sl.stopCur(e.reason, e.detail)
	case evExited:
		byItself := !c.stopping
		l.exited(c, e.exit.At)
		if c == sl.cur {
			if byItself {
				// It died by itself: stop answering for it at once.
				sl.setState(Stopping, "exited; clearing its process tree")
			}
			sl.abortReload("the running process exited")
		}
		l.explaining++
		go func() {
			l.s.explain(l.ctx, c, e.exit)
			l.s.send(event[L]{kind: evExplainDone})
		}()
	case evTreeGone:
		c.treeGone = true
		sl.finish(c)
	case evExplained:
		ex := e.exit
		c.final = &ex
		sl.finish(c)
	}
}

// finish records c's exit once it is explained and its whole tree is gone,
// then decides what follows: for the current process, what the slot does
// next; for a side process, the reload it belonged to is answered.
func (sl *slot[L]) finish(c *Child[L]) {
	if c.final == nil || !c.treeGone {
		return
	}
	l := sl.l
	ex := *c.final
	ex.Slot = sl.index
	l.record(ex)
	go c.closeOutput()
	if c != sl.cur {
		sl.side = deleteChild(sl.side, c)
		sl.finishSide(c, ex)
		return
	}
	sl.cur = nil
	l.emit(Event[L]{Kind: EventGone, Slot: sl.index, Proc: c, Reason: ex.Reason})
	sl.ended(c, ex)
	sl.next(c, ex)
}

// next decides what follows the exit of c: stay stopped, start again at
// once, or ask the restart policy (backoff, or failed once the budget is
// spent).
func (sl *slot[L]) next(c *Child[L], ex Exit) {
	l := sl.l
	if l.shutdown {
		sl.setState(Stopped, "")
		return
	}
	if sl.removing {
		sl.setState(Stopped, "scaled down")
		return
	}
	switch sl.after {
	case afterStay:
		sl.setState(Stopped, "stopped by request")
	case afterRestart:
		sl.start()
	case afterDecide:
		var readyFor time.Duration
		if c.ready {
			readyFor = c.exitedAt.Sub(c.readySince)
		}
		cfg := l.s.Config(sl.index)
		sl.track.Policy = cfg.Policy
		d := sl.track.Decide(ex, readyFor, l.s.clk.Now())
		switch {
		case d.Exhausted:
			msg := fmt.Sprintf("restart budget spent: %d restarts within %s; last exit %s", sl.track.Policy.MaxRestarts, sl.track.Policy.Window, describe(ex))
			l.s.log.Error().Str("reason", string(ex.Reason)).Msg(msg)
			sl.setState(Failed, msg)
			if cfg.ExitOnExhausted {
				l.beginShutdown(ErrExhausted)
			}
		case !d.Restart:
			if ex.Reason == ReasonExited {
				sl.setState(Stopped, "exited with code 0; policy "+sl.track.Policy.Mode)
			} else {
				sl.setState(Failed, describe(ex)+"; policy "+sl.track.Policy.Mode)
			}
		case d.Delay <= 0 && c.spawned:
			sl.start()
		default:
			// Also a failure to spawn with no delay: through the loop, not
			// by recursion.
			sl.backoff = l.newTimer(d.Delay, func() {
				sl.backoff = nil
				sl.start()
			})
			sl.setState(Backoff, fmt.Sprintf("restarting in %s after %s", d.Delay.Round(time.Millisecond), describe(ex)))
		}
	}
}
