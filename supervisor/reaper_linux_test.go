package supervisor

import (
	"context"
	"errors"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	"agent/internal/procfs"
)

// TestReaperNeverTakesACmdWaitStatus pins the reaper's invariant (see
// reaper_linux.go): while the app keeps orphaning processes that the agent,
// as subreaper, must reap, a command the agent process runs itself with
// os/exec always gets its own exit status from cmd.Wait. Each command is
// waited for only once it has exited (a zombie), which is when a reaper
// that took any zombie child would take it.
func TestReaperNeverTakesACmdWaitStatus(t *testing.T) {
	argv, env := appCommand("detach-loop")
	h := start(t, defaultConfig(argv, env), Options[string]{})
	h.waitLine("detaching")
	first := h.waitLine("orphaned ") // the reaper is at work

	const runs = 100
	for i := range runs {
		code := 1 + i%100
		pidfd := -1
		cmd := exec.Command("/bin/sh", "-c", "exit "+strconv.Itoa(code))
		cmd.SysProcAttr = &syscall.SysProcAttr{PidFD: &pidfd}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if pidfd < 0 {
			t.Skip("no pidfd from clone")
		}
		ph := procfs.NewHandle(cmd.Process.Pid, pidfd)
		ctx, cancel := context.WithTimeout(context.Background(), waitTime)
		_, err := procfs.Wait(ctx, ph) // exited: a zombie until cmd.Wait
		cancel()
		ph.Close()
		if err != nil {
			t.Fatalf("run %d: command did not exit: %v", i, err)
		}
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != code {
			t.Fatalf("run %d: cmd.Wait = %v, want exit status %d (was its status taken by the reaper?)", i, err, code)
		}
	}
	// The orphans kept coming meanwhile.
	if last := h.out.Last(1); len(last) == 0 || last[0].Text == first {
		t.Errorf("no orphans while the commands ran (last line %v)", last)
	}
}
