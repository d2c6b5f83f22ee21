package deploy

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"agent/internal/lbclient"
	"agent/internal/testkit"
)

const (
	// loadRate is the request rate through the proxy, on loadConns kept
	// connections, as a load balancer's.
	loadRate  = 100
	loadConns = 10
	// loadAround is how many requests the load sends before an action and
	// again after the agent serves again.
	loadAround = 2 * loadRate
	// loadTimeout bounds one request: above proxy.hold (30s), so a held
	// request is answered by the agent, not cut by the client.
	loadTimeout = 40 * time.Second
	// loadBound ends a load its row did not stop.
	loadBound = 10 * time.Minute
	// agentRounds is how many times each of the agent's own restarts is
	// measured.
	agentRounds = 3
)

// trafficAction is one row: a command run in the container under load.
type trafficAction struct {
	name   string
	argv   []string
	rounds int
	// judge fails the row on what the load saw; conns is how many
	// connections the load had opened when the command ran.
	judge func(t *testing.T, res lbclient.Report, conns int)
	check func(t *testing.T, before, after agentStatus, agentPID int)
}

// proxyTraffic sends requests through the proxy port at loadRate a second
// over loadConns kept connections, never retried (as a load balancer: each
// failed request is a 502 at an ALB), while it restarts the app with agentctl
// restart, replaces it with agentctl reload, restarts the agent itself with
// systemctl restart agent, and SIGKILLs the agent. The first three must cost
// no request. A SIGKILL cannot finish what was in flight: the connections open
// at that moment may each lose the request they carried, and nothing else
// (no connection refused: the listening socket waits in systemd's descriptor
// store, its backlog queues new connections, and the next agent takes it).
func proxyTraffic(t *testing.T, c *container, page string) {
	addr := "127.0.0.1:" + c.opts.proxyPort
	changedPID := func(t *testing.T, _, _ agentStatus, agentPID int) {
		if pid := c.mainPID(); pid == agentPID {
			t.Errorf("MainPID %d did not change", pid)
		}
	}
	actions := []trafficAction{
		{"agentctl restart", []string{"agentctl", "restart"}, 1, noneFailed, func(t *testing.T, before, after agentStatus, _ int) {
			if after.LastExit == nil || after.LastExit.Reason != "restart" {
				t.Errorf("last_exit = %+v, want reason restart", after.LastExit)
			}
		}},
		{"agentctl reload", []string{"agentctl", "reload"}, 1, noneFailed, func(t *testing.T, before, after agentStatus, _ int) {
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
		{"systemctl restart agent", []string{"systemctl", "restart", "agent"}, agentRounds, noneFailed, changedPID},
		{"agent SIGKILLed", []string{"systemctl", "kill", "--kill-who=main", "-s", "SIGKILL", "agent"}, agentRounds, cutOnly, changedPID},
	}
	for _, a := range actions {
		var total lbclient.Report
		var backs []string
		for round := 1; round <= a.rounds; round++ {
			name := "traffic during " + a.name
			if a.rounds > 1 {
				name += fmt.Sprintf(" %d of %d", round, a.rounds)
			}
			t.Run(name, func(t *testing.T) {
				res, back := trafficRow(t, c, addr, page, a)
				total.Sent += res.Sent
				total.Failed += res.Failed
				backs = append(backs, back.Round(time.Millisecond).String())
			})
		}
		t.Logf("%s, %d runs: %d of %d requests failed; serving again after %s", a.name, a.rounds, total.Failed, total.Sent, strings.Join(backs, ", "))
	}
}

// trafficRow runs one action under load and returns what the load saw and
// how long after the command's start the proxy served again.
func trafficRow(t *testing.T, c *container, addr, page string, a trafficAction) (lbclient.Report, time.Duration) {
	before := proxyServing(t, c, 0)
	agentPID := c.mainPID()
	socket := listenerInode(c, c.opts.proxyPort)
	run, err := lbclient.Load{
		Addr: addr, Rate: loadRate, Conns: loadConns, Timeout: loadTimeout, Duration: loadBound,
		Check: func(body []byte) error {
			if !strings.Contains(string(body), page) {
				return fmt.Errorf("not the app's page")
			}
			return nil
		},
		UserAgent: "e2e",
	}.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Stop() })
	waitSent(t, run, loadAround)

	start := time.Now()
	out, err := c.run(a.argv...)
	took := time.Since(start)
	// The connections opened by the time the command returned: all those
	// that can have been open when it acted.
	conns := run.Dials()
	if err != nil {
		t.Errorf("%s: %v", a.name, err)
	}
	after := proxyServing(t, c, before.PID)
	back := time.Since(start)
	waitSent(t, run, run.Sent()+loadAround)
	res := run.Stop()

	t.Logf("%s: %s requests failed at %d/s on %d kept connections (%d opened by the command's end) %s; the command took %v (%s), serving again after %v; p50 %v, slowest %v; %d connections opened; agent's proxy counters: %s",
		a.name, res, loadRate, loadConns, conns, lbclient.FormatKinds(res.Kinds), took.Round(time.Millisecond), strings.TrimSpace(out),
		back.Round(time.Millisecond), res.P50.Round(100*time.Microsecond), res.Max.Round(time.Millisecond), res.Conns, proxyCounters(after))
	if len(res.Errors) > 0 {
		t.Logf("%s: first failures: %q", a.name, res.Errors)
	}
	a.judge(t, res, conns)
	a.check(t, before, after, agentPID)
	// The same listening socket throughout: kept by systemd across the
	// agent's own restarts, never closed and bound again.
	if now := listenerInode(c, c.opts.proxyPort); now != socket {
		t.Errorf("the proxy's listening socket changed (inode %s -> %s): it was bound anew, not kept", socket, now)
	}
	return res, back
}

