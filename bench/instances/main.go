// Command instances measures several processes of one Node app on this
// machine's cores, side by side in interleaved rounds: the agent with
// app.instances = 1, 2 and 4 behind its [proxy], PM2 7 in cluster mode
// (-i 2) and two plain Node processes behind nginx-light (least_conn). The
// app burns 1 ms of CPU per request (50 ms for 1 in 20 on /slow). Per
// round: requests per second at saturation (wrk), the latency of fast
// requests while slow ones are mixed in, failed requests across rolling
// reloads (a never-retrying client), and the agent's memory. It prints
// markdown tables of medians and writes them into its README. See
// README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"agent/bench/internal/benchkit"
	"agent/internal/lbclient"
)

func main() { benchkit.Main("instances", run) }

// The sides, in the order of the tables.
var allSides = []string{"agent1", "agent2", "agent4", "pm2", "nginx"}

var sideLabel = map[string]string{
	"agent1": "agent, instances = 1",
	"agent2": "agent, instances = 2",
	"agent4": "agent, instances = 4",
	"pm2":    "PM2 7 cluster -i 2",
	"nginx":  "nginx least_conn, 2 × node",
}

// Which sides each measure runs on (of those picked with -sides).
var (
	wrkSides    = []string{"agent1", "agent2", "pm2", "nginx"}
	latSides    = []string{"agent2", "agent4", "pm2", "nginx"}
	reloadSides = []string{"agent2", "pm2"}
	rssSides    = []string{"agent2", "agent4"}
)

// config holds the command-line flags.
type config struct {
	runs         int
	quick        bool
	dur          time.Duration
	warm         time.Duration
	wrkThreads   int
	wrkConns     int
	fastRate     int
	slowRate     int
	conns        int
	idle         time.Duration
	reloads      int
	reloadRate   int
	reloadWindow time.Duration
	nginxWorkers int
	sides        []string
	readme       string
	args         []string
	benchkit.Flags
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := config{args: args}
	var sides string
	fs := flag.NewFlagSet("instances", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.runs, "runs", 5, "rounds; the tables show medians")
	fs.BoolVar(&c.quick, "quick", false, "one round (same as -runs 1)")
	fs.DurationVar(&c.dur, "d", 10*time.Second, "duration of each wrk run and each latency run")
	fs.DurationVar(&c.warm, "warm", time.Second, "wrk warm-up per side before each round's throughput runs")
	fs.IntVar(&c.wrkThreads, "wrk-threads", 2, "wrk -t")
	fs.IntVar(&c.wrkConns, "wrk-conns", 16, "wrk -c")
	fs.IntVar(&c.fastRate, "fast-rate", 400, "latency run: requests per second to / (1 ms each), fixed")
	fs.IntVar(&c.slowRate, "slow-rate", 40, "latency run: requests per second to /slow (1 in 20 of them 50 ms), fixed, from a second client")
	fs.IntVar(&c.conns, "conns", 10, "keep-alive connections each fixed-rate client keeps for reuse")
	fs.DurationVar(&c.idle, "idle", 10*time.Second, "idle time before each memory reading")
	fs.IntVar(&c.reloads, "reloads", 5, "rolling reloads per side per round")
	fs.IntVar(&c.reloadRate, "reload-rate", 200, "requests per second to / during the reloads, fixed")
	fs.DurationVar(&c.reloadWindow, "reload-window", 15*time.Second, "load duration for the reloads, which are spread evenly over it")
	fs.IntVar(&c.nginxWorkers, "nginx-workers", 1, "nginx worker_processes (more than 1: least_conn counts in a shared zone)")
	fs.StringVar(&sides, "sides", strings.Join(allSides, ","), "sides to run: "+strings.Join(allSides, ", "))
	fs.StringVar(&c.readme, "readme", "bench/instances/README.md", `write the tables into this README between its result markers ("" = don't)`)
	c.Register(fs, "keep the work directory (configs, agent logs, PM2_HOME, nginx logs)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if c.quick {
		c.runs = 1
	}
	if c.runs < 1 || c.reloads < 1 || c.fastRate < 1 || c.slowRate < 0 || c.reloadRate < 1 || c.conns < 1 ||
		c.wrkThreads < 1 || c.wrkConns < c.wrkThreads || c.nginxWorkers < 1 {
		return errors.New("runs, reloads, rates, conns, wrk threads and nginx workers must be at least 1 (slow-rate 0 is allowed), wrk-conns at least wrk-threads")
	}
	if c.dur < time.Second || c.reloadWindow < time.Second || c.warm < 0 || c.idle < 0 {
		return errors.New("d and reload-window must be at least 1s, warm and idle not negative")
	}
	for _, s := range strings.Split(sides, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !slices.Contains(allSides, s) {
			return fmt.Errorf("-sides: unknown %q (known: %s)", s, strings.Join(allSides, ", "))
		}
		if !slices.Contains(c.sides, s) {
			c.sides = append(c.sides, s)
		}
	}
	if len(c.sides) == 0 {
		return errors.New("-sides: empty")
	}
	started := time.Now()
	res, machine, err := runBench(ctx, c, stderr)
	if res == nil {
		return err
	}
	var out strings.Builder
	fmt.Fprintf(&out, "`%s`, %s (%d of %d rounds, %s):\n\n```\n%s```\n\n", c.commandLine(), started.Format("2006-01-02"),
		res.rounds, c.runs, time.Since(started).Round(time.Second), machine)
	printTables(&out, c, res)
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, out.String())
	if c.readme != "" {
		if werr := writeReadme(c.readme, out.String()); werr != nil {
			fmt.Fprintln(stderr, "instances:", werr)
		} else {
			benchkit.Logf(stderr, "tables written into %s", c.readme)
		}
	}
	return err
}

