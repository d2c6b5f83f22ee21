package main

import (
	"context"
	"embed"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"agent/bench/internal/benchkit"
	"agent/internal/lbclient"
)

// The app (apps/burn/server.js).
//
//go:embed apps
var apps embed.FS

type bench struct {
	c        config
	log      io.Writer
	work     string
	agentBin string
	pm2Bin   string
	res      *results
	roots    []int // the round's processes outside this one's tree (PM2's daemon)
}

func (b *bench) logf(format string, args ...any) { benchkit.Logf(b.log, format, args...) }

// fail logs what went wrong and keeps it for the notes under the tables.
func (b *bench) fail(round int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.logf("round %d: %s", round, msg)
	first, _, _ := strings.Cut(msg, "\n")
	b.res.note(first)
}

// runBench runs c.runs rounds and returns the results and a description of
// the machine. Results come back even with an error.
func runBench(ctx context.Context, c config, logw io.Writer) (*results, string, error) {
	need := []string{"node", "wrk"}
	if c.has("nginx") {
		need = append(need, "nginx")
	}
	for _, tool := range need {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, "", fmt.Errorf("%s not found (apt-get install nodejs npm wrk nginx-light)", tool)
		}
	}
	work, err := os.MkdirTemp("", "bench-instances-")
	if err != nil {
		return nil, "", err
	}
	b := &bench{c: c, log: logw, work: work, res: &results{by: map[string][]sample{}}}
	defer c.Finish(work, b.logf)

	b.agentBin = c.AgentBin
	if slices.ContainsFunc(c.sides, func(s string) bool { return strings.HasPrefix(s, "agent") }) {
		if b.agentBin, err = c.Agent(ctx, work, b.logf); err != nil {
			return nil, "", err
		}
	}
	pm2Version := "-"
	if c.has("pm2") {
		if b.pm2Bin, pm2Version, err = c.PM2(ctx, work, b.logf); err != nil {
			return nil, "", err
		}
	}
	machine := b.machine(ctx, pm2Version)
	b.logf("%s", strings.TrimSpace(machine))
	for i := 1; i <= c.runs; i++ {
		b.logf("round %d of %d", i, c.runs)
		b.round(ctx, i)
		if ctx.Err() != nil {
			return b.res, machine, ctx.Err()
		}
		b.res.rounds = i
	}
	return b.res, machine, nil
}

// machine describes the machine, the versions under test and the load on
// the machine before the first round.
func (b *bench) machine(ctx context.Context, pm2Version string) string {
	var s strings.Builder
	s.WriteString(benchkit.MachineLine(true))
	nginx := "-"
	if b.c.has("nginx") {
		// nginx -v writes to stderr.
		out, _ := exec.CommandContext(ctx, "nginx", "-v").CombinedOutput()
		nginx = strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: ")
	}
	wrk, _ := exec.CommandContext(ctx, "wrk", "-v").CombinedOutput()
	wrkLine, _, _ := strings.Cut(string(wrk), " [")
	fmt.Fprintf(&s, "Node %s, PM2 %s, %s (%d worker), %s, %s\n", benchkit.Version(ctx, "node", "--version"), pm2Version,
		nginx, b.c.nginxWorkers, strings.TrimSpace(wrkLine), benchkit.Version(ctx, b.agentBin, "version"))
	load, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(load))
	if len(f) >= 3 {
		fmt.Fprintf(&s, "Load average before the first round: %s %s %s\n", f[0], f[1], f[2])
	}
	return s.String()
}

