package supervisor

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"agent/internal/clock"
)

// The loop: Run owns the state of the app and changes it only in answer to
// requests (restart, stop, start), events from the current process (ready,
// restart, exited, tree gone, explained) and the backoff timer.

type evKind int

const (
	evReady evKind = iota
	evRestart
	evExited   // the main process was reaped
	evTreeGone // no process of the tree is left
	evExplained
	evAmend   // a later explanation of an exit already recorded
	evSwapped // a reload's new process took the traffic
)

type event struct {
	kind   evKind
	child  *Child
	reason Reason
	detail string
	exit   Exit
}

// send hands e to the loop. Once Run has returned it drops e.
func (s *Supervisor) send(e event) {
	select {
	case s.events <- e:
	case <-s.done: // Run has returned; nobody listens
	}
}

// loop is the state of Run, owned by its goroutine.
type loop struct {
	s        *Supervisor
	ctx      context.Context
	track    Tracker
	cur      *Child
	reload   *reloadReq // the reload under way, if any
	in       *Child     // its new process, until it replaces cur
	inTimer  clock.Timer
	retiring []*Child // processes being stopped beside cur (replaced or abandoned in a reload)
	st       Status
	backoff  clock.Timer
	after    afterStop // what to do once the current process is gone
	shutdown bool
	err      error // returned by Run once everything is stopped
}

type afterStop int

const (
	afterDecide  afterStop = iota // ask the restart policy
	afterRestart                  // start again at once
	afterStay                     // stay stopped
)

// Run starts the app and supervises it until ctx is cancelled, then stops
// it. It returns nil on a clean shutdown and ErrExhausted when the restart
// budget is spent with ExitOnExhausted.
func (s *Supervisor) Run(ctx context.Context) error {
	defer close(s.done)
	go s.reapOnSIGCHLD()
	l := &loop{s: s, ctx: ctx, track: Tracker{Policy: s.config().Policy}, st: Status{State: Stopped, ExitCounts: map[Reason]uint64{}}}
	var tick <-chan time.Time
	if s.opts.Tick > 0 && s.opts.OnTick != nil {
		t := s.clk.NewTicker(s.opts.Tick)
		defer t.Stop()
		tick = t.C()
	}
	l.start()
	done := ctx.Done()
	for {
		if l.shutdown && l.cur == nil && l.in == nil && len(l.retiring) == 0 {
			return l.err
		}
		var backoff, inTimeout <-chan time.Time
		if l.backoff != nil {
			backoff = l.backoff.C()
		}
		if l.inTimer != nil {
			inTimeout = l.inTimer.C()
		}
		select {
		case <-done:
			done = nil
			l.beginShutdown(nil)
		case <-tick:
			s.opts.OnTick()
		case <-backoff:
			l.backoff = nil
			l.start()
		case <-inTimeout:
			l.inTimer = nil
			l.failIncoming(ReasonStartTimeout, fmt.Sprintf("not ready within %s", l.reload.timeout))
		case r := <-s.reqs:
			if r.kind == reqReload {
				l.beginReload(r)
				continue
			}
			r.reply <- l.handle(r.kind)
		case e := <-s.events:
			l.event(e)
		}
	}
}

func (l *loop) beginShutdown(err error) {
	l.shutdown = true
	l.err = err
	l.cancelBackoff()
	l.abortReload("the agent is shutting down")
	if l.cur != nil {
		l.after = afterStay
		l.stop(ReasonStop, "agent shutting down")
		return
	}
	if l.st.State != Failed {
		l.setState(Stopped, "")
	}
}

func (l *loop) handle(k reqKind) error {
	if l.shutdown {
		return ErrShuttingDown
	}
	switch k {
	case reqStop:
		l.abortReload("the app was stopped")
		l.cancelBackoff()
		if l.cur != nil {
			l.after = afterStay
			l.stop(ReasonStop, "stopped by request")
			return nil
		}
		l.setState(Stopped, "stopped by request")
	case reqRestart:
		l.abortReload("the app was restarted")
		l.track.Reset()
		if l.cur != nil {
			l.after = afterRestart
			l.stop(ReasonRestart, "restarted by request")
			return nil
		}
		l.cancelBackoff()
		l.start()
	case reqStart:
		if l.cur != nil || l.backoff != nil {
			if l.cur != nil && l.cur.stopping && l.after == afterStay {
				l.after = afterRestart // start after the stop under way
			}
			return nil
		}
		l.track.Reset()
		l.start()
	}
	return nil
}

