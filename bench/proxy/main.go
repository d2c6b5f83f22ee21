// Command proxy measures the agent's traffic front side by side with nginx
// and with no proxy at all, in front of one hello-world Node app, all on
// 127.0.0.1: requests per second at saturation (wrk), latency at a fixed
// 1,000 requests per second (hey), and the proxy process's memory.
//
//	go run ./bench/proxy [-runs 3] [-d 10s]
//
// It needs node, nginx (Debian's nginx-light), wrk and hey on PATH.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"agent/bench/internal/benchkit"
	"agent/internal/clock"
	"agent/internal/testkit"
	"agent/proxy"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve-proxy" {
		if err := serveProxy(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "serve-proxy:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/proxy:", err)
		os.Exit(1)
	}
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

const helloApp = `require('http').createServer((req, res) => res.end('hello world\n'))
  .listen(Number(process.env.PORT), '127.0.0.1', () => console.log('ready'));
`

type target struct {
	name string
	url  string
	pid  int // the proxy process whose memory is sampled, or 0
	// cpu returns the CPU time (user + system) the proxy in front of the
	// app has used so far; nil for no proxy.
	cpu func() time.Duration
}

type sample struct {
	rps       float64
	cpuPerReq float64 // µs of the proxy's CPU per request at saturation
	p50, p99  float64 // ms
	rssLoad   float64 // MB, peak during the fixed-rate run
}

