package main

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"agent/bench/internal/benchkit"
)

// apps are the Node apps both supervisors run: web (a page, a 200 ms CPU
// endpoint and a static health page), grow (leaks 20 MB/s) and forker (an
// `npm start` app whose server forks a listening worker).
//
//go:embed apps
var apps embed.FS

const mb = 1 << 20

// memLimitMB is the memory limit of the grow app on both sides.
const memLimitMB = 150

type bench struct {
	c        config
	log      io.Writer
	work     string
	agentBin string
	pm2Bin   string
	res      results
}

func (b *bench) logf(format string, args ...any) { benchkit.Logf(b.log, format, args...) }

// runBench runs everything and returns the results and a description of
// the machine. Results come back even with an error (partial runs).
func runBench(ctx context.Context, c config, logw io.Writer) (results, string, error) {
	work, err := os.MkdirTemp("", "bench-pm2-")
	if err != nil {
		return nil, "", err
	}
	b := &bench{c: c, log: logw, work: work, res: results{}}
	defer c.Finish(work, b.logf)

	if b.agentBin, err = c.Agent(ctx, work, b.logf); err != nil {
		return nil, "", err
	}
	var pm2Version string
	if b.pm2Bin, pm2Version, err = c.PM2(ctx, work, b.logf); err != nil {
		return nil, "", err
	}
	machine := b.machine(ctx, pm2Version)
	b.logf("%s", strings.TrimSpace(machine))

	for i := 1; i <= c.runs; i++ {
		b.logf("run %d of %d", i, c.runs)
		b.oneRun(ctx, i)
		// A measurement that failed leaves NaN in its place.
		for _, m := range metrics(c) {
			for s := range 2 {
				for b.res[m.key] == nil || len(b.res[m.key][s]) < i {
					b.res.add(m.key, side(s), math.NaN())
				}
			}
		}
		if ctx.Err() != nil {
			return b.res, machine, ctx.Err()
		}
	}
	return b.res, machine, nil
}

// machine describes the machine and the versions under test.
func (b *bench) machine(ctx context.Context, pm2Version string) string {
	return benchkit.MachineLine(true) +
		fmt.Sprintf("Node %s, PM2 %s, %s\n", benchkit.Version(ctx, "node", "--version"), pm2Version, benchkit.Version(ctx, b.agentBin, "version"))
}

// oneRun measures everything once: a fresh PM2 daemon and fresh agents.
func (b *bench) oneRun(ctx context.Context, i int) {
	rd := filepath.Join(b.work, fmt.Sprintf("run%d", i))
	dirs := [2]string{filepath.Join(rd, "agent"), filepath.Join(rd, "pm2")}
	for _, d := range dirs {
		if err := writeApps(d); err != nil {
			b.logf("run %d: %v", i, err)
			return
		}
	}
	d := &benchkit.PM2{Bin: b.pm2Bin, Home: filepath.Join(rd, "pm2home")}
	defer func() {
		if err := d.Kill(context.WithoutCancel(ctx)); err != nil {
			b.logf("pm2 kill: %v", err)
		}
		benchkit.KillUnder(rd)
	}()

	b.webScenario(ctx, rd, dirs, d)
	if ctx.Err() != nil {
		return
	}
	b.growScenario(ctx, rd, dirs, d)
	if ctx.Err() != nil {
		return
	}
	b.forkerScenario(ctx, rd, dirs, d)
}

