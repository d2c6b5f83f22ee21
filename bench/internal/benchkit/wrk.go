package benchkit

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// WrkResult is what one wrk run reported.
type WrkResult struct {
	RPS float64 // Requests/sec
	// Errors is wrk's "Socket errors" and "Non-2xx or 3xx responses"
	// lines, "" when it printed neither.
	Errors string
}

var (
	wrkRPS  = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkErrs = regexp.MustCompile(`Non-2xx or 3xx responses: \d+|Socket errors: .*`)
)

// Wrk runs `wrk -tTHREADS -cCONNS -dD url` (Debian's wrk) and returns what
// it reported.
func Wrk(ctx context.Context, url string, threads, conns int, d time.Duration) (WrkResult, error) {
	return WrkOn(ctx, "", url, threads, conns, d)
}

// WrkOn is Wrk run under `taskset -c CPUS` (only on those CPUs); cpus ""
// is Wrk.
func WrkOn(ctx context.Context, cpus, url string, threads, conns int, d time.Duration) (WrkResult, error) {
	args := []string{"wrk", fmt.Sprintf("-t%d", threads), fmt.Sprintf("-c%d", conns), "-d" + d.String(), url}
	if cpus != "" {
		args = append([]string{"taskset", "-c", cpus}, args...)
	}
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return WrkResult{}, fmt.Errorf("wrk %s: %w\n%s", url, err, out)
	}
	return parseWrk(out)
}

// parseWrk reads wrk's report.
func parseWrk(out []byte) (WrkResult, error) {
	m := wrkRPS.FindSubmatch(out)
	if m == nil {
		return WrkResult{}, fmt.Errorf("wrk: no Requests/sec in:\n%s", out)
	}
	rps, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		return WrkResult{}, fmt.Errorf("wrk: %w", err)
	}
	var errs []string
	for _, e := range wrkErrs.FindAll(out, -1) {
		errs = append(errs, strings.TrimSpace(string(e)))
	}
	return WrkResult{RPS: rps, Errors: strings.Join(errs, "; ")}, nil
}