func run() error {
	runs := flag.Int("runs", 3, "runs per target (the medians are reported)")
	dur := flag.Duration("d", 10*time.Second, "duration of each wrk and hey run")
	flag.Parse()
	for _, tool := range []string{"node", "nginx", "wrk", "hey"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install nodejs nginx-light wrk hey)", tool)
		}
	}
	dir, err := os.MkdirTemp("", "bench-proxy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ports, release, err := testkit.ReservePorts(3)
	if err != nil {
		return fmt.Errorf("find free ports: %w", err)
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
	start := func(c *exec.Cmd, addr string) error {
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			return fmt.Errorf("start %s: %w", c.Path, err)
		}
		procs = append(procs, c)
		return waitListen(addr)
	}

	appJS := filepath.Join(dir, "hello.js")
	if err := os.WriteFile(appJS, []byte(helloApp), 0o644); err != nil {
		return err
	}
	node := exec.Command("node", appJS)
	node.Env = append(os.Environ(), "PORT="+port(appAddr))
	if err := start(node, appAddr); err != nil {
		return err
	}

	conf := filepath.Join(dir, "nginx.conf")
	nginx := benchkit.NginxConfig{Dir: dir, Listen: nginxAddr, Servers: []string{appAddr}, Keepalive: 128}
	if err := os.WriteFile(conf, []byte(nginx.Text()), 0o644); err != nil {
		return err
	}
	if err := start(exec.Command("nginx", "-c", conf, "-p", dir), nginxAddr); err != nil {
		return err
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	px := exec.Command(self, "serve-proxy", "-listen", proxyAddr, "-upstream", appAddr)
	if err := start(px, proxyAddr); err != nil {
		return err
	}
	idleRSS := rssMB(px.Process.Pid)

	nginxPid := procs[1].Process.Pid
	targets := []target{
		{"direct to node", "http://" + appAddr + "/", 0, nil},
		{"nginx", "http://" + nginxAddr + "/", 0, func() time.Duration { return treeCPU(nginxPid) }},
		{"agent proxy", "http://" + proxyAddr + "/", px.Process.Pid, func() time.Duration { return treeCPU(px.Process.Pid) }},
	}
	for _, t := range targets { // warm up: JIT, connection pools
		if _, err := wrk(t.url, 2*time.Second); err != nil {
			return err
		}
	}
	time.Sleep(10 * time.Second) // idle again: kept connections to the app closed, memory settled
	idleAfterRSS := rssMB(px.Process.Pid)

	results := make([][]sample, len(targets))
	for r := 0; r < *runs; r++ {
		for i, t := range targets { // interleaved, so drift hits all alike
			var cpu0 time.Duration
			if t.cpu != nil {
				cpu0 = t.cpu()
			}
			rps, err := wrk(t.url, *dur)
			if err != nil {
				return err
			}
			s := sample{rps: rps}
			if t.cpu != nil {
				s.cpuPerReq = float64((t.cpu() - cpu0).Microseconds()) / (rps * dur.Seconds())
			}
			var peak func() uint64
			if t.pid != 0 {
				peak = benchkit.PeakRSS(t.pid, 100*time.Millisecond)
			}
			s.p50, s.p99, err = hey(t.url, *dur)
			if peak != nil {
				s.rssLoad = float64(peak()) / 1e6
			}
			if err != nil {
				return err
			}
			results[i] = append(results[i], s)
			fmt.Fprintf(os.Stderr, "run %d %-15s %8.0f req/s  %5.1f µs CPU/req  p50 %.2f ms  p99 %.2f ms\n",
				r+1, t.name, s.rps, s.cpuPerReq, s.p50, s.p99)
		}
	}

	fmt.Printf("| | req/s (wrk -t2 -c64) | proxy CPU per request | p50 at 1,000 req/s | p99 at 1,000 req/s |\n|---|---|---|---|---|\n")
	med := make([]sample, len(targets))
	for i, t := range targets {
		med[i] = sample{
			rps:       median(results[i], func(s sample) float64 { return s.rps }),
			p50:       median(results[i], func(s sample) float64 { return s.p50 }),
			p99:       median(results[i], func(s sample) float64 { return s.p99 }),
			cpuPerReq: median(results[i], func(s sample) float64 { return s.cpuPerReq }),
		}
		cpu := "—"
		if t.cpu != nil {
			cpu = fmt.Sprintf("%.1f µs", med[i].cpuPerReq)
		}
		fmt.Printf("| %s | %.0f | %s | %.2f ms | %.2f ms |\n", t.name, med[i].rps, cpu, med[i].p50, med[i].p99)
	}
	fmt.Println()
	fmt.Printf("runs per target: %d (medians); each run %s\n", *runs, *dur)
	fmt.Printf("per-run req/s: ")
	for i, t := range targets {
		fmt.Printf("%s %v; ", t.name, fmtRuns(results[i], func(s sample) float64 { return s.rps }, "%.0f"))
	}
	fmt.Println()
	fmt.Printf("per-run p50/p99 ms: ")
	for i, t := range targets {
		fmt.Printf("%s %v / %v; ", t.name, fmtRuns(results[i], func(s sample) float64 { return s.p50 }, "%.2f"),
			fmtRuns(results[i], func(s sample) float64 { return s.p99 }, "%.2f"))
	}
	fmt.Println()
	d, n, a := med[0], med[1], med[2]
	fmt.Printf("proxy/nginx req/s: %.2f (goal >= 0.6); CPU per request: nginx %.1f µs, proxy %.1f µs\n",
		a.rps/n.rps, n.cpuPerReq, a.cpuPerReq)
	fmt.Printf("added p50 over direct: nginx %.2f ms, proxy %.2f ms\n", n.p50-d.p50, a.p50-d.p50)
	fmt.Printf("added p99 over direct: nginx %.2f ms, proxy %.2f ms\n", n.p99-d.p99, a.p99-d.p99)
	fmt.Printf("proxy RSS: idle %.1f MB at start, %.1f MB idle 10 s after the warm-up load; peak under 1,000 req/s %v MB (goal <= 15 idle, <= 25 loaded)\n",
		idleRSS, idleAfterRSS, fmtRuns(results[2], func(s sample) float64 { return s.rssLoad }, "%.1f"))
	return nil
}

var (
	heyPct = regexp.MustCompile(`(?m)^\s+(50|99)% in ([0-9.]+) secs`)
	heyErr = regexp.MustCompile(`(?m)^Error distribution:`)
)

// wrk runs wrk -t2 -c64 for d and returns requests per second.
func wrk(url string, d time.Duration) (float64, error) {
	r, err := benchkit.Wrk(context.Background(), url, 2, 64, d)
	if err != nil {
		return 0, err
	}
	if r.Errors != "" {
		return 0, fmt.Errorf("wrk %s: errors: %s", url, r.Errors)
	}
	return r.RPS, nil
}

// hey runs 10 workers at 100 req/s each for d and returns p50 and p99 in ms.
func hey(url string, d time.Duration) (p50, p99 float64, err error) {
	out, err := exec.Command("hey", "-z", d.String(), "-c", "10", "-q", "100", url).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("hey %s: %w\n%s", url, err, out)
	}
	if heyErr.Match(out) {
		return 0, 0, fmt.Errorf("hey %s: errors:\n%s", url, out)
	}
	for _, m := range heyPct.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		if string(m[1]) == "50" {
			p50 = v * 1000
		} else {
			p99 = v * 1000
		}
	}
	if p50 == 0 || p99 == 0 {
		return 0, 0, fmt.Errorf("hey %s: no latency distribution in:\n%s", url, out)
	}
	return p50, p99, nil
}

// treeCPU is the user + system CPU time of pid and its children (nginx's
// workers), from /proc/PID/stat.
func treeCPU(pid int) time.Duration {
	total := procCPU(pid)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err == nil {
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				total += procCPU(c)
			}
		}
	}
	return total
}

// procCPU is one process's utime + stime (clock ticks of 10 ms on Linux).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
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

// rssMB is pid's VmRSS in MB (10^6 bytes), 0 if unknown.
func rssMB(pid int) float64 { return float64(benchkit.RSS(pid)) / 1e6 }

func median(ss []sample, f func(sample) float64) float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	sort.Float64s(v)
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func fmtRuns(ss []sample, f func(sample) float64, format string) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = fmt.Sprintf(format, f(s))
	}
	return strings.Join(parts, ", ")
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// waitListen waits until something accepts connections on addr.
func waitListen(addr string) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(fmt.Errorf("nothing listens on %s", addr), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
