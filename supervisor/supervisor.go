package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/clock"
)

// ErrExhausted is returned by Run when the restart budget is spent and the
// config says the agent should exit (restart.on_exhausted = "exit").
var ErrExhausted = errors.New("app restart budget exhausted")

// ErrShuttingDown is returned by control requests made while the agent stops.
var ErrShuttingDown = errors.New("agent is shutting down")

// maxExits is how many exits Status keeps.
const maxExits = 20

// Config says what to run and how to treat it.
type Config struct {
	Name            string
	Command         []string // argv; argv[0] is looked up in the app's PATH
	Dir             string
	Env             []string // the app's whole environment (see BuildEnv)
	Credential      *syscall.Credential
	Policy          Policy
	StopSignal      syscall.Signal
	StopTimeout     time.Duration
	ExitOnExhausted bool // restart.on_exhausted = "exit"
}

// Options are the supervisor's collaborators. Only Log is required.
type Options struct {
	Log    zerolog.Logger
	Clock  clock.Clock // nil: the real clock
	Output *Ring       // nil: output is logged only

	// Watch, if set, runs in its own goroutine for each app process, with a
	// context that ends when the process exits. Observers (readiness and
	// liveness probes, the RSS limit) report through c.Ready and c.Restart.
	Watch func(ctx context.Context, c *Child)

	// Explain, if set, is asked about an exit the supervisor cannot explain
	// itself (neither requested, nor a clean exit, nor a V8 heap OOM). With
	// wait false it must answer at once; with wait true it may wait briefly
	// (the kernel's OOM record can land after the exit is seen). The
	// supervisor asks at once, acts on the answer without delay, and for a
	// SIGKILL (or a wrapper's code 137) asks again with wait in the
	// background, amending the recorded exit if the answer comes later.
	Explain func(ctx context.Context, c *Child, e Exit, wait bool) (r Reason, detail string, ok bool)

	// OnChange, if set, is called from the supervisor's loop after every
	// state change with the new status. It must not block.
	OnChange func(Status)

	// Tick and OnTick: OnTick is called from the supervisor's loop every
	// Tick, so a wedged loop stops calling it (the systemd watchdog).
	Tick   time.Duration
	OnTick func()
}

// Status is a snapshot of the supervisor's state.
type Status struct {
	State      State
	PID        int       // 0 when no process runs
	Ready      bool      // the current process was reported ready
	Started    time.Time // start of the current process
	ReadySince time.Time
	Restarts   int    // restarts since the agent started
	Exits      []Exit // newest first
	Message    string // why the state is what it is, for failed and backoff
}

// Supervisor runs one app process and keeps it running.
type Supervisor struct {
	log  zerolog.Logger
	clk  clock.Clock
	opts Options

	cfgMu sync.Mutex
	cfg   Config

	reqs   chan request
	events chan event
	done   chan struct{} // closed when Run returns
	status atomic.Pointer[Status]
	gen    atomic.Uint64

	// ownMu guards owned: the app processes whose exit status belongs to
	// their cmd.Wait, never to the reaper of orphans.
	ownMu sync.Mutex
	owned map[int]bool
}

// New returns a supervisor for cfg. It starts nothing until Run.
func New(cfg Config, opts Options) *Supervisor {
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	s := &Supervisor{
		log:    opts.Log,
		clk:    opts.Clock,
		opts:   opts,
		cfg:    cfg,
		reqs:   make(chan request),
		events: make(chan event, 16),
		done:   make(chan struct{}),
		owned:  make(map[int]bool),
	}
	s.status.Store(&Status{State: Starting})
	return s
}

// SetConfig replaces the config; it applies from the next start of the app.
func (s *Supervisor) SetConfig(cfg Config) {
	s.cfgMu.Lock()
	s.cfg = cfg
	s.cfgMu.Unlock()
}

func (s *Supervisor) config() Config {
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	return s.cfg
}

// Status returns the latest status. It never blocks on the supervisor.
func (s *Supervisor) Status() Status { return *s.status.Load() }

// Restart stops the app (reason restart) and starts it again at once,
// clearing a failed state and the backoff.
func (s *Supervisor) Restart(ctx context.Context) error { return s.ask(ctx, reqRestart) }

// Stop stops the app (reason stop); it stays stopped until Start or Restart.
func (s *Supervisor) Stop(ctx context.Context) error { return s.ask(ctx, reqStop) }

// Start starts a stopped or failed app; it is a no-op when one runs.
func (s *Supervisor) Start(ctx context.Context) error { return s.ask(ctx, reqStart) }

