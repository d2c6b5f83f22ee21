// Command upgrade counts what a load balancer in front of the instance sees
// while the supervisor itself is replaced under a steady load: the agent
// upgraded in place (`agentctl upgrade --binary`, the app and the
// connections kept), the agent stopped and the new program started (what
// an operator had to do before upgrades in place, outside systemd), and
// PM2 7's `pm2 update` (its daemon killed and resurrected with every app).
// Each side runs once per round, rounds interleaved; a round is a fresh
// supervisor, a fixed rate of requests over kept connections that are
// never retried, and N operations a few seconds apart. It reports the
// failed requests by kind, the time not served (the longest stretch
// without a successful answer) and the latency, per round and as medians.
// See README.md.
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

func main() { benchkit.Main("upgrade", run) }

// The sides, in the order of the tables.
var allSides = []string{"upgrade", "restart", "pm2"}

var sideLabel = map[string]string{
	"upgrade": "agent, upgrade in place",
	"restart": "agent, restart without systemd (before)",
	"pm2":     "PM2 7, `pm2 update`",
}

// opLabel names one operation of a side.
var opLabel = map[string]string{
	"upgrade": "`agentctl upgrade --binary`",
	"restart": "SIGTERM to the agent, then the new program started",
	"pm2":     "`pm2 update`",
}

