package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/clock"
	"agent/metrics"
	"agent/probe"
	"agent/proxy"
	"agent/supervisor"
)

// Agent is one running agent: it supervises the configured app and answers
// for it to the load balancer, systemd and agentctl.
type Agent struct {
	log        zerolog.Logger
	version    string
	clk        clock.Clock
	logDropped func() uint64
	started    time.Time

	cfg atomic.Pointer[Config]
	gen atomic.Pointer[generation] // the latest; each process keeps its own (launch)

	sup     *supervisor.Supervisor
	proxy   *proxy.Proxy // nil when [proxy] is off
	metrics *metrics.Metrics
	// routed is the process the proxy sends requests to (told by Ready or
	// Switch); swapping is set while a reload moves the traffic.
	routed   atomic.Int64
	swapping atomic.Bool
	health   *probe.HealthServer
	notify   *Notifier
	oom      *probe.OOMWatcher // nil when memory.watch_oom is off
	// memcg is the agent's memory cgroup, which the app shares in a systemd
	// unit: kernel OOM kills are the app's when the victim's task_memcg is
	// in it (a worker too new for any tree sample included). The root
	// cgroup (no unit) matches nothing, and then only PIDs count.
	memcg probe.MemoryCgroup
	// oomCountAtStart is the cgroup's oom_kill counter when the running
	// app process started, -1 when the cgroup keeps none.
	oomCountAtStart atomic.Int64
	output          *supervisor.Ring

	rss      atomic.Uint64         // the app tree's RSS, last sample
	treePIDs atomic.Pointer[[]int] // the app tree, last sample
	oomKills atomic.Int64          // kernel OOM kills of the app's processes
	healthMu sync.Mutex            // orders draining against health updates
	draining atomic.Bool           // health answers "draining" while set

	stMu     sync.Mutex // guards the STATUS= line last sent
	lastSt   string
	lastStAt time.Time

	readySent atomic.Bool // READY=1 was sent

	changedMu sync.Mutex
	changed   chan struct{} // closed and replaced on every state change
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
}

// New returns an agent for cfg. It starts nothing until Run.
func New(cfg *Config, log zerolog.Logger, opts Options) *Agent {
	clk := opts.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	logDropped := opts.LogDropped
	if logDropped == nil {
		logDropped = func() uint64 { return 0 }
	}
	a := &Agent{
		log:        log,
		version:    opts.Version,
		clk:        clk,
		logDropped: logDropped,
		started:    clk.Now(),
		notify:     NewNotifier(log),
		output:     supervisor.NewRing(1000, 1<<20),
		changed:    make(chan struct{}),
	}
	a.cfg.Store(cfg)
	g := a.newGeneration(cfg)
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
	a.oomCountAtStart.Store(-1)
	a.metrics = metrics.New(a.metricsSnapshot)
	if cfg.ProxyEnabled() {
		a.proxy = proxy.New(proxy.Config{
			Listen:      cfg.Proxy.Listen,
			HealthPath:  cfg.Health.Path,
			Hold:        cfg.Proxy.Hold.D(),
			IdleTimeout: cfg.Proxy.IdleTimeout.D(),
			Observe:     a.metrics.ObserveRequest,
		}, log.With().Str("component", "proxy").Logger(), clk)
		if cfg.Proxy.IdleTimeout.D() < 60*time.Second {
			log.Warn().Dur("idle_timeout", cfg.Proxy.IdleTimeout.D()).Msg("proxy.idle_timeout is below the ALB's 60 s idle timeout: the ALB may reuse a connection the agent is closing (502)")
		}
	}
	a.sup = supervisor.New(g.supervisorConfig(g.upstream()), supervisor.Options{
		Log:      log,
		Clock:    a.clk,
		Output:   a.output,
		Prepare:  prepare,
		Gate:     a.gate,
		Watch:    a.watchChild,
		Explain:  a.explainExit,
		OnChange: a.onChange,
		Tick:     a.notify.WatchdogInterval(),
		OnTick:   a.notify.Watchdog,
	})
	return a
}

// ResolveHeapMB returns the heap cap for cfg in MB: the configured figure,
// or for "auto" half of the smaller of the host's memory and the agent's
// cgroup limit; 0 leaves NODE_OPTIONS alone.
func ResolveHeapMB(cfg *Config, log zerolog.Logger) int {
	h := cfg.Node.MaxOldSpaceSize
	if !h.Auto {
		return h.MB
	}
	total, limit, err := probe.MemoryBudget("/")
	if err != nil || total == 0 {
		log.Warn().Err(err).Msg("cannot read the memory size; heap cap left to node (set node.max_old_space_size)")
		return 0
	}
	return probe.AutoHeapMB(total, limit)
}

