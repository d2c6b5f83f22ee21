package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"agent/bench/internal/benchkit"
	"agent/internal/lbclient"
	"agent/internal/procfs"
	"agent/internal/testapp"
)

type bench struct {
	c        config
	log      io.Writer
	work     string
	agentBin string
	pm2Bin   string
	nextDir  string
	res      results

	mu      sync.Mutex
	started []*agentTarget // every agent started, stopped at the end whatever happened
}

func (b *bench) logf(format string, args ...any) { benchkit.Logf(b.log, format, args...) }

// runBench runs every cell c.runs times and returns the results and a
// description of the machine. Results come back even with an error.
func runBench(ctx context.Context, c config, logw io.Writer) (results, string, error) {
	work, err := os.MkdirTemp("", "bench-traffic-")
	if err != nil {
		return nil, "", err
	}
	b := &bench{c: c, log: logw, work: work, res: results{}}
	defer func() {
		b.stopAgents()
		c.Finish(work, b.logf)
	}()

	b.agentBin = c.AgentBin // for the banner even when no agent runs
	if has(c.sides, "proxy") || has(c.sides, "agent") {
		if b.agentBin, err = c.Agent(ctx, work, b.logf); err != nil {
			return nil, "", err
		}
	}
	pm2Version := "-"
	if has(c.sides, "pm2") {
		if b.pm2Bin, pm2Version, err = c.PM2(ctx, work, b.logf); err != nil {
			return nil, "", err
		}
	}
	if has(c.apps, "next") {
		b.logf("building or finding the Next.js app")
		if b.nextDir, err = testapp.NextAppDir(ctx); err != nil {
			return nil, "", err
		}
		b.logf("next app: %s", b.nextDir)
	}
	machine := b.machine(ctx, pm2Version)
	b.logf("%s", strings.TrimSpace(machine))

	for i := 1; i <= c.runs; i++ {
		b.logf("run %d of %d", i, c.runs)
		b.oneRun(ctx, i)
		if ctx.Err() != nil {
			return b.res, machine, ctx.Err()
		}
	}
	return b.res, machine, nil
}

