// Command pm2 measures the agent against PM2 on the same Node apps, side by
// side in one run: the supervisor's own memory and CPU when idle, the time
// from a crash to the new app, the reaction to a memory limit, processes
// left behind by restarts of an `npm start` app, and the health page while
// the app's event loop is saturated. It prints a table of medians over
// several runs. See bench/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"agent/bench/internal/benchkit"
)

func main() { benchkit.Main("bench", run) }

// config holds the command-line flags.
type config struct {
	runs       int
	idle       time.Duration
	settle     time.Duration
	kills      int
	restarts   int
	rate       int
	load       time.Duration
	reqTimeout time.Duration
	cpuConc    int
	agentWait  time.Duration
	pm2Wait    time.Duration
	benchkit.Flags
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.runs, "runs", 5, "number of runs; the table shows medians")
	fs.DurationVar(&c.idle, "idle", 60*time.Second, "idle window for the supervisors' CPU")
	fs.DurationVar(&c.settle, "settle", 5*time.Second, "wait after start before measuring idle memory and CPU")
	fs.IntVar(&c.kills, "kills", 5, "crashes (SIGKILL of the app) per side per run")
	fs.IntVar(&c.restarts, "restarts", 20, "restarts of the npm start app per side per run")
	fs.IntVar(&c.rate, "rate", 200, "health page requests per second (fixed rate)")
	fs.DurationVar(&c.load, "load", 10*time.Second, "health page load duration")
	fs.DurationVar(&c.reqTimeout, "timeout", 2*time.Second, "health request timeout")
	fs.IntVar(&c.cpuConc, "cpu-clients", 16, "concurrent clients hammering the app's 200 ms /cpu endpoint")
	fs.DurationVar(&c.agentWait, "agent-mem-wait", 15*time.Second, "how long to wait for the agent's memory-limit restart")
	fs.DurationVar(&c.pm2Wait, "pm2-mem-wait", 45*time.Second, "how long to wait for PM2's memory-limit restart")
	c.Register(fs, "keep the work directory (configs, logs)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.runs < 1 || c.kills < 1 || c.restarts < 1 || c.rate < 1 {
		return fmt.Errorf("runs, kills, restarts and rate must be at least 1")
	}
	res, machine, err := runBench(ctx, c, stderr)
	if res == nil {
		return err
	}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, machine)
	fmt.Fprintln(stdout)
	printTable(stdout, c, res)
	return err
}

// side is the agent or PM2.
type side int

const (
	sideAgent side = iota
	sidePM2
)

func (s side) String() string { return [...]string{"agent", "pm2"}[s] }

// results holds every value measured, per metric and side, one per run.
type results map[string]*[2][]float64

func (r results) add(key string, s side, v float64) {
	if r[key] == nil {
		r[key] = new([2][]float64)
	}
	r[key][s] = append(r[key][s], v)
}

// metric is one row of the table.
type metric struct {
	key   string
	label string
	unit  string
	prec  int
	inf   string // how +Inf (never happened, failed) reads
	goal  string
	met   func(a, p float64) bool // nil: no goal
}

