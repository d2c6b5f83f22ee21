package supervisor

import (
	"context"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readyWatch reports every process ready at once, as a probe would.
func readyWatch(ctx context.Context, c *Child[string]) { c.Ready() }

func TestReloadReplacesTheProcessAfterSwap(t *testing.T) {
	argv, env := appCommand("grandchild") // a tree: the old one must go whole, the new one stay whole
	cfg := defaultConfig(argv, env)
	cfg.Launch = "old"
	var mu sync.Mutex
	var swapped *Child[string]
	var oldAliveAtGate bool
	drained := make(chan struct{})
	h := startWith(t, cfg, Options[string]{Watch: readyWatch}, func(ev Event[string]) {
		switch {
		case ev.Kind == EventSwapped:
			mu.Lock()
			swapped = ev.Proc
			mu.Unlock()
			if ev.Status.PID != ev.Proc.PID || ev.Old == nil || ev.Old.Launch != "old" {
				t.Errorf("swapped event %+v: want the new process current, the old one named", ev)
			}
		case ev.Gated() && ev.Reason != ReasonReload:
			ev.Gate(nil)
		case ev.Gated():
			ev.Gate(func(ctx context.Context) int {
				// The old process still serves while its requests drain.
				oldAliveAtGate = alive(ev.Proc.PID)
				close(drained)
				return 0
			})
		}
	})
	st := h.waitState(Running)
	oldPID := st.PID
	oldKids := pidsIn(h.waitLine("pid "))

	next := cfg
	next.Launch = "new"
	if err := h.s.Reload(context.Background(), 0, next, waitTime); err != nil {
		t.Fatal(err)
	}
	// Reload answers once the old process is gone.
	st = h.s.Status()
	mu.Lock()
	sw := swapped
	mu.Unlock()
	if sw == nil || sw.Launch != "new" {
		t.Fatalf("swap got %+v, want the new process with its config's launch", sw)
	}
	select {
	case <-drained:
	default:
		t.Fatal("the old process was stopped without its gate")
	}
	if !oldAliveAtGate {
		t.Error("old process gone before its drain")
	}
	if st.PID != sw.PID || st.State != Running || !st.Ready || st.Restarts != 1 || len(st.Exits) != 1 || len(st.Live) != 1 {
		t.Errorf("after reload: %+v, want running pid %d, 1 restart, 1 exit, 1 live", st, sw.PID)
	}
	if e := st.Exits[0]; e.Reason != ReasonReload || e.PID != oldPID {
		t.Errorf("exit %+v, want reason reload of %d", e, oldPID)
	}
	if st.ExitCounts[ReasonReload] != 1 {
		t.Errorf("exit counts %v", st.ExitCounts)
	}
	waitDead(t, oldKids...)
	if !alive(sw.PID) {
		t.Error("the new process was stopped with the old tree")
	}
}

func TestReloadFailureKeepsTheOldProcess(t *testing.T) {
	argv, env := appCommand("sleep")
	cfg := defaultConfig(argv, env)
	h := start(t, cfg, Options[string]{Watch: func(ctx context.Context, c *Child[string]) {
		if c.Launch != "never-ready" {
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
			next.Launch = tc.tag
			err := h.s.Reload(context.Background(), 0, next, 2*time.Second)
			if !errors.Is(err, ErrReloadFailed) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "old one keeps serving") {
				t.Fatalf("reload: %v, want an error saying %q", err, tc.want)
			}
			if h.swaps() != 0 {
				t.Error("swapped to a process that failed")
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
	h := start(t, defaultConfig(argv, env), Options[string]{}) // never ready
	h.waitState(Starting)
	if err := h.s.Reload(context.Background(), 0, h.s.Config(0), time.Second); err != ErrNotServing {
		t.Fatalf("reload while starting: %v, want ErrNotServing", err)
	}
}

func TestGateRunsBeforeRequestedStopsOnly(t *testing.T) {
	argv, env := appCommand("report-signals")
	cfg := defaultConfig(argv, env)
	var mu sync.Mutex
	var gated []Reason
	h := startWith(t, cfg, Options[string]{Watch: readyWatch}, func(ev Event[string]) {
		if ev.Kind != EventStopping {
			return
		}
		if !ev.Gated() {
			return
		}
		// The process has not been signalled yet.
		if !alive(ev.Proc.PID) {
			t.Errorf("gate for %d after it died", ev.Proc.PID)
		}
		mu.Lock()
		gated = append(gated, ev.Reason)
		mu.Unlock()
		ev.Gate(func(ctx context.Context) int {
			if _, ok := ctx.Deadline(); !ok {
				t.Error("gate context without a deadline")
			}
			return 0
		})
	})
	h.waitState(Running)
	if err := h.s.Restart(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	// Restart answers once the new process is ready.
	st := h.s.Status()
	if st.Restarts != 1 || st.State != Running {
		t.Fatalf("restart answered at %+v, want running after 1 restart", st)
	}
	// A crash is not gated: the process is gone already.
	killPID(t, st.PID)
	h.waitFor("the crash restart", func(st Status[string]) bool { return st.Restarts == 2 && st.State == Running })
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
