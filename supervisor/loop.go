package supervisor

import (
	"context"
	"maps"
	"slices"
	"time"

	"agent/internal/clock"
)

// The loop: Run's goroutine owns the state of every slot and process and
// changes it only in answer to requests (restart, stop, start, reload),
// events from the processes (ready, restart, exited, tree gone, explained)
// and its timers. Each change is published as one Event with the status
// after it.
//
// A slot is one place for an app process, with its restart policy state
// (Tracker), its state word and its current process. Beside the current
// process a slot can hold side processes: a reload's incoming one, and
// retiring ones (replaced or abandoned) being stopped. A process moves
// spawned → ready → stopping → gone; it is finished (its exit recorded)
// once its exit is explained and its whole tree is gone, whatever its role.

type evKind int

const (
	evReady evKind = iota
	evRestart
	evExited   // the main process was reaped
	evTreeGone // no process of the tree is left
	evExplained
	evAmend // a later explanation of an exit already recorded
	evTimer // a loop timer fired
)

type event[L any] struct {
	kind   evKind
	child  *Child[L]
	reason Reason
	detail string
	exit   Exit
	timer  *timer
}

// send hands e to the loop. Once Run has returned it drops e.
func (s *Supervisor[L]) send(e event[L]) {
	select {
	case s.events <- e:
	case <-s.done: // Run has returned; nobody listens
	}
}

// timer is a loop timer: when it fires, fire runs in the loop, unless it
// was stopped first.
type timer struct {
	t       clock.Timer
	stop    chan struct{}
	stopped bool // owned by the loop
	fire    func()
}

func (tm *timer) Stop() {
	if tm != nil && !tm.stopped {
		tm.stopped = true
		tm.t.Stop()
		close(tm.stop)
	}
}

func (l *loop[L]) newTimer(d time.Duration, fire func()) *timer {
	tm := &timer{t: l.s.clk.NewTimer(d), stop: make(chan struct{}), fire: fire}
	go func() {
		select {
		case <-tm.t.C():
			l.s.send(event[L]{kind: evTimer, timer: tm})
		case <-tm.stop:
		}
	}()
	return tm
}