// commandLine is how this run was started.
func (c config) commandLine() string {
	words := []string{"go", "run", "./bench/instances"}
	for _, a := range c.args {
		if a == "" || strings.ContainsAny(a, " \t\"'$") {
			a = strconv.Quote(a)
		}
		words = append(words, a)
	}
	return strings.Join(words, " ")
}

// sample is what one round measured on one side; NaN (or ok false) where
// it did not.
type sample struct {
	rps      float64 // wrk, requests per second
	wrkOther float64 // cores of other work on the machine meanwhile
	frontUS  float64 // µs of CPU per request in front of the app (side.FrontCPU)

	p50, p99     float64 // ms, of the fast requests
	fast, slow   lbclient.Report
	latOther     float64 // cores of other work on the machine meanwhile
	rssPeak      float64 // MB: the agent's peak during the latency run
	rssIdle      float64 // MB: the agent's, idle, c.idle after start
	rssAfterLoad float64 // MB: the agent's, idle, c.idle after the latency runs

	reloadOK bool
	reload   lbclient.Report
	reloaded int             // reloads that replaced every process
	took     []time.Duration // how long each reload took, until every process was new
	errs     []string        // why the others did not

	answered int // distinct processes that answered 40 requests after start
}

func newSample() sample {
	nan := math.NaN()
	return sample{rps: nan, wrkOther: nan, frontUS: nan, p50: nan, p99: nan, latOther: nan, rssPeak: nan, rssIdle: nan, rssAfterLoad: nan}
}

// results holds every round's samples, by side.
type results struct {
	rounds int
	by     map[string][]sample
	notes  []string // what went wrong, as logged
}

func (r *results) note(s string) {
	if !slices.Contains(r.notes, s) {
		r.notes = append(r.notes, s)
	}
}

// stat is a median over the rounds with its range.
type stat struct {
	med, min, max float64
	n             int
}

func statOf(v []float64) stat {
	v = slices.DeleteFunc(slices.Clone(v), math.IsNaN)
	if len(v) == 0 {
		return stat{med: math.NaN(), min: math.NaN(), max: math.NaN()}
	}
	return stat{med: benchkit.Median(v), min: slices.Min(v), max: slices.Max(v), n: len(v)}
}

// format writes the median and, when the rounds differ, their range.
func (s stat) format(verb string) string {
	if s.n == 0 {
		return "n/a"
	}
	v := fmt.Sprintf(verb, s.med)
	if lo, hi := fmt.Sprintf(verb, s.min), fmt.Sprintf(verb, s.max); lo != hi {
		v += fmt.Sprintf(" (%s–%s)", lo, hi)
	}
	return v
}