func (s *Supervisor) ask(ctx context.Context, k reqKind) error {
	r := request{kind: k, reply: make(chan error, 1)}
	select {
	case s.reqs <- r:
	case <-s.done:
		return ErrShuttingDown
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

type reqKind int

const (
	reqRestart reqKind = iota
	reqStop
	reqStart
)

type request struct {
	kind  reqKind
	reply chan error
}

// Child is one run of the app process, as observers see it.
type Child struct {
	PID     int
	Gen     uint64
	Started time.Time

	s       *Supervisor
	cmd     *exec.Cmd
	heapOOM atomic.Pointer[string] // the V8 fatal line, once seen
	output  sync.WaitGroup         // the stdout and stderr readers

	reqMu      sync.Mutex
	stopReason Reason // set when the agent stops it
	stopDetail string

	// Owned by the loop.
	ready      bool
	readySince time.Time
	stopping   bool
	exitedAt   time.Time
	exited     bool
	treeGone   bool
	final      *Exit
	cancel     context.CancelFunc
}

// Ready reports that the process serves. Safe from any goroutine; a
// report about a process that is no longer current is ignored.
func (c *Child) Ready() { c.s.send(event{kind: evReady, child: c}) }

// Restart asks for a restart of this process with reason r (rss-limit,
// liveness, start-timeout). Only the first request per process counts.
func (c *Child) Restart(r Reason, detail string) {
	c.s.send(event{kind: evRestart, child: c, reason: r, detail: detail})
}

func (s *Supervisor) send(e event) {
	select {
	case s.events <- e:
	case <-s.done: // Run has returned; nobody listens
	}
}

type evKind int

const (
	evReady evKind = iota
	evRestart
	evExited   // the main process was reaped
	evTreeGone // no process of the tree is left
	evExplained
	evAmend // a later explanation of an exit already recorded
)

type event struct {
	kind   evKind
	child  *Child
	reason Reason
	detail string
	exit   Exit
}

// loop is the state of Run, owned by its goroutine.
type loop struct {
	s        *Supervisor
	ctx      context.Context
	track    Tracker
	cur      *Child
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
	l := &loop{s: s, ctx: ctx, track: Tracker{Policy: s.config().Policy}, st: Status{State: Stopped}}
	var tick <-chan time.Time
	if s.opts.Tick > 0 && s.opts.OnTick != nil {
		t := s.clk.NewTicker(s.opts.Tick)
		defer t.Stop()
		tick = t.C()
	}
	l.start()
	done := ctx.Done()
	for {
		if l.shutdown && l.cur == nil {
			return l.err
		}
		var backoff <-chan time.Time
		if l.backoff != nil {
			backoff = l.backoff.C()
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
		case r := <-s.reqs:
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
		l.cancelBackoff()
		if l.cur != nil {
			l.after = afterStay
			l.stop(ReasonStop, "stopped by request")
			return nil
		}
		l.setState(Stopped, "stopped by request")
	case reqRestart:
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
			l.s.goStopTree(c)
		}
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
	l.s.goStopTree(c)
}

// setRequested records why the agent stops c; the first reason stays.
func (c *Child) setRequested(r Reason, detail string) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	if c.stopReason == "" {
		c.stopReason, c.stopDetail = r, detail
	}
}

// requested returns why the agent stopped c, "" if it did not.
func (c *Child) requested() (Reason, string) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	return c.stopReason, c.stopDetail
}

// maybeFinish acts once the process is both explained and fully gone.
func (l *loop) maybeFinish() {
	c := l.cur
	if c.final == nil || !c.treeGone {
		return
	}
	ex := *c.final
	l.cur = nil
	l.st.PID, l.st.Ready = 0, false
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
	c, err := l.s.spawn()
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
	l.st.PID, l.st.Ready, l.st.Started, l.st.ReadySince = c.PID, false, c.Started, time.Time{}
	l.setState(Starting, "")
	if l.s.opts.Watch != nil {
		ctx, cancel := context.WithCancel(l.ctx)
		c.cancel = cancel
		go l.s.opts.Watch(ctx, c)
	} else {
		c.cancel = func() {}
	}
}

// spawn starts the process with its pipes, in its own process group.
func (s *Supervisor) spawn() (*Child, error) {
	cfg := s.config()
	if len(cfg.Command) == 0 {
		return nil, errors.New("start app: empty command")
	}
	path, err := lookPath(cfg.Command[0], cfg.Env, cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("start app: %w", err)
	}
	cmd := &exec.Cmd{Path: path, Args: cfg.Command, Dir: cfg.Dir, Env: cfg.Env}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cfg.Credential}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start app: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("start app: %w", err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW // stdin: /dev/null
	s.ownMu.Lock()
	err = cmd.Start()
	if err == nil {
		s.owned[cmd.Process.Pid] = true
	}
	s.ownMu.Unlock()
	outW.Close() // the app holds the write ends now
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start app: %w", err)
	}
	c := &Child{PID: cmd.Process.Pid, Gen: s.gen.Add(1), Started: s.clk.Now(), s: s, cmd: cmd}
	if err := resetOOMScore(c.PID); err != nil {
		s.log.Debug().Err(err).Msg("reset oom_score_adj of app")
	}
	s.log.Info().Int("pid", c.PID).Strs("command", cfg.Command).Msg("app started")
	c.output.Add(2)
	go s.capture(c, outR, "stdout")
	go s.capture(c, errR, "stderr")
	go func() {
		// The one place the main process is reaped.
		err := cmd.Wait()
		s.ownMu.Lock()
		delete(s.owned, c.PID)
		s.ownMu.Unlock()
		s.send(event{kind: evExited, child: c, exit: exitOf(cmd.ProcessState, err, s.clk.Now(), c)})
	}()
	return c, nil
}

