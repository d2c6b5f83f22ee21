package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"agent/internal/clock"
	"agent/internal/lbclient"
	"agent/internal/testkit"
)

// frontConfig is an agent config with the proxy in front of front.js.
func frontConfig(t *testing.T, node string, extra string) (text string, proxyAddr string) {
	t.Helper()
	app := fmt.Sprintf("command = [%q, %q]\nenv = { CRASH_WHEN = %q }", node, appPath(t, "front.js"), filepath.Join(t.TempDir(), "broken"))
	return proxyConfig(t, app, extra)
}

// proxyConfig is an agent config with the proxy in front of the app that
// the [app] keys in app describe.
func proxyConfig(t *testing.T, app, extra string) (text string, proxyAddr string) {
	t.Helper()
	ports := testkit.Ports(t, 3) // the proxy, the app, its spare
	proxyAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	text = fmt.Sprintf(`
name = "web"
[app]
%s
[restart]
delay = "0s"
[stop]
timeout = "5s"
[memory]
watch_oom = false
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
[proxy]
listen = %q
upstream = "127.0.0.1:%d"
spare_upstream = "127.0.0.1:%d"
hold = "30s"
%s`, app, proxyAddr, ports[1], ports[2], extra)
	return text, proxyAddr
}

// load sends requests through the proxy from a few kept connections,
// back to back, until stopped, and counts the ones that did not get the
// app's answer as a load balancer would: never retried (internal/lbclient).
type load struct {
	run *lbclient.Running
}

func startLoad(base string, workers int) *load { return startLoadPath(base, workers, "") }

// startLoadPath is startLoad on one path; "" alternates / and /slow, whose
// answers must be the app's ("ok …", "slow …"); on any other path any 2xx
// counts.
func startLoadPath(base string, workers int, only string) *load {
	reqs := []lbclient.Request{{Path: "/"}, {Path: "/slow"}}
	check := func(b []byte) error {
		if bytes.HasPrefix(b, []byte("ok ")) || bytes.HasPrefix(b, []byte("slow ")) {
			return nil
		}
		return fmt.Errorf("not the app's answer: %q", b)
	}
	if only != "" {
		reqs, check = []lbclient.Request{{Path: only}}, nil
	}
	run, err := lbclient.Load{
		Addr:     strings.TrimPrefix(base, "http://"),
		Requests: reqs,
		Conns:    workers,
		Timeout:  30 * time.Second,
		Duration: 5 * time.Minute, // a bound; finish stops it first
		Check:    check,
	}.Start(context.Background())
	if err != nil {
		panic(err) // a bad Load: the test's own mistake
	}
	return &load{run: run}
}

func (l *load) finish(t *testing.T) {
	t.Helper()
	rep := l.run.Stop()
	t.Logf("requests: %d answered by the app, %d failed", rep.OK, rep.Failed)
	if rep.Failed != 0 || rep.OK == 0 {
		t.Errorf("%s requests failed (%d ok): %s; %q", rep, rep.OK, lbclient.FormatKinds(rep.Kinds), rep.Errors)
	}
}

// waitServed waits until the proxy answers with the app's reply.
func waitServed(t *testing.T, r *running, base string) {
	t.Helper()
	r.waitFor("the app behind the proxy", func() bool {
		resp, err := http.Get(base + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func TestProxyGatedRestartsLoseNothing(t *testing.T) {
	node := needNode(t)
	text, addr := frontConfig(t, node, "")
	r := startAgent(t, text)
	base := "http://" + addr
	waitServed(t, r, base)

	l := startLoad(base, 6)
	for i := range 3 {
		before := r.ctlStatus()
		r.ask("restart", r.client().Restart)
		r.waitStatus(fmt.Sprintf("restart %d to serve", i+1), func(s Status) bool {
			return s.State == "running" && s.PID != nil && *s.PID != *before.PID
		})
		if s := r.ctlStatus(); s.LastExit == nil || s.LastExit.Reason != "restart" {
			t.Errorf("after restart: %+v", s.LastExit)
		}
	}
	l.finish(t)
	s := r.ctlStatus()
	if s.Proxy == nil || s.Proxy.Requests == 0 || s.Proxy.Failed != 0 || s.Proxy.Listen != addr {
		t.Errorf("proxy status %+v", s.Proxy)
	}
}

func TestProxyReloadOverlapLosesNothing(t *testing.T) {
	node := needNode(t)
	text, addr := frontConfig(t, node, "")
	r := startAgent(t, text)
	base := "http://" + addr
	waitServed(t, r, base)
	first := r.ctlStatus()

	l := startLoad(base, 6)
	ups := map[string]bool{}
	for range 3 {
		before := r.ctlStatus()
		s := r.ask("reload", r.client().Reload)
		if s.State != "running" || s.PID == nil || *s.PID == *before.PID {
			t.Fatalf("reload answered %+v, want a new process running", s)
		}
		ups[s.Proxy.Upstream] = true
	}
	l.finish(t)
	s := r.waitStatus("the status", func(s Status) bool { return len(s.Exits) == 3 })
	for _, e := range s.Exits {
		if e.Reason != "reload" {
			t.Errorf("exit %+v, want reason reload", e)
		}
	}
	if len(ups) != 2 || first.Proxy == nil {
		t.Errorf("upstreams used %v: the ports should swap roles", ups)
	}
}

func TestProxyReloadOfABrokenReleaseKeepsTheOldProcess(t *testing.T) {
	node := needNode(t)
	text, addr := frontConfig(t, node, "")
	r := startAgent(t, text)
	base := "http://" + addr
	waitServed(t, r, base)
	old := r.ctlStatus()

	if err := os.WriteFile(r.cfg.App.Env["CRASH_WHEN"], nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l := startLoad(base, 4)
	_, err := r.client().Reload(context.Background())
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != http.StatusConflict || !strings.Contains(ae.Msg, "crashed (code 1)") {
		t.Fatalf("reload of a broken release: %v, want 409 saying it crashed", err)
	}
	l.finish(t)
	s := r.ctlStatus()
	if s.PID == nil || *s.PID != *old.PID || s.State != "running" {
		t.Errorf("after the failed reload: %+v, want pid %d still running", s, *old.PID)
	}
	if s.LastExit == nil || s.LastExit.Reason != "crashed" {
		t.Errorf("the broken process's exit: %+v", s.LastExit)
	}
}

// TestProxyHealthDrainsOnShutdown: on shutdown, health.path on the traffic
// port says 503 draining for stop.drain (of the agent's clock) while the
// app still answers through the proxy.
func TestProxyHealthDrainsOnShutdown(t *testing.T) {
	node := needNode(t)
	fk := clock.NewFake(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC))
	text, addr := frontConfig(t, node, "")
	text = strings.Replace(text, "timeout = \"5s\"", "timeout = \"5s\"\ndrain = \"30s\"", 1)
	r := startAgentWith(t, text, Options{Version: "test", Clock: fk})
	base := "http://" + addr
	advanceUntilRunning(t, r, fk) // start-up probes run on the agent's clock
	waitServed(t, r, base)
	r.cancel()
	r.waitFor("the traffic port's health to say draining", func() bool {
		resp, err := http.Get(base + "/health.html")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 503 && string(b) == "draining\n"
	})
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("a request while draining: %d, want the app's 200", resp.StatusCode)
	}
	fk.Advance(30 * time.Second)
	select {
	case err := <-r.errc:
		if err != nil {
			t.Fatal(err)
		}
		r.errc <- nil // for the cleanup
	case <-time.After(waitTime):
		t.Fatal("the agent did not stop once stop.drain passed")
	}
}
