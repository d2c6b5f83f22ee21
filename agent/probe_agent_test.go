package agent

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

func TestStartTimeoutEndsTheStart(t *testing.T) {
	n := listenNotify(t)
	port := freePort(t)
	never := filepath.Join(t.TempDir(), "never")
	r := startAgent(t, serverConfig(t, port, fmt.Sprintf(`env_file = %q
[restart]
delay = "30s"
[probe]
tcp = "127.0.0.1:%d"
startup_timeout = "1s"
`, writeEnvFile(t, "LISTEN_WHEN="+never), port)))
	s := r.waitState("backoff")
	if e := s.LastExit; e == nil || e.Reason != "start-timeout" || !strings.Contains(e.Detail, "not ready within 1s") {
		t.Fatalf("last exit %+v, want start-timeout", s.LastExit)
	}
	// The start is over without readiness: READY=1, with the reason.
	n.next("READY=1", func(m string) bool { return m == "READY=1" })
	if code, body := healthGet(t, r.health); code != 503 || body != "backoff" {
		t.Fatalf("health %d %q, want 503 backoff", code, body)
	}
}

func TestLivenessRestartsABlockedEventLoopOnce(t *testing.T) {
	port := freePort(t)
	r := startAgent(t, serverConfig(t, port, fmt.Sprintf(`
[restart]
delay = "0s"
[stop]
timeout = "1s"
[probe]
http = "http://127.0.0.1:%d/"
interval = "200ms"
timeout = "200ms"
failure_threshold = 3
`, port)))
	r.waitHealth(200, "")
	first := *r.ctlStatus().PID
	// The app blocks its own event loop for good: the probes time out.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/block", port))
	if err == nil {
		resp.Body.Close()
	}
	r.waitStatus("a new process after the liveness restart", func(s Status) bool {
		return s.State == "running" && s.PID != nil && *s.PID != first
	})
	s := r.ctlStatus()
	if len(s.Exits) != 1 {
		t.Fatalf("%d exits, want exactly 1: %+v", len(s.Exits), s.Exits)
	}
	if e := s.Exits[0]; e.Reason != "liveness" || !strings.Contains(e.Detail, "3 consecutive probe failures") {
		t.Fatalf("exit %+v, want liveness after 3 failures", e)
	}
	// A spinning node cannot run its SIGTERM handler: the stop timeout's
	// SIGKILL ended it.
	if processAlive(first) {
		t.Fatalf("blocked process %d still alive", first)
	}
}
