package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"agent/internal/clock"
	"agent/internal/lifecycle"
)

// Probe results that end a RunProbe; the caller restarts the app with the
// reason.
const (
	ReasonLiveness     = lifecycle.ReasonLiveness
	ReasonStartTimeout = lifecycle.ReasonStartTimeout
)

// Until the app is first ready it is probed after firstStartupProbe, then
// at twice the wait each time up to startupProbeInterval: a quick app (Node
// listens some 80 ms after exec) is seen ready within a few milliseconds,
// which is how long the traffic front holds requests across a restart, and
// a slow one is probed four times a second.
const (
	firstStartupProbe    = 10 * time.Millisecond
	startupProbeInterval = 250 * time.Millisecond
)

// This package's own defaults for the fields of a ProbeSpec left zero (as
// tests do). They are not the agent's: the agent sets every field, from its
// config, whose defaults are the tags of agent.Config.
const (
	defaultReadyAfter       = time.Second
	defaultProbeInterval    = 5 * time.Second
	defaultProbeTimeout     = 2 * time.Second
	defaultFailureThreshold = 3
)

// ProbeSpec says how to tell that one app process is ready and alive.
// With neither HTTP nor TCP set, the process is ready after ReadyAfter alive.
// Zero Interval, Timeout, FailureThreshold and ReadyAfter take the
// package's defaults above.
type ProbeSpec struct {
	HTTP string // URL to GET; 2xx and 3xx pass, redirects are not followed
	TCP  string // host:port to connect to; a connection passes

	Interval         time.Duration // between probes once ready
	Timeout          time.Duration // of one probe
	FailureThreshold int           // consecutive failures once ready -> liveness
	StartupTimeout   time.Duration // not ready by then -> start-timeout; 0 waits forever
	ReadyAfter       time.Duration // without a probe: ready after this long alive (default 1s)
}

// ProbeResult is why RunProbe gave up on a process. The zero value means it
// was cancelled.
type ProbeResult struct {
	Reason lifecycle.Reason // ReasonLiveness or ReasonStartTimeout
	Detail string           // e.g. "3 consecutive probe failures: GET http://127.0.0.1:3000/: status 500"
}

// RunProbe watches one app process: it calls ready once when the process
// is first ready, then keeps probing it. It returns on the first liveness or
// start-timeout failure, once per process (the caller restarts the process
// and starts a new RunProbe), or with the zero ProbeResult when ctx is
// cancelled. Waiting goes through clk; each probe's own I/O is bounded in
// real time by spec.Timeout.
func RunProbe(ctx context.Context, clk clock.Clock, spec ProbeSpec, ready func()) ProbeResult {
	spec = spec.withDefaults()
	check := newChecker(spec)
	if check == nil {
		return readyAfter(ctx, clk, spec.ReadyAfter, ready)
	}

	if res, ok := awaitReady(ctx, clk, spec, check); !ok {
		return res
	}
	ready()
	return watchLive(ctx, clk, spec, check)
}

// awaitReady probes fast until the first pass, and reports whether there
// was one; if not, res says why (zero when ctx was cancelled).
func awaitReady(ctx context.Context, clk clock.Clock, spec ProbeSpec, check probeCheck) (res ProbeResult, ok bool) {
	var deadline <-chan time.Time
	if spec.StartupTimeout > 0 {
		t := clk.NewTimer(spec.StartupTimeout)
		defer t.Stop()
		deadline = t.C()
	}
	var lastErr error
	next := firstStartupProbe
	for {
		wait := clk.NewTimer(next)
		next = min(2*next, startupProbeInterval)
		select {
		case <-ctx.Done():
			wait.Stop()
			return ProbeResult{}, false
		case <-deadline:
			wait.Stop()
			detail := fmt.Sprintf("not ready within %v", spec.StartupTimeout)
			if lastErr != nil {
				detail += fmt.Sprintf(" (last probe: %v)", lastErr)
			}
			return ProbeResult{Reason: ReasonStartTimeout, Detail: detail}, false
		case <-wait.C():
		}
		lastErr = probeOnce(ctx, check, spec.Timeout)
		if ctx.Err() != nil {
			return ProbeResult{}, false
		}
		if lastErr == nil {
			return ProbeResult{}, true
		}
	}
}

// watchLive probes every Interval until FailureThreshold probes in a row
// fail (liveness) or ctx is cancelled (zero result).
func watchLive(ctx context.Context, clk clock.Clock, spec ProbeSpec, check probeCheck) ProbeResult {
	failures := 0
	for {
		wait := clk.NewTimer(spec.Interval)
		select {
		case <-ctx.Done():
			wait.Stop()
			return ProbeResult{}
		case <-wait.C():
		}
		err := probeOnce(ctx, check, spec.Timeout)
		if ctx.Err() != nil {
			return ProbeResult{}
		}
		if err == nil {
			failures = 0
			continue
		}
		failures++
		if failures >= spec.FailureThreshold {
			return ProbeResult{
				Reason: ReasonLiveness,
				Detail: fmt.Sprintf("%d consecutive probe failures: %v", failures, err),
			}
		}
	}
}

func (s ProbeSpec) withDefaults() ProbeSpec {
	if s.ReadyAfter <= 0 {
		s.ReadyAfter = defaultReadyAfter
	}
	if s.Interval <= 0 {
		s.Interval = defaultProbeInterval
	}
	if s.Timeout <= 0 {
		s.Timeout = defaultProbeTimeout
	}
	if s.FailureThreshold <= 0 {
		s.FailureThreshold = defaultFailureThreshold
	}
	return s
}

// readyAfter is RunProbe without a probe: alive for d means ready.
func readyAfter(ctx context.Context, clk clock.Clock, d time.Duration, ready func()) ProbeResult {
	t := clk.NewTimer(d)
	select {
	case <-ctx.Done():
		t.Stop()
		return ProbeResult{}
	case <-t.C():
	}
	ready()
	<-ctx.Done()
	return ProbeResult{}
}

// probeCheck runs one probe; a nil error is a pass.
type probeCheck func(ctx context.Context) error

func probeOnce(ctx context.Context, check probeCheck, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return check(ctx)
}

// newChecker returns the probe spec asks for, or nil when it asks for none.
func newChecker(spec ProbeSpec) probeCheck {
	switch {
	case spec.HTTP != "":
		return httpChecker(spec.HTTP)
	case spec.TCP != "":
		return tcpChecker(spec.TCP)
	}
	return nil
}

func httpChecker(target string) probeCheck {
	client := &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil, // never through $HTTP_PROXY: the app is local
			DialContext:            (&net.Dialer{}).DialContext,
			DisableKeepAlives:      true, // a stuck connection is never reused
			DisableCompression:     true,
			MaxResponseHeaderBytes: 64 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return fmt.Errorf("GET %s: %w", target, err)
		}
		req.Header.Set("User-Agent", "agent-probe")
		resp, err := client.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // its text quotes the URL again
			}
			return fmt.Errorf("GET %s: %w", target, err)
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("GET %s: status %d", target, resp.StatusCode)
		}
		return nil
	}
}

func tcpChecker(addr string) probeCheck {
	var d net.Dialer
	return func(ctx context.Context) error {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err // "dial tcp 127.0.0.1:3000: connect: connection refused"
		}
		c.Close()
		return nil
	}
}