// round starts every side afresh, measures each in turn, measure by
// measure, in an order that rotates from round to round, and stops them.
func (b *bench) round(ctx context.Context, i int) {
	rd := filepath.Join(b.work, fmt.Sprintf("round%d", i))
	appDir := filepath.Join(rd, "burn")
	if err := benchkit.WriteTree(apps, "apps/burn", appDir); err != nil {
		b.fail(i, "app: %v", err)
		return
	}
	d := &benchkit.PM2{Bin: b.pm2Bin, Home: filepath.Join(rd, "pm2home")}
	sides := map[string]side{}
	samples := map[string]*sample{}
	var releases []func() // the sides' ports, given back once they are stopped
	defer func() {
		for _, r := range releases {
			r()
		}
	}()
	defer func() {
		for _, name := range b.c.sides {
			if s, ok := sides[name]; ok {
				if err := s.Close(context.WithoutCancel(ctx)); err != nil {
					b.logf("%s: stop: %v", name, err)
				}
			}
			if sm, ok := samples[name]; ok {
				b.res.by[name] = append(b.res.by[name], *sm)
			}
		}
		if b.pm2Bin != "" {
			if err := d.Kill(context.WithoutCancel(ctx)); err != nil {
				b.logf("pm2 kill: %v", err)
			}
		}
		benchkit.KillUnder(rd)
	}()
	for _, name := range b.c.sides {
		sm := newSample()
		samples[name] = &sm
		s, release, err := b.start(ctx, name, rd, appDir, d)
		if err != nil {
			b.fail(i, "%s: start: %v", sideLabel[name], err)
			continue
		}
		releases = append(releases, release)
		sides[name] = s
	}
	b.roots = nil
	if p, ok := sides["pm2"].(*pm2Side); ok {
		b.roots = append(b.roots, p.god)
	}
	for _, name := range b.c.sides {
		s, ok := sides[name]
		if !ok {
			continue
		}
		if err := benchkit.WaitServing(ctx, s.Addr(), 60*time.Second); err != nil {
			b.fail(i, "%s: not serving: %v", sideLabel[name], err)
			s.Close(ctx)
			delete(sides, name)
			continue
		}
		samples[name].answered = answering(ctx, s.Addr(), 40)
		b.logf("round %d %-6s serving on %s, %d processes answered 40 requests", i, name, s.Addr(), samples[name].answered)
	}
	if ctx.Err() != nil {
		return
	}
	order := rotate(b.c.sides, i-1)

	// Memory, idle.
	if benchkit.Sleep(ctx, b.c.idle) != nil {
		return
	}
	b.readRSS(i, sides, samples, func(sm *sample, mb float64) { sm.rssIdle = mb }, "idle")

	// Throughput: a warm-up for every side, then the measured runs.
	for _, warm := range []bool{true, false} {
		for _, name := range order {
			s, ok := sides[name]
			if !ok || !slices.Contains(wrkSides, name) || ctx.Err() != nil {
				continue
			}
			d := b.c.dur
			if warm {
				if d = b.c.warm; d == 0 {
					continue
				}
			}
			other, front0 := startOtherWork(b.roots...), s.FrontCPU()
			r, err := benchkit.Wrk(ctx, "http://"+s.Addr()+"/", b.c.wrkThreads, b.c.wrkConns, d)
			front := s.FrontCPU() - front0
			if err != nil {
				b.fail(i, "%s: %v", sideLabel[name], err)
				continue
			}
			if warm {
				continue
			}
			sm := samples[name]
			sm.rps, sm.wrkOther = r.RPS, other.cores()
			if reqs := r.RPS * d.Seconds(); reqs > 0 {
				sm.frontUS = float64(front.Microseconds()) / reqs
			}
			if r.Errors != "" {
				b.res.note(fmt.Sprintf("%s, wrk: %s", sideLabel[name], r.Errors))
			}
			b.logf("round %d %-6s wrk: %.0f req/s, front %.1f µs CPU per request, other work %.2f cores %s", i, name, r.RPS, sm.frontUS, sm.wrkOther, r.Errors)
		}
	}

	// Latency with slow requests mixed in, and the agents' peak memory.
	for _, name := range order {
		s, ok := sides[name]
		if !ok || !slices.Contains(latSides, name) || ctx.Err() != nil {
			continue
		}
		b.latency(ctx, i, name, s, samples[name])
	}
	if ctx.Err() != nil || benchkit.Sleep(ctx, b.c.idle) != nil {
		return
	}
	b.readRSS(i, sides, samples, func(sm *sample, mb float64) { sm.rssAfterLoad = mb }, "idle after load")

	// Rolling reloads under a steady load.
	for _, name := range order {
		s, ok := sides[name]
		if !ok || !slices.Contains(reloadSides, name) || ctx.Err() != nil {
			continue
		}
		b.reloads(ctx, i, name, s, samples[name])
	}
}

