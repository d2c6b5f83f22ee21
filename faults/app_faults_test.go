package faults

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"agent/internal/lbclient"
	"agent/internal/testkit"
)

// appPID returns the running app's pid, waiting for the agent to have one.
func (r *agentRun) appPID() int {
	r.t.Helper()
	var pid int
	testkit.Eventually(r.t, 30*time.Second, "an app pid", func() bool {
		st, err := r.status()
		if err == nil && st.PID != nil {
			pid = *st.PID
		}
		return pid > 0
	})
	return pid
}

// recovered waits until a new app process (not old) is ready and the
// health page answers 200 again, and returns the time since from.
func (r *agentRun) recovered(old int, from time.Time) time.Duration {
	r.t.Helper()
	testkit.Eventually(r.t, 60*time.Second, "a new app process, ready", func() bool {
		st, err := r.status()
		return err == nil && st.PID != nil && *st.PID != old && st.Ready && st.Healthy && r.healthy()
	})
	return time.Since(from)
}

// lostFigure is the table's "requests lost" for an app fault. Behind the
// proxy none may be lost: the test fails on any.
func (r *agentRun) lostFigure(res lbclient.Report, fault string) string {
	r.t.Helper()
	if res.Sent == 0 {
		r.t.Errorf("no request sent across the %s", fault)
	}
	if r.proxy == 0 {
		return res.String()
	}
	if res.Failed > 0 {
		r.t.Errorf("%s of the requests through the proxy lost across the %s (%s); want none", res, fault, lbclient.FormatKinds(res.Kinds))
	}
	replayed := "?"
	if st, err := r.status(); err == nil && st.Proxy != nil {
		replayed = fmt.Sprint(st.Proxy.Replayed)
	}
	return fmt.Sprintf("%s (slowest answer %s, %s replayed by the proxy)", res, ms(res.Max), replayed)
}

// The app faults run twice: the app owning its port (the requests lost are
// the figure to compare), then behind the agent's [proxy], where none may
// be lost.

func TestAppSIGKILL(t *testing.T)      { appSIGKILL(t, false) }
func TestAppSIGKILLProxy(t *testing.T) { appSIGKILL(t, true) }

func appSIGKILL(t *testing.T, proxy bool) {
	row := newRow(t, "app SIGKILL"+behind(proxy))
	t.Parallel()
	r := newAgentRun(t, appSpec{Proxy: proxy})
	r.start(nil)
	r.waitHealthy(60 * time.Second)
	pid := r.appPID()

	load := startLoad(t, r.trafficAddr(), 50)
	testkit.Eventually(t, 10*time.Second, "load flowing", func() bool { return load.Sent() >= 10 })
	at := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	took := r.recovered(pid, at)
	lost := r.lostFigure(load.Stop(), "SIGKILL")
	st := r.mustStatus()
	if st.LastExit == nil || st.LastExit.Reason != "signaled" || st.LastExit.Signal == nil || *st.LastExit.Signal != "SIGKILL" {
		t.Errorf("last exit %+v, want signaled by SIGKILL", st.LastExit)
	}
	row.set(fmt.Sprintf("recorded `signaled` (SIGKILL), restarted (pid %d → %d), health 200", pid, *st.PID), ms(took), lost)
}

func TestAppSIGSTOP(t *testing.T)      { appSIGSTOP(t, false) }
func TestAppSIGSTOPProxy(t *testing.T) { appSIGSTOP(t, true) }

func appSIGSTOP(t *testing.T, proxy bool) {
	row := newRow(t, "app SIGSTOP (hung, probe configured)"+behind(proxy))
	t.Parallel()
	r := newAgentRun(t, appSpec{Proxy: proxy, Probe: `http = "http://127.0.0.1:PORT/"
interval = "250ms"
timeout = "250ms"
failure_threshold = 3`})
	r.start(nil)
	r.waitHealthy(60 * time.Second)
	pid := r.appPID()

	load := startLoad(t, r.trafficAddr(), 50)
	testkit.Eventually(t, 10*time.Second, "load flowing", func() bool { return load.Sent() >= 10 })
	at := time.Now()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	took := r.recovered(pid, at)
	lost := r.lostFigure(load.Stop(), "SIGSTOP")
	st := r.mustStatus()
	if st.LastExit == nil || st.LastExit.Reason != "liveness" {
		t.Errorf("last exit %+v, want liveness", st.LastExit)
	}
	row.set(fmt.Sprintf("3 failed probes → `liveness` restart of the stopped process (pid %d → %d), health 200", pid, *st.PID), ms(took), lost)
}

func behind(proxy bool) string {
	if proxy {
		return ", behind [proxy]"
	}
	return ""
}

func TestAppExitLoop(t *testing.T) {
	row := newRow(t, "app exits 1 in a loop")
	t.Parallel()
	r := newAgentRun(t, appSpec{
		Env:     map[string]string{"APP_MODE": "exit1"},
		Restart: "delay = \"50ms\"\nmax_delay = \"200ms\"\nmax_restarts = 3\nwindow = \"1m\"",
	})
	at := time.Now()
	r.start(nil)
	testkit.Eventually(t, 60*time.Second, "state failed", func() bool {
		st, err := r.status()
		return err == nil && st.State == "failed"
	})
	took := time.Since(at)
	code, body, _, err := r.healthCheck()
	if err != nil || code != 503 || strings.TrimSpace(body) != "failed" {
		t.Errorf("health: %d %q %v, want 503 failed", code, body, err)
	}
	st := r.mustStatus()
	if r.exited() {
		t.Error("agent exited; on_exhausted = unhealthy must keep it up")
	}
	row.set(fmt.Sprintf("%d restarts, then `failed`: health 503 \"failed\", agent stays up (%s)", st.Restarts, st.Message), "— (failed in "+ms(took)+")", "—")
}

func TestAppNeverListens(t *testing.T) {
	row := newRow(t, "app never listens")
	t.Parallel()
	r := newAgentRun(t, appSpec{
		Env:   map[string]string{"APP_MODE": "never-listen"},
		Probe: "tcp = \"127.0.0.1:PORT\"\ninterval = \"100ms\"\nstartup_timeout = \"1s\"",
	})
	at := time.Now()
	r.start(nil)
	var st agentStatus
	testkit.Eventually(t, 60*time.Second, "a start-timeout exit", func() bool {
		var err error
		st, err = r.status()
		return err == nil && st.LastExit != nil && st.LastExit.Reason == "start-timeout"
	})
	took := time.Since(at)
	if code, _, _, _ := r.healthCheck(); code != 503 {
		t.Errorf("health %d while never ready, want 503", code)
	}
	row.set(fmt.Sprintf("`start-timeout` after startup_timeout 1s, restarted; health 503 throughout (state %s)", st.State), "— (first start-timeout in "+ms(took)+")", "—")
}
