package supervisor

import (
	"context"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readyWatch reports every process ready at once, as a probe would.
func readyWatch(ctx context.Context, c *Child) { c.Ready() }

func TestReloadReplacesTheProcessAfterSwap(t *testing.T) {
	argv, env := appCommand("grandchild") // a tree: the old one must go whole, the new one stay whole
	cfg := defaultConfig(argv, env)
	cfg.Tag = "old"
	h := start(t, cfg, Options{Watch: readyWatch})
	st := h.waitState(Running)
	oldPID := st.PID
	oldKids := pidsIn(h.waitLine("pid "))

	next := cfg
	next.Tag = "new"
	var swapped *Child
	err := h.s.Reload(context.Background(), next, waitTime, func(ctx context.Context, c *Child) {
		swapped = c
		// The old process still serves while the traffic moves.
		if !alive(oldPID) {
			t.Error("old process gone before the swap")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if swapped == nil || swapped.Tag != "new" {
		t.Fatalf("swap got %+v, want the new process with its config's tag", swapped)
	}
	st = h.waitFor("the old process's exit", func(st Status) bool { return len(st.Exits) == 1 })
	if st.PID != swapped.PID || st.State != Running || !st.Ready || st.Restarts != 1 {
		t.Errorf("after reload: %+v, want running pid %d, 1 restart", st, swapped.PID)
	}
	if e := st.Exits[0]; e.Reason != ReasonReload || e.PID != oldPID {
		t.Errorf("exit %+v, want reason reload of %d", e, oldPID)
	}
	if st.ExitCounts[ReasonReload] != 1 {
		t.Errorf("exit counts %v", st.ExitCounts)
	}
	waitDead(t, oldKids...)
	if !alive(swapped.PID) {
		t.Error("the new process was stopped with the old tree")
	}
}

func TestReloadFailureKeepsTheOldProcess(t *testing.T) {
	argv, env := appCommand("sleep")
	cfg := defaultConfig(argv, env)
	h := start(t, cfg, Options{Watch: func(ctx context.Context, c *Child) {
		if c.Tag != "never-ready" {
			c.Ready()
		}
	}})
	st := h.waitState(Running)
	oldPID := st.PID

	for _, tc := range []struct {
		name string
		mode []string
		tag  string
		want string
	}{
		{"crashes at start", []string{"exit", "3"}, "never-ready", "crashed (code 3)"},
		{"never ready", []string{"sleep"}, "never-ready", "start-timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			argv, env := appCommand(tc.mode[0], tc.mode[1:]...)
			next := defaultConfig(argv, env)
			next.Tag = tc.tag
			swapped := false
			err := h.s.Reload(context.Background(), next, 2*time.Second, func(context.Context, *Child) { swapped = true })
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "old one keeps serving") {
				t.Fatalf("reload: %v, want an error saying %q", err, tc.want)
			}
			if swapped {
				t.Error("traffic swapped to a process that failed")
			}
			st := h.s.Status()
			if st.PID != oldPID || st.State != Running || !st.Ready {
				t.Errorf("after a failed reload: %+v, want pid %d running", st, oldPID)
			}
			if !alive(oldPID) {
				t.Error("old process stopped")
			}
		})
	}
	if st := h.s.Status(); st.Restarts != 0 || len(st.Exits) != 2 {
		t.Errorf("status %+v: failed new processes are recorded, the app was not restarted", st)
	}
}

func TestReloadOfAnAppNotServing(t *testing.T) {
	argv, env := appCommand("sleep")
	h := start(t, defaultConfig(argv, env), Options{}) // never ready
	h.waitState(Starting)
	if err := h.s.Reload(context.Background(), h.s.config(), time.Second, nil); err != ErrNotServing {
		t.Fatalf("reload while starting: %v, want ErrNotServing", err)
	}
}

func TestGateRunsBeforeRequestedStopsOnly(t *testing.T) {
	argv, env := appCommand("report-signals")
	cfg := defaultConfig(argv, env)
	var mu sync.Mutex
	var gated []Reason
	h := start(t, cfg, Options{Watch: readyWatch, Gate: func(ctx context.Context, c *Child, r Reason) {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("gate context without a deadline")
		}
		// The process has not been signalled yet.
		if !alive(c.PID) {
			t.Errorf("gate for %d called after it died", c.PID)
		}
		mu.Lock()
		gated = append(gated, r)
		mu.Unlock()
	}})
	h.waitState(Running)
	if err := h.s.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := h.waitFor("the restart", func(st Status) bool { return st.Restarts == 1 && st.State == Running })
	// A crash is not gated: the process is gone already.
	pid := st.PID
	killPID(t, pid)
	h.waitFor("the crash restart", func(st Status) bool { return st.Restarts == 2 && st.State == Running })
	mu.Lock()
	defer mu.Unlock()
	if len(gated) != 1 || gated[0] != ReasonRestart {
		t.Errorf("gated %v, want [restart]", gated)
	}
	if st := h.s.Status(); st.ExitCounts[ReasonRestart] != 1 || st.ExitCounts[ReasonSignaled] != 1 {
		t.Errorf("exit counts %v", st.ExitCounts)
	}
}

func killPID(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}
