package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"agent/bench/internal/benchkit"
	"agent/internal/lbclient"
	"agent/internal/procfs"
)

type bench struct {
	c        config
	log      io.Writer
	work     string
	progs    [2]string // the agent programs, v1 and v2
	versions [2]string // what each says it is
	pm2Bin   string

	mu      sync.Mutex
	started []*benchkit.Agent // every agent started, stopped at the end whatever happened
}

func (b *bench) logf(format string, args ...any) { benchkit.Logf(b.log, format, args...) }

func has(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// runBench runs every side once per round, c.rounds rounds, and returns
// the results and a description of the machine. Results come back with an
// error too: the rounds done before it.
func runBench(ctx context.Context, c config, logw io.Writer) (results, string, error) {
	if has(c.sides, "upgrade") && os.Geteuid() != 0 {
		return nil, "", errors.New("agentctl upgrade is for root: run the benchmark as root (or -sides restart,pm2)")
	}
	work, err := os.MkdirTemp("", "bench-upgrade-")
	if err != nil {
		return nil, "", err
	}
	b := &bench{c: c, log: logw, work: work}
	defer func() {
		b.stopAgents()
		c.Finish(work, b.logf)
	}()

	built := "-"
	if has(c.sides, "upgrade") || has(c.sides, "restart") {
		if built, err = b.build(ctx); err != nil {
			return nil, "", err
		}
	}
	pm2Version := "-"
	if has(c.sides, "pm2") {
		if b.pm2Bin, pm2Version, err = c.PM2(ctx, work, b.logf); err != nil {
			return nil, "", err
		}
	}
	loadavg, _ := os.ReadFile("/proc/loadavg")
	var m strings.Builder
	m.WriteString(benchkit.MachineLine(false))
	fmt.Fprintf(&m, "Node %s, PM2 %s, agent %s and %s (%s)\n", benchkit.Version(ctx, "node", "--version"), pm2Version, b.versionOr(0), b.versionOr(1), built)
	fmt.Fprintf(&m, "Load: %d req/s over %d kept connections, never retried, request timeout %s; %d operations per round, %s apart; load average before: %s\n",
		c.rate, c.conns, c.timeout, c.n, c.spacing, strings.Join(strings.Fields(string(loadavg))[:3], " "))
	machine := m.String()
	b.logf("%s", strings.TrimSpace(machine))

	res := results{}
	for round := 1; round <= c.rounds; round++ {
		for _, side := range rotate(c.sides, round-1) {
			if err := ctx.Err(); err != nil {
				return res, machine, err
			}
			b.logf("round %d of %d: %s", round, c.rounds, sideLabel[side])
			r, err := b.round(ctx, side, round)
			if err != nil {
				return res, machine, fmt.Errorf("round %d, %s: %w", round, side, err)
			}
			res[side] = append(res[side], r)
			kinds := "none"
			if len(r.load.Kinds) > 0 {
				kinds = lbclient.FormatKinds(r.load.Kinds)
			}
			b.logf("round %d %-7s: %s failed [%s], not served %s (at %.1fs; per operation %s ms; before the first %s), p99 %s, max %s, operations took %s s, %d connections opened; %s",
				round, side, r.load, kinds, fmtMS(ms(r.gap)), r.gapAt.Seconds(), durs(r.perOp, fmtMSd), fmtMS(ms(r.lead)),
				fmtMS(latencyMS(r.load, r.load.P99)), fmtMS(latencyMS(r.load, r.load.Max)), durs(r.took, fmtS), r.load.Conns, r.checked)
		}
	}
	return res, machine, nil
}

func (b *bench) versionOr(i int) string {
	if b.versions[i] == "" {
		return "-"
	}
	return b.versions[i]
}

// build builds the agent twice, stamped v1-REV and v2-REV, from -commit
// (through git archive) or from the working tree, as `make build` does,
// and says what it built from.
func (b *bench) build(ctx context.Context) (string, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	src, rev, built := root, "", ""
	if b.c.commit != "" {
		out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short", b.c.commit+"^{commit}").Output()
		if err != nil {
			return "", fmt.Errorf("-commit %s: %w", b.c.commit, err)
		}
		rev = strings.TrimSpace(string(out))
		src = filepath.Join(b.work, "src")
		if err := os.MkdirAll(src, 0o755); err != nil {
			return "", err
		}
		archive := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", root, rev, src)
		if out, err := archive.CombinedOutput(); err != nil {
			return "", fmt.Errorf("git archive %s: %w\n%s", rev, err, out)
		}
		built = "built from commit " + rev
	} else {
		out, err := exec.CommandContext(ctx, "git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
		if err != nil {
			return "", fmt.Errorf("git describe: %w", err)
		}
		rev = strings.TrimSpace(string(out))
		built = "built from the working tree at " + rev
	}
	for i := range b.progs {
		b.versions[i] = fmt.Sprintf("v%d-%s", i+1, rev)
		b.progs[i] = filepath.Join(b.work, fmt.Sprintf("agent-v%d", i+1))
		b.logf("building %s (%s)", b.versions[i], built)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+b.versions[i], "-o", b.progs[i], ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build %s: %w\n%s", b.versions[i], err, out)
		}
		// agentctl upgrade takes only a program root owns and no one
		// else may write.
		if err := os.Chmod(b.progs[i], 0o755); err != nil {
			return "", err
		}
	}
	return built, nil
}

// paths is what the load cycles through: /, and /slow every slowEvery-th.
func (b *bench) paths() []lbclient.Request {
	if b.c.slowEvery <= 0 {
		return []lbclient.Request{{Path: "/"}}
	}
	reqs := make([]lbclient.Request, b.c.slowEvery)
	for i := range reqs {
		reqs[i].Path = "/"
	}
	reqs[len(reqs)-1].Path = "/slow"
	return reqs
}

// round runs one round of side in a directory of its own, with its own
// copy of the app and its own ports, and leaves nothing running.
func (b *bench) round(ctx context.Context, side string, round int) (roundRun, error) {
	dir := filepath.Join(b.work, fmt.Sprintf("round%d-%s", round, side))
	app := filepath.Join(dir, "app")
	defer benchkit.KillUnder(dir)
	if err := benchkit.WritePlainApp(app); err != nil {
		return roundRun{}, err
	}
	ports, release, err := benchkit.FreePorts(4)
	if err != nil {
		return roundRun{}, err
	}
	defer release()
	var r roundRun
	switch side {
	case "upgrade":
		r, err = b.upgradeRound(ctx, dir, app, ports)
	case "restart":
		r, err = b.restartRound(ctx, dir, app, ports)
	case "pm2":
		r, err = b.pm2Round(ctx, dir, app, ports[0])
	}
	r.round = round
	return r, err
}

// measure runs the round's load on addr: the lead, then n operations, each
// followed by the spacing (the last by the tail), and computes the figures
// from the requests' timeline.
func (b *bench) measure(ctx context.Context, addr string, op func(i int) error) (roundRun, error) {
	var r roundRun
	if err := benchkit.WaitServing(ctx, addr, 60*time.Second); err != nil {
		return r, fmt.Errorf("not serving before the load: %w", err)
	}
	// The round stops the load itself; its bound is far past any round
	// (an operation waits 3 minutes at most).
	bound := b.c.lead + b.c.tail + time.Duration(b.c.n)*(b.c.spacing+3*time.Minute)
	load, err := lbclient.Load{
		Addr: addr, Requests: b.paths(), Rate: b.c.rate, Conns: b.c.conns, Timeout: b.c.timeout,
		Duration: bound, UserAgent: "bench-upgrade", Timeline: true,
	}.Start(ctx)
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	stopped := false
	defer func() {
		if !stopped {
			load.Stop()
		}
	}()
	if err := benchkit.Sleep(ctx, b.c.lead); err != nil {
		return r, err
	}
	var starts []time.Time
	for i := range b.c.n {
		at := time.Now()
		starts = append(starts, at)
		if err := op(i); err != nil {
			return r, fmt.Errorf("operation %d of %d: %w", i+1, b.c.n, err)
		}
		r.took = append(r.took, time.Since(at))
		pause := b.c.spacing
		if i == b.c.n-1 {
			pause = b.c.tail
		}
		if err := benchkit.Sleep(ctx, pause); err != nil {
			return r, err
		}
	}
	end := time.Now()
	rep := load.Stop()
	stopped = true
	// From the first answer on: the load's own start (the first dials)
	// is not the side's doing.
	ss := unserved(rep.Timeline, firstServed(rep.Timeline, t0), end)
	g := longest(ss, time.Time{}, time.Time{})
	r.gap, r.gapAt = g.len(), g.from.Sub(t0)
	r.lead = longest(endedBy(ss, starts[0]), time.Time{}, time.Time{}).len()
	for i, s := range starts {
		e := end
		if i+1 < len(starts) {
			e = starts[i+1]
		}
		r.perOp = append(r.perOp, longest(ss, s, e).len())
	}
	rep.Timeline = nil
	r.load = rep
	return r, nil
}

// agentStatus is the part of the agent's status read here.
type agentStatus struct {
	State    string `json:"state"`
	PID      *int   `json:"pid"`
	Ready    bool   `json:"ready"`
	Restarts int    `json:"restarts"`
	Agent    struct {
		Version  string `json:"version"`
		PID      int    `json:"pid"`
		Upgrades int    `json:"upgrades"`
	} `json:"agent"`
}

func (s agentStatus) appPID() int {
	if s.PID == nil {
		return 0
	}
	return *s.PID
}

func status(ctx context.Context, a *benchkit.Agent) (agentStatus, error) {
	var s agentStatus
	body, err := a.Get(ctx, "/v1/status")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(body, &s); err != nil {
		return s, fmt.Errorf("status: %w", err)
	}
	return s, nil
}

// startAgent runs the agent program prog on a config in dir: the app in
// app behind the proxy on ports[1] (upstream ports[2], spare ports[3]),
// health on ports[0]. It returns once the app is running and ready.
// Restart delays are 0 and restarts unlimited (as PM2 is set); no
// [probe]: ready once the upstream accepts.
func (b *bench) startAgent(ctx context.Context, prog, dir, app string, ports []int) (*benchkit.Agent, agentStatus, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, agentStatus{}, err
	}
	a, err := benchkit.StartAgent(ctx, prog, dir, benchkit.AgentConfig{
		Name:    "hello",
		Command: []string{"node", "server.js"},
		Dir:     app,
		Memory:  "watch_oom = false\n",
		Health:  fmt.Sprintf("127.0.0.1:%d", ports[0]),
		Extra: fmt.Sprintf(`
[proxy]
listen = "127.0.0.1:%d"
upstream = "127.0.0.1:%d"
spare_upstream = "127.0.0.1:%d"
hold = "30s"
`, ports[1], ports[2], ports[3]),
		// A session of its own, as systemd starts a service and as PM2's
		// daemon runs.
		Setsid: true,
	})
	if err != nil {
		return nil, agentStatus{}, err
	}
	b.mu.Lock()
	b.started = append(b.started, a)
	b.mu.Unlock()
	var st agentStatus
	err = benchkit.Poll(ctx, 30*time.Second, 20*time.Millisecond, func() (bool, error) {
		select {
		case <-a.Done():
			return false, fmt.Errorf("agent exited: %s", benchkit.TailFile(a.Log()))
		default:
		}
		st, err = status(ctx, a)
		return err == nil && st.State == "running" && st.Ready && st.PID != nil, nil
	})
	if err != nil {
		return a, st, fmt.Errorf("agent %s: the app running and ready: %w (last status: %+v)", prog, err, st)
	}
	if st.Agent.PID != a.PID() {
		return a, st, fmt.Errorf("agent status names pid %d, the agent is %d", st.Agent.PID, a.PID())
	}
	return a, st, nil
}