// start starts spec on one side: the agent (its own config and health
// port) or the PM2 daemon.
func (b *bench) start(ctx context.Context, s side, rd string, d *benchkit.PM2, spec appSpec, healthAddr string) (supervisor, error) {
	if s == sideAgent {
		dir := filepath.Join(rd, "agent-"+spec.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		return startAgent(ctx, b.agentBin, dir, spec, healthAddr)
	}
	return startPM2(ctx, d, rd, spec)
}

func (b *bench) stop(s side, sup supervisor) {
	if err := sup.Close(context.Background()); err != nil {
		b.logf("%s: stop: %v", s, err)
	}
}

// webScenario: idle memory and CPU, crash to respawn, and the health page
// under a saturated event loop, on the web app.
func (b *bench) webScenario(ctx context.Context, rd string, dirs [2]string, d *benchkit.PM2) {
	ports, release, err := benchkit.FreePorts(3)
	if err != nil {
		b.logf("ports: %v", err)
		return
	}
	defer release()
	healthAddr := fmt.Sprintf("127.0.0.1:%d", ports[2])
	var sups [2]supervisor
	for s := range 2 {
		spec := appSpec{name: "web", dir: filepath.Join(dirs[s], "web"), command: []string{"node", "server.js"},
			env: map[string]string{"PORT": strconv.Itoa(ports[s])}, maxRSS: "300"}
		sup, err := b.start(ctx, side(s), rd, d, spec, healthAddr)
		if err != nil {
			b.logf("%s: start web: %v", side(s), err)
			continue
		}
		defer b.stop(side(s), sup)
		if err := waitAccept(ctx, ports[s], 30*time.Second); err != nil {
			b.logf("%s: web app: %v", side(s), err)
			continue
		}
		sups[s] = sup
	}

	b.logf("idle: settle %s, then %s", b.c.settle, b.c.idle)
	if err := b.idle(ctx, sups); err != nil {
		b.logf("idle: %v", err)
	}

	for s, sup := range sups {
		if sup == nil || ctx.Err() != nil {
			continue
		}
		pidMs, accMs, err := b.crash(ctx, sup, ports[s])
		if err != nil {
			b.logf("%s: crash: %v", side(s), err)
		}
		if len(pidMs) > 0 {
			p, _ := median(pidMs)
			a, _ := median(accMs)
			b.res.add("respawn_pid", side(s), p)
			b.res.add("respawn_accept", side(s), a)
			b.logf("%s: crash → new process %s ms, → accepting %s ms", side(s), msList(pidMs), msList(accMs))
		}
	}

	for s, sup := range sups {
		if sup == nil || ctx.Err() != nil {
			continue
		}
		// The agent answers its own page; under PM2 the app serves a
		// static file itself.
		url := "http://" + healthAddr + "/health.html"
		if side(s) == sidePM2 {
			url = fmt.Sprintf("http://127.0.0.1:%d/health.html", ports[s])
		}
		if err := b.health(ctx, side(s), ports[s], url); err != nil {
			b.logf("%s: health: %v", side(s), err)
		}
	}
}

// idle measures each supervisor's resident memory and CPU while its app is
// idle, both sides over the same window.
func (b *bench) idle(ctx context.Context, sups [2]supervisor) error {
	if err := benchkit.Sleep(ctx, b.c.settle); err != nil {
		return err
	}
	var cpu0 [2]time.Duration
	for s, sup := range sups {
		if sup == nil {
			continue
		}
		st, err := readStat(sup.PID())
		if err != nil {
			return fmt.Errorf("%s: %w", side(s), err)
		}
		cpu0[s] = st.cpu
		rss, _ := vmRSS(sup.PID())
		b.logf("%s: pid %d rss %.1f MB at start of idle window", side(s), sup.PID(), float64(rss)/mb)
	}
	t0 := time.Now()
	if err := benchkit.Sleep(ctx, b.c.idle); err != nil {
		return err
	}
	elapsed := time.Since(t0)
	for s, sup := range sups {
		if sup == nil {
			continue
		}
		st, err := readStat(sup.PID())
		if err != nil {
			return fmt.Errorf("%s: %w", side(s), err)
		}
		rss, err := vmRSS(sup.PID())
		if err != nil {
			return fmt.Errorf("%s: %w", side(s), err)
		}
		cpu := 100 * float64(st.cpu-cpu0[s]) / float64(elapsed)
		b.res.add("rss", side(s), float64(rss)/mb)
		b.res.add("cpu", side(s), cpu)
		b.logf("%s: rss %.1f MB, cpu %.3f %% over %s", side(s), float64(rss)/mb, cpu, elapsed.Round(time.Millisecond))
	}
	return nil
}

// crash kills the app with SIGKILL kills times and measures, from the
// moment the old process has exited, when the supervisor's new child
// appears in /proc and when the app's port accepts again (both polled every
// millisecond).
func (b *bench) crash(ctx context.Context, sup supervisor, port int) (pidMs, accMs []float64, err error) {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for k := 0; k < b.c.kills; k++ {
		var old int
		err := benchkit.Poll(ctx, 30*time.Second, 10*time.Millisecond, func() (bool, error) {
			pid, err := appChild(sup.PID())
			old = pid
			return pid != 0 && dialOK(addr), err
		})
		if err != nil {
			return pidMs, accMs, fmt.Errorf("app not up: %w", err)
		}
		// PM2 counts a restart within min_uptime (1 s) as unstable: stay
		// clear of it, on both sides alike.
		if err := benchkit.Sleep(ctx, 1500*time.Millisecond); err != nil {
			return pidMs, accMs, err
		}
		w, err := newChildWatch(sup.PID())
		if err != nil {
			return pidMs, accMs, err
		}
		ew, err := watchExit(old)
		if err != nil {
			return pidMs, accMs, err
		}
		if err := ew.signal(unix.SIGKILL); err != nil {
			ew.close()
			return pidMs, accMs, fmt.Errorf("kill %d: %w", old, err)
		}
		exited, err := ew.wait(5 * time.Second)
		t0 := time.Now()
		ew.close()
		if err != nil || !exited {
			return pidMs, accMs, fmt.Errorf("app %d did not exit after SIGKILL: %v", old, err)
		}

		type seen struct {
			at  time.Time
			pid int
			err error
		}
		pidc, accc := make(chan seen, 1), make(chan seen, 1)
		go func() {
			for time.Since(t0) < 20*time.Second {
				pid, err := w.poll()
				if err != nil || pid != 0 {
					pidc <- seen{time.Now(), pid, err}
					return
				}
				time.Sleep(time.Millisecond)
			}
			pidc <- seen{err: errors.New("no new child within 20s")}
		}()
		go func() {
			for time.Since(t0) < 20*time.Second {
				if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
					at := time.Now()
					c.Close()
					accc <- seen{at: at}
					return
				}
				time.Sleep(time.Millisecond)
			}
			accc <- seen{err: errors.New("port not accepting within 20s")}
		}()
		p, a := <-pidc, <-accc
		if p.err != nil || a.err != nil {
			return pidMs, accMs, errors.Join(p.err, a.err)
		}
		if now, _ := appChild(sup.PID()); now != p.pid {
			return pidMs, accMs, fmt.Errorf("new child %d seen, but the app is %d", p.pid, now)
		}
		pidMs = append(pidMs, ms(p.at.Sub(t0)))
		accMs = append(accMs, ms(a.at.Sub(t0)))
	}
	return pidMs, accMs, nil
}

