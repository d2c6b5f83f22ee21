// Command proxy measures the agent's traffic front side by side with nginx
// and with no proxy at all, in front of one hello-world Node app, all on
// 127.0.0.1: the front's CPU per request and the latency it adds at fixed
// request rates (internal/lbclient, kept connections, never retried), and
// requests per second at saturation (wrk). See README.md.
//
//	go run ./bench/proxy [-rounds 5] [-d 10s] [-rates 1000,4000]
//
// It needs node, nginx (Debian's nginx-light), wrk and taskset on PATH.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"agent/bench/internal/benchkit"
	"agent/internal/clock"
	"agent/internal/lbclient"
	"agent/internal/procs"
	"agent/proxy"
)

func main() {
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "serve-proxy":
			err = serveProxy(os.Args[2:])
		case "load":
			err = load(os.Args[2:])
		default:
			benchkit.Main("bench/proxy", run)
			return
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, os.Args[1]+":", err)
			os.Exit(1)
		}
		return
	}
	benchkit.Main("bench/proxy", run)
}

// serveProxy is the proxy process under test: proxy.New with Ready(upstream).
func serveProxy(args []string) error {
	fs := flag.NewFlagSet("serve-proxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "traffic address")
	upstream := fs.String("upstream", "", "the app's address")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	procs.Set() // as agent run does
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	p := proxy.New(proxy.Config{Listen: *listen, HealthPath: "/health.html"}, zerolog.Nop(), clock.Real{})
	if err := p.Listen(); err != nil {
		return err
	}
	p.Ready(0, *upstream)
	return p.Run(ctx)
}

// load is the fixed-rate load in a process of its own (so that it can be
// pinned to a CPU): it prints what it saw as lbclient's Report, in JSON.
//
// It sends through one lbclient.Client (kept connections, never a retry,
// every failure counted by its kind) but does not use lbclient.Load: Load
// dials a new connection for every request that finds none idle, and on a
// busy machine a stall of a few milliseconds at 4,000 req/s snowballed
// into thousands of new connections, an overflowing accept queue and SYN
// retransmits of a second. Here conns workers each take the next tick
// from the schedule and send it, so no more than conns connections are
// ever open; a request that has to wait for a free connection counts that
// wait in its latency, which runs from its tick (open loop: the schedule
// never slows down).
func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	addr := fs.String("addr", "", "host:port")
	rate := fs.Int("rate", 1000, "requests a second")
	conns := fs.Int("conns", 32, "kept connections")
	d := fs.Duration("d", 10*time.Second, "duration")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rep := fixedLoad(*addr, *rate, *conns, *d)
	return json.NewEncoder(os.Stdout).Encode(rep)
}