// noneFailed is a judge: every request answered by the app.
func noneFailed(t *testing.T, res lbclient.Report, _ int) {
	t.Helper()
	if res.Failed > 0 {
		t.Errorf("%s requests failed, want 0: %s; %q", res, lbclient.FormatKinds(res.Kinds), res.Errors)
	}
}

// cutOnly is a judge for an agent killed at once: no connection refused, and
// at most one failed request for each connection open at the kill, each a
// connection cut under its request.
func cutOnly(t *testing.T, res lbclient.Report, conns int) {
	t.Helper()
	if n := res.Kinds[lbclient.KindRefused]; n > 0 {
		t.Errorf("%d connections refused, want none (the listening socket is kept)", n)
	}
	if res.Failed > conns {
		t.Errorf("%s requests failed, more than the %d connections open at the kill: %s", res, conns, lbclient.FormatKinds(res.Kinds))
	}
	for kind := range res.Kinds {
		if kind != lbclient.KindClosed && kind != lbclient.KindReset && kind != lbclient.KindCut {
			t.Errorf("%d requests failed with %q, want only connections cut under their request: %q", res.Kinds[kind], kind, res.Errors)
		}
	}
}

// waitSent waits until the load has sent n requests.
func waitSent(t *testing.T, run *lbclient.Running, n int) {
	t.Helper()
	// Requests go out at loadRate a second whatever happens to them.
	testkit.EventuallyEvery(t, time.Duration(n)*time.Second/loadRate+stepTimeout, 50*time.Millisecond,
		fmt.Sprintf("%d requests sent", n), func() (bool, string) {
			return run.Sent() >= n, fmt.Sprintf("%d sent", run.Sent())
		})
}

// listenerInode returns the inode of the container's TCP listening socket
// on port ("" if none).
func listenerInode(c *container, port string) string {
	out, _ := c.run("ss", "-Htlne", "sport = :"+port)
	for _, f := range strings.Fields(out) {
		if ino, ok := strings.CutPrefix(f, "ino:"); ok {
			return ino
		}
	}
	return ""
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