func metrics(c config) []metric {
	timeout := fmt.Sprintf("> %d ms", c.reqTimeout.Milliseconds())
	return []metric{
		{key: "rss", label: "supervisor RSS, idle, 1 app", unit: "MB", prec: 1,
			goal: "agent ≤ 10 MB and ≥ 5x below PM2",
			met:  func(a, p float64) bool { return a <= 10 && a*5 <= p }},
		{key: "cpu", label: fmt.Sprintf("supervisor CPU, idle %s, memory checks on", c.idle), unit: "% of a core", prec: 3},
		{key: "respawn_pid", label: "crash (SIGKILL) → new app process", unit: "ms", prec: 1,
			goal: "agent ≤ 10 ms", met: func(a, _ float64) bool { return a <= 10 }},
		{key: "respawn_accept", label: "crash (SIGKILL) → new app accepts connections", unit: "ms", prec: 1},
		{key: "memlimit", label: "RSS crosses 150 MB → app restarted (grace 1 s)", unit: "s", prec: 2,
			inf:  "> " + c.pm2Wait.String(),
			goal: "agent ≤ 2 s (grace + 1 s)", met: func(a, _ float64) bool { return a <= 2 }},
		{key: "orphans", label: fmt.Sprintf("processes left from old trees after %d restarts (npm start + forked worker)", c.restarts), unit: "", prec: 0,
			goal: "agent 0", met: func(a, _ float64) bool { return a == 0 }},
		{key: "eaddrinuse", label: fmt.Sprintf("EADDRINUSE lines in the app's output after %d restarts", c.restarts), unit: "", prec: 0,
			goal: "agent 0", met: func(a, _ float64) bool { return a == 0 }},
		{key: "health_idle_p99", label: "health p99, app idle (reference)", unit: "ms", prec: 3, inf: timeout},
		{key: "health_p50", label: "health p50, /cpu saturating the app (agent: its page; PM2: app's static page)", unit: "ms", prec: 3, inf: timeout},
		{key: "health_p99", label: "health p99, same", unit: "ms", prec: 3, inf: timeout,
			goal: "agent < 1 ms", met: func(a, _ float64) bool { return a < 1 }},
		{key: "health_fail", label: fmt.Sprintf("health failures of %d (%d/s for %s, timeout %s)", int(c.load.Seconds())*c.rate, c.rate, c.load, c.reqTimeout), unit: "", prec: 0,
			goal: "agent 0, app's page fails", met: func(a, p float64) bool { return a == 0 && p > 0 }},
	}
}

// median returns the median of the values that are not NaN (NaN: the
// measurement failed in that run) and how many there were.
func median(v []float64) (float64, int) {
	s := slices.DeleteFunc(slices.Clone(v), math.IsNaN)
	if len(s) == 0 {
		return math.NaN(), 0
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], len(s)
	}
	lo, hi := s[len(s)/2-1], s[len(s)/2]
	if math.IsInf(hi, 1) {
		return hi, len(s)
	}
	return (lo + hi) / 2, len(s)
}

// number formats v without its unit.
func (m metric) number(v float64) string {
	switch {
	case math.IsNaN(v):
		return "error"
	case math.IsInf(v, 1):
		return m.inf
	}
	return fmt.Sprintf("%.*f", m.prec, v)
}

// format formats v with its unit.
func (m metric) format(v float64) string {
	s := m.number(v)
	switch {
	case math.IsNaN(v) || math.IsInf(v, 1) || m.unit == "":
		return s
	case m.unit == "% of a core":
		return s + " %"
	}
	return s + " " + m.unit
}

// cell is "median (min–max)" over the runs.
func (m metric) cell(v []float64) string {
	med, n := median(v)
	if n == 0 {
		return "error"
	}
	s := m.format(med)
	ok := slices.DeleteFunc(slices.Clone(v), math.IsNaN)
	if lo, hi := slices.Min(ok), slices.Max(ok); lo != hi {
		s += fmt.Sprintf(" (%s–%s)", m.number(lo), m.number(hi))
	}
	if n < len(v) {
		s += fmt.Sprintf(" [%d failed]", len(v)-n)
	}
	return s
}

func printTable(w io.Writer, c config, r results) {
	runs := 0
	if v := r["rss"]; v != nil {
		runs = len(v[sideAgent])
	}
	fmt.Fprintf(w, "Medians of %d runs (min–max in parentheses).\n\n", runs)
	fmt.Fprintln(w, "| measure | agent | PM2 | agent/PM2 | goal | met |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, m := range metrics(c) {
		v := r[m.key]
		if v == nil {
			v = new([2][]float64)
		}
		a, _ := median(v[sideAgent])
		p, _ := median(v[sidePM2])
		ratio := "—"
		if !math.IsNaN(a) && !math.IsNaN(p) && !math.IsInf(a, 0) && !math.IsInf(p, 0) && p > 0 {
			ratio = fmt.Sprintf("%.3g", a/p)
		}
		met := ""
		if m.met != nil {
			met = "no"
			if !math.IsNaN(a) && m.met(a, p) {
				met = "yes"
			}
		}
		goal := m.goal
		if goal == "" {
			goal = "—"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", m.label, m.cell(v[sideAgent]), m.cell(v[sidePM2]), ratio, goal, met)
	}
}
