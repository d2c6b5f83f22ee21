package agent

import (
	"fmt"
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
	// Not ready until the agent's clock says the app has lived a second.
	fk.Advance(999 * time.Millisecond)
	if s := r.a.Status(); s.State != "starting" {
		t.Fatalf("ready before 1 s of the agent's clock: %+v", s)
	}
	r.waitFor("the app to be ready after 1 s", func() bool {
		fk.Advance(10 * time.Millisecond)
		return r.a.Status().State == "running"
	})
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