// of collects f over side's rounds.
func (r *results) of(side string, f func(sample) float64) stat {
	var v []float64
	for _, s := range r.by[side] {
		v = append(v, f(s))
	}
	return statOf(v)
}

// ratio collects num/den over the rounds in which both were measured: the
// sides ran in the same round, so the drift of the machine cancels out.
func (r *results) ratio(num, den string, f func(sample) float64) stat {
	a, b := r.by[num], r.by[den]
	var v []float64
	for i := range min(len(a), len(b)) {
		if x, y := f(a[i]), f(b[i]); !math.IsNaN(x) && !math.IsNaN(y) && y != 0 {
			v = append(v, x/y)
		}
	}
	return statOf(v)
}

// rotate returns s turned left by k.
func rotate(s []string, k int) []string {
	if len(s) == 0 {
		return nil
	}
	k %= len(s)
	return append(slices.Clone(s[k:]), s[:k]...)
}

func (c config) has(side string) bool { return slices.Contains(c.sides, side) }

// picked returns the sides of a measure that this run has.
func (c config) picked(sides []string) []string {
	return slices.DeleteFunc(slices.Clone(sides), func(s string) bool { return !c.has(s) })
}

// printTables writes the results as markdown.
func printTables(w io.Writer, c config, r *results) {
	rps := func(s sample) float64 { return s.rps }
	p50 := func(s sample) float64 { return s.p50 }
	p99 := func(s sample) float64 { return s.p99 }
	if r.rounds == 1 {
		fmt.Fprint(w, "One round: single values, no medians.\n\n")
	} else {
		fmt.Fprintf(w, "Medians of %d rounds (min–max in parentheses). Ratios are taken within each round (the sides ran minutes apart at most), then their median.\n\n", r.rounds)
	}

	if sides := c.picked(wrkSides); len(sides) > 0 {
		fmt.Fprintf(w, "**Throughput at saturation**, `wrk -t%d -c%d -d%s` on `/` (1 ms of CPU each):\n\n", c.wrkThreads, c.wrkConns, c.dur)
		fmt.Fprint(w, "| side | req/s | × agent instances = 1 | front's CPU per request | processes that answered | other work, cores |\n|---|---|---|---|---|---|\n")
		for _, side := range sides {
			vs := "—"
			if side != "agent1" && c.has("agent1") {
				vs = r.ratio(side, "agent1", rps).format("%.2f")
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s µs | %s | %s |\n", sideLabel[side], r.of(side, rps).format("%.0f"), vs,
				r.of(side, func(s sample) float64 { return s.frontUS }).format("%.1f"), answered(r.by[side]),
				r.of(side, func(s sample) float64 { return s.wrkOther }).format("%.2f"))
		}
		fmt.Fprintln(w)
	}
	if sides := c.picked(latSides); len(sides) > 0 {
		fmt.Fprintf(w, "**Latency of fast requests with slow ones mixed in**: %d req/s to `/` (1 ms) and, from a second client, %d req/s to `/slow` (1 in 20 of them 50 ms), fixed rates, open loop, %d kept connections each, never retried, %s per round. Latency of the fast requests:\n\n",
			c.fastRate, c.slowRate, c.conns, c.dur)
		fmt.Fprint(w, "| side | p50 | p99 | failed (fast + slow, all rounds) | other work, cores |\n|---|---|---|---|---|\n")
		for _, side := range sides {
			failed, total := 0, 0
			kinds := map[string]int{}
			for _, s := range r.by[side] {
				for _, l := range []lbclient.Report{s.fast, s.slow} {
					failed += l.Failed
					total += l.Sent
					for k, v := range l.Kinds {
						kinds[k] += v
					}
				}
			}
			f := fmt.Sprintf("%d of %d", failed, total)
			if failed > 0 {
				f += ": " + lbclient.FormatKinds(kinds)
			}
			fmt.Fprintf(w, "| %s | %s ms | %s ms | %s | %s |\n", sideLabel[side], r.of(side, p50).format("%.2f"), r.of(side, p99).format("%.1f"), f,
				r.of(side, func(s sample) float64 { return s.latOther }).format("%.2f"))
		}
		fmt.Fprintln(w)
	}
	if sides := c.picked(reloadSides); len(sides) > 0 {
		fmt.Fprintf(w, "**Failed requests across %d rolling reloads** (`agentctl reload`, `pm2 reload`) at %d req/s to `/`, %d kept connections, never retried, %s per round:\n\n",
			c.reloads, c.reloadRate, c.conns, c.reloadWindow)
		fmt.Fprint(w, "| side | failed | of sent | kinds (all rounds) | one reload took |\n|---|---|---|---|---|\n")
		for _, side := range sides {
			var failed, sent, took []float64
			kinds := map[string]int{}
			for _, s := range r.by[side] {
				if !s.reloadOK {
					continue
				}
				failed = append(failed, float64(s.reload.Failed))
				sent = append(sent, float64(s.reload.Sent))
				for k, v := range s.reload.Kinds {
					kinds[k] += v
				}
				for _, d := range s.took {
					took = append(took, d.Seconds())
				}
			}
			k := lbclient.FormatKinds(kinds)
			if k == "" {
				k = "—"
			}
			fmt.Fprintf(w, "| %s | **%s** | %s | %s | %s s |\n", sideLabel[side], statOf(failed).format("%.0f"), statOf(sent).format("%.0f"), k, statOf(took).format("%.2f"))
		}
		fmt.Fprintln(w)
	}
	if sides := c.picked(rssSides); len(sides) > 0 {
		fmt.Fprintf(w, "**The agent's own memory** (VmRSS of the agent process, MB = 2^20 bytes):\n\n")
		fmt.Fprintf(w, "| side | idle, %s after start | peak during the latency run | idle, %s after the latency runs |\n|---|---|---|---|\n", c.idle, c.idle)
		for _, side := range sides {
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", sideLabel[side], r.of(side, func(s sample) float64 { return s.rssIdle }).format("%.1f"),
				r.of(side, func(s sample) float64 { return s.rssPeak }).format("%.1f"), r.of(side, func(s sample) float64 { return s.rssAfterLoad }).format("%.1f"))
		}
		fmt.Fprintln(w)
	}
	printGoals(w, c, r)
	if r.rounds > 1 {
		printRounds(w, c, r)
	}
	if len(r.notes) > 0 {
		fmt.Fprintf(w, "\nNot measured or failed in some rounds:\n\n")
		for _, n := range r.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}

