package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"agent/internal/testkit"
)

const (
	// loadRate is the request rate of the traffic loop through the proxy.
	loadRate = 50
	// loadAround is how many requests the loop completes before an action
	// and again after the agent serves again.
	loadAround = 100
	// loadTimeout bounds one request: above proxy.hold (30s), so a held
	// request is answered by the agent, not cut by the client.
	loadTimeout = 40 * time.Second
)

// proxyTraffic sends requests through the proxy port at loadRate a second
// (keep-alive connections, as the load balancer's) while it restarts the app
// with agentctl restart, replaces it with agentctl reload, and restarts the
// agent itself with systemctl restart agent. The first two must cost no
// request; the third's failures are counted and logged, not failed on: the
// agent's own restart takes the proxy and the app down with it.
func proxyTraffic(t *testing.T, c *container, page string) {
	url := "http://127.0.0.1:" + c.opts.proxyPort + "/"
	actions := []struct {
		name   string
		argv   []string
		strict bool // a failed request fails the test
		check  func(t *testing.T, before, after agentStatus, agentPID int)
	}{
		{"agentctl restart", []string{"agentctl", "restart"}, true, func(t *testing.T, before, after agentStatus, _ int) {
			if after.LastExit == nil || after.LastExit.Reason != "restart" {
				t.Errorf("last_exit = %+v, want reason restart", after.LastExit)
			}
		}},
		{"agentctl reload", []string{"agentctl", "reload"}, true, func(t *testing.T, before, after agentStatus, _ int) {
			// Reload answers once the new process serves; the old one is
			// stopped after its requests are done.
			testkit.EventuallyEvery(t, stepTimeout, pollInterval, "the old process's exit (reason reload)", func() (bool, string) {
				s, err := c.status()
				if err != nil {
					return false, err.Error()
				}
				if s.LastExit == nil {
					return false, "no last_exit"
				}
				return s.LastExit.Reason == "reload", "last_exit.reason " + s.LastExit.Reason
			})
			// The new release runs on the spare port (APP_PORT+1), on loopback.
			if after.Proxy == nil || before.Proxy == nil || after.Proxy.Upstream == before.Proxy.Upstream {
				t.Errorf("the proxy's upstream did not move to the spare port: before %+v, after %+v", before.Proxy, after.Proxy)
			} else if port := after.Proxy.Upstream[strings.LastIndex(after.Proxy.Upstream, ":")+1:]; !slices.Equal(listeners(c, port), []string{after.Proxy.Upstream}) {
				t.Errorf("the reloaded app is bound on %q, want %s", listeners(c, port), after.Proxy.Upstream)
			}
		}},
		{"systemctl restart agent", []string{"systemctl", "restart", "agent"}, false, func(t *testing.T, _, _ agentStatus, agentPID int) {
			if pid := c.mainPID(); pid == agentPID {
				t.Errorf("MainPID %d did not change", pid)
			}
		}},
	}
	for _, a := range actions {
		t.Run("traffic during "+a.name, func(t *testing.T) {
			before := proxyServing(t, c, 0)
			agentPID := c.mainPID()
			load := startLoad(url, page)
			t.Cleanup(func() { load.stop() })
			load.waitDone(t, loadAround)

			start := time.Now()
			out, err := c.run(a.argv...)
			took := time.Since(start)
			if err != nil {
				t.Errorf("%s: %v", a.name, err)
			}
			after := proxyServing(t, c, before.PID)
			back := time.Since(start)
			load.waitDone(t, load.count()+loadAround)
			res := load.stop()

			t.Logf("%s: %d requests at %d/s through the proxy, %d failed %s; the command took %v (%s), serving again after %v; slowest request %v; agent's proxy counters: %s",
				a.name, res.sent, loadRate, res.failed(), res.kinds(), took.Round(time.Millisecond), strings.TrimSpace(out),
				back.Round(time.Millisecond), res.slowest.Round(time.Millisecond), proxyCounters(after))
			if a.strict && res.failed() > 0 {
				t.Errorf("%s: %d of %d requests failed, want 0: %s", a.name, res.failed(), res.sent, res.kinds())
			}
			a.check(t, before, after, agentPID)
		})
	}
}

