package supervisor

import (
	"context"
	"fmt"
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
	evExplainDone
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
	at      time.Time // when it fires
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
	tm := &timer{at: l.s.clk.Now().Add(d), t: l.s.clk.NewTimer(d), stop: make(chan struct{}), fire: fire}
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
	explaining int   // exits whose explanation may still change
	freeze     *freezeReq[L]
	tick       <-chan time.Time // the watchdog's
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
	for i := range s.Slots() {
		l.slots = append(l.slots, l.newSlot(i))
	}
	if s.opts.Tick > 0 && s.opts.OnTick != nil {
		t := s.clk.NewTicker(s.opts.Tick)
		defer t.Stop()
		l.tick = t.C()
	}
	if s.adopted != nil {
		l.restore(s.adopted)
		s.adopted = nil
	} else {
		for _, sl := range l.slots {
			sl.start()
		}
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
		case <-l.tick:
			s.opts.OnTick()
		case r := <-s.reqs:
			l.request(r)
		case e := <-s.events:
			l.event(e)
		}
		l.tryFreeze()
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

func (l *loop[L]) newSlot(i int) *slot[L] {
	return &slot[L]{l: l, index: i, track: Tracker{Policy: l.s.Config(i).Policy}, state: Stopped}
}

// request acts on an agentctl request; each is answered once its
// transition is complete. Restart and reload are of one slot (the agent
// rolls them over the slots); stop, start and scale are of the app.
func (l *loop[L]) request(r request[L]) {
	if r.kind == reqFreeze {
		l.freezeRequest(r.freeze)
		return
	}
	if l.shutdown {
		r.reply <- ErrShuttingDown
		return
	}
	switch r.kind {
	case reqStop:
		j := newJoin(len(l.slots), r.reply)
		for _, sl := range l.slots {
			sl.stopReq(j.done)
		}
	case reqStart:
		j := newJoin(len(l.slots), r.reply)
		for _, sl := range l.slots {
			sl.startReq(j.done)
		}
	case reqScale:
		l.scale(r)
	case reqRestart, reqReload:
		if r.slot < 0 || r.slot >= len(l.slots) || l.slots[r.slot].removing {
			r.reply <- fmt.Errorf("%w: %d", ErrNoSlot, r.slot)
			return
		}
		if sl := l.slots[r.slot]; r.kind == reqRestart {
			sl.restartReq(func(err error) { r.reply <- err })
		} else {
			sl.beginReload(r)
		}
	}
}

// scale adds the slots past the last and removes those past len(r.cfgs).
func (l *loop[L]) scale(r request[L]) {
	n := len(r.cfgs)
	l.s.cfgMu.Lock()
	for i, cfg := range r.cfgs {
		if i < len(l.s.cfgs) {
			continue // running slots keep theirs until SetConfig
		}
		l.s.cfgs = append(l.s.cfgs, cfg)
	}
	l.s.cfgMu.Unlock()
	var adds, removes []*slot[L]
	for i := len(l.slots); i < n; i++ {
		sl := l.newSlot(i)
		l.slots = append(l.slots, sl)
		adds = append(adds, sl)
	}
	for _, sl := range l.slots[min(n, len(l.slots)):] {
		if !sl.removing {
			removes = append(removes, sl)
		}
	}
	j := newJoin(len(adds)+len(removes), r.reply)
	for _, sl := range adds {
		sl.waitReady(sl.nextGen(), j.done)
		sl.start()
	}
	for _, sl := range removes {
		sl.removing = true
		sl.abortReload("the app was scaled down")
		sl.cancelBackoff()
		sl.answerReady(ErrStopped)
		sl.waits = append(sl.waits, waiter{stopped: true, done: j.done})
		if sl.cur != nil {
			sl.after = afterStay
			sl.stopCur(ReasonStop, "scaled down")
		} else {
			sl.setState(Stopped, "scaled down")
		}
	}
	l.prune()
}

// prune removes the slots that were scaled down once nothing of them is
// left, from the last one back (the others keep their indices).
func (l *loop[L]) prune() {
	n := len(l.slots)
	for n > 1 {
		sl := l.slots[n-1]
		if !sl.removing || sl.cur != nil || len(sl.side) > 0 {
			break
		}
		n--
	}
	if n == len(l.slots) {
		return
	}
	l.slots = l.slots[:n]
	l.s.cfgMu.Lock()
	l.s.cfgs = l.s.cfgs[:n]
	l.s.cfgMu.Unlock()
	l.emit(Event[L]{Kind: EventChanged, Slot: n})
}

// join answers reply once n parts are done, with the first error.
type join struct {
	left  int
	err   error
	reply chan error
}

func newJoin(n int, reply chan error) *join {
	j := &join{left: n, reply: reply}
	if n == 0 {
		reply <- nil
	}
	return j
}

func (j *join) done(err error) {
	if j.err == nil {
		j.err = err
	}
	if j.left--; j.left == 0 {
		j.reply <- j.err
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
	case evExplainDone:
		l.explaining--
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
	if i := e.child.Slot; i < len(l.slots) {
		l.slots[i].event(e)
		l.prune()
	}
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

// snapshot is the status as it is now. With one slot, its top-level fields
// are the slot's; with more: state running when all serve, degraded while
// some but not all do, else the state of the slot furthest from serving;
// pid and launch slot 0's; ready while any serves; started the earliest of
// the running processes (the longest uptime).
func (l *loop[L]) snapshot() *Status[L] {
	st := &Status[L]{
		Restarts:   l.restarts,
		Exits:      slices.Clone(l.exits),
		ExitCounts: maps.Clone(l.exitCounts),
	}
	serving := 0
	worst := -1
	for _, sl := range l.slots {
		ss := SlotStatus[L]{Index: sl.index, State: sl.state, Message: sl.msg, Started: sl.started, Restarts: sl.restarts}
		if c := sl.cur; c != nil && c.spawned {
			ss.PID, ss.Ready, ss.Started, ss.ReadySince, ss.Launch = c.PID, c.ready && !c.stopping, c.Started, c.readySince, c.Launch
			st.Live = append(st.Live, c)
		}
		if ss.Ready && ss.State == Running {
			serving++
		}
		if worst < 0 || farther(ss.State, st.Slots[worst].State) {
			worst = len(st.Slots)
		}
		st.Slots = append(st.Slots, ss)
	}
	for _, sl := range l.slots {
		st.Live = append(st.Live, sl.side...)
	}
	first := st.Slots[0]
	st.State, st.Message, st.PID, st.Ready, st.Started, st.ReadySince, st.Launch =
		first.State, first.Message, first.PID, first.Ready, first.Started, first.ReadySince, first.Launch
	if len(st.Slots) == 1 {
		return st
	}
	st.Ready = serving > 0
	switch {
	case serving == len(st.Slots):
		st.State, st.Message = Running, ""
	case serving > 0:
		st.State, st.Message = Degraded, fmt.Sprintf("%d of %d processes serve", serving, len(st.Slots))
	default:
		st.State, st.Message = st.Slots[worst].State, st.Slots[worst].Message
	}
	for _, ss := range st.Slots {
		if ss.PID != 0 && ss.Started.Before(st.Started) {
			st.Started = ss.Started
		}
	}
	return st
}

// farther reports whether a is farther from serving than b: failed,
// stopped, stopping, backoff, starting, then running.
func farther(a, b State) bool {
	rank := func(s State) int {
		switch s {
		case Failed:
			return 5
		case Stopped:
			return 4
		case Stopping:
			return 3
		case Backoff:
			return 2
		case Starting:
			return 1
		}
		return 0
	}
	return rank(a) > rank(b)
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
	return l.s.spawn(sl.index, cfg)
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
	l.emit(Event[L]{Kind: EventStopping, Slot: c.Slot, Proc: c, Reason: r, gate: c.gate})
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
