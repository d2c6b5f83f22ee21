package supervisor

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"agent/internal/procfs"
)

// TestStopNeverSignalsAReusedPID checks that the stop path signals the
// processes it scanned, not their PID numbers: a handle from a scan whose
// process has exited and been reaped, and whose PID now names another
// process, reaches nobody. PID reuse cannot be forced, so the handle is
// made to carry the PID of a live bystander, as if that PID had been
// reused; a signal by number would reach the bystander.
func TestStopNeverSignalsAReusedPID(t *testing.T) {
	exe, _ := os.Executable()

	// The bystander reports each SIGTERM and SIGWINCH it gets.
	by := exec.Command(exe)
	by.Env = append(os.Environ(), "SUPERVISOR_TEST_APP=report-signals")
	by.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, _ := by.StdoutPipe()
	if err := by.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { by.Process.Kill(); by.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(waitTime):
			t.Fatal("no line from the bystander")
			return ""
		}
	}
	if l := next(); !strings.HasPrefix(l, "pid ") {
		t.Fatalf("bystander said %q", l)
	}

	// A process of the scan exits and is reaped.
	gone := exec.Command(exe)
	gone.Env = append(os.Environ(), "SUPERVISOR_TEST_APP=sleep")
	if err := gone.Start(); err != nil {
		t.Fatal(err)
	}
	s := New(Config[string]{}, Options[string]{})
	hs := s.scanTree(0)
	defer procfs.CloseAll(hs)
	i := slices.IndexFunc(hs, func(h *procfs.Handle) bool { return h.PID == gone.Process.Pid })
	if i < 0 {
		t.Fatalf("scan %v lacks %d", pidsOf(hs), gone.Process.Pid)
	}
	stale := hs[i]
	gone.Process.Kill()
	gone.Wait()
	stale.PID, stale.PGID = by.Process.Pid, by.Process.Pid // as if reused

	c := &Child[string]{PID: 1 << 29} // no leader: every handle is signalled
	c.signalTree([]*procfs.Handle{stale}, syscall.SIGTERM)
	if err := stale.Signal(syscall.SIGTERM); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("Signal on the stale handle = %v, want ESRCH", err)
	}

	// SIGWINCH sent now is handled after a SIGTERM sent before it (lower
	// signals are delivered first): seeing it first proves no SIGTERM came.
	by.Process.Signal(syscall.SIGWINCH)
	if l := next(); l != "signal SIGWINCH" {
		t.Fatalf("bystander got %q: the stop path signalled a PID number", l)
	}
}