// stopAgent stops a (SIGTERM), and says why if it did not stop by itself
// within 30 s.
func (b *bench) stopAgent(a *benchkit.Agent) {
	if a == nil {
		return
	}
	select {
	case <-a.Done():
		return
	default:
	}
	if err := a.Stop(30 * time.Second); err != nil {
		b.logf("agent: %v", err)
	}
}

// stopAgents stops every agent still running, then SIGKILLs whatever is
// left of its app's tree.
func (b *bench) stopAgents() {
	b.mu.Lock()
	started := b.started
	b.started = nil
	b.mu.Unlock()
	for _, a := range started {
		select {
		case <-a.Done():
			continue
		default:
		}
		hs, _ := procfs.OpenDescendants(a.PID())
		b.stopAgent(a)
		for _, h := range hs {
			h.Signal(syscall.SIGKILL)
		}
		procfs.CloseAll(hs)
	}
}

// ctl runs `agentctl ARGS...` (the program prog as agentctl) on the
// agent's control socket in dir and returns its output.
func ctl(ctx context.Context, prog, dir string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	argv := append([]string{"ctl", "--socket", filepath.Join(dir, "agent.sock"), "--timeout", "2m"}, args...)
	out, err := exec.CommandContext(ctx, prog, argv...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("agentctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// upgradeRound: the agent started from v1, then upgraded in place to v2,
// v1, v2... Every upgrade must keep the agent's and the app's processes,
// and count itself.
func (b *bench) upgradeRound(ctx context.Context, dir, app string, ports []int) (roundRun, error) {
	a, st0, err := b.startAgent(ctx, b.progs[0], dir, app, ports)
	defer b.stopAgent(a)
	if err != nil {
		return roundRun{}, err
	}
	agentPID, appPID := a.PID(), st0.appPID()
	r, err := b.measure(ctx, fmt.Sprintf("127.0.0.1:%d", ports[1]), func(i int) error {
		next := (i + 1) % 2
		out, err := ctl(ctx, b.progs[i%2], dir, "upgrade", "--binary", b.progs[next])
		if err != nil {
			return err
		}
		st, err := status(ctx, a)
		switch {
		case err != nil:
			return fmt.Errorf("status after the upgrade: %w", err)
		case st.Agent.Upgrades != i+1 || st.Agent.Version != b.versions[next]:
			return fmt.Errorf("after %q: agent %s, %d upgrades; want %s, %d", out, st.Agent.Version, st.Agent.Upgrades, b.versions[next], i+1)
		case st.Agent.PID != agentPID || st.appPID() != appPID || st.Restarts != st0.Restarts:
			return fmt.Errorf("after %q: agent pid %d, app pid %d, %d restarts; want %d, %d, %d (nothing restarted)",
				out, st.Agent.PID, st.appPID(), st.Restarts, agentPID, appPID, st0.Restarts)
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	st, err := status(ctx, a)
	if err != nil {
		return r, fmt.Errorf("status after the round: %w", err)
	}
	if st.Agent.Upgrades != b.c.n || st.Agent.PID != agentPID || st.appPID() != appPID || !st.Ready {
		return r, fmt.Errorf("after the round: agent pid %d, app pid %d, %d upgrades, ready %v; want %d, %d, %d, ready",
			st.Agent.PID, st.appPID(), st.Agent.Upgrades, st.Ready, agentPID, appPID, b.c.n)
	}
	r.checked = fmt.Sprintf("agent pid %d and app pid %d kept, agent.upgrades %d", agentPID, appPID, st.Agent.Upgrades)
	return r, nil
}

// restartRound: the agent started from v1, then stopped (SIGTERM, waited
// for) and the other program started on the same config, n times. Without
// systemd nothing keeps the listening sockets: each start binds them anew.
func (b *bench) restartRound(ctx context.Context, dir, app string, ports []int) (roundRun, error) {
	cur, st, err := b.startAgent(ctx, b.progs[0], filepath.Join(dir, "start0"), app, ports)
	defer func() { b.stopAgent(cur) }()
	if err != nil {
		return roundRun{}, err
	}
	agents, apps := map[int]bool{cur.PID(): true}, map[int]bool{st.appPID(): true}
	r, err := b.measure(ctx, fmt.Sprintf("127.0.0.1:%d", ports[1]), func(i int) error {
		next := (i + 1) % 2
		if err := cur.Stop(30 * time.Second); err != nil {
			return err
		}
		a, s, err := b.startAgent(ctx, b.progs[next], filepath.Join(dir, fmt.Sprintf("start%d", i+1)), app, ports)
		cur = a
		if err != nil {
			return err
		}
		if s.Agent.Version != b.versions[next] || agents[a.PID()] || apps[s.appPID()] {
			return fmt.Errorf("after the restart: agent %s pid %d, app pid %d; want %s, new processes", s.Agent.Version, a.PID(), s.appPID(), b.versions[next])
		}
		agents[a.PID()], apps[s.appPID()] = true, true
		return nil
	})
	if err != nil {
		return r, err
	}
	r.checked = fmt.Sprintf("%d agent and %d app processes in turn", len(agents), len(apps))
	return r, nil
}

// pm2Round: the app under a PM2 daemon of its own (PM2_HOME in dir), fork
// mode, owning its port; then `pm2 update` n times, each of which must
// bring a new daemon and a new app process.
func (b *bench) pm2Round(ctx context.Context, dir, app string, port int) (roundRun, error) {
	d := &benchkit.PM2{Bin: b.pm2Bin, Home: filepath.Join(dir, "pm2home")}
	defer func() {
		if err := d.Kill(context.WithoutCancel(ctx)); err != nil {
			b.logf("pm2 kill: %v", err)
		}
	}()
	god, err := d.Start(ctx, dir, "hello", map[string]any{
		"name":          "hello",
		"script":        filepath.Join(app, "server.js"),
		"cwd":           app,
		"env":           map[string]string{"PORT": fmt.Sprint(port)},
		"exec_mode":     "fork",
		"autorestart":   true,
		"restart_delay": 0,
	})
	if err != nil {
		return roundRun{}, err
	}
	appPID, err := pm2App(ctx, god, 0)
	if err != nil {
		return roundRun{}, err
	}
	gods, apps := map[int]bool{god: true}, map[int]bool{appPID: true}
	r, err := b.measure(ctx, fmt.Sprintf("127.0.0.1:%d", port), func(i int) error {
		if _, err := d.Run(ctx, "update"); err != nil {
			return err
		}
		g, err := d.PID()
		if err != nil {
			return err
		}
		if gods[g] {
			return fmt.Errorf("pm2 update: the daemon is still pid %d", g)
		}
		p, err := pm2App(ctx, g, appPID)
		if err != nil {
			return err
		}
		gods[g], apps[p] = true, true
		god, appPID = g, p
		return nil
	})
	if err != nil {
		return r, err
	}
	r.checked = fmt.Sprintf("%d daemons and %d app processes in turn", len(gods), len(apps))
	return r, nil
}

// pm2App waits (30 s at most) for the daemon god's live child other than
// old: in fork mode, the app. (Not `pm2 jlist`: a Node CLI start costs a
// few hundred ms of CPU, which would compete with the app on 2 cores.)
func pm2App(ctx context.Context, god, old int) (int, error) {
	var pid int
	err := benchkit.Poll(ctx, 30*time.Second, 10*time.Millisecond, func() (bool, error) {
		kids, err := procfs.Children(god)
		if err != nil {
			return false, fmt.Errorf("pm2 daemon %d's children: %w", god, err)
		}
		for _, k := range kids {
			if !k.Zombie() && k.PID != old {
				pid = k.PID
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return 0, fmt.Errorf("the app under pm2 daemon %d: %w", god, err)
	}
	return pid, nil
}
