package agent

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"agent/internal/clock"
)

// TestShutdownDrainOnTheInjectedClock: on shutdown the health page says
// draining for exactly stop.drain of the agent's clock while the app keeps
// running, and the app is stopped only then. The readiness grace (ready
// after 1 s alive) runs on the same clock.
func TestShutdownDrainOnTheInjectedClock(t *testing.T) {
	node := needNode(t)
	fk := clock.NewFake(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC))
	port := freePort(t)
	r := startAgentWith(t, fmt.Sprintf(`
[app]
command = [%q, %q]
env = { PORT = "%d" }
[stop]
drain = "30s"
[memory]
watch_oom = false
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
`, node, appPath(t, "server.js"), port), Options{Version: "test", Clock: fk})
	r.waitState("starting")
	if !fk.WaitForWaiters(startupTimers, waitTime) {
		t.Fatal("the readiness timer was never armed")
	}
	// Not ready until the agent's clock says the app has lived a second.
	fk.Advance(999 * time.Millisecond)
	if s := r.a.Status(); s.State != "starting" {
		t.Fatalf("ready before 1 s of the agent's clock: %+v", s)
	}
	fk.Advance(time.Millisecond)
	r.waitState("running")
	pid := *r.a.Status().PID

	waiters := fk.Waiters()
	r.cancel()
	r.waitHealth(503, "draining")
	if !fk.WaitForWaiters(waiters+1, waitTime) {
		t.Fatal("the drain armed no timer on the agent's clock")
	}
	fk.Advance(29 * time.Second)
	if !processAlive(pid) || r.a.Status().State != "draining" {
		t.Fatalf("the app stopped before stop.drain passed on the agent's clock: %+v", r.a.Status())
	}
	fk.Advance(time.Second)
	select {
	case err := <-r.errc:
		if err != nil {
			t.Fatal(err)
		}
		r.errc <- nil // for the cleanup
	case <-time.After(waitTime):
		t.Fatal("the agent did not stop once stop.drain passed")
	}
	if processAlive(pid) {
		t.Errorf("app %d still alive after shutdown", pid)
	}
}

// startupTimers is how many timers the agent has armed on its clock while
// its one app process starts: the STATUS= refresh, the process's RSS
// sampler, and its start-up probe's next attempt (or its readiness after a
// second alive).
const startupTimers = 3

// advanceUntilRunning moves the fake clock on until the proxy's app is
// running: once the app accepts connections on its port (in real time), by
// the longest start-up probe interval whenever the probe's next attempt is
// armed, which fires it.
func advanceUntilRunning(t *testing.T, r *running, fk *clock.Fake) {
	t.Helper()
	r.waitFor("the app to listen", func() bool {
		c, err := net.Dial("tcp", r.cfg.Proxy.Upstream)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	running := make(chan error, 1)
	go func() { running <- r.a.WaitFor(ctx, func(s Status) bool { return s.State == "running" }) }()
	for {
		armed := fk.Armed()
		if fk.Waiters() >= startupTimers {
			fk.Advance(250 * time.Millisecond)
		}
		select {
		case err := <-running:
			if err != nil {
				t.Fatalf("not running: %v; status %+v", err, r.a.Status())
			}
			return
		case <-armed:
		case <-ctx.Done():
			t.Fatalf("not running; status %+v", r.a.Status())
		}
	}
}