// Run runs the agent until ctx is cancelled (SIGTERM, SIGINT) and reloads
// the config on each receive from reload (SIGHUP). It returns nil after a
// clean shutdown.
func (a *Agent) Run(ctx context.Context, reload <-chan struct{}) error {
	cfg := a.cfg.Load()
	// Orphans of the app (daemonized workers) are re-parented to the agent,
	// so that a stop can still reach them.
	if err := supervisor.BecomeSubreaper(); err != nil {
		return err
	}
	// The control socket first: a second agent must stop (exit 2) on it
	// before it binds anything else.
	ctl, err := listenControl(cfg.Control.Socket, cfg.Control.GID)
	if err != nil {
		return err
	}
	if err := a.health.Listen(); err != nil {
		ctl.Close()
		return err
	}
	if a.proxy != nil {
		if err := a.proxy.Listen(); err != nil {
			ctl.Close()
			return err
		}
	}
	metricsLn, err := a.listenMetrics(cfg)
	if err != nil {
		ctl.Close()
		return err
	}
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

	for {
		select {
		case err := <-supDone: // on_exhausted = "exit"
			a.notify.Stopping()
			return err
		case <-reload:
			a.reload()
		case <-ctx.Done():
			return a.shutdown(stopSup, supDone)
		}
	}
}

// shutdown drains the health check, stops the app and waits for it.
func (a *Agent) shutdown(stopSup context.CancelFunc, supDone <-chan error) error {
	cfg := a.cfg.Load()
	a.notify.Stopping()
	a.notify.Status("stopping")
	if d := cfg.Stop.Drain.D(); d > 0 {
		a.healthMu.Lock()
		a.draining.Store(true)
		a.health.Set("draining", false)
		if a.proxy != nil {
			a.proxy.Drain()
		}
		a.healthMu.Unlock()
		a.log.Info().Dur("drain", d).Msg("draining: health answers 503 before the app stops")
		t := a.clk.NewTimer(d)
		<-t.C()
	}
	stopSup()
	err := <-supDone
	a.log.Info().Msg("agent stopped")
	return err
}

// reload loads the config again; an invalid one is refused and the running
// config kept. App settings apply from the app's next start.
func (a *Agent) reload() {
	old := a.cfg.Load()
	a.notify.Reloading()
	defer func() {
		// Reloading ends with READY=1, but a start that is not over must
		// not be completed by a reload.
		if a.readySent.Load() {
			a.notify.Ready()
		}
	}()
	cfg, err := Load(old.Path)
	if err != nil {
		a.log.Error().Err(err).Msg("reload refused: config invalid; keeping the running config")
		a.notify.Status("reload refused: " + err.Error())
		return
	}
	if cfg.Health != old.Health || cfg.Control.Socket != old.Control.Socket || cfg.Control.Group != old.Control.Group ||
		cfg.Memory.WatchOOM != old.Memory.WatchOOM || cfg.Log != old.Log || cfg.Proxy != old.Proxy || cfg.Metrics != old.Metrics {
		a.log.Warn().Msg("[health], [control], [log], [proxy], [metrics] and memory.watch_oom changes apply only when the agent restarts")
	}
	g := a.newGeneration(cfg)
	a.cfg.Store(cfg)
	a.gen.Store(g)
	upstream := g.upstream()
	if l, ok := a.sup.Config().Tag.(*launch); ok && g.canOverlap() && l.upstream != "" {
		upstream = l.upstream // the port of the last process, which a restart takes again
	}
	a.sup.SetConfig(g.supervisorConfig(upstream))
	a.log.Info().Str("config", cfg.Path).Msg("config reloaded: [restart] and [stop] apply now; [app], [node], [probe] and [memory] from the app's next start (agentctl restart)")
	a.sendStatus(a.statusLine(a.sup.Status()), true)
}