// start starts one side.
func (b *bench) start(ctx context.Context, name, rd, appDir string, d *benchkit.PM2) (side, func(), error) {
	dir := filepath.Join(rd, name)
	switch name {
	case "agent1", "agent2", "agent4":
		n := int(name[len(name)-1] - '0')
		return startAgent(ctx, b.agentBin, dir, appDir, n)
	case "pm2":
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, nil, err
		}
		return startPM2(ctx, d, dir, appDir, 2)
	case "nginx":
		return startNginx(ctx, dir, appDir, 2, b.c.nginxWorkers)
	}
	return nil, nil, fmt.Errorf("unknown side %q", name)
}

// readRSS reads the agents' memory into their samples.
func (b *bench) readRSS(round int, sides map[string]side, samples map[string]*sample, set func(*sample, float64), what string) {
	for _, name := range b.c.picked(rssSides) {
		s, ok := sides[name].(*agentSide)
		if !ok {
			continue
		}
		mb := mib(benchkit.RSS(s.PID()))
		set(samples[name], mb)
		b.logf("round %d %-6s agent RSS %s: %.1f MB", round, name, what, mb)
	}
}

func mib(bytes uint64) float64 {
	if bytes == 0 {
		return math.NaN()
	}
	return float64(bytes) / (1 << 20)
}

// answering sends n requests one after the other, each on a connection
// of its own (Connection: close), and returns how many processes answered.
func answering(ctx context.Context, addr string, n int) int {
	r, err := lbclient.Load{
		Addr:      addr,
		Requests:  []lbclient.Request{{Header: http.Header{"Connection": {"close"}}}},
		Count:     n,
		Key:       lbclient.Word(1),
		UserAgent: userAgent,
	}.Run(ctx)
	if err != nil {
		return 0
	}
	return len(r.Answers)
}

// userAgent is the harness's requests' User-Agent.
const userAgent = "bench-instances"

// load is a fixed-rate, open-loop, never-retrying load on one path of s
// for d, spread over c.conns kept connections, each request given 10 s;
// the answers are tallied by the process that gave them.
func (b *bench) load(s side, path string, rate int, d time.Duration) lbclient.Load {
	return lbclient.Load{
		Addr: s.Addr(), Requests: []lbclient.Request{{Path: path}}, Rate: rate, Conns: b.c.conns,
		Timeout: 10 * time.Second, Duration: d, Key: lbclient.Word(1), UserAgent: userAgent,
	}
}

