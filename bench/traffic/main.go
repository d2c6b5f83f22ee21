// Command traffic counts the requests that fail while an app is killed,
// restarted and reloaded under a steady load: the agent with its proxy in
// front of the app, the agent without it (the app owns its port) and PM2 7
// in fork mode, side by side in one run, on a plain Node app and on a real
// `next start`. It sends a fixed rate of requests over keep-alive
// connections, never retries, classifies every failure (connection refused,
// reset, closed without a response, response cut, timeout, HTTP 502/503...)
// and prints a markdown table of medians over several runs. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"agent/bench/internal/benchkit"
	"agent/internal/lbclient"
)

func main() { benchkit.Main("traffic", run) }

// The cells' coordinates.
var (
	allApps    = []string{"node", "next"}
	allSides   = []string{"proxy", "agent", "pm2"}
	allActions = []string{"kill", "restart", "reload"}
	// "none" is the reference: the same load, no events.
	knownActions = append([]string{"none"}, allActions...)
)

var sideLabel = map[string]string{
	"proxy": "agent + proxy",
	"agent": "agent, no proxy",
	"pm2":   "PM2 7 fork",
}

var actionLabel = map[string]string{
	"kill":    "SIGKILL of the app",
	"restart": "restart",
	"reload":  "reload",
	"none":    "nothing (reference)",
}

var appLabel = map[string]string{
	"node": "plain Node",
	"next": "next start",
}

// config holds the command-line flags.
type config struct {
	runs      int
	k         int
	rate      int
	nextRate  int
	window    time.Duration
	tail      time.Duration
	timeout   time.Duration
	slowEvery int
	apps      []string
	sides     []string
	actions   []string
	benchkit.Flags
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c config
	var apps, sides, actions string
	fs := flag.NewFlagSet("traffic", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.runs, "runs", 3, "number of runs; the table shows medians")
	fs.IntVar(&c.k, "k", 5, "events (kills, restarts or reloads) per cell")
	fs.IntVar(&c.rate, "rate", 200, "requests per second, fixed")
	fs.DurationVar(&c.window, "window", 20*time.Second, "load duration per cell; the k events are spread evenly over it")
	fs.DurationVar(&c.tail, "tail", 2*time.Second, "load kept on after the last event is over, at least")
	fs.IntVar(&c.nextRate, "next-rate", 0, "requests per second for next start (default: -rate)")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "per-request timeout (connect to last body byte); the proxy holds requests up to 30s")
	fs.IntVar(&c.slowEvery, "slow-every", 4, "plain app: every Nth request goes to /slow (20 ms); 0 = none")
	fs.StringVar(&apps, "apps", strings.Join(allApps, ","), "apps to run: node (plain), next (next start)")
	fs.StringVar(&sides, "sides", strings.Join(allSides, ","), "supervisors: proxy (agent with [proxy]), agent (without), pm2")
	fs.StringVar(&actions, "actions", strings.Join(allActions, ","), "events: kill (SIGKILL the app's tree), restart, reload; none = the load alone, for reference")
	c.Register(fs, "keep the work directory (configs, agent logs, PM2_HOME)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if c.nextRate == 0 {
		c.nextRate = c.rate
	}
	if c.runs < 1 || c.k < 1 || c.rate < 1 || c.nextRate < 1 || c.slowEvery < 0 {
		return errors.New("runs, k, rate and next-rate must be at least 1, slow-every at least 0")
	}
	if c.window < time.Second || c.timeout <= 0 || c.tail < 0 {
		return errors.New("window must be at least 1s, timeout positive, tail not negative")
	}
	var err error
	if c.apps, err = pick("apps", apps, allApps); err != nil {
		return err
	}
	if c.sides, err = pick("sides", sides, allSides); err != nil {
		return err
	}
	if c.actions, err = pick("actions", actions, knownActions); err != nil {
		return err
	}
	res, machine, err := runBench(ctx, c, stderr)
	if res == nil {
		return err
	}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, machine)
	fmt.Fprintln(stdout)
	printTables(stdout, c, res)
	return err
}

// pick parses a comma-separated list of names out of known.
func pick(flagName, list string, known []string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !slices.Contains(known, s) {
			return nil, fmt.Errorf("-%s: unknown %q (known: %s)", flagName, s, strings.Join(known, ", "))
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-%s: empty", flagName)
	}
	return out, nil
}

// trafficLoad is the load of a cell: rate GETs a second to addr, open loop,
// cycling through paths, over keep-alive connections (an idle one
// whenever there is one, up to 64 kept), never retried, each given timeout
// to complete; it ends at bound unless stopped before.
func trafficLoad(addr string, paths []string, rate int, timeout, bound time.Duration) lbclient.Load {
	reqs := make([]lbclient.Request, len(paths))
	for i, p := range paths {
		reqs[i] = lbclient.Request{Path: p}
	}
	return lbclient.Load{
		Addr: addr, Requests: reqs, Rate: rate, MaxIdle: 64, Timeout: timeout,
		Duration: bound, UserAgent: "bench-traffic",
	}
}

// latencyMS is d in milliseconds, NaN when no request succeeded (the
// medians leave it out).
func latencyMS(r lbclient.Report, d time.Duration) float64 {
	if r.OK == 0 {
		return math.NaN()
	}
	return float64(d) / float64(time.Millisecond)
}

