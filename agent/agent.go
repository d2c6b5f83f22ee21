package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/clock"
	"agent/internal/handoff"
	"agent/metrics"
	"agent/probe"
	"agent/proxy"
	"agent/supervisor"
)

// Agent is one running agent: it supervises the configured app and answers
// for it to the load balancer, systemd and agentctl.
//
// Who owns what: the supervisor's loop owns the processes and their state;
// Run's goroutine owns the front (front.go: proxy routing, health pages,
// sd_notify) and applies the supervisor's events to it; each process's
// observers (watchChild) own what they observe of it (its launch's
// observed); cfg and gen are replaced whole on SIGHUP.
type Agent struct {
	fds        *fdStore // the listening sockets systemd keeps across restarts
	log        zerolog.Logger
	version    string
	clk        clock.Clock
	logDropped func() uint64
	started    time.Time

	cfg atomic.Pointer[Config]
	gen atomic.Pointer[generation] // the latest; each process keeps its own (launch)

	sup     *appSupervisor
	events  chan appEvent
	rolling chan struct{}        // held by the restart, reload or scale under way
	view    atomic.Pointer[view] // published by the front
	proxy   *proxy.Proxy         // nil when [proxy] is off
	metrics *metrics.Metrics
	health  *probe.HealthServer
	notify  *Notifier
	oom     *probe.OOMWatcher // nil when memory.watch_oom is off
	// memcg is the agent's memory cgroup, which the app shares in a systemd
	// unit: kernel OOM kills are the app's when the victim's task_memcg is
	// in it (a worker too new for any tree sample included). The root
	// cgroup (no unit) matches nothing, and then only PIDs count.
	memcg    probe.MemoryCgroup
	output   *supervisor.Ring
	oomKills atomic.Int64 // kernel OOM kills of the app's processes

	// Upgrades in place (upgrade.go).
	argv          []string // the agent's own, as first started
	flushLog      func()
	exePath       string // the path it was first started as: upgrade's default program
	startedWall   time.Time
	upgrades      int                          // in-place upgrades since the agent first started
	lns           map[string]*handoff.Listener // the listening sockets, by name: control, health, proxy, metrics
	upgrading     atomic.Bool
	pendingReload atomic.Bool   // a SIGHUP that came during an upgrade
	reloadAgain   chan struct{} // that SIGHUP, once the upgrade did not happen
	pendingStop   atomic.Bool   // a SIGTERM that came during an upgrade
	stopAgain     chan struct{} // that SIGTERM, once the upgrade did not happen (or in the new program)
	inherit       *Handover     // what the program before handed over, until Run takes it on
	keptFiles     []*os.File    // its listening sockets' descriptors, kept for a way back until Run takes them on
	tookOver      atomic.Bool   // Run took on what was handed over
}

// ErrSocketInUse is returned by Run when another agent answers on the
// control socket.
var ErrSocketInUse = errors.New("control socket in use by a running agent")

// Options are the agent's collaborators; the zero value is usable.
type Options struct {
	Version string
	Clock   clock.Clock // nil: the real clock
	// LogDropped, if set, counts the log lines the log sinks dropped
	// (agent.log_dropped in status).
	LogDropped func() uint64
	// Argv is the agent's command line (os.Args): an upgrade execs the
	// new program with it, and its first element, made absolute, is the
	// program an upgrade takes by default.
	Argv []string
	// FlushLog, if set, writes out the log lines held in buffers: an
	// upgrade calls it right before its exec.
	FlushLog func()
}

// New returns an agent for cfg. It starts nothing until Run.
func New(cfg *Config, log zerolog.Logger, opts Options) *Agent {
	a, _ := newAgent(cfg, log, opts, nil)
	return a
}

// Restore returns an agent that takes over from the program before it, in
// this same process, with what it handed over (h; cfg is h's config). Its
// Run serves the sockets and supervises the processes of h. An error means
// nothing was taken: the caller execs back (ExecBack).
func Restore(cfg *Config, log zerolog.Logger, opts Options, h *Handover) (*Agent, error) {
	return newAgent(cfg, log, opts, h)
}

// TookOver reports whether Run took on what was handed over: after that,
// going back to the program before is no longer possible.
func (a *Agent) TookOver() bool { return a.tookOver.Load() }