// config holds the command-line flags.
type config struct {
	rounds    int
	n         int
	rate      int
	conns     int
	spacing   time.Duration
	lead      time.Duration
	tail      time.Duration
	timeout   time.Duration
	slowEvery int
	commit    string
	sides     []string
	benchkit.Flags
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c config
	var sides string
	fs := flag.NewFlagSet("upgrade", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.rounds, "rounds", 5, "rounds; each runs every side once, the tables show medians")
	fs.IntVar(&c.n, "n", 5, "operations (upgrades, restarts, pm2 updates) per round")
	fs.IntVar(&c.rate, "rate", 200, "requests per second, fixed (open loop)")
	fs.IntVar(&c.conns, "conns", 10, "kept connections the requests are spread over")
	fs.DurationVar(&c.spacing, "spacing", 2*time.Second, "pause after each operation is done, before the next")
	fs.DurationVar(&c.lead, "lead", 2*time.Second, "load before the first operation")
	fs.DurationVar(&c.tail, "tail", 2*time.Second, "load after the last operation is done")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "per-request timeout (connect to last body byte); the proxy holds requests up to 30s")
	fs.IntVar(&c.slowEvery, "slow-every", 4, "every Nth request goes to /slow (answered after 20 ms); 0 = none")
	fs.StringVar(&c.commit, "commit", "HEAD", "build the agent from this commit of the repository (git archive); \"\" builds the working tree")
	fs.StringVar(&sides, "sides", strings.Join(allSides, ","), "sides: upgrade (agentctl upgrade), restart (stop and start the agent), pm2 (pm2 update)")
	fs.StringVar(&c.PM2Version, "pm2", "7", "PM2 version to install from npm")
	fs.StringVar(&c.PM2Dir, "pm2-dir", "", "reuse a PM2 install in this directory (default: a fresh one)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the work directory (builds, configs, agent logs, PM2_HOME)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if c.rounds < 1 || c.n < 1 || c.rate < 1 || c.conns < 1 || c.slowEvery < 0 {
		return errors.New("rounds, n, rate and conns must be at least 1, slow-every at least 0")
	}
	if c.spacing < 0 || c.lead < 0 || c.tail < 0 || c.timeout <= 0 {
		return errors.New("spacing, lead and tail must not be negative, timeout positive")
	}
	var err error
	if c.sides, err = pick(sides, allSides); err != nil {
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

// pick parses a comma-separated list of names out of known, in the order
// of known.
func pick(list string, known []string) ([]string, error) {
	var got []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !slices.Contains(known, s) {
			return nil, fmt.Errorf("-sides: unknown %q (known: %s)", s, strings.Join(known, ", "))
		}
		got = append(got, s)
	}
	var out []string
	for _, s := range known {
		if slices.Contains(got, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("-sides: empty")
	}
	return out, nil
}

// rotate returns s turned left by k: round k starts with another side, so
// that no side always runs first (or right after the same other one).
func rotate(s []string, k int) []string {
	if len(s) == 0 {
		return nil
	}
	k %= len(s)
	return append(slices.Clone(s[k:]), s[:k]...)
}

// stretch is a span of time in which no request succeeded: from the end of
// one success (or the load's start) to the end of the next (or the load's
// end).
type stretch struct{ from, to time.Time }

func (s stretch) len() time.Duration { return s.to.Sub(s.from) }

// unserved cuts [from, to] at the end of every successful request in tl
// and returns the pieces in order: the stretches in which nothing was
// served. Failures count as nothing served; successes outside [from, to]
// are ignored.
func unserved(tl []lbclient.Outcome, from, to time.Time) []stretch {
	var ends []time.Time
	for _, o := range tl {
		if o.Kind == "" && !o.End.Before(from) && !o.End.After(to) {
			ends = append(ends, o.End)
		}
	}
	slices.SortFunc(ends, func(a, b time.Time) int { return a.Compare(b) })
	out := make([]stretch, 0, len(ends)+1)
	prev := from
	for _, e := range ends {
		out = append(out, stretch{prev, e})
		prev = e
	}
	return append(out, stretch{prev, to})
}

// firstServed is the end of the first successful request in tl, or
// otherwise when if none succeeded.
func firstServed(tl []lbclient.Outcome, otherwise time.Time) time.Time {
	var first time.Time
	for _, o := range tl {
		if o.Kind == "" && (first.IsZero() || o.End.Before(first)) {
			first = o.End
		}
	}
	if first.IsZero() {
		return otherwise
	}
	return first
}

// endedBy returns the stretches of ss (in order) that were over by t.
func endedBy(ss []stretch, t time.Time) []stretch {
	i := 0
	for i < len(ss) && !ss[i].to.After(t) {
		i++
	}
	return ss[:i]
}

// longest returns the longest of ss among those that end after start and
// begin before end (the zero stretch for none). With start and end the
// zero time, it is the longest of all.
func longest(ss []stretch, start, end time.Time) stretch {
	var best stretch
	for _, s := range ss {
		if !start.IsZero() && !s.to.After(start) {
			continue
		}
		if !end.IsZero() && !s.from.Before(end) {
			continue
		}
		if s.len() > best.len() {
			best = s
		}
	}
	return best
}

// roundRun is one round of one side.
type roundRun struct {
	round   int
	load    lbclient.Report // without its timeline
	took    []time.Duration // each operation, until it was done
	perOp   []time.Duration // the longest stretch not served around each operation
	gap     time.Duration   // the longest stretch not served in the round
	gapAt   time.Duration   // when it began, from the load's start
	lead    time.Duration   // the longest stretch before the first operation: the machine's floor
	checked string          // what was checked after the round
}

// results holds every round of every side, in the order they ran.
type results map[string][]roundRun

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// latencyMS is d in milliseconds, NaN when no request succeeded (the
// medians leave it out).
func latencyMS(r lbclient.Report, d time.Duration) float64 {
	if r.OK == 0 {
		return math.NaN()
	}
	return ms(d)
}

// fmtMS formats milliseconds: "42 ms", "1.23 s".
func fmtMS(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case v >= 1000:
		return fmt.Sprintf("%.2f s", v/1000)
	case v >= 10:
		return fmt.Sprintf("%.0f ms", v)
	default:
		return fmt.Sprintf("%.1f ms", v)
	}
}

// rangeMS is "MEDIAN (MIN–MAX)" of v, in fmtMS's units; one value or
// equal ones are just the value.
func rangeMS(v []float64) string {
	med := fmtMS(benchkit.Median(v))
	s := slices.DeleteFunc(slices.Clone(v), math.IsNaN)
	if len(s) < 2 || slices.Min(s) == slices.Max(s) {
		return med
	}
	return fmt.Sprintf("%s (%s–%s)", med, fmtMS(slices.Min(s)), fmtMS(slices.Max(s)))
}