// onChange publishes a state change: health page, systemd status, readiness.
func (a *Agent) onChange(st supervisor.Status) {
	serving := st.State == supervisor.Running && st.Ready
	a.followState(st)
	a.healthMu.Lock()
	if !a.draining.Load() {
		a.health.Set(st.State, serving)
	}
	a.healthMu.Unlock()
	a.changedMu.Lock()
	close(a.changed)
	a.changed = make(chan struct{})
	a.changedMu.Unlock()
	a.sendStatus(a.statusLine(st), true)
	// READY=1 once: when the app is first ready, or when its start is over
	// without that (failed, stopped, or not ready within startup_timeout),
	// with the reason in STATUS=, so that `systemctl start` never hangs.
	startOver := st.State == supervisor.Failed || st.State == supervisor.Stopped ||
		(st.State == supervisor.Backoff && len(st.Exits) > 0 && st.Exits[0].Reason == supervisor.ReasonStartTimeout)
	if (serving || startOver) && a.readySent.CompareAndSwap(false, true) {
		a.notify.Ready()
	}
}

// sendStatus sends STATUS=line: always on a state change, otherwise (a new
// RSS figure) only when it changed and at most every 10 s.
func (a *Agent) sendStatus(line string, stateChange bool) {
	a.stMu.Lock()
	defer a.stMu.Unlock()
	now := a.clk.Now()
	if !stateChange && (line == a.lastSt || now.Sub(a.lastStAt) < 10*time.Second) {
		return
	}
	a.lastSt, a.lastStAt = line, now
	a.notify.Status(line)
}

func (a *Agent) statusLine(st supervisor.Status) string {
	switch st.State {
	case supervisor.Running, supervisor.Starting:
		return fmt.Sprintf("%s pid %d, %d restarts, rss %d MB", st.State, st.PID, st.Restarts, a.rss.Load()>>20)
	case supervisor.Failed, supervisor.Backoff:
		return fmt.Sprintf("%s: %s", st.State, st.Message)
	}
	if st.Message != "" {
		return fmt.Sprintf("%s: %s", st.State, st.Message)
	}
	return string(st.State)
}

// waitSettled waits until cond holds for the supervisor's status, ctx ends
// or timeout passes, and reports whether cond held.
func (a *Agent) waitSettled(ctx context.Context, timeout time.Duration, cond func(supervisor.Status) bool) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		a.changedMu.Lock()
		ch := a.changed
		a.changedMu.Unlock()
		if cond(a.sup.Status()) {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		case <-t.C:
			return false
		}
	}
}

// watchChild observes one app process: readiness and liveness probes, and
// the RSS of its whole tree every second.
func (a *Agent) watchChild(ctx context.Context, c *supervisor.Child) {
	l := c.Tag.(*launch)
	cfg := l.gen.cfg
	a.oomCountAtStart.Store(a.cgroupOOMKills())
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
	a.watchRSS(ctx, c, uint64(cfg.Memory.MaxRSS), cfg.Memory.RSSGrace.D())
}

// rssInterval is how often the app tree's RSS is sampled.
const rssInterval = time.Second

// watchRSS samples the app tree's RSS every second; above max (if set) for
// grace, it restarts the process once (reason rss-limit).
func (a *Agent) watchRSS(ctx context.Context, c *supervisor.Child, max uint64, grace time.Duration) {
	self := os.Getpid()
	t := a.clk.NewTicker(rssInterval)
	defer t.Stop()
	var over time.Time // when the tree first went above max; zero when below
	sample := func() {
		// This process's tree: during a reload the other process's tree
		// is left out, so neither is held to max_rss for both.
		s, err := probe.SampleDescendants(self, a.sup.Others(c)...)
		if err != nil {
			a.log.Debug().Err(err).Msg("rss sample")
		}
		if st := a.sup.Status(); st.PID == c.PID {
			a.rss.Store(s.RSS)
			a.treePIDs.Store(&s.PIDs)
			if st.State == supervisor.Running {
				a.sendStatus(a.statusLine(st), false)
			}
		}
		if max == 0 {
			return
		}
		now := a.clk.Now()
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
// of the last sample of its tree (plus extra, if not nil).
func (a *Agent) isAppKill(k probe.OOMKill, extra map[int]bool) bool {
	return probe.OOMKillIsOurs(k, a.memcg, func(pid int) bool {
		if extra[pid] || pid == a.sup.Status().PID {
			return true
		}
		if p := a.treePIDs.Load(); p != nil {
			return slices.Contains(*p, pid)
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
func (a *Agent) explainExit(ctx context.Context, c *supervisor.Child, e supervisor.Exit, wait bool) (supervisor.Reason, string, bool) {
	if a.oom == nil {
		return "", "", false
	}
	match := func(k probe.OOMKill) bool { return a.isAppKill(k, map[int]bool{c.PID: true}) }
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
	if before, now := a.oomCountAtStart.Load(), a.cgroupOOMKills(); before >= 0 && now > before {
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