// FaultTakeOverEnv, when set, makes Restore refuse to take over, as a new
// program that cannot would: a fault switch for the tests of going back.
const FaultTakeOverEnv = "AGENT_FAULT_TAKEOVER"

func newAgent(cfg *Config, log zerolog.Logger, opts Options, h *Handover) (*Agent, error) {
	if h != nil && os.Getenv(FaultTakeOverEnv) != "" {
		return nil, errors.New("take-over refused: " + FaultTakeOverEnv + " is set")
	}
	clk := opts.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	logDropped := opts.LogDropped
	if logDropped == nil {
		logDropped = func() uint64 { return 0 }
	}
	a := &Agent{
		log:         log,
		version:     opts.Version,
		clk:         clk,
		logDropped:  logDropped,
		started:     clk.Now(),
		notify:      NewNotifier(log),
		output:      supervisor.NewRing(1000, 1<<20),
		events:      make(chan appEvent, 64),
		rolling:     make(chan struct{}, 1),
		lns:         map[string]*handoff.Listener{},
		reloadAgain: make(chan struct{}, 1),
		stopAgain:   make(chan struct{}, 1),
	}
	a.startedWall = a.started
	a.argv = opts.Argv
	a.flushLog = opts.FlushLog
	if a.flushLog == nil {
		a.flushLog = func() {}
	}
	if len(a.argv) > 0 {
		a.exePath = resolveExePath(a.argv[0])
	}
	n := cfg.App.Instances.Count()
	if h != nil {
		a.inherit = h
		a.argv, a.exePath, a.upgrades = h.Argv, h.ExePath, h.Upgrades
		a.started, a.startedWall = h.StartedMono.Time(clk), h.Started
		n = h.Instances
		if h.Failed != "" {
			a.upgrades-- // back in the program that asked: that upgrade did not happen
		}
	}
	a.cfg.Store(cfg)
	g := a.newGeneration(cfg, n)
	a.gen.Store(g)
	a.health = probe.NewHealthServer(cfg.Health.Listen, cfg.Health.Path, log)
	if cfg.Memory.WatchOOM {
		a.oom = probe.NewOOMWatcher(log.With().Str("component", "oom").Logger(), "/dev/kmsg", a.onOOMKill)
		if m, err := probe.ReadMemoryCgroup("/", "self"); err != nil {
			log.Warn().Err(err).Msg("own memory cgroup unknown: kernel OOM kills are matched by PID only")
		} else {
			a.memcg = m
		}
	}
	a.metrics = metrics.New(a.metricsSnapshot)
	if cfg.ProxyEnabled() {
		a.proxy = proxy.New(proxy.Config{
			Listen:      cfg.Proxy.Listen,
			HealthPath:  cfg.Health.Path,
			Hold:        cfg.Proxy.Hold.D(),
			IdleTimeout: cfg.Proxy.IdleTimeout.D(),
			Affinity:    cfg.Proxy.Affinity == "cookie",
			Observe:     a.metrics.ObserveRequest,
		}, log.With().Str("component", "proxy").Logger(), clk)
	}
	logWarnings(log, cfg.Warnings)
	cfgs := firstConfigs(g)
	if h != nil {
		var err error
		if cfgs, err = a.handedConfigs(g, h); err != nil {
			return nil, err
		}
	}
	a.sup = supervisor.NewSlots(cfgs, supervisor.Options[*launch]{
		Log:     log,
		Clock:   a.clk,
		Output:  a.output,
		Prepare: a.prepare,
		Watch:   a.watchChild,
		Explain: a.explainExit,
		Events:  a.events,
		Tick:    a.notify.WatchdogInterval(),
		OnTick:  a.notify.Watchdog,
	})
	newFront(a) // a view to read before Run
	if h != nil {
		if err := a.takeState(g, h); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// ResolveHeapMB returns the heap cap of each of n app processes for cfg in
// MB: the configured figure, or for "auto" half of the smaller of the
// host's memory and the agent's cgroup limit, divided by n; 0 leaves
// NODE_OPTIONS alone.
func ResolveHeapMB(cfg *Config, n int, log zerolog.Logger) int {
	h := cfg.Node.MaxOldSpaceSize
	if !h.Auto {
		return h.MB
	}
	total, limit, err := probe.MemoryBudget("/")
	if err != nil || total == 0 {
		log.Warn().Err(err).Msg("cannot read the memory size; heap cap left to node (set node.max_old_space_size)")
		return 0
	}
	return probe.AutoHeapMB(total, limit) / max(n, 1)
}

// handoverGrace is how long, on a stop whose traffic port systemd keeps
// for the next start, idle client connections have to send their next
// request (answered with Connection: close) before they are closed.
const handoverGrace = time.Second

// Run runs the agent until ctx is cancelled (SIGTERM, SIGINT) and reloads
// the config on each receive from reload (SIGHUP). It returns nil after a
// clean shutdown.
func (a *Agent) Run(ctx context.Context, reload <-chan struct{}) (err error) {
	cfg := a.cfg.Load()
	// Orphans of the app (daemonized workers) are re-parented to the agent,
	// so that a stop can still reach them.
	if err := supervisor.BecomeSubreaper(); err != nil {
		return err
	}
	// What is bound is closed again if the start fails further on.
	var bound []io.Closer
	defer func() {
		if err != nil {
			for _, c := range bound {
				c.Close()
			}
		}
	}()
	// The control socket first: a second agent must stop (exit 2) on it
	// before it binds anything else.
	ctl, err := a.listenControl(cfg)
	if err != nil {
		return err
	}
	bound = append(bound, ctl)
	// The TCP sockets: handed over by an upgrade, taken back from
	// systemd's store when it kept them, or bound.
	a.fds = newFDStore(a.log)
	ln, err := a.listenTCP("health", cfg.Health.Listen)
	if err != nil {
		return fmt.Errorf("health: listen %s: %w", cfg.Health.Listen, err)
	}
	a.health.UseListener(ln)
	bound = append(bound, closerFunc(a.health.Close))
	if a.proxy != nil {
		ln, err := a.listenTCP("proxy", cfg.Proxy.Listen)
		if err != nil {
			return fmt.Errorf("proxy: listen %s: %w", cfg.Proxy.Listen, err)
		}
		a.proxy.UseListener(ln)
		bound = append(bound, closerFunc(a.proxy.Close))
	}
	metricsLn, err := a.listenMetrics(cfg)
	if err != nil {
		return err
	}
	if metricsLn != nil {
		bound = append(bound, metricsLn)
	}
	a.fds.dropUnused()
	ev := a.log.Info().Str("version", a.version).Str("config", cfg.Path).Int("heap_cap_mb", a.gen.Load().heapMB).
		Str("health", a.health.Addr().String()+cfg.Health.Path).Str("control", cfg.Control.Socket)
	if a.proxy != nil {
		ev = ev.Str("proxy", a.proxy.Addr().String()).Str("upstream", cfg.Proxy.Upstream)
	}
	if metricsLn != nil {
		ev = ev.Str("metrics", metricsLn.Addr().String()+"/metrics")
	}
	ev.Msg("agent starting")

	var wg sync.WaitGroup
	bg, stopBG := context.WithCancel(context.Background())
	defer func() { stopBG(); wg.Wait() }()
	goRun := func(name string, run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(bg); err != nil && !errors.Is(err, context.Canceled) {
				a.log.Error().Err(err).Str("component", name).Msg("stopped")
			}
		}()
	}
	goRun("health", a.health.Run)
	goRun("control", func(ctx context.Context) error { return serveControl(ctx, ctl, a.controlHandler()) })
	if a.proxy != nil {
		goRun("proxy", a.proxy.Run)
	}
	if metricsLn != nil {
		goRun("metrics", func(ctx context.Context) error { return a.metrics.Serve(ctx, metricsLn) })
	}
	if a.oom != nil {
		goRun("oom", a.oom.Run)
	}

	supCtx, stopSup := context.WithCancel(context.Background())
	defer stopSup()
	supDone := make(chan error, 1)
	go func() { supDone <- a.sup.Run(supCtx) }()
	answer := a.takeOver()

	// This goroutine owns the front: every event of the supervisor is
	// applied here, in order, until the supervisor returns.
	f := newFront(a)
	refresh := a.clk.NewTicker(statusRefresh)
	defer refresh.Stop()
	done := ctx.Done()
	var drained <-chan time.Time
	var handedOver chan struct{}
	// stop stops the supervisor, once the proxy has handed its socket over
	// to the next agent when systemd keeps it.
	stop := func() {
		if a.proxy == nil || !a.fds.has("proxy") {
			stopSup()
			return
		}
		a.log.Info().Msg("handing the traffic port over to the next start: new connections wait in its backlog")
		handedOver = make(chan struct{})
		go func() {
			a.proxy.Handover(handoverGrace)
			close(handedOver)
		}()
	}
	for {
		select {
		case ev := <-a.events:
			f.handle(ev)
			if answer != nil {
				// The first event: the processes handed over are back
				// under supervision and routed.
				for len(a.events) > 0 {
					f.handle(<-a.events)
				}
				answer()
				answer = nil
			}
		case <-a.reloadAgain:
			a.reload(f)
		case <-a.stopAgain:
			done = closed // the stop goes on in the done case
			a.stopAgain = nil
		case <-refresh.C():
			f.sendStatus()
		case err := <-supDone:
			for len(a.events) > 0 {
				f.handle(<-a.events)
			}
			if ctx.Err() == nil { // on_exhausted = "exit"
				a.notify.Stopping()
			}
			a.log.Info().Msg("agent stopped")
			return err
		case <-reload:
			if a.upgrading.Load() {
				// Carried to the new program, or done here if the
				// upgrade does not happen.
				a.pendingReload.Store(true)
				a.log.Info().Msg("SIGHUP during an upgrade: the config is reloaded once it is done")
				continue
			}
			a.reload(f)
		case <-done:
			done = nil
			if a.upgrading.Load() {
				// Carried to the new program, or done here if the
				// upgrade does not happen.
				a.pendingStop.Store(true)
				a.log.Info().Msg("asked to stop during an upgrade: the agent stops once it is done")
				continue
			}
			a.notify.Stopping()
			a.notify.Status("stopping")
			d := a.cfg.Load().Stop.Drain.D()
			if d <= 0 {
				stop()
				continue
			}
			f.drain()
			a.log.Info().Dur("drain", d).Msg("draining: health answers 503 before the app stops")
			t := a.clk.NewTimer(d)
			defer t.Stop()
			drained = t.C()
		case <-drained:
			drained = nil
			stop()
		case <-handedOver:
			handedOver = nil
			stopSup()
		}
	}
}

// closed is a channel that is closed: always ready.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// logWarnings logs the config's warnings, each once.
func logWarnings(log zerolog.Logger, ws []Warning) {
	for _, w := range ws {
		log.Warn().Str("key", w.Key).Msg(w.String())
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// reload loads the config again; an invalid one is refused and the running
// config kept. App settings apply from the app's next start.
func (a *Agent) reload(f *front) {
	old := a.cfg.Load()
	a.notify.Reloading()
	defer func() {
		// Reloading ends with READY=1, but a start that is not over must
		// not be completed by a reload.
		if f.readySent {
			a.notify.Ready()
		}
	}()
	cfg, err := Load(old.Path)
	if err != nil {
		a.log.Error().Err(err).Msg("reload refused: config invalid; keeping the running config")
		a.notify.Status("reload refused: " + err.Error())
		return
	}
	logWarnings(a.log, NewWarnings(old, cfg)) // the ones the running config had were said at its load
	if keys := RestartNeeded(old, cfg); len(keys) > 0 {
		a.log.Warn().Strs("keys", keys).Msg(strings.Join(keys, ", ") + " change only when the agent restarts")
	}
	n := a.gen.Load().instances // as agentctl scale left it, unless the config changes it
	if want := cfg.App.Instances.Count(); cfg.App.Instances != old.App.Instances && want != n {
		a.log.Info().Int("from", n).Int("to", want).Msg("app.instances changed")
		go func() {
			if err := a.Scale(context.Background(), want); err != nil {
				a.log.Error().Err(err).Int("to", want).Msg("scale for app.instances failed")
			}
		}()
	}
	g := a.newGeneration(cfg, n)
	a.cfg.Store(cfg)
	a.gen.Store(g)
	for i := range a.sup.Slots() {
		// Each slot's next start keeps the port it has.
		a.sup.SetConfig(i, g.supervisorConfig(i, a.sup.Config(i).Launch.upstream))
	}
	a.log.Info().Str("config", cfg.Path).Msg("config reloaded: [restart] and [stop] apply now; [app], [node], [probe] and [memory] from the app's next start (agentctl restart)")
	f.lastLine = "" // said again after RELOADING=1
	f.sendStatus()
}

func (a *Agent) statusLine(st appStatus) string {
	if n := len(st.Slots); n > 1 {
		ready := 0
		var rss uint64
		for _, ss := range st.Slots {
			if ss.Ready {
				ready++
			}
			rss += ss.Launch.rss()
		}
		return fmt.Sprintf("%s: %d/%d ready, %d restarts, rss %d MB", st.State, ready, n, st.Restarts, rss>>20)
	}
	switch st.State {
	case supervisor.Running, supervisor.Starting:
		return fmt.Sprintf("%s pid %d, %d restarts, rss %d MB", st.State, st.PID, st.Restarts, st.Launch.rss()>>20)
	case supervisor.Failed, supervisor.Backoff:
		return fmt.Sprintf("%s: %s", st.State, st.Message)
	}
	if st.Message != "" {
		return fmt.Sprintf("%s: %s", st.State, st.Message)
	}
	return string(st.State)
}

// WaitFor waits until cond holds for the agent's status, checked again on
// every change the front publishes, or until ctx ends.
func (a *Agent) WaitFor(ctx context.Context, cond func(Status) bool) error {
	for {
		v := a.view.Load()
		if cond(a.Status()) {
			return nil
		}
		select {
		case <-v.changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// watchChild observes one app process: readiness and liveness probes, and
// the RSS of its whole tree every second.
func (a *Agent) watchChild(ctx context.Context, c *appChild) {
	l := c.Launch
	cfg := l.gen.cfg
	spec := probe.ProbeSpec{
		HTTP:             cfg.Probe.HTTP,
		TCP:              cfg.Probe.TCP,
		Interval:         cfg.Probe.Interval.D(),
		Timeout:          cfg.Probe.Timeout.D(),
		FailureThreshold: cfg.Probe.FailureThreshold,
		StartupTimeout:   cfg.Probe.StartupTimeout.D(),
		ReadyAfter:       time.Second,
	}
	if l.upstream != "" {
		// With the traffic front the probe goes to the port this process
		// was given (a reload's new process has the spare one), and without
		// a [probe] the process is ready once that port accepts.
		switch {
		case spec.HTTP != "":
			spec.HTTP = probeURL(spec.HTTP, l.upstream)
		case spec.TCP != "":
			spec.TCP = l.upstream
		default:
			spec.TCP = l.upstream
		}
	}
	go func() {
		res := probe.RunProbe(ctx, a.clk, spec, c.Ready)
		if res.Reason != "" {
			c.Restart(supervisor.Reason(res.Reason), res.Detail)
		}
	}()
	a.watchRSS(ctx, c, l.obs, uint64(cfg.Memory.MaxRSS), cfg.Memory.RSSGrace.D())
}

// rssInterval is how often the app tree's RSS is sampled.
const rssInterval = time.Second

// watchRSS samples the app tree's RSS every second; above max (if set) for
// grace, it restarts the process once (reason rss-limit).
func (a *Agent) watchRSS(ctx context.Context, c *appChild, obs *observed, max uint64, grace time.Duration) {
	self := os.Getpid()
	t := a.clk.NewTicker(rssInterval)
	defer t.Stop()
	var over time.Time // when the tree first went above max; zero when below
	var lastCPU time.Duration
	var lastAt time.Time
	sample := func() {
		// This process's tree: during a reload the other process's tree
		// is left out, so neither is held to max_rss for both.
		s, err := probe.SampleDescendants(self, a.sup.Others(c.PID)...)
		if err != nil {
			a.log.Debug().Err(err).Msg("rss sample")
		}
		obs.rss.Store(s.RSS)
		obs.tree.Store(&s.PIDs)
		now := a.clk.Now()
		if !lastAt.IsZero() && now.After(lastAt) && s.CPU >= lastCPU {
			obs.cpu.Store(uint64(100 * 1000 * float64(s.CPU-lastCPU) / float64(now.Sub(lastAt))))
		}
		lastCPU, lastAt = s.CPU, now
		if max == 0 {
			return
		}
		switch {
		case s.RSS <= max:
			over = time.Time{}
		case over.IsZero():
			over = now
			a.log.Warn().Uint64("rss_bytes", s.RSS).Uint64("max_rss", max).Dur("grace", grace).Msg("app above memory.max_rss")
		case now.Sub(over) >= grace-rssInterval/2:
			// Samples land about a second apart, a little early or late: half
			// an interval of slack keeps grace from turning into grace + 1 s.
			detail := fmt.Sprintf("rss %d MB above max_rss %d MB for %s", s.RSS>>20, max>>20, now.Sub(over).Round(time.Second))
			c.Restart(supervisor.ReasonRSSLimit, detail)
			max = 0 // once per process: the supervisor restarts it
		}
	}
	sample()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			sample()
		}
	}
}

// cgroupOOMKills returns the oom_kill counter of the agent's memory cgroup
// (cgroup v2 memory.events, v1 memory.oom_control), -1 when there is none
// to read: memory.watch_oom off, the root cgroup, no memory controller.
func (a *Agent) cgroupOOMKills() int64 {
	if a.oom == nil || a.memcg.IsRoot() {
		return -1
	}
	n, err := a.memcg.OOMKills("/sys/fs/cgroup")
	if err != nil {
		return -1
	}
	return int64(n)
}

// isAppKill reports whether the kernel's OOM kill k was of the app: by the
// victim's memory cgroup (see memcg), or by its PID being the app's or one
// of the last sample of its tree, for each live process (plus extra, if
// not nil).
func (a *Agent) isAppKill(k probe.OOMKill, extra map[int]bool) bool {
	live := a.sup.Status().Live
	return probe.OOMKillIsOurs(k, a.memcg, func(pid int) bool {
		if extra[pid] {
			return true
		}
		for _, c := range live {
			if c.PID == pid {
				return true
			}
			if p := c.Launch.obs.tree.Load(); p != nil && slices.Contains(*p, pid) {
				return true
			}
		}
		return false
	})
}

// explainExit looks for the kernel's OOM kill of a process of the app's
// tree behind an exit (a SIGKILL, a wrapper's code 137, a crash after a
// child was killed): a kernel log record of a victim in the agent's memory
// cgroup or with a PID of the tree, or else the cgroup's oom_kill counter
// gone up since the process started. With wait it waits for the kernel's
// record, which can land about a second after the exit is seen.
func (a *Agent) explainExit(ctx context.Context, c *appChild, e supervisor.Exit, wait bool) (supervisor.Reason, string, bool) {
	if a.oom == nil {
		return "", "", false
	}
	// With other app processes alive (several instances, a reload), only
	// the victim's PID can say it was of c's tree; alone, its memory cgroup
	// says so too (a worker too new for any sample).
	alone := len(a.sup.Status().Live) <= 1
	match := func(k probe.OOMKill) bool {
		if k.PID == c.PID {
			return true
		}
		if p := c.Launch.obs.tree.Load(); p != nil && slices.Contains(*p, k.PID) {
			return true
		}
		return alone && probe.OOMKillIsOurs(k, a.memcg, nil)
	}
	since := c.Started
	var k probe.OOMKill
	var ok bool
	if wait {
		k, ok = a.oom.WaitKill(ctx, match, since, 1500*time.Millisecond)
	} else {
		k, ok = a.oom.RecentKill(match, since)
	}
	if ok {
		return supervisor.ReasonOOMKill, k.Line, true
	}
	if before, now := c.Launch.obs.oomAtStart, a.cgroupOOMKills(); alone && before >= 0 && now > before {
		return supervisor.ReasonOOMKill, fmt.Sprintf("kernel OOM killer: oom_kill of memory cgroup %s went from %d to %d (no kernel log record)", a.memcg.Path, before, now), true
	}
	return "", "", false
}

// onOOMKill counts kernel OOM kills of the app's processes and logs those of
// other processes as host events.
func (a *Agent) onOOMKill(k probe.OOMKill) {
	if a.isAppKill(k, nil) {
		a.oomKills.Add(1)
		a.log.Error().Int("pid", k.PID).Str("comm", k.Comm).Str("task_memcg", k.TaskMemcg).Str("kernel", k.Line).Msg("kernel OOM killer killed an app process")
		return
	}
	a.log.Warn().Int("pid", k.PID).Str("comm", k.Comm).Str("task_memcg", k.TaskMemcg).Str("kernel", k.Line).Msg("kernel OOM killer killed a process outside the app (host event)")
}