func (l *loop) event(e event) {
	c := e.child
	if e.kind == evAmend {
		if c == l.cur && c.final != nil { // explained before the tree was gone
			c.final.Reason, c.final.Detail = e.exit.Reason, e.exit.Detail
			return
		}
		l.amend(e.exit)
		return
	}
	if c == l.in {
		l.incomingEvent(e)
		return
	}
	if slices.Contains(l.retiring, c) {
		l.sideEvent(e)
		return
	}
	if c != l.cur {
		return // about a process already gone
	}
	switch e.kind {
	case evReady:
		if !c.ready && !c.stopping && !c.exited {
			c.ready, c.readySince = true, l.s.clk.Now()
			l.st.Ready, l.st.ReadySince = true, c.readySince
			l.setState(Running, "")
		}
	case evRestart:
		if r, _ := c.requested(); r == "" && !c.exited {
			l.s.log.Warn().Str("reason", string(e.reason)).Str("detail", e.detail).Int("pid", c.PID).Msg("restarting app")
			l.after = afterDecide
			l.stop(e.reason, e.detail)
		}
	case evExited:
		c.exited, c.exitedAt = true, e.exit.At
		c.cancel()
		if !c.stopping {
			// It died by itself: stop answering for it at once, then clear
			// away what is left of its tree (a wrapper's child, workers).
			c.stopping = true
			l.st.Ready = false
			l.setState(Stopping, "exited; clearing its process tree")
			l.s.goStopTree(c, false)
		}
		l.abortReload("the running process exited")
		go l.s.explain(l.ctx, c, e.exit)
	case evTreeGone:
		c.treeGone = true
		l.maybeFinish()
	case evExplained:
		ex := e.exit
		c.final = &ex
		l.maybeFinish()
	}
}

// amend replaces the reason and detail of a recorded exit.
func (l *loop) amend(ex Exit) {
	for i := range l.st.Exits {
		e := &l.st.Exits[i]
		if e.PID == ex.PID && e.At.Equal(ex.At) {
			l.st.ExitCounts[e.Reason]--
			l.st.ExitCounts[ex.Reason]++
			e.Reason, e.Detail = ex.Reason, ex.Detail
			l.s.log.Warn().Int("pid", ex.PID).Str("reason", string(ex.Reason)).Str("detail", ex.Detail).Msg("app exit explained")
			l.setState(l.st.State, l.st.Message)
			return
		}
	}
}

// stop begins stopping the current process for reason r.
func (l *loop) stop(r Reason, detail string) {
	c := l.cur
	if !c.exited {
		c.setRequested(r, detail)
	}
	if c.stopping {
		return
	}
	c.stopping = true
	l.st.Ready = false
	l.setState(Stopping, detail)
	l.s.goStopTree(c, !c.exited)
}

// maybeFinish acts once the current process is both explained and fully
// gone: it records the exit, then decides what comes next.
func (l *loop) maybeFinish() {
	c := l.cur
	if c.final == nil || !c.treeGone {
		return
	}
	ex := *c.final
	l.cur = nil
	l.st.PID, l.st.Ready, l.st.Tag = 0, false, nil
	l.record(ex)
	l.next(c, ex)
}

// record adds the exit to the status and logs it.
func (l *loop) record(ex Exit) {
	l.st.ExitCounts[ex.Reason]++
	l.st.Exits = append([]Exit{ex}, l.st.Exits...)
	if len(l.st.Exits) > maxExits {
		l.st.Exits = l.st.Exits[:maxExits]
	}
	ev := l.s.log.Info()
	if ex.Reason != ReasonExited && ex.Reason != ReasonStop && ex.Reason != ReasonRestart {
		ev = l.s.log.Warn()
	}
	ev = ev.Int("pid", ex.PID).Str("reason", string(ex.Reason)).Float64("uptime_seconds", ex.Uptime.Seconds())
	if ex.Code != nil {
		ev = ev.Int("code", *ex.Code)
	}
	if ex.Signal != "" {
		ev = ev.Str("signal", ex.Signal)
	}
	if ex.Detail != "" {
		ev = ev.Str("detail", ex.Detail)
	}
	ev.Msg("app exited")
}