// summary is a side over its rounds.
type summary struct {
	rounds           int
	failed, sent     int // medians
	minFail, maxFail int
	kinds            map[string]int // summed
	gaps, p99, max   []float64      // ms, one per round
	leads            []float64      // ms, one per round
	ops              []float64      // ms, time not served per operation, all rounds
}

func summarize(runs []roundRun) summary {
	s := summary{rounds: len(runs), kinds: map[string]int{}}
	var failed, sent []int
	for _, r := range runs {
		failed = append(failed, r.load.Failed)
		sent = append(sent, r.load.Sent)
		for k, v := range r.load.Kinds {
			s.kinds[k] += v
		}
		s.gaps = append(s.gaps, ms(r.gap))
		s.leads = append(s.leads, ms(r.lead))
		s.p99 = append(s.p99, latencyMS(r.load, r.load.P99))
		s.max = append(s.max, latencyMS(r.load, r.load.Max))
		for _, d := range r.perOp {
			s.ops = append(s.ops, ms(d))
		}
	}
	if len(runs) > 0 {
		s.failed, s.sent = benchkit.MedianInt(failed), benchkit.MedianInt(sent)
		s.minFail, s.maxFail = slices.Min(failed), slices.Max(failed)
	}
	return s
}

// printTables writes the results as markdown: the medians per side, then
// every round.
func printTables(w io.Writer, c config, res results) {
	fmt.Fprintf(w, "Medians of the rounds (min–max in parentheses); %d operations per round, %d req/s on %d kept connections, never retried.\n\n", c.n, c.rate, c.conns)
	fmt.Fprintln(w, "| side | rounds | failed of sent | kinds (all rounds) | time not served, longest in the round | same, per operation (all rounds) | reference: longest before the first operation | p99 | max |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, side := range c.sides {
		runs := res[side]
		if len(runs) == 0 {
			fmt.Fprintf(w, "| %s | 0 | — | — | — | — | — | — | — |\n", sideLabel[side])
			continue
		}
		s := summarize(runs)
		failed := fmt.Sprintf("**%d** of %d", s.failed, s.sent)
		if s.minFail != s.maxFail {
			failed += fmt.Sprintf(" (%d–%d)", s.minFail, s.maxFail)
		}
		kinds := "—"
		if len(s.kinds) > 0 {
			kinds = lbclient.FormatKinds(s.kinds)
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", sideLabel[side], s.rounds, failed, kinds,
			rangeMS(s.gaps), rangeMS(s.ops), rangeMS(s.leads), rangeMS(s.p99), rangeMS(s.max))
	}
	fmt.Fprintf(w, "\nEvery round (in the order they ran).\n\n")
	fmt.Fprintln(w, "| round | side | failed of sent | kinds | time not served (at) | per operation, ms | before the first | p99 / max | operations took, s | checked |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for round := 1; round <= c.rounds; round++ {
		for _, side := range rotate(c.sides, round-1) {
			for _, r := range res[side] {
				if r.round != round {
					continue
				}
				kinds := "—"
				if len(r.load.Kinds) > 0 {
					kinds = lbclient.FormatKinds(r.load.Kinds)
				}
				fmt.Fprintf(w, "| %d | %s | %s | %s | %s (%.1f s) | %s | %s | %s / %s | %s | %s |\n", r.round, side, r.load, kinds,
					fmtMS(ms(r.gap)), r.gapAt.Seconds(), durs(r.perOp, fmtMSd), fmtMS(ms(r.lead)), fmtMS(latencyMS(r.load, r.load.P99)),
					fmtMS(latencyMS(r.load, r.load.Max)), durs(r.took, fmtS), r.checked)
			}
		}
	}
	fmt.Fprintln(w)
	for _, side := range c.sides {
		fmt.Fprintf(w, "- %s: %s\n", side, opLabel[side])
	}
}

func fmtMSd(d time.Duration) string { return fmt.Sprintf("%.0f", ms(d)) }
func fmtS(d time.Duration) string   { return fmt.Sprintf("%.2f", d.Seconds()) }

// durs lists ds formatted by f, space-separated.
func durs(ds []time.Duration, f func(time.Duration) string) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = f(d)
	}
	return strings.Join(s, " ")
}