func fixedLoad(addr string, rate, conns int, d time.Duration) lbclient.Report {
	c := &lbclient.Client{Addr: addr, Timeout: 5 * time.Second, Conns: conns}
	defer c.Close()
	check := lbclient.Prefix("hello world")
	n := int(d.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	ticks := make(chan time.Time, n)
	type result struct {
		took time.Duration
		kind string
		text string
	}
	results := make(chan []result, conns)
	for range conns {
		go func() {
			var mine []result
			for t := range ticks {
				resp, err := c.Do(context.Background(), lbclient.Request{})
				r := result{took: time.Since(t), kind: lbclient.Kind(resp, err)}
				switch {
				case err != nil:
					r.text = err.Error()
				case r.kind != "":
					r.text = r.kind
				default:
					if err := check(resp.Body); err != nil {
						r.kind, r.text = lbclient.KindBody, err.Error()
					}
				}
				mine = append(mine, r)
			}
			results <- mine
		}()
	}
	start := time.Now()
	for i := range n {
		tick := start.Add(time.Duration(i) * interval)
		if w := time.Until(tick); w > 0 {
			time.Sleep(w)
		}
		ticks <- tick
	}
	close(ticks)
	rep := lbclient.Report{Kinds: map[string]int{}}
	var lat []time.Duration
	for range conns {
		for _, r := range <-results {
			rep.Sent++
			if r.kind != "" {
				rep.Failed++
				rep.Kinds[r.kind]++
				if len(rep.Errors) < 5 {
					rep.Errors = append(rep.Errors, r.text)
				}
				continue
			}
			rep.OK++
			lat = append(lat, r.took)
		}
	}
	slices.Sort(lat)
	pct := func(q float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[max(int(math.Ceil(q*float64(len(lat))))-1, 0)]
	}
	rep.P50, rep.P99, rep.Max = pct(0.50), pct(0.99), pct(1)
	rep.Conns = c.Dials()
	return rep
}

const helloApp = `require('http').createServer((req, res) => res.end('hello world\n'))
  .listen(Number(process.env.PORT), '127.0.0.1', () => console.log('ready'));
`

type kind int

const (
	direct kind = iota
	nginx
	agent
)

// target is one way to the app.
type target struct {
	name string
	kind kind
	addr string
	// pids are the front's processes (nginx's master and workers, the
	// proxy's one); none for direct.
	pids func() []int
}

// cpu is the user + system CPU the target's front has used so far.
func (t target) cpu() time.Duration {
	if t.pids == nil {
		return 0
	}
	var total time.Duration
	for _, pid := range t.pids() {
		total += procCPU(pid)
	}
	return total
}

// sample is one target's figures in one round.
type sample struct {
	cpu      []float64 // µs of the front's CPU per request, by rate
	appCPU   []float64 // µs of node's CPU per request, by rate
	p50, p99 []float64 // ms, by rate
	rate     []float64 // the rate achieved, requests/s
	rss      float64   // MB, the front's peak during the highest rate
	rps      float64   // wrk, requests/s at saturation
	cpuSat   float64   // µs of the front's CPU per request under wrk
}

type config struct {
	rounds     int
	d          time.Duration
	rates      []int
	conns      int
	wrkConns   int
	wrkThreads int
	loadCPUs   string
	frontCPUs  string
	targets    map[string]bool
	wrk        bool
	allocs     bool
	cpuProfile string
	extra      []string // name=binary
	twoProcs   bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg config
	fs := flag.NewFlagSet("bench/proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.rounds, "rounds", 5, "rounds; each measures every target once (medians are reported)")
	fs.DurationVar(&cfg.d, "d", 10*time.Second, "duration of each fixed-rate run and each wrk run")
	rates := fs.String("rates", "1000,4000", "fixed request rates, comma-separated")
	fs.IntVar(&cfg.conns, "conns", 32, "kept connections of the fixed-rate load")
	fs.IntVar(&cfg.wrkConns, "wrk-conns", 64, "wrk's connections")
	fs.IntVar(&cfg.wrkThreads, "wrk-threads", 0, "wrk's threads (0: one per CPU it runs on)")
	defLoad := ""
	if runtime.NumCPU() >= 2 {
		defLoad = strconv.Itoa(runtime.NumCPU() - 1)
	}
	fs.StringVar(&cfg.loadCPUs, "load-cpus", defLoad, "run the load generators (lbclient, wrk) on these CPUs only (taskset -c); \"\" = anywhere")
	fs.StringVar(&cfg.frontCPUs, "front-cpus", "", "run node and the fronts on these CPUs only; \"\" = anywhere")
	only := fs.String("targets", "direct,nginx,agent", "targets to measure (the extra ones are always in)")
	fs.BoolVar(&cfg.wrk, "wrk", true, "measure saturation with wrk")
	fs.BoolVar(&cfg.allocs, "allocs", true, "report allocations per request (go test -bench Forward ./proxy/)")
	fs.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write the agent proxy's CPU profile over the whole run here")
	fs.BoolVar(&cfg.twoProcs, "two-procs", false, "also measure the agent proxy run with GOMAXPROCS=2 (the agent runs with 1, internal/procs), as target agent-2p")
	fs.Func("extra", "another proxy binary to measure beside the agent, NAME=PATH (a build of bench/proxy; repeatable)", func(s string) error {
		if !strings.Contains(s, "=") {
			return errors.New("want NAME=PATH")
		}
		cfg.extra = append(cfg.extra, s)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, r := range strings.Split(*rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || n <= 0 {
			return fmt.Errorf("-rates: bad rate %q", r)
		}
		cfg.rates = append(cfg.rates, n)
	}
	cfg.targets = map[string]bool{}
	for _, t := range strings.Split(*only, ",") {
		cfg.targets[strings.TrimSpace(t)] = true
	}
	if cfg.wrkThreads <= 0 {
		cfg.wrkThreads = 2
		if cfg.loadCPUs != "" {
			cfg.wrkThreads = len(strings.Split(cfg.loadCPUs, ","))
		}
	}
	tools := []string{"node", "nginx", "taskset"}
	if cfg.wrk {
		tools = append(tools, "wrk")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install nodejs nginx-light wrk util-linux)", tool)
		}
	}
	logf := func(format string, args ...any) { benchkit.Logf(stderr, format, args...) }

	dir, err := os.MkdirTemp("", "bench-proxy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ports, release, err := benchkit.FreePorts(4 + len(cfg.extra))
	if err != nil {
		return err
	}
	defer release()
	addr := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	appAddr, nginxAddr, proxyAddr := addr(ports[0]), addr(ports[1]), addr(ports[2])

	var procs []*exec.Cmd
	defer func() {
		for _, c := range procs {
			c.Process.Signal(syscall.SIGTERM)
			c.Wait()
		}
	}()
	start := func(args ...string) *exec.Cmd {
		if cfg.frontCPUs != "" {
			args = append([]string{"taskset", "-c", cfg.frontCPUs}, args...)
		}
		c := exec.Command(args[0], args[1:]...)
		c.Stderr = stderr
		return c
	}
	launch := func(c *exec.Cmd, addr string) error {
		if err := c.Start(); err != nil {
			return fmt.Errorf("start %s: %w", c.Path, err)
		}
		procs = append(procs, c)
		return benchkit.WaitServing(ctx, addr, 20*time.Second)
	}

	appJS := filepath.Join(dir, "hello.js")
	if err := os.WriteFile(appJS, []byte(helloApp), 0o644); err != nil {
		return err
	}
	node := start("node", appJS)
	node.Env = append(os.Environ(), "PORT="+port(appAddr))
	if err := launch(node, appAddr); err != nil {
		return err
	}
	nodePid := node.Process.Pid

	conf := filepath.Join(dir, "nginx.conf")
	ngx := benchkit.NginxConfig{Dir: dir, Listen: nginxAddr, Servers: []string{appAddr}, Workers: 1, Keepalive: 128, KeepaliveTimeout: "4s"}
	if err := os.WriteFile(conf, []byte(ngx.Text()), 0o644); err != nil {
		return err
	}
	nc := start("nginx", "-c", conf, "-p", dir)
	if err := launch(nc, nginxAddr); err != nil {
		return err
	}
	nginxPid := nc.Process.Pid

	self, err := os.Executable()
	if err != nil {
		return err
	}
	proxyArgs := []string{self, "serve-proxy", "-listen", proxyAddr, "-upstream", appAddr}
	if cfg.cpuProfile != "" {
		proxyArgs = append(proxyArgs, "-cpuprofile", cfg.cpuProfile)
	}
	px := start(proxyArgs...)
	if err := launch(px, proxyAddr); err != nil {
		return err
	}

	var targets []target
	if cfg.targets["direct"] {
		targets = append(targets, target{name: "direct", kind: direct, addr: appAddr})
	}
	if cfg.targets["nginx"] {
		targets = append(targets, target{name: "nginx", kind: nginx, addr: nginxAddr,
			pids: func() []int { return append([]int{nginxPid}, children(nginxPid)...) }})
	}
	if cfg.targets["agent"] {
		targets = append(targets, target{name: "agent", kind: agent, addr: proxyAddr,
			pids: func() []int { return []int{px.Process.Pid} }})
	}
	for i, e := range cfg.extra {
		name, bin, _ := strings.Cut(e, "=")
		a := addr(ports[4+i])
		c := start(bin, "serve-proxy", "-listen", a, "-upstream", appAddr)
		if err := launch(c, a); err != nil {
			return err
		}
		targets = append(targets, target{name: name, kind: agent, addr: a, pids: func() []int { return []int{c.Process.Pid} }})
	}

	if cfg.twoProcs {
		a := addr(ports[3])
		c := start(self, "serve-proxy", "-listen", a, "-upstream", appAddr)
		c.Env = append(os.Environ(), "GOMAXPROCS=2")
		if err := launch(c, a); err != nil {
			return err
		}
		targets = append(targets, target{name: "agent-2p", kind: agent, addr: a, pids: func() []int { return []int{c.Process.Pid} }})
	}

	var allocs string
	if cfg.allocs {
		logf("go test -run XXX -bench Forward -benchmem ./proxy/")
		if allocs, err = forwardAllocs(ctx); err != nil {
			return err
		}
	}

	top := cfg.rates[len(cfg.rates)-1]
	logf("warm-up: 2 s at %d req/s and 2 s of wrk per target", top)
	for _, t := range targets {
		if _, err := fixedRate(ctx, self, cfg.loadCPUs, t.addr, top, cfg.conns, 2*time.Second); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if cfg.wrk {
			if _, err := benchkit.WrkOn(ctx, cfg.loadCPUs, "http://"+t.addr+"/", cfg.wrkThreads, cfg.wrkConns, 2*time.Second); err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
		}
	}

	res := make([][]sample, len(targets)) // by target, by round
	for r := range cfg.rounds {
		for k := range targets {
			i := (k + r) % len(targets) // the order turns each round
			t := targets[i]
			s, err := measure(ctx, cfg, self, t, nodePid, logf)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, t.name, err)
			}
			res[i] = append(res[i], s)
			line := fmt.Sprintf("round %d %-8s", r+1, t.name)
			for j, rate := range cfg.rates {
				line += fmt.Sprintf(" | %d/s: CPU %5.1f µs, p50 %.3f p99 %.3f ms, node %4.1f µs", rate, s.cpu[j], s.p50[j], s.p99[j], s.appCPU[j])
			}
			if cfg.wrk {
				line += fmt.Sprintf(" | wrk %.0f req/s, CPU %.1f µs", s.rps, s.cpuSat)
			}
			logf("%s", line)
		}
	}

	report(stdout, cfg, targets, res, allocs)
	return nil
}

// measure runs the fixed rates and wrk on one target.
func measure(ctx context.Context, cfg config, self string, t target, nodePid int, logf func(string, ...any)) (sample, error) {
	var s sample
	for j, rate := range cfg.rates {
		var peak func() uint64
		if j == len(cfg.rates)-1 && t.pids != nil {
			peak = benchkit.PeakRSS(t.pids()[0], 100*time.Millisecond)
		}
		cpu0, app0 := t.cpu(), procCPU(nodePid)
		rep, err := fixedRate(ctx, self, cfg.loadCPUs, t.addr, rate, cfg.conns, cfg.d)
		cpu1, app1 := t.cpu(), procCPU(nodePid)
		if peak != nil {
			s.rss = float64(peak()) / 1e6
		}
		if err != nil {
			return s, err
		}
		n := float64(rep.Sent)
		s.cpu = append(s.cpu, float64((cpu1-cpu0).Microseconds())/n)
		s.appCPU = append(s.appCPU, float64((app1-app0).Microseconds())/n)
		s.p50 = append(s.p50, ms(rep.P50))
		s.p99 = append(s.p99, ms(rep.P99))
		s.rate = append(s.rate, n/cfg.d.Seconds())
		if got := n / cfg.d.Seconds(); got < 0.97*float64(rate) {
			logf("warning: %s: %d req/s asked, %.0f sent", t.name, rate, got)
		}
	}
	if cfg.wrk {
		cpu0 := t.cpu()
		w, err := benchkit.WrkOn(ctx, cfg.loadCPUs, "http://"+t.addr+"/", cfg.wrkThreads, cfg.wrkConns, cfg.d)
		cpu1 := t.cpu()
		if err != nil {
			return s, err
		}
		if w.Errors != "" {
			return s, fmt.Errorf("wrk: %s", w.Errors)
		}
		s.rps = w.RPS
		s.cpuSat = float64((cpu1 - cpu0).Microseconds()) / (w.RPS * cfg.d.Seconds())
	}
	return s, nil
}

// fixedRate runs `bench/proxy load` (pinned to cpus, if any) and returns
// its report; any failed request is an error.
func fixedRate(ctx context.Context, self, cpus, addr string, rate, conns int, d time.Duration) (lbclient.Report, error) {
	args := []string{self, "load", "-addr", addr, "-rate", strconv.Itoa(rate), "-conns", strconv.Itoa(conns), "-d", d.String()}
	if cpus != "" {
		args = append([]string{"taskset", "-c", cpus}, args...)
	}
	var out, errb bytes.Buffer
	c := exec.CommandContext(ctx, args[0], args[1:]...)
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		return lbclient.Report{}, fmt.Errorf("load %d/s: %w: %s", rate, err, errb.String())
	}
	var rep lbclient.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		return rep, fmt.Errorf("load %d/s: %w", rate, err)
	}
	if rep.Failed > 0 || rep.OK == 0 {
		return rep, fmt.Errorf("load %d/s: %s failed: %s %v", rate, rep, lbclient.FormatKinds(rep.Kinds), rep.Errors)
	}
	return rep, nil
}