// health sends url a fixed rate of requests, first with the app idle, then
// while hammering the app's /cpu endpoint so its event loop is saturated.
func (b *bench) health(ctx context.Context, s side, port int, url string) error {
	// First the page with the app idle, for reference.
	idle := fixedRate(ctx, url, b.c.rate, min(b.c.load, 5*time.Second), b.c.reqTimeout)
	if len(idle.latencies) == 0 {
		return errors.New("no requests sent")
	}
	b.res.add("health_idle_p99", s, percentile(idle.latencies, 0.99))
	b.logf("%s: %s, app idle: p50 %.3f ms p99 %.3f ms, %d/%d failed", s, url,
		percentile(idle.latencies, 0.5), percentile(idle.latencies, 0.99), idle.failures, len(idle.latencies))

	hctx, cancel := context.WithCancel(ctx)
	finish := hammer(hctx, fmt.Sprintf("http://127.0.0.1:%d/cpu", port), b.c.cpuConc)
	defer func() {
		cancel()
		finish()
	}()
	if err := benchkit.Sleep(ctx, time.Second); err != nil {
		return err
	}
	r := fixedRate(ctx, url, b.c.rate, b.c.load, b.c.reqTimeout)
	cancel()
	n := finish()
	if len(r.latencies) == 0 {
		return errors.New("no requests sent")
	}
	s50, s99 := percentile(r.latencies, 0.50), percentile(r.latencies, 0.99)
	b.res.add("health_p50", s, s50)
	b.res.add("health_p99", s, s99)
	b.res.add("health_fail", s, float64(r.failures))
	b.logf("%s: %s p50 %.3f ms p99 %.3f ms max %.3f ms, %d/%d failed %v; /cpu served %d (%.1f/s)",
		s, url, s50, s99, slices.Max(r.latencies), r.failures, len(r.latencies), r.errs, n,
		float64(n)/(b.c.load+time.Second).Seconds())
	// Let the app work off its queue before the next measurement.
	return benchkit.Poll(ctx, 60*time.Second, 100*time.Millisecond, func() (bool, error) {
		c := http.Client{Timeout: time.Second}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return true, nil
	})
}