// printRounds writes each round's throughput and fast p99 beside the other
// work on the machine meanwhile, which explains most of the spread.
func printRounds(w io.Writer, c config, r *results) {
	table := func(title string, sides []string, cell func(sample) string) {
		if len(sides) == 0 {
			return
		}
		fmt.Fprintf(w, "\n%s\n\n| side |", title)
		for i := range r.rounds {
			fmt.Fprintf(w, " round %d |", i+1)
		}
		fmt.Fprint(w, "\n|---|"+strings.Repeat("---|", r.rounds)+"\n")
		for _, side := range sides {
			fmt.Fprintf(w, "| %s |", sideLabel[side])
			for i, s := range r.by[side] {
				if i < r.rounds {
					fmt.Fprintf(w, " %s |", cell(s))
				}
			}
			fmt.Fprintln(w)
		}
	}
	table("Each round: req/s at saturation / other work on the machine meanwhile, cores.", c.picked(wrkSides), func(s sample) string {
		return fmt.Sprintf("%.0f / %.2f", s.rps, s.wrkOther)
	})
	table("Each round: fast p99, ms / other work on the machine meanwhile, cores.", c.picked(latSides), func(s sample) string {
		return fmt.Sprintf("%.1f / %.2f", s.p99, s.latOther)
	})
}

// answered lists how many processes answered, over the rounds.
func answered(runs []sample) string {
	var v []float64
	for _, s := range runs {
		if s.answered > 0 {
			v = append(v, float64(s.answered))
		}
	}
	return statOf(v).format("%.0f")
}

