package faults

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"agent/internal/testkit"
)

// TestLogSinkGone gives the agent a pipe as stderr whose reader goes away
// (as a crashed log collector does), then makes the app log a line per
// request: the agent must survive, the app must keep answering.
func TestLogSinkGone(t *testing.T) {
	row := newRow(t, "log sink gone (stderr pipe, reader exits)")
	t.Parallel()
	r := newAgentRun(t, appSpec{Env: map[string]string{"LOG_BYTES": "200"}})
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.start(pw)
	pw.Close()
	// Read until the app listens, then the reader goes away.
	sc := bufio.NewScanner(pr)
	for sc.Scan() && !strings.Contains(sc.Text(), "listening") {
	}
	pr.Close()
	r.waitHealthy(60 * time.Second)
	pid := r.appPID()

	at := time.Now()
	const n = 300
	failed := sequential(r.trafficAddr(), n)
	took := time.Since(at)
	if r.exited() {
		t.Fatalf("agent died after its log reader went away: %v", r.exit)
	}
	if failed > 0 {
		t.Errorf("%d of %d app requests failed after the log reader went away", failed, n)
	}
	st := r.mustStatus()
	if st.PID == nil || *st.PID != pid {
		t.Errorf("app changed: %+v", st)
	}
	r.freshChecks(3)
	// And a crash afterwards is still seen and restarted.
	load := startLoad(t, r.trafficAddr(), 50)
	at = time.Now()
	syscall.Kill(pid, syscall.SIGKILL)
	rec := r.recovered(pid, at)
	lost := load.Stop()
	row.set(fmt.Sprintf("agent alive, same app process answered %d logged requests in %s; then app SIGKILLed and restarted; status and health 200", n-failed, ms(took)), ms(rec)+" (after the SIGKILL)", fmt.Sprintf("%d of %d, then %s across the SIGKILL", failed, n, lost))
}

// TestLogSinkStuck gives the agent a pipe as stderr that nobody reads:
// once it is full, the agent must drop log lines rather than block on
// them. The app floods its output, then is killed: the agent must still
// restart it (its exit is logged) and stay answerable.
func TestLogSinkStuck(t *testing.T) {
	row := newRow(t, "log sink stuck (stderr pipe nobody reads)")
	t.Parallel()
	r := newAgentRun(t, appSpec{Env: map[string]string{"LOG_BYTES": "1024"}})
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.start(pw)
	pw.Close()
	// Runs before the agent's own cleanup: unblock it so it can stop.
	t.Cleanup(func() {
		go io.Copy(io.Discard, pr)
	})
	r.waitHealthy(60 * time.Second)
	pid := r.appPID()

	const n = 500 // 500 KiB of app output: far more than the pipe holds
	failed := sequential(r.trafficAddr(), n)
	if failed > 0 {
		t.Errorf("%d of %d app requests failed with the agent's stderr stuck", failed, n)
	}
	happened := fmt.Sprintf("app answered %d of %d logged requests", n-failed, n)

	// Now a crash: the agent must notice and restart the app.
	load := startLoad(t, r.trafficAddr(), 50)
	at := time.Now()
	syscall.Kill(pid, syscall.SIGKILL)
	row.set(happened+"; then app SIGKILLed: **not restarted** within 30 s (the agent blocks writing its log)", "never (30 s)", "—")
	testkit.Eventually(t, 30*time.Second, "the app restarted after its SIGKILL while the agent's stderr is stuck", func() bool {
		st, err := r.status()
		return err == nil && st.PID != nil && *st.PID != pid && st.Healthy
	})
	took := time.Since(at)
	lost := load.Stop()
	healthCode, _, _, _ := r.healthCheck()
	_, serr := r.status()
	row.set(happened+fmt.Sprintf("; app SIGKILLed then restarted; health %d, status %s", healthCode, errOr(serr, "answers")), ms(took), lost.String())
}

func errOr(err error, ok string) string {
	if err != nil {
		return "fails: " + err.Error()
	}
	return ok
}

// TestKmsgUnreadable runs the agent with memory.watch_oom on where
// /dev/kmsg gives nothing (/dev/null bound over it in a private mount
// namespace): status must say why OOM kills are not watched, and the app
// must run.
func TestKmsgUnreadable(t *testing.T) {
	row := newRow(t, "/dev/kmsg unreadable, watch_oom on")
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private mount namespace (unshare -m)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare(1)")
	}
	r := newAgentRun(t, appSpec{Memory: "watch_oom = true"})
	r.start(nil, "unshare", "-m", "--propagation", "private", "sh", "-c", `mount --bind /dev/null /dev/kmsg && exec "$@"`, "sh")
	r.waitHealthy(60 * time.Second)
	var st agentStatus
	testkit.Eventually(t, 30*time.Second, "oom_watch settled", func() bool {
		st = r.mustStatus()
		return st.Agent.OOMWatch != "unavailable: not started"
	})
	if !strings.HasPrefix(st.Agent.OOMWatch, "unavailable: ") {
		t.Errorf("oom_watch = %q, want unavailable: <why>", st.Agent.OOMWatch)
	}
	if st.State != "running" || !st.Ready {
		t.Errorf("app %s ready=%v, want running and ready", st.State, st.Ready)
	}
	// The real /dev/kmsg outside is untouched.
	if fi, err := os.Stat("/dev/kmsg"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("/dev/kmsg outside: %v %v", fi, err)
	}
	row.set(fmt.Sprintf("oom_watch: `%s`; app running and ready, health 200", st.Agent.OOMWatch), "—", "—")
}