// cellKey names one cell: an app, a supervisor and the events.
type cellKey struct{ app, side, action string }

// cellRun is one run of a cell.
type cellRun struct {
	load   lbclient.Report
	want   int             // events asked for
	events int             // events that took effect
	errs   []string        // why the others did not
	took   []time.Duration // how long each event took, until a new process was seen
	err    string          // why the cell did not run at all
}

// results holds every run of every cell.
type results map[cellKey][]cellRun

// ok reports whether the run measured what it should: the load ran and
// every event took effect.
func (r cellRun) ok() bool { return r.err == "" && r.events == r.want }

// summary is a cell over its runs.
type summary struct {
	good            []cellRun // the runs that measured
	failed, total   int       // medians over the good runs
	min, max        int       // of failed
	kinds           map[string]int
	p99, maxLatency float64 // ms, medians over the good runs
	note            string  // why runs are missing
}

func summarize(c config, runs []cellRun) summary {
	var s summary
	s.kinds = map[string]int{}
	var failed, total []int
	var p99, mx []float64
	var notes []string
	for _, r := range runs {
		if !r.ok() {
			why := r.err
			if why == "" {
				why = fmt.Sprintf("%d of %d events: %s", r.events, r.want, strings.Join(r.errs, "; "))
			}
			if !slices.Contains(notes, why) {
				notes = append(notes, why)
			}
			continue
		}
		s.good = append(s.good, r)
		failed = append(failed, r.load.Failed)
		total = append(total, r.load.Sent)
		for k, v := range r.load.Kinds {
			s.kinds[k] += v
		}
		p99 = append(p99, latencyMS(r.load, r.load.P99))
		mx = append(mx, latencyMS(r.load, r.load.Max))
	}
	if len(s.good) > 0 {
		s.failed, s.total = benchkit.MedianInt(failed), benchkit.MedianInt(total)
		s.min, s.max = slices.Min(failed), slices.Max(failed)
		s.p99, s.maxLatency = benchkit.Median(p99), benchkit.Median(mx)
	}
	s.note = strings.Join(notes, "; ")
	return s
}

// printTables writes the results as markdown: failed requests, their kinds,
// and the latency of the requests that succeeded.
func printTables(w io.Writer, c config, res results) {
	header := func(first string) {
		fmt.Fprintf(w, "| %s |", first)
		for _, s := range c.sides {
			fmt.Fprintf(w, " %s |", sideLabel[s])
		}
		fmt.Fprintln(w)
		fmt.Fprint(w, "|---|")
		for range c.sides {
			fmt.Fprint(w, "---|")
		}
		fmt.Fprintln(w)
	}
	var notes []string
	row := func(app, action string, cell func(s summary) string) {
		if action == "none" {
			fmt.Fprintf(w, "| %s, %s |", appLabel[app], actionLabel[action])
		} else {
			fmt.Fprintf(w, "| %s, %d × %s |", appLabel[app], c.k, actionLabel[action])
		}
		for _, side := range c.sides {
			runs := res[cellKey{app, side, action}]
			s := summarize(c, runs)
			if len(s.good) == 0 {
				fmt.Fprint(w, " n/a |")
				continue
			}
			v := cell(s)
			if len(s.good) < len(runs) {
				v += fmt.Sprintf(" (%d of %d runs)", len(s.good), len(runs))
			}
			fmt.Fprintf(w, " %s |", v)
		}
		fmt.Fprintln(w)
	}
	rates := fmt.Sprintf("%d req/s", c.rate)
	if c.nextRate != c.rate && has(c.apps, "next") {
		rates += fmt.Sprintf(" (next start: %d req/s)", c.nextRate)
	}
	fmt.Fprintf(w, "Failed requests of all sent, %s, medians of %d runs (min–max of failed in parentheses).\n\n", rates, c.runs)
	header("app, events")
	for _, app := range c.apps {
		for _, action := range c.actions {
			row(app, action, func(s summary) string {
				v := fmt.Sprintf("**%d** of %d", s.failed, s.total)
				if s.min != s.max {
					v += fmt.Sprintf(" (%d–%d)", s.min, s.max)
				}
				return v
			})
			for _, side := range c.sides {
				if s := summarize(c, res[cellKey{app, side, action}]); s.note != "" {
					notes = append(notes, fmt.Sprintf("%s, %s, %s: %s", appLabel[app], actionLabel[action], sideLabel[side], s.note))
				}
			}
		}
	}
	fmt.Fprintf(w, "\nKinds of failures, summed over the runs.\n\n")
	header("app, events")
	for _, app := range c.apps {
		for _, action := range c.actions {
			row(app, action, func(s summary) string {
				if len(s.kinds) == 0 {
					return "—"
				}
				return lbclient.FormatKinds(s.kinds)
			})
		}
	}
	fmt.Fprintf(w, "\nLatency of the requests that succeeded: p99 / max, ms (medians of the runs).\n\n")
	header("app, events")
	for _, app := range c.apps {
		for _, action := range c.actions {
			row(app, action, func(s summary) string {
				return fmt.Sprintf("%.1f / %.0f", s.p99, s.maxLatency)
			})
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\nRuns left out (n/a or fewer runs above):\n\n")
		for _, n := range notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}