// printGoals writes the goals against what was measured.
func printGoals(w io.Writer, c config, r *results) {
	type goal struct {
		what     string
		measured stat
		verb     string
		ok       func(float64) bool
		needs    []string
		// ofMedians is, for a ratio, the ratio of the two medians (NaN:
		// not a ratio), shown beside the median of the rounds' ratios.
		ofMedians float64
	}
	ofMedians := func(num, den string, f func(sample) float64) float64 {
		return r.of(num, f).med / r.of(den, f).med
	}
	rps := func(s sample) float64 { return s.rps }
	p99 := func(s sample) float64 { return s.p99 }
	reloadFailed := func(s sample) float64 {
		if !s.reloadOK {
			return math.NaN()
		}
		return float64(s.reload.Failed)
	}
	nan := math.NaN()
	goals := []goal{
		{"req/s, agent instances = 2 / instances = 1 ≥ 1.8", r.ratio("agent2", "agent1", rps), "%.2f", func(v float64) bool { return v >= 1.8 }, []string{"agent1", "agent2"}, ofMedians("agent2", "agent1", rps)},
		{"req/s, agent instances = 2 / PM2 cluster ≥ 0.9", r.ratio("agent2", "pm2", rps), "%.2f", func(v float64) bool { return v >= 0.9 }, []string{"agent2", "pm2"}, ofMedians("agent2", "pm2", rps)},
		{"fast p99, agent instances = 2 / PM2 cluster ≤ 0.2", r.ratio("agent2", "pm2", p99), "%.2f", func(v float64) bool { return v <= 0.2 }, []string{"agent2", "pm2"}, ofMedians("agent2", "pm2", p99)},
		{"fast p99, agent instances = 2 / nginx least_conn (reference)", r.ratio("agent2", "nginx", p99), "%.2f", nil, []string{"agent2", "nginx"}, ofMedians("agent2", "nginx", p99)},
		{"failed requests across the reloads, agent instances = 2: 0", r.of("agent2", reloadFailed), "%.0f", func(v float64) bool { return v == 0 }, []string{"agent2"}, nan},
	}
	for _, side := range c.picked(rssSides) {
		goals = append(goals,
			goal{fmt.Sprintf("agent RSS idle, %s ≤ 15 MB (the larger of the two idle readings)", sideLabel[side]),
				r.of(side, func(s sample) float64 { return math.Max(s.rssIdle, s.rssAfterLoad) }), "%.1f MB", func(v float64) bool { return v <= 15 }, []string{side}, nan},
			goal{fmt.Sprintf("agent RSS loaded, %s ≤ 25 MB", sideLabel[side]),
				r.of(side, func(s sample) float64 { return s.rssPeak }), "%.1f MB", func(v float64) bool { return v <= 25 }, []string{side}, nan})
	}
	fmt.Fprint(w, "**Against the goals** (a ratio: the median of the rounds' ratios, which decides \"met\", then the ratio of the two medians):\n\n| goal | measured | met |\n|---|---|---|\n")
	for _, g := range goals {
		if slices.ContainsFunc(g.needs, func(s string) bool { return !c.has(s) }) {
			continue
		}
		met := "—"
		if g.ok != nil && g.measured.n > 0 {
			met = "no"
			if g.ok(g.measured.med) {
				met = "yes"
			}
		}
		m := g.measured.format(g.verb)
		if !math.IsNaN(g.ofMedians) && g.measured.n > 0 {
			m += fmt.Sprintf("; of the medians "+g.verb, g.ofMedians)
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", g.what, m, met)
	}
}

// The markers around the part of the README this program writes.
const (
	beginMarker = "<!-- results: written by go run ./bench/instances -->"
	endMarker   = "<!-- end of results -->"
)

// writeReadme replaces what is between the markers in the file at path
// with section.
func writeReadme(path, section string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("readme: %w", err)
	}
	s := string(b)
	i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if i < 0 || j < i {
		return fmt.Errorf("readme %s: no %q ... %q markers", path, beginMarker, endMarker)
	}
	s = s[:i+len(beginMarker)] + "\n\n" + section + "\n" + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