// loop is the state of Run, owned by its goroutine.
type loop[L any] struct {
	s          *Supervisor[L]
	ctx        context.Context
	slots      []*slot[L]
	restarts   int
	exits      []Exit
	exitCounts map[Reason]uint64
	shutdown   bool
	err        error // returned by Run once everything is stopped
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
func (s *Supervisor[L]) Run(ctx context.Context) error {
	defer close(s.done)
	go s.reapOnSIGCHLD(s.done)
	l := &loop[L]{s: s, ctx: ctx, exitCounts: map[Reason]uint64{}}
	l.slots = []*slot[L]{{l: l, track: Tracker{Policy: s.Config().Policy}, state: Stopped}}
	var tick <-chan time.Time
	if s.opts.Tick > 0 && s.opts.OnTick != nil {
		t := s.clk.NewTicker(s.opts.Tick)
		defer t.Stop()
		tick = t.C()
	}
	for _, sl := range l.slots {
		sl.start()
	}
	done := ctx.Done()
	for {
		if l.shutdown && l.idle() {
			for _, sl := range l.slots {
				sl.answerAll(ErrShuttingDown)
			}
			return l.err
		}
		select {
		case <-done:
			done = nil
			l.beginShutdown(nil)
		case <-tick:
			s.opts.OnTick()
		case r := <-s.reqs:
			l.request(r)
		case e := <-s.events:
			l.event(e)
		}
	}
}

// idle reports whether no process of any slot is left.
func (l *loop[L]) idle() bool {
	for _, sl := range l.slots {
		if sl.cur != nil || len(sl.side) > 0 {
			return false
		}
	}
	return true
}

func (l *loop[L]) beginShutdown(err error) {
	if l.shutdown {
		return
	}
	l.shutdown = true
	l.err = err
	for _, sl := range l.slots {
		sl.cancelBackoff()
		sl.abortReload("the agent is shutting down")
		sl.answerReady(ErrShuttingDown)
		if sl.cur != nil {
			sl.after = afterStay
			sl.stopCur(ReasonStop, "agent shutting down")
			continue
		}
		if sl.state != Failed {
			sl.setState(Stopped, "")
		}
	}
}

// request acts on an agentctl request. The app has one slot today; each
// request is answered once its transition is complete.
func (l *loop[L]) request(r request[L]) {
	if l.shutdown {
		r.reply <- ErrShuttingDown
		return
	}
	sl := l.slots[0]
	switch r.kind {
	case reqStop:
		sl.stopReq(r.reply)
	case reqRestart:
		sl.restartReq(r.reply)
	case reqStart:
		sl.startReq(r.reply)
	case reqReload:
		sl.beginReload(r)
	}
}

func (l *loop[L]) event(e event[L]) {
	switch e.kind {
	case evTimer:
		if !e.timer.stopped {
			e.timer.stopped = true
			e.timer.fire()
		}
		return
	case evAmend:
		c := e.child
		if c.final != nil && !c.treeGone { // explained before it was recorded
			c.final.Reason, c.final.Detail = e.exit.Reason, e.exit.Detail
			return
		}
		l.amend(e.exit)
		return
	}
	l.slots[e.child.slot].event(e)
}

// amend replaces the reason and detail of a recorded exit.
func (l *loop[L]) amend(ex Exit) {
	for i := range l.exits {
		e := &l.exits[i]
		if e.PID == ex.PID && e.At.Equal(ex.At) {
			l.exitCounts[e.Reason]--
			l.exitCounts[ex.Reason]++
			e.Reason, e.Detail = ex.Reason, ex.Detail
			l.s.log.Warn().Int("pid", ex.PID).Str("reason", string(ex.Reason)).Str("detail", ex.Detail).Msg("app exit explained")
			l.emit(Event[L]{Kind: EventChanged})
			return
		}
	}
}

// record adds the exit to the status and logs it.
func (l *loop[L]) record(ex Exit) {
	l.exitCounts[ex.Reason]++
	l.exits = append([]Exit{ex}, l.exits...)
	if len(l.exits) > maxExits {
		l.exits = l.exits[:maxExits]
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

// emit publishes the status after a change and sends ev with it.
func (l *loop[L]) emit(ev Event[L]) {
	snap := l.snapshot()
	l.s.status.Store(snap)
	if l.s.opts.Events != nil {
		ev.Status = *snap
		l.s.opts.Events <- ev
	}
}

// snapshot is the status as it is now: the app's one slot.
func (l *loop[L]) snapshot() *Status[L] {
	sl := l.slots[0]
	st := &Status[L]{
		State:      sl.state,
		Message:    sl.msg,
		Restarts:   l.restarts,
		Exits:      slices.Clone(l.exits),
		ExitCounts: maps.Clone(l.exitCounts),
		Started:    sl.started,
	}
	if c := sl.cur; c != nil && c.cmd != nil {
		st.PID, st.Ready, st.Started, st.ReadySince, st.Launch = c.PID, c.ready && !c.stopping, c.Started, c.readySince, c.Launch
		st.Live = append(st.Live, c)
	}
	st.Live = append(st.Live, sl.side...)
	return st
}

// watch starts the observers of c (Options.Watch) until it exits.
func (l *loop[L]) watch(c *Child[L]) {
	if l.s.opts.Watch != nil {
		ctx, cancel := context.WithCancel(l.ctx)
		c.cancel = cancel
		go l.s.opts.Watch(ctx, c)
	} else {
		c.cancel = func() {}
	}
}

// spawn starts a process for slot sl with cfg.
func (l *loop[L]) spawn(sl *slot[L], cfg Config[L]) (*Child[L], error) {
	c, err := l.s.spawn(cfg)
	if err != nil {
		return nil, err
	}
	c.slot = sl.index
	return c, nil
}

// stopProc begins stopping c for r. The stop of a process that still runs
// is gated (EventStopping is answered first) when events are on.
func (l *loop[L]) stopProc(c *Child[L], r Reason, detail string) {
	if !c.exited {
		c.setRequested(r, detail)
	}
	if c.stopping {
		return
	}
	c.stopping = true
	if !c.exited && l.s.opts.Events != nil {
		c.gate = make(chan func(context.Context) int, 1)
	}
	l.emit(Event[L]{Kind: EventStopping, Proc: c, Reason: r, gate: c.gate})
	l.s.goStopTree(c)
}

// exited marks c's main process reaped; a process that died by itself has
// the rest of its tree cleared away (a wrapper's child, workers).
func (l *loop[L]) exited(c *Child[L], at time.Time) {
	c.exited, c.exitedAt = true, at
	c.cancel()
	if !c.stopping {
		c.stopping = true
		l.s.goStopTree(c)
	}
}