var benchLine = regexp.MustCompile(`(?m)^(BenchmarkForward\S*)\s+\d+\s+([0-9.]+) ns/op\s+(\d+) B/op\s+(\d+) allocs/op`)

// forwardAllocs runs the proxy's Forward benchmarks with -benchmem and
// returns their allocations per request, one line per benchmark.
func forwardAllocs(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "test", "-run", "XXX", "-bench", "Forward", "-benchmem", "./proxy/").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go test -bench Forward: %w\n%s", err, out)
	}
	var lines []string
	for _, m := range benchLine.FindAllSubmatch(out, -1) {
		lines = append(lines, fmt.Sprintf("%s: %s allocs, %s B per request", m[1], m[4], m[3]))
	}
	if len(lines) == 0 {
		return "", fmt.Errorf("go test -bench Forward: no result in\n%s", out)
	}
	return strings.Join(lines, "; "), nil
}

// report prints the tables.
func report(w io.Writer, cfg config, targets []target, res [][]sample, allocs string) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }

	p("%s", benchkit.MachineLine(false))
	p("node %s, %s (nginx-light, 1 worker, upstream keepalive 128), %s, %s\n",
		benchkit.Version(context.Background(), "node", "--version"),
		strings.TrimPrefix(benchkit.Version(context.Background(), "sh", "-c", "nginx -v 2>&1"), "nginx version: "),
		wrkVersion(), runtime.Version())
	pin := "anywhere"
	if cfg.loadCPUs != "" {
		pin = "on CPU " + cfg.loadCPUs
	}
	front := "anywhere"
	if cfg.frontCPUs != "" {
		front = "on CPU " + cfg.frontCPUs
	}
	p("Load generators %s (node and the fronts %s): lbclient, %d kept connections, open loop at %s req/s; wrk -t%d -c%d.\n",
		pin, front, cfg.conns, joinInts(cfg.rates), cfg.wrkThreads, cfg.wrkConns)
	p("%d rounds; in each, every target in turn (the order turns each round): %s at each rate, then %s of wrk.\n\n",
		cfg.rounds, cfg.d, cfg.d)

	var nx = -1
	var agents []int
	dx := -1
	for i, t := range targets {
		switch t.kind {
		case direct:
			dx = i
		case nginx:
			nx = i
		case agent:
			agents = append(agents, i)
		}
	}
	get := func(i int, f func(sample) float64) []float64 {
		v := make([]float64, len(res[i]))
		for r, s := range res[i] {
			v[r] = f(s)
		}
		return v
	}
	cell := func(v []float64, format string) string {
		if len(v) == 0 || allNaN(v) {
			return "—"
		}
		lo, hi := minMax(v)
		return fmt.Sprintf(format+" ("+format+"–"+format+")", benchkit.Median(v), lo, hi)
	}
	// ratio columns: per round, then of the medians.
	ratioCells := func(a, n []float64) string {
		if len(a) == 0 || len(n) == 0 || allNaN(a) || allNaN(n) {
			return "— | —"
		}
		per := make([]float64, len(a))
		for r := range a {
			per[r] = a[r] / n[r]
			if n[r] <= 0 || math.IsInf(per[r], 0) {
				per[r] = math.NaN()
			}
		}
		m := benchkit.Median(a) / benchkit.Median(n)
		if allNaN(per) {
			return fmt.Sprintf("— | %.2f", m)
		}
		lo, hi := minMax(per)
		return fmt.Sprintf("%.2f (%.2f–%.2f) | %.2f", benchkit.Median(per), lo, hi, m)
	}

	p("Medians of %d rounds (min–max in parentheses).\n\n| measure |", cfg.rounds)
	for _, t := range targets {
		p(" %s |", t.name)
	}
	for _, a := range agents {
		p(" %s/nginx, per round | %s/nginx, of the medians |", targets[a].name, targets[a].name)
	}
	// (In the "added" rows those two columns are agent − nginx in ms.)
	p("\n|---|")
	for range len(targets) + 2*len(agents) {
		p("---|")
	}
	p("\n")
	row := func(name, format string, f func(sample) float64, ratio bool, only func(kind) bool) {
		p("| %s |", name)
		for i, t := range targets {
			if only != nil && !only(t.kind) {
				p(" — |")
				continue
			}
			p(" %s |", cell(get(i, f), format))
		}
		for _, a := range agents {
			if !ratio || nx < 0 {
				p(" — | — |")
				continue
			}
			p(" %s |", ratioCells(get(a, f), get(nx, f)))
		}
		p("\n")
	}
	fronts := func(k kind) bool { return k != direct }
	for j, rate := range cfg.rates {
		row(fmt.Sprintf("front CPU per request at %s req/s, µs", thousands(rate)), "%.1f",
			func(s sample) float64 { return s.cpu[j] }, true, fronts)
	}
	for j, rate := range cfg.rates {
		row(fmt.Sprintf("p50 at %s req/s, ms", thousands(rate)), "%.3f", func(s sample) float64 { return s.p50[j] }, false, nil)
		row(fmt.Sprintf("p99 at %s req/s, ms", thousands(rate)), "%.3f", func(s sample) float64 { return s.p99[j] }, false, nil)
	}
	added := func(j int, p99 bool) map[int][]float64 {
		m := map[int][]float64{}
		if dx < 0 {
			return m
		}
		for i := range targets {
			if i == dx {
				continue
			}
			v := make([]float64, min(len(res[i]), len(res[dx])))
			for r := range v {
				if p99 {
					v[r] = res[i][r].p99[j] - res[dx][r].p99[j]
				} else {
					v[r] = res[i][r].p50[j] - res[dx][r].p50[j]
				}
			}
			m[i] = v
		}
		return m
	}
	// For the added latency, the difference agent − nginx: a ratio of two
	// small differences is meaningless when one is near zero.
	diffCells := func(a, n []float64) string {
		per := make([]float64, len(a))
		for r := range a {
			per[r] = a[r] - n[r]
		}
		lo, hi := minMax(per)
		return fmt.Sprintf("%+.3f (%+.3f–%+.3f) | %+.3f", benchkit.Median(per), lo, hi, benchkit.Median(a)-benchkit.Median(n))
	}
	addedRow := func(name string, m map[int][]float64) {
		p("| %s |", name)
		for i := range targets {
			if v, ok := m[i]; ok {
				p(" %s |", cell(v, "%+.3f"))
			} else {
				p(" — |")
			}
		}
		for _, a := range agents {
			if nx < 0 || m[a] == nil {
				p(" — | — |")
				continue
			}
			p(" %s |", diffCells(m[a], m[nx]))
		}
		p("\n")
	}
	if dx >= 0 {
		for j, rate := range cfg.rates {
			addedRow(fmt.Sprintf("p50 added over direct at %s req/s, ms", thousands(rate)), added(j, false))
			addedRow(fmt.Sprintf("p99 added over direct at %s req/s, ms", thousands(rate)), added(j, true))
		}
	}
	if cfg.wrk {
		row("requests/s at saturation (wrk)", "%.0f", func(s sample) float64 { return s.rps }, true, nil)
		row("front CPU per request at saturation, µs", "%.1f", func(s sample) float64 { return s.cpuSat }, true, fronts)
	}
	top := len(cfg.rates) - 1
	row(fmt.Sprintf("node's CPU per request at %s req/s, µs", thousands(cfg.rates[top])), "%.1f",
		func(s sample) float64 { return s.appCPU[top] }, true, nil)
	row(fmt.Sprintf("front's peak RSS at %s req/s, MB", thousands(cfg.rates[top])), "%.1f",
		func(s sample) float64 { return s.rss }, false, fronts)
	p("\nIn the rows \"added over direct\" (the target's latency minus direct's in the same round), the last columns are agent − nginx in ms, per round and of the medians, not a ratio.\n\n")
	if allocs != "" {
		p("Allocations per request (go test -run XXX -bench Forward -benchmem ./proxy/): %s.\n\n", allocs)
	}

	if nx < 0 || len(agents) == 0 {
		return
	}
	p("| goal | ")
	for _, a := range agents {
		p("%s | met |", targets[a].name)
	}
	p("\n|---|")
	for range agents {
		p("---|---|")
	}
	p("\n")
	met := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "no"
	}
	for j, rate := range cfg.rates {
		p("| CPU per request at %s req/s ≤ 1.2 × nginx's |", thousands(rate))
		for _, a := range agents {
			r := benchkit.Median(get(a, func(s sample) float64 { return s.cpu[j] })) /
				benchkit.Median(get(nx, func(s sample) float64 { return s.cpu[j] }))
			p(" %.2f × | %s |", r, met(r <= 1.2))
		}
		p("\n")
	}
	if dx >= 0 {
		for j, rate := range cfg.rates {
			m := added(j, false)
			p("| p50 added at %s req/s ≤ nginx's |", thousands(rate))
			for _, a := range agents {
				ag, ng := benchkit.Median(m[a]), benchkit.Median(m[nx])
				n := 0
				for r := range m[a] {
					if m[a][r] <= m[nx][r] {
						n++
					}
				}
				p(" %+.3f ms vs %+.3f ms (%d of %d rounds) | %s |", ag, ng, n, len(m[a]), met(ag <= ng))
			}
			p("\n")
		}
	}
	if cfg.wrk {
		p("| requests/s at saturation ≥ 0.9 × nginx's |")
		for _, a := range agents {
			r := benchkit.Median(get(a, func(s sample) float64 { return s.rps })) /
				benchkit.Median(get(nx, func(s sample) float64 { return s.rps }))
			p(" %.2f × | %s |", r, met(r >= 0.9))
		}
		p("\n")
	}
}

// children are pid's child processes (nginx's workers).
func children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if c, err := strconv.Atoi(f); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// procCPU is one process's utime + stime (clock ticks of 10 ms on Linux).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func minMax(v []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range v {
		if math.IsNaN(x) {
			continue
		}
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

func allNaN(v []float64) bool {
	for _, x := range v {
		if !math.IsNaN(x) {
			return false
		}
	}
	return true
}

func thousands(n int) string {
	s := strconv.Itoa(n)
	if len(s) > 3 {
		return s[:len(s)-3] + "," + s[len(s)-3:]
	}
	return s
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = thousands(n)
	}
	return strings.Join(s, " and ")
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// wrkVersion is "wrk 4.1.0" out of wrk -v's first line.
func wrkVersion() string {
	f := strings.Fields(benchkit.Version(context.Background(), "sh", "-c", "wrk -v 2>&1; true"))
	if len(f) < 2 {
		return "wrk ?"
	}
	v := f[1][strings.LastIndexByte(f[1], '/')+1:]
	v, _, _ = strings.Cut(v, "-")
	return "wrk " + v
}