// next decides what follows the exit of c: stay stopped, start again at
// once, or ask the restart policy (backoff, or failed once the budget is
// spent).
func (l *loop) next(c *Child, ex Exit) {
	if l.shutdown {
		l.setState(Stopped, "")
		return
	}
	switch l.after {
	case afterStay:
		l.setState(Stopped, "stopped by request")
	case afterRestart:
		l.start()
	case afterDecide:
		var readyFor time.Duration
		if c.ready {
			readyFor = c.exitedAt.Sub(c.readySince)
		}
		l.track.Policy = l.s.config().Policy
		d := l.track.Decide(ex, readyFor, l.s.clk.Now())
		switch {
		case d.Exhausted:
			msg := fmt.Sprintf("restart budget spent: %d restarts within %s; last exit %s", l.track.Policy.MaxRestarts, l.track.Policy.Window, describe(ex))
			l.s.log.Error().Str("reason", string(ex.Reason)).Msg(msg)
			l.setState(Failed, msg)
			if l.s.config().ExitOnExhausted {
				l.beginShutdown(ErrExhausted)
			}
		case !d.Restart:
			if ex.Reason == ReasonExited {
				l.setState(Stopped, "exited with code 0; policy "+l.track.Policy.Mode)
			} else {
				l.setState(Failed, describe(ex)+"; policy "+l.track.Policy.Mode)
			}
		case d.Delay <= 0:
			l.start()
		default:
			l.backoff = l.s.clk.NewTimer(d.Delay)
			l.setState(Backoff, fmt.Sprintf("restarting in %s after %s", d.Delay.Round(time.Millisecond), describe(ex)))
		}
	}
}

func (l *loop) cancelBackoff() {
	if l.backoff != nil {
		l.backoff.Stop()
		l.backoff = nil
	}
}

func (l *loop) setState(st State, msg string) {
	l.st.State, l.st.Message = st, msg
	snap := l.st
	snap.Exits = append([]Exit(nil), l.st.Exits...)
	snap.ExitCounts = maps.Clone(l.st.ExitCounts)
	l.s.status.Store(&snap)
	if l.s.opts.OnChange != nil {
		l.s.opts.OnChange(snap)
	}
}

// start spawns a new process. A failure to spawn counts as a crash, so the
// restart policy (and in the end the failed state) applies to it too.
func (l *loop) start() {
	if l.s.gen.Load() > 0 {
		l.st.Restarts++
	}
	l.after = afterDecide
	c, err := l.s.spawn(l.s.config())
	if err != nil {
		l.s.log.Error().Err(err).Msg("cannot start app")
		now := l.s.clk.Now()
		c = &Child{s: l.s, Gen: l.s.gen.Add(1), Started: now, cancel: func() {}}
		c.exited, c.exitedAt, c.treeGone, c.stopping = true, now, true, true
		c.final = &Exit{At: now, Reason: ReasonCrashed, Detail: err.Error()}
		l.cur = c
		l.st.PID, l.st.Ready, l.st.Started = 0, false, now
		l.maybeFinish()
		return
	}
	l.cur = c
	l.st.PID, l.st.Ready, l.st.Started, l.st.ReadySince, l.st.Tag = c.PID, false, c.Started, time.Time{}, c.Tag
	l.setState(Starting, "")
	l.watch(c)
}

// watch starts the observers of c (Options.Watch) until it exits.
func (l *loop) watch(c *Child) {
	if l.s.opts.Watch != nil {
		ctx, cancel := context.WithCancel(l.ctx)
		c.cancel = cancel
		go l.s.opts.Watch(ctx, c)
	} else {
		c.cancel = func() {}
	}
}