func has(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// machine describes the machine and the versions under test.
func (b *bench) machine(ctx context.Context, pm2Version string) string {
	var s strings.Builder
	s.WriteString(benchkit.MachineLine(false))
	fmt.Fprintf(&s, "Node %s, PM2 %s, Next.js %s, %s\n", benchkit.Version(ctx, "node", "--version"), pm2Version, testapp.NextVersion, benchkit.Version(ctx, b.agentBin, "version"))
	fmt.Fprintf(&s, "Load: %d req/s (next start: %d) over keep-alive connections, %d events per cell over %s, request timeout %s\n",
		b.c.rate, b.c.nextRate, b.c.k, b.c.window, b.c.timeout)
	return s.String()
}

// oneRun runs every cell once: for each app and supervisor, one start, then
// the cells of the actions one after the other.
func (b *bench) oneRun(ctx context.Context, i int) {
	rd := filepath.Join(b.work, fmt.Sprintf("run%d", i))
	if err := writeApps(rd); err != nil {
		b.logf("run %d: %v", i, err)
		return
	}
	d := &benchkit.PM2{Bin: b.pm2Bin, Home: filepath.Join(rd, "pm2home")}
	defer func() {
		if b.pm2Bin != "" {
			if err := d.Kill(context.WithoutCancel(ctx)); err != nil {
				b.logf("pm2 kill: %v", err)
			}
		}
		b.stopAgents()
		benchkit.KillUnder(rd)
	}()
	for _, app := range b.c.apps {
		spec := b.spec(app, rd)
		for _, side := range b.c.sides {
			if ctx.Err() != nil {
				return
			}
			b.supervisorCells(ctx, i, rd, d, spec, app, side)
		}
	}
}

// spec describes app for every side.
func (b *bench) spec(app, rd string) appSpec {
	env := map[string]string{"NEXT_TELEMETRY_DISABLED": "1"}
	if app == "next" {
		// PM2 runs the next binary itself (the usual advice; `pm2 start npm
		// -- start` cannot reload). The agent runs `npm start`, which it
		// executes without npm: `next start` exec'd directly.
		return appSpec{
			name:     "next",
			dir:      b.nextDir,
			agentCmd: []string{"npm", "start", "--", "-H", "127.0.0.1"},
			pm2: pm2App{script: filepath.Join(b.nextDir, "node_modules", "next", "dist", "bin", "next"),
				args: []string{"start", "-H", "127.0.0.1"}},
			env:   env,
			paths: []string{"/"},
			rate:  b.c.nextRate,
		}
	}
	paths := []string{"/"}
	if b.c.slowEvery > 0 {
		paths = make([]string, b.c.slowEvery)
		for i := range paths {
			paths[i] = "/"
		}
		paths[len(paths)-1] = "/slow"
	}
	return appSpec{
		name:     "plain",
		dir:      filepath.Join(rd, "plain"),
		agentCmd: []string{"node", "server.js"},
		pm2:      pm2App{script: filepath.Join(rd, "plain", "server.js")},
		env:      env,
		paths:    paths,
		rate:     b.c.rate,
	}
}

// supervisorCells starts app under one supervisor and runs the cells of
// every action on it.
func (b *bench) supervisorCells(ctx context.Context, run int, rd string, d *benchkit.PM2, spec appSpec, app, side string) {
	fail := func(err error) {
		b.logf("run %d %s %s: %v", run, app, side, err)
		for _, action := range b.c.actions {
			k := cellKey{app, side, action}
			b.res[k] = append(b.res[k], cellRun{err: err.Error()})
		}
	}
	ports, release, err := benchkit.FreePorts(5)
	if err != nil {
		fail(err)
		return
	}
	defer release()
	var t target
	switch side {
	case "proxy", "agent":
		dir := filepath.Join(rd, side+"-"+app)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			fail(err)
			return
		}
		p := agentPorts{health: ports[0], app: ports[1], listen: ports[2], up: ports[3], spare: ports[4]}
		a, err := startAgent(ctx, b.agentBin, dir, spec, side == "proxy", p)
		if err != nil {
			fail(err)
			return
		}
		b.mu.Lock()
		b.started = append(b.started, a)
		b.mu.Unlock()
		t = a
	case "pm2":
		p, err := startPM2(ctx, d, rd, spec, ports[1])
		if err != nil {
			fail(err)
			return
		}
		t = p
	}
	defer func() {
		if err := t.Close(context.WithoutCancel(ctx)); err != nil {
			b.logf("%s %s: stop: %v", app, side, err)
		}
	}()
	for _, action := range b.c.actions {
		if ctx.Err() != nil {
			return
		}
		k := cellKey{app, side, action}
		before := proxyFigures(ctx, t)
		r := b.cell(ctx, t, spec, action)
		if after := proxyFigures(ctx, t); after != nil && before != nil {
			b.logf("run %d %s %s %s: the proxy counted %d requests, %d replayed, %d failed (its own 502/503/504)",
				run, app, side, action, after.Requests-before.Requests, after.Replayed-before.Replayed, after.Failed-before.Failed)
		}
		b.res[k] = append(b.res[k], r)
		if r.err != "" {
			b.logf("run %d %s %s %s: %s", run, app, side, action, r.err)
			continue
		}
		b.logf("run %d %s %-5s %-7s: %d of %d failed [%s], %d/%d events (took %s), p99 %.1f ms, max %.0f ms, %d connections opened%s",
			run, app, side, action, r.load.Failed, r.load.Sent, lbclient.FormatKinds(r.load.Kinds), r.events, r.want, durList(r.took),
			latencyMS(r.load, r.load.P99), latencyMS(r.load, r.load.Max), r.load.Conns, errNote(r.errs))
	}
}

// proxyFigures returns the agent's proxy counters, nil without a proxy.
func proxyFigures(ctx context.Context, t target) *proxyStatus {
	a, ok := t.(*agentTarget)
	if !ok {
		return nil
	}
	st, err := a.Status(ctx)
	if err != nil || len(st.Proxy) == 0 {
		return nil
	}
	var p proxyStatus
	if json.Unmarshal(st.Proxy, &p) != nil {
		return nil
	}
	return &p
}