// growScenario: the memory limit, agent then PM2, on the grow app.
func (b *bench) growScenario(ctx context.Context, rd string, dirs [2]string, d *benchkit.PM2) {
	ports, release, err := benchkit.FreePorts(1)
	if err != nil {
		b.logf("ports: %v", err)
		return
	}
	defer release()
	for s := range 2 {
		if ctx.Err() != nil {
			return
		}
		spec := appSpec{name: "grow", dir: filepath.Join(dirs[s], "grow"), command: []string{"node", "grow.js"},
			env: map[string]string{"LIMIT_MB": strconv.Itoa(memLimitMB)}, maxRSS: strconv.Itoa(memLimitMB)}
		sup, err := b.start(ctx, side(s), rd, d, spec, fmt.Sprintf("127.0.0.1:%d", ports[0]))
		if err != nil {
			b.logf("%s: start grow: %v", side(s), err)
			continue
		}
		wait := b.c.agentWait
		if side(s) == sidePM2 {
			wait = b.c.pm2Wait
		}
		secs, err := b.memLimit(ctx, side(s), sup, wait)
		if err != nil {
			b.logf("%s: memory limit: %v", side(s), err)
		} else {
			b.res.add("memlimit", side(s), secs)
		}
		b.stop(side(s), sup)
	}
}