// latency runs the fast and the slow load together on s for c.dur and
// keeps the fast requests' percentiles; on an agent, its peak memory too.
func (b *bench) latency(ctx context.Context, round int, name string, s side, sm *sample) {
	var peak func() uint64
	if a, ok := s.(*agentSide); ok {
		peak = benchkit.PeakRSS(a.PID(), 100*time.Millisecond)
	}
	other := startOtherWork(b.roots...)
	fast, err := b.load(s, "/", b.c.fastRate, b.c.dur).Start(ctx)
	if err != nil {
		b.fail(round, "%s: latency: %v", sideLabel[name], err)
		return
	}
	if b.c.slowRate > 0 {
		if sm.slow, err = b.load(s, "/slow", b.c.slowRate, b.c.dur).Run(ctx); err != nil {
			b.fail(round, "%s: latency: %v", sideLabel[name], err)
		}
	}
	sm.fast = fast.Wait()
	sm.latOther = other.cores()
	if peak != nil {
		sm.rssPeak = mib(peak())
	}
	if ctx.Err() != nil || sm.fast.OK == 0 {
		return
	}
	sm.p50, sm.p99 = ms(sm.fast.P50), ms(sm.fast.P99)
	rss := ""
	if peak != nil {
		rss = fmt.Sprintf("; agent RSS peak %.1f MB", sm.rssPeak)
	}
	b.logf("round %d %-6s fast p50 %.2f ms p99 %.1f ms max %.0f ms, %s failed %s, by process %s; slow %s failed %s; %d+%d connections opened; other work %.2f cores%s",
		round, name, sm.p50, sm.p99, ms(sm.fast.Max), sm.fast, lbclient.FormatKinds(sm.fast.Kinds), shares(sm.fast),
		sm.slow, lbclient.FormatKinds(sm.slow.Kinds), sm.fast.Conns, sm.slow.Conns, sm.latOther, rss)
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// shares lists the part of the ok answers each process gave, largest
// first: "52/48 %".
func shares(r lbclient.Report) string {
	var v []int
	for _, n := range r.Answers {
		v = append(v, n)
	}
	slices.Sort(v)
	slices.Reverse(v)
	parts := make([]string, len(v))
	for i, n := range v {
		parts[i] = fmt.Sprintf("%.0f", 100*float64(n)/float64(max(r.OK, 1)))
	}
	return strings.Join(parts, "/") + " %"
}

// reloads runs c.reloads rolling reloads of s under the steady load, the
// k-th at (k+½)·window/reloads, each done once every process is a new one;
// the load runs for the window, and at least 2 s after the last reload.
func (b *bench) reloads(ctx context.Context, round int, name string, s side, sm *sample) {
	// Bounded far beyond the window: stopped once the reloads are over.
	load, err := b.load(s, "/", b.c.reloadRate, b.c.reloadWindow+time.Duration(b.c.reloads)*time.Minute).Start(ctx)
	if err != nil {
		b.fail(round, "%s: reloads: %v", sideLabel[name], err)
		return
	}
	t0 := time.Now()
	every := b.c.reloadWindow / time.Duration(b.c.reloads)
	end := t0.Add(b.c.reloadWindow)
	for k := range b.c.reloads {
		if benchkit.SleepUntil(ctx, t0.Add(every/2+time.Duration(k)*every)) != nil {
			break
		}
		at := time.Now()
		err := b.reloadOnce(ctx, s)
		if err != nil {
			msg, _, _ := strings.Cut(err.Error(), "\n")
			if !slices.Contains(sm.errs, msg) {
				sm.errs = append(sm.errs, msg)
			}
		} else {
			sm.reloaded++
			sm.took = append(sm.took, time.Since(at))
		}
		end = later(end, time.Now().Add(2*time.Second))
	}
	benchkit.SleepUntil(ctx, end)
	sm.reload = load.Stop()
	if ctx.Err() != nil {
		return
	}
	sm.reloadOK = sm.reloaded == b.c.reloads
	if !sm.reloadOK {
		b.fail(round, "%s: %d of %d reloads replaced every process: %s", sideLabel[name], sm.reloaded, b.c.reloads, strings.Join(sm.errs, "; "))
	}
	var took []string
	for _, d := range sm.took {
		took = append(took, fmt.Sprintf("%.2fs", d.Seconds()))
	}
	b.logf("round %d %-6s %d reloads (took %s): %s failed %s, %d connections, p99 %.1f ms, max %.0f ms%s",
		round, name, sm.reloaded, strings.Join(took, " "), sm.reload, lbclient.FormatKinds(sm.reload.Kinds),
		sm.reload.Conns, ms(sm.reload.P99), ms(sm.reload.Max), errorsNote(sm.reload.Errors))
}

// errorsNote lists a load's first failure texts, "" for none.
func errorsNote(errs []string) string {
	if len(errs) == 0 {
		return ""
	}
	return "; first failures: " + strings.Join(errs, "; ")
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// reloadOnce reloads s and waits until as many processes run as before,
// none of them an old one.
func (b *bench) reloadOnce(ctx context.Context, s side) error {
	before, err := s.PIDs(ctx)
	if err != nil || len(before) == 0 {
		return fmt.Errorf("no processes before the reload: %v", err)
	}
	if err := s.Reload(ctx); err != nil {
		return err
	}
	var now []int
	err = benchkit.Poll(ctx, 30*time.Second, 10*time.Millisecond, func() (bool, error) {
		now, err = s.PIDs(ctx)
		return err == nil && len(now) == len(before) &&
			!slices.ContainsFunc(now, func(p int) bool { return slices.Contains(before, p) }), nil
	})
	if err != nil {
		return fmt.Errorf("processes %v before the reload, %v after: %w", before, now, err)
	}
	return nil
}
