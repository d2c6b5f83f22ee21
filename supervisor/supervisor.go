package supervisor

import (
	"context"
	"errors"
	"slices"
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

// ErrStopped is returned by Restart and Start when the app was stopped (or
// restarted again) before the process they started was ready.
var ErrStopped = errors.New("the app was stopped or restarted meanwhile")

// ErrStartFailed wraps why the process a Restart or Start began ended
// before it was ready.
var ErrStartFailed = errors.New("the new process failed")

// maxExits is how many exits Status keeps.
const maxExits = 20

// Config says what to run and how to treat it. L is what the caller starts
// a process with (its launch); it is carried unchanged to the Child.
type Config[L any] struct {
	Name            string
	Command         []string // argv; argv[0] is looked up in the app's PATH unless Path is set
	Path            string   // the program to run, "" = Command[0] looked up
	Dir             string
	Env             []string // the app's whole environment (see BuildEnv)
	Credential      *syscall.Credential
	Policy          Policy
	StopSignal      syscall.Signal
	StopTimeout     time.Duration
	ExitOnExhausted bool // restart.on_exhausted = "exit"
	Launch          L
}

// Options are the supervisor's collaborators. Only Log is required.
type Options[L any] struct {
	Log    zerolog.Logger
	Clock  clock.Clock // nil: the real clock
	Output *Ring       // nil: output is logged only

	// Watch, if set, runs in its own goroutine for each app process, with a
	// context that ends when the process exits. Observers (readiness and
	// liveness probes, the RSS limit) report through c.Ready and c.Restart.
	Watch func(ctx context.Context, c *Child[L])

	// Explain, if set, is asked about an exit the supervisor cannot explain
	// itself (neither requested, nor a clean exit, nor a V8 heap OOM). With
	// wait false it must answer at once; with wait true it may wait briefly
	// (the kernel's OOM record can land after the exit is seen). The
	// supervisor asks at once, acts on the answer without delay, and for a
	// SIGKILL (or a wrapper's code 137) asks again with wait in the
	// background, amending the recorded exit if the answer comes later.
	Explain func(ctx context.Context, c *Child[L], e Exit, wait bool) (r Reason, detail string, ok bool)

	// Prepare, if set, is called at each start with the config about to
	// run and returns the one to run (an npm script's command and
	// environment, read afresh from package.json). An error fails the start
	// as a failure to spawn does (a crash).
	Prepare func(Config[L]) (Config[L], error)

	// Events, if set, receives every change, in order (see Event). The
	// loop waits for room in it: its one reader must never block for long.
	// With Events, every stop the agent itself asks for of a running
	// process is gated: see EventStopping.
	Events chan<- Event[L]

	// Tick and OnTick: OnTick is called from the supervisor's loop every
	// Tick, so a wedged loop stops calling it (the systemd watchdog).
	Tick   time.Duration
	OnTick func()
}

// SlotStatus is one slot's part of a Status.
type SlotStatus[L any] struct {
	Index      int
	State      State
	Message    string
	PID        int // 0 when no process runs
	Ready      bool
	Started    time.Time
	ReadySince time.Time
	Restarts   int
	Launch     L // of its current process; the zero L when none runs
}

// Status is a snapshot of the supervisor's state. With one slot its
// top-level fields are the slot's; with more they sum the slots up as the
// contract's "Instances" says (see snapshot).
type Status[L any] struct {
	State      State
	PID        int       // 0 when no process runs
	Ready      bool      // the current process was reported ready
	Started    time.Time // start of the current process
	ReadySince time.Time
	Restarts   int    // restarts since the agent started
	Exits      []Exit // newest first
	// ExitCounts counts every exit since the agent started by reason
	// (Exits keeps only the last few).
	ExitCounts map[Reason]uint64
	Message    string // why the state is what it is, for failed and backoff
	Launch     L      // of the current process; the zero L when none runs
	// Live lists every process started and not yet gone, the current ones
	// first (a reload runs two in its slot).
	Live  []*Child[L]
	Slots []SlotStatus[L]
}

// Supervisor runs the app's processes and keeps them running. Its state
// is owned by the goroutine of Run (loop.go); the methods below talk to it.
type Supervisor[L any] struct {
	log  zerolog.Logger
	clk  clock.Clock
	opts Options[L]
	*table

	cfgMu sync.Mutex
	cfgs  []Config[L] // per slot; the loop reads them at each start

	reqs   chan request[L]
	events chan event[L]
	done   chan struct{} // closed when Run returns
	status atomic.Pointer[Status[L]]
	gen    atomic.Uint64

	// An upgrade's freeze (handover.go) holds reapMu: no app process is
	// reaped while it lasts. freezeWhy says what a freeze waits for.
	reapMu    sync.RWMutex
	freezeWhy atomic.Value
	// adopted, if set before Run, is the state a previous program handed
	// over: Run takes its processes on instead of starting new ones.
	adopted *adoption[L]
}

// New returns a supervisor of one slot for cfg. It starts nothing until
// Run.
func New[L any](cfg Config[L], opts Options[L]) *Supervisor[L] {
	return NewSlots([]Config[L]{cfg}, opts)
}

// NewSlots returns a supervisor of one slot for each of cfgs (at least
// one). It starts nothing until Run.
func NewSlots[L any](cfgs []Config[L], opts Options[L]) *Supervisor[L] {
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	s := &Supervisor[L]{
		log:    opts.Log,
		clk:    opts.Clock,
		opts:   opts,
		table:  newTable(opts.Log),
		cfgs:   slices.Clone(cfgs),
		reqs:   make(chan request[L]),
		events: make(chan event[L], 16),
		done:   make(chan struct{}),
	}
	s.freezeWhy.Store("")
	s.status.Store(&Status[L]{State: Starting})
	return s
}

// SetConfig replaces the config of slot; it applies from the slot's next
// start. A slot past the last is ignored (Scale adds slots).
func (s *Supervisor[L]) SetConfig(slot int, cfg Config[L]) {
	s.cfgMu.Lock()
	if slot < len(s.cfgs) {
		s.cfgs[slot] = cfg
	}
	s.cfgMu.Unlock()
}

// Config returns the config the next start of slot will use (the last
// slot's for one past it).
func (s *Supervisor[L]) Config(slot int) Config[L] {
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	return s.cfgs[min(slot, len(s.cfgs)-1)]
}

// Slots returns how many slots the app has (or is being scaled to).
func (s *Supervisor[L]) Slots() int {
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	return len(s.cfgs)
}

// Status returns the latest status. It never blocks on the supervisor.
func (s *Supervisor[L]) Status() Status[L] { return *s.status.Load() }

// ErrNoSlot is returned for a slot the app does not have.
var ErrNoSlot = errors.New("no such app process slot")

// Restart stops slot's process (reason restart, gated) and starts it again
// at once, clearing a failed state and the backoff. It returns once the new
// process is ready, or with an error wrapping ErrStartFailed when it ended
// first.
func (s *Supervisor[L]) Restart(ctx context.Context, slot int) error {
	return s.ask(ctx, request[L]{kind: reqRestart, slot: slot})
}

// Stop stops every slot's process (reason stop) and returns once their
// trees are gone; they stay stopped until Start or Restart.
func (s *Supervisor[L]) Stop(ctx context.Context) error { return s.ask(ctx, request[L]{kind: reqStop}) }

// Scale makes the app's slots those of cfgs, one config each: slots past
// the current last are added and started, slots past len(cfgs) are stopped
// (gated) and removed, the others are not touched (their configs apply
// from their next start). It returns once the new ones are ready and the
// removed ones gone.
func (s *Supervisor[L]) Scale(ctx context.Context, cfgs []Config[L]) error {
	if len(cfgs) == 0 {
		return errors.New("scale: at least one slot")
	}
	return s.ask(ctx, request[L]{kind: reqScale, cfgs: cfgs})
}

// Start starts every stopped or failed slot, or one waiting in backoff,
// and returns once each one's process is ready (at once when it is), or
// with an error wrapping ErrStartFailed when one ended first.
func (s *Supervisor[L]) Start(ctx context.Context) error {
	return s.ask(ctx, request[L]{kind: reqStart})
}

// ErrNotServing is returned by Reload when no process is running and ready
// to be replaced: the caller restarts the app instead.
var ErrNotServing = errors.New("the app is not running and ready")

// ErrReloadBusy is returned by Reload while another reload is under way.
var ErrReloadBusy = errors.New("a reload is already under way")

// ErrReloadFailed wraps why a reload's new process failed; the old one
// keeps serving.
var ErrReloadFailed = errors.New("reload failed")

// Reload starts a new process with cfg beside slot's current one. Once the
// new one is ready it takes the app's place (EventSwapped) and the old one
// is stopped, gated, with reason reload; Reload returns once the old one is
// gone. If the new process exits, asks for a restart or is not ready within
// timeout first, its tree is stopped, the old one keeps running, and Reload
// returns an error wrapping ErrReloadFailed that says why.
func (s *Supervisor[L]) Reload(ctx context.Context, slot int, cfg Config[L], timeout time.Duration) error {
	return s.ask(ctx, request[L]{kind: reqReload, slot: slot, cfg: cfg, timeout: timeout})
}

// ask hands r to the loop and waits for its answer, which the loop gives
// once the transition r asked for is complete.
func (s *Supervisor[L]) ask(ctx context.Context, r request[L]) error {
	r.reply = make(chan error, 1)
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
	reqReload
	reqScale
	reqFreeze
)

type request[L any] struct {
	kind  reqKind
	reply chan error // buffered: the loop never waits on it
	slot  int        // reqRestart, reqReload
	// For reqReload:
	cfg     Config[L]
	timeout time.Duration
	cfgs    []Config[L] // reqScale
	freeze  *freezeReq[L]
}