// proxyServing waits until the agent is active, its app running and ready
// with a PID other than notPID, and a request through the proxy answers 200;
// it returns the status.
func proxyServing(t *testing.T, c *container, notPID int) agentStatus {
	t.Helper()
	var st agentStatus
	testkit.EventuallyEvery(t, stepTimeout, pollInterval, "the app to serve through the proxy", func() (bool, string) {
		if a := c.show("ActiveState"); a != "active" {
			return false, "ActiveState=" + a
		}
		s, err := c.status()
		if err != nil {
			return false, err.Error()
		}
		if s.State != "running" || !s.Ready || s.PID == notPID {
			return false, fmt.Sprintf("state %s, ready %v, pid %d", s.State, s.Ready, s.PID)
		}
		if code, body := httpGet("http://127.0.0.1:" + c.opts.proxyPort + "/"); code != http.StatusOK {
			return false, fmt.Sprintf("proxy answered %d %s", code, body)
		}
		st = s
		return true, ""
	})
	return st
}

func proxyCounters(s agentStatus) string {
	if s.Proxy == nil {
		return "(none)"
	}
	return fmt.Sprintf("requests %d, replayed %d, failed %d", s.Proxy.Requests, s.Proxy.Replayed, s.Proxy.Failed)
}

// load is a request loop at a fixed rate: one GET every 1/loadRate s, each in
// its own goroutine, over a pool of keep-alive connections.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup // the requests in flight and the ticker loop

	mu      sync.Mutex
	res     loadResult
	changed chan struct{} // closed and replaced when a request completes
}

// loadResult is what a load run saw.
type loadResult struct {
	sent     int            // requests completed
	failures map[string]int // by kind: "HTTP 502", "connection refused", …
	slowest  time.Duration
}

func (r loadResult) failed() int {
	n := 0
	for _, v := range r.failures {
		n += v
	}
	return n
}

// kinds lists the failures by kind, most frequent first.
func (r loadResult) kinds() string {
	if len(r.failures) == 0 {
		return "(none)"
	}
	keys := slices.Collect(maps.Keys(r.failures))
	slices.SortFunc(keys, func(a, b string) int { return r.failures[b] - r.failures[a] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", r.failures[k], k))
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// startLoad starts sending GET url at loadRate a second; a response counts
// as good when it is 200 and its body contains page.
func startLoad(url, page string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	client := &http.Client{
		Timeout: loadTimeout,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     60 * time.Second, // as the load balancer
		},
	}
	l := &load{cancel: cancel, changed: make(chan struct{}), res: loadResult{failures: map[string]int{}}}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		tick := time.NewTicker(time.Second / loadRate)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				start := time.Now()
				kind := get(client, url, page)
				l.record(kind, time.Since(start))
			}()
		}
	}()
	return l
}

// get does one request and returns "" for a good answer, else the kind of
// failure.
func get(client *http.Client, url, page string) string {
	resp, err := client.Get(url)
	if err != nil {
		return errorKind(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return "body cut: " + errorKind(err)
	case resp.StatusCode != http.StatusOK:
		// The agent's own answers are one short line: keep it.
		line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
		if len(line) > 60 {
			line = line[:60]
		}
		return fmt.Sprintf("HTTP %s %q", resp.Status, line)
	case !strings.Contains(string(body), page):
		return "wrong page"
	}
	return ""
}

// errorKind names a client error as an operator would count it.
func errorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

func (l *load) record(kind string, took time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.res.sent++
	if kind != "" {
		l.res.failures[kind]++
	}
	l.res.slowest = max(l.res.slowest, took)
	close(l.changed)
	l.changed = make(chan struct{})
}

// count returns how many requests have completed.
func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res.sent
}

// waitDone waits until n requests have completed.
func (l *load) waitDone(t *testing.T, n int) {
	t.Helper()
	// Requests complete at loadRate a second; a held one takes up to hold.
	deadline := time.After(time.Duration(n)*time.Second/loadRate + 2*loadTimeout)
	for {
		l.mu.Lock()
		sent, changed := l.res.sent, l.changed
		l.mu.Unlock()
		if sent >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the request loop completed %d requests, want %d", sent, n)
		}
	}
}

// stop ends the loop, waits for the requests in flight and returns the result.
func (l *load) stop() loadResult {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res
}