// exitOf turns a wait result into an Exit with its raw code or signal.
func exitOf(ps *os.ProcessState, err error, at time.Time, c *Child) Exit {
	e := Exit{At: at, PID: c.PID, Uptime: at.Sub(c.Started)}
	if ps == nil {
		e.Reason, e.Detail = ReasonCrashed, fmt.Sprint(err)
		return e
	}
	ws := ps.Sys().(syscall.WaitStatus)
	switch {
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
func (s *Supervisor) explain(ctx context.Context, c *Child, e Exit) {
	// The V8 fatal line may still sit in the pipe: give the readers a moment
	// to reach the end of the output (they end when the whole tree is gone).
	waitTimeout(&c.output, time.Second)
	e = s.classify(ctx, c, e)
	s.send(event{kind: evExplained, child: c, exit: e})
	killed := e.Signal == "SIGKILL" || (e.Code != nil && *e.Code == 137)
	if req, _ := c.requested(); req == "" && s.opts.Explain != nil && killed && (e.Reason == ReasonSignaled || e.Reason == ReasonCrashed) {
		if r, d, ok := s.opts.Explain(ctx, c, e, true); ok {
			e.Reason, e.Detail = r, d
			s.send(event{kind: evAmend, child: c, exit: e})
		}
	}
}

// classify settles the reason of an exit from what is known at once. The
// evidence of a memory death (V8's line, the kernel's record) wins over the
// reason the agent was stopping the process for, since a process stopped for
// failed probes may well have been dying of its heap.
func (s *Supervisor) classify(ctx context.Context, c *Child, e Exit) Exit {
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

// goStopTree stops the process tree in the background: the stop signal to
// the group and every descendant, StopTimeout to exit, then SIGKILL to
// whatever is left, including descendants that left the group. It reports
// evTreeGone when no process of the tree is left.
func (s *Supervisor) goStopTree(c *Child) {
	cfg := s.config()
	go func() {
		pgid := c.PID
		tree, group := appTree(pgid)
		if !group {
			pgid = 0 // empty: its number may be reused; never signal it
		}
		if len(tree) > 0 {
			sig := cfg.StopSignal
			if sig == 0 {
				sig = syscall.SIGTERM
			}
			signalTree(pgid, tree, sig)
			if left := waitGone(tree, cfg.StopTimeout); len(left) > 0 {
				s.log.Warn().Ints("pids", left).Dur("timeout", cfg.StopTimeout).Msg("app did not stop in time; killing its process tree")
			}
			// Kill whatever is left, then look again: a process may have
			// forked while we signalled.
			for i := 0; i < 5; i++ {
				tree, group = appTree(pgid)
				if !group {
					pgid = 0
				}
				if len(tree) == 0 {
					break
				}
				signalTree(pgid, tree, syscall.SIGKILL)
				waitGone(tree, 5*time.Second)
			}
		}
		s.reap()
		s.send(event{kind: evTreeGone, child: c})
	}()
}

// reap collects the app's orphaned descendants that have exited.
func (s *Supervisor) reap() {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	reapOrphans(func(pid int) bool { return s.owned[pid] })
}

// reapOnSIGCHLD reaps orphans as they exit while Run runs, so that an app
// that keeps spawning detached processes does not fill the process table
// with zombies of the agent (its subreaper). The process that runs a
// supervisor must not start other children of its own meanwhile.
func (s *Supervisor) reapOnSIGCHLD() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGCHLD)
	defer signal.Stop(c)
	for {
		select {
		case <-c:
			s.reap()
		case <-s.done:
			return
		}
	}
}

// capture reads one of the app's output streams into the log and the ring.
func (s *Supervisor) capture(c *Child, r *os.File, stream string) {
	defer c.output.Done()
	defer r.Close()
	name := s.config().Name
	_ = readLines(r, func(b []byte, cut bool) {
		text := string(b)
		if stream == "stderr" && c.heapOOM.Load() == nil && isHeapOOM(text) {
			c.heapOOM.Store(&text)
		}
		// The app's output is logged whatever the agent's own log level.
		ev := s.log.Log().Str("level", "info").Str("app", name).Str("stream", stream).Int("pid", c.PID)
		if cut {
			ev = ev.Bool("cut", true)
		}
		ev.Msg(text)
		if s.opts.Output != nil {
			s.opts.Output.Add(Line{Time: time.Now(), Stream: stream, PID: c.PID, Text: text, Cut: cut})
		}
	})
}

// isHeapOOM reports whether line is V8's report of heap exhaustion.
func isHeapOOM(line string) bool {
	return strings.Contains(line, "JavaScript heap out of memory") ||
		strings.Contains(line, "Ineffective mark-compacts near heap limit") ||
		strings.Contains(line, "CALL_AND_RETRY_LAST")
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// lookPath finds file in the PATH of env (the app's), relative to dir for
// names with a slash, as a shell would.
func lookPath(file string, env []string, dir string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil // exec resolves it relative to Dir
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	if path == "" {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, file)
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH %s", file, path)
}