// memLimit watches the app's RSS every 10 ms and returns the seconds from
// its crossing the limit to the supervisor's new child (+Inf: not within
// wait).
func (b *bench) memLimit(ctx context.Context, s side, sup supervisor, wait time.Duration) (float64, error) {
	var app int
	err := benchkit.Poll(ctx, 30*time.Second, 10*time.Millisecond, func() (bool, error) {
		pid, err := appChild(sup.PID())
		app = pid
		return pid != 0, err
	})
	if err != nil {
		return 0, fmt.Errorf("app not up: %w", err)
	}
	ew, err := watchExit(app)
	if err != nil {
		return 0, err
	}
	defer ew.close()
	var cross time.Time
	err = benchkit.Poll(ctx, 60*time.Second, 10*time.Millisecond, func() (bool, error) {
		rss, err := vmRSS(app)
		if err != nil {
			return false, fmt.Errorf("app exited before crossing the limit: %w", err)
		}
		if rss > memLimitMB*mb {
			cross = time.Now()
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return 0, err
	}
	w, err := newChildWatch(sup.PID())
	if err != nil {
		return 0, err
	}
	// Restarted means both: the old process is gone (its memory freed) and
	// a new one runs. PM2 starts the new one first, then stops the old.
	var gone, started time.Time
	err = benchkit.Poll(ctx, wait, 10*time.Millisecond, func() (bool, error) {
		if gone.IsZero() {
			if ok, _ := ew.wait(0); ok {
				gone = time.Now()
			}
		}
		if started.IsZero() {
			pid, err := w.poll()
			if err != nil {
				return false, err
			}
			if pid != 0 {
				started = time.Now()
			}
		}
		return !gone.IsZero() && !started.IsZero(), nil
	})
	if errors.Is(err, benchkit.ErrTimeout) {
		b.logf("%s: crossed %d MB, not restarted within %s", s, memLimitMB, wait)
		return math.Inf(1), nil
	}
	if err != nil {
		return 0, err
	}
	b.logf("%s: crossed %d MB → old app gone %.2f s, new app started %.2f s", s, memLimitMB,
		gone.Sub(cross).Seconds(), started.Sub(cross).Seconds())
	done := gone
	if started.After(done) {
		done = started
	}
	return done.Sub(cross).Seconds(), nil
}

// forkerScenario: restarts of an `npm start` app with a forked worker, and
// what each supervisor leaves behind.
func (b *bench) forkerScenario(ctx context.Context, rd string, dirs [2]string, d *benchkit.PM2) {
	ports, release, err := benchkit.FreePorts(3)
	if err != nil {
		b.logf("ports: %v", err)
		return
	}
	defer release()
	for s := range 2 {
		if ctx.Err() != nil {
			return
		}
		dir := filepath.Join(dirs[s], "forker")
		// The same ports on both sides, one after the other: what one side
		// leaves holding them shows up as EADDRINUSE on its own restarts.
		spec := appSpec{name: "forker", dir: dir, command: []string{"npm", "start"},
			env:    map[string]string{"PORT": strconv.Itoa(ports[0]), "WORKER_PORT": strconv.Itoa(ports[1])},
			maxRSS: "300"}
		sup, err := b.start(ctx, side(s), rd, d, spec, fmt.Sprintf("127.0.0.1:%d", ports[2]))
		if err != nil {
			b.logf("%s: start forker: %v", side(s), err)
			continue
		}
		orphans, inUse, err := b.orphans(ctx, side(s), sup, ports[0], dir)
		if err != nil {
			b.logf("%s: orphans: %v", side(s), err)
		} else {
			b.res.add("orphans", side(s), float64(orphans))
			b.res.add("eaddrinuse", side(s), float64(inUse))
		}
		b.stop(side(s), sup)
		// Whatever is left belongs to no supervisor now; clear it so the
		// other side starts clean.
		if n := benchkit.KillUnder(dir); n > 0 {
			b.logf("%s: killed %d leftover processes after stopping", side(s), n)
		}
	}
}

// orphans restarts the app through the supervisor's command, waiting each
// time for the new tree to serve, then counts processes in the app's
// directory outside the current tree, and EADDRINUSE lines in the output.
func (b *bench) orphans(ctx context.Context, s side, sup supervisor, port int, dir string) (int, int, error) {
	var cur int
	up := func(old int) func() (bool, error) {
		return func() (bool, error) {
			pid, err := sup.AppPID(ctx)
			if err != nil || pid == 0 || pid == old {
				return false, nil
			}
			cur = pid
			server, err := getPID(port)
			if err != nil {
				return false, nil
			}
			t, err := scanProcs()
			return t.tree(pid)[server], err
		}
	}
	if err := benchkit.Poll(ctx, 30*time.Second, 50*time.Millisecond, up(0)); err != nil {
		return 0, 0, fmt.Errorf("app not up: %w", err)
	}
	failed := 0
	for i := 0; i < b.c.restarts; i++ {
		old := cur
		if err := sup.Restart(ctx); err != nil {
			return 0, 0, err
		}
		if err := benchkit.Poll(ctx, 30*time.Second, 50*time.Millisecond, up(old)); err != nil {
			if ctx.Err() != nil {
				return 0, 0, err
			}
			failed++
			b.logf("%s: restart %d: new tree not serving within 30s", s, i+1)
		}
	}
	// Processes of old trees on their way out get a moment to go.
	var left []int
	benchkit.Poll(ctx, 5*time.Second, 100*time.Millisecond, func() (bool, error) {
		var err error
		left, err = leftovers(ctx, sup, dir)
		return len(left) == 0, err
	})
	out, err := sup.Output(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("app output: %w", err)
	}
	inUse := 0
	for line := range strings.Lines(out) {
		if strings.Contains(line, "EADDRINUSE") {
			inUse++
		}
	}
	var desc []string
	for _, pid := range left {
		desc = append(desc, fmt.Sprintf("%d %q", pid, cmdline(pid)))
	}
	b.logf("%s: %d restarts (%d not serving), %d left over %v, %d EADDRINUSE lines", s, b.c.restarts, failed, len(left), desc, inUse)
	return len(left), inUse, nil
}

// leftovers lists the processes working in dir that are not in the app's
// current tree.
func leftovers(ctx context.Context, sup supervisor, dir string) ([]int, error) {
	cur, err := sup.AppPID(ctx)
	if err != nil {
		return nil, err
	}
	t, err := scanProcs()
	if err != nil {
		return nil, err
	}
	tree := t.tree(cur)
	var out []int
	for pid := range t {
		if !tree[pid] && inDir(pid, dir) {
			out = append(out, pid)
		}
	}
	slices.Sort(out)
	return out, nil
}

// inDir reports whether pid's working directory is dir or below it.
func inDir(pid int, dir string) bool {
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+"/"))
}

// getPID asks the forker app on port for its server's pid.
func getPID(port int) (int, error) {
	c := http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/pid", port))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(body)))
}

// writeApps writes the embedded Node apps into dir.
func writeApps(dir string) error { return benchkit.WriteTree(apps, "apps", dir) }

func dialOK(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func waitAccept(ctx context.Context, port int, timeout time.Duration) error {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	return benchkit.Poll(ctx, timeout, 20*time.Millisecond, func() (bool, error) { return dialOK(addr), nil })
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func msList(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatFloat(x, 'f', 1, 64)
	}
	return "[" + strings.Join(s, " ") + "]"
}

// percentile returns the q-quantile of v (nearest rank).
func percentile(v []float64, q float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)]
}