func durList(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmt.Sprintf("%.2fs", d.Seconds())
	}
	return strings.Join(s, " ")
}

func errNote(errs []string) string {
	if len(errs) == 0 {
		return ""
	}
	return "; event errors: " + strings.Join(errs, "; ")
}

// cell runs the load for the window and the k events spread over it, the
// i-th at (i+½)·window/k.
func (b *bench) cell(ctx context.Context, t target, spec appSpec, action string) cellRun {
	if err := benchkit.WaitServing(ctx, t.Addr(), 60*time.Second); err != nil {
		return cellRun{err: fmt.Sprintf("not serving before the load: %v", err)}
	}
	r := cellRun{want: b.c.k}
	if action == "none" {
		r.want = 0
	}
	// The load ends when the events are over; its own bound is far past
	// that (an event waits 30 s at most for its new process).
	bound := b.c.window + b.c.tail + time.Duration(r.want)*2*time.Minute
	load, err := trafficLoad(t.Addr(), spec.paths, spec.rate, b.c.timeout, bound).Start(ctx)
	if err != nil {
		return cellRun{err: err.Error()}
	}
	defer load.Stop()
	t0 := time.Now()
	interval := b.c.window / time.Duration(b.c.k)
	lastDone := t0
	for i := range r.want {
		if err := benchkit.SleepUntil(ctx, t0.Add(interval/2+time.Duration(i)*interval)); err != nil {
			break
		}
		at := time.Now()
		err := b.event(ctx, t, action)
		r.took = append(r.took, time.Since(at))
		if err != nil {
			// The first line says it (agentctl's usage text follows).
			msg, _, _ := strings.Cut(err.Error(), "\n")
			if !has(r.errs, msg) {
				r.errs = append(r.errs, msg)
			}
		} else {
			r.events++
		}
		lastDone = time.Now()
	}
	end := t0.Add(b.c.window)
	if e := lastDone.Add(b.c.tail); e.After(end) {
		end = e
	}
	benchkit.SleepUntil(ctx, end)
	r.load = load.Stop()
	if ctx.Err() != nil {
		r.err = "interrupted"
	}
	return r
}

// event kills, restarts or reloads the app once and checks that it took
// effect: the supervisor reports a new app process.
func (b *bench) event(ctx context.Context, t target, action string) error {
	old, err := t.AppPID(ctx)
	if err != nil || old == 0 {
		return fmt.Errorf("%s: no app process before: %v", action, err)
	}
	switch action {
	case "kill":
		err = killTree(old)
	case "restart":
		err = t.Restart(ctx)
	case "reload":
		err = t.Reload(ctx)
	}
	if err != nil {
		return err
	}
	// A new process: at once after restart and reload, which return once
	// it runs; after a kill, once the supervisor has started it.
	return benchkit.Poll(ctx, 30*time.Second, 10*time.Millisecond, func() (bool, error) {
		pid, err := t.AppPID(ctx)
		return err == nil && pid != 0 && pid != old, nil
	})
}

// killTree SIGKILLs pid and all its descendants, through pidfds (a reused
// pid is never hit), as the kernel's OOM killer or a crash would end them.
func killTree(pid int) error {
	p, err := procfs.Stat(pid)
	if err != nil {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	h, err := procfs.Open(p)
	if err != nil {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	hs, err := procfs.OpenDescendants(pid)
	hs = append(hs, h)
	defer procfs.CloseAll(hs)
	if err != nil {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	for _, h := range hs {
		if err := h.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if left, err := procfs.Wait(ctx, hs...); len(left) > 0 {
		return fmt.Errorf("kill %d: %d processes still there: %v", pid, len(left), err)
	}
	return nil
}

// stopAgents stops every agent still running, then SIGKILLs whatever is
// left of its app's tree (the agent is its app's child subreaper, so the
// whole tree is below it).
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
		if err := a.Close(context.Background()); err != nil {
			b.logf("agent: %v", err)
		}
		for _, h := range hs {
			h.Signal(syscall.SIGKILL)
		}
		procfs.CloseAll(hs)
	}
}

// writeApps writes the plain Node app into dir/plain.
func writeApps(dir string) error { return benchkit.WritePlainApp(filepath.Join(dir, "plain")) }
