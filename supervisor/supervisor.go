package supervisor

import (
	"context"
	"errors"
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
	Command         []string // argv; argv[0] is looked up in the app's PATH unless Path is set
	Path            string   // the program to run, "" = Command[0] looked up
	Dir             string
	Env             []string // the app's whole environment (see BuildEnv)
	Credential      *syscall.Credential
	Policy          Policy
	StopSignal      syscall.Signal
	StopTimeout     time.Duration
	ExitOnExhausted bool // restart.on_exhausted = "exit"
	// Tag is carried unchanged to each Child started with this config
	// (Child.Tag): what the caller started the process with.
	Tag any
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

	// Prepare, if set, is called at each start with the config about to
	// run and returns the one to run (an npm script's command and
	// environment, read afresh from package.json). An error fails the start
	// as a failure to spawn does (a crash).
	Prepare func(Config) (Config, error)

	// Gate, if set, is called before the agent itself stops a process that
	// is still running (a restart, stop, reload or shutdown, or for
	// rss-limit, liveness or start-timeout), with a context that ends after
	// the stop timeout; the stop signal is sent when it returns. The traffic
	// front holds new requests there and lets the in-flight ones finish.
	Gate func(ctx context.Context, c *Child, r Reason)

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
	// ExitCounts counts every exit since the agent started by reason
	// (Exits keeps only the last few).
	ExitCounts map[Reason]uint64
	Message    string // why the state is what it is, for failed and backoff
	Tag        any    // Config.Tag of the current process, nil when none runs
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

	// liveMu guards live: the processes started and not yet fully gone
	// (two during a reload), so that the stop of one leaves the other's
	// tree alone.
	liveMu sync.Mutex
	live   map[*Child]bool

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
		live:   make(map[*Child]bool),
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

// Config returns the config the next start will use.
func (s *Supervisor) Config() Config { return s.config() }

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

// ErrNotServing is returned by Reload when no process is running and ready
// to be replaced: the caller restarts the app instead.
var ErrNotServing = errors.New("the app is not running and ready")

// Reload starts a new process with cfg beside the current one. Once the new
// one is ready, swap is called with it (the traffic front sends new requests
// to it and waits, until its context ends, for the old one's requests in
// flight); then the old process is stopped (reason reload) and the new one
// is the app. If the new process exits, fails its probes or is not ready
// within timeout, its tree is stopped, the old one keeps running, and
// Reload returns an error saying why. It returns once either is settled.
func (s *Supervisor) Reload(ctx context.Context, cfg Config, timeout time.Duration, swap func(ctx context.Context, c *Child)) error {
	r := request{kind: reqReload, reply: make(chan error, 1), reload: &reloadReq{cfg: cfg, timeout: timeout, swap: swap}}
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
)

type request struct {
	kind   reqKind
	reply  chan error
	reload *reloadReq // for reqReload
}

type reloadReq struct {
	cfg     Config
	timeout time.Duration
	swap    func(ctx context.Context, c *Child)
	reply   chan error
	child   *Child // the new process, once started
}
