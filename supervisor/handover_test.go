package supervisor

import (
	"context"
	"encoding/json"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"agent/internal/procfs"
	"agent/internal/testkit"
)

func encodeString(l string) json.RawMessage { b, _ := json.Marshal(l); return b }

func decodeString(_ int, raw json.RawMessage) (string, error) {
	var l string
	err := json.Unmarshal(raw, &l)
	return l, err
}

// An app process that exits while the supervisor is frozen for an upgrade
// is not reaped: the supervisor that takes over (here a second one in the
// same process, as the exec'd program is in the same PID) reaps it and
// records its exit, with the counts carried over.
func TestFrozenExitIsRecordedByTheNextSupervisor(t *testing.T) {
	argv, env := appCommand("sleep")
	cfg := defaultConfig(argv, env)
	cfg.Launch = "launch-a"
	h1 := start(t, cfg, Options[string]{Watch: func(ctx context.Context, c *Child[string]) { c.Ready() }})
	st := h1.waitFor("ready", func(st Status[string]) bool { return st.Ready })
	pid := st.PID

	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	f, _, err := h1.s.Freeze(ctx, encodeString)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Slots) != 1 || f.Slots[0].Proc == nil || f.Slots[0].Proc.PID != pid || !f.Slots[0].Proc.Ready {
		t.Fatalf("frozen state %+v, want the ready process %d", f, pid)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	testkit.EventuallyMsg(t, waitTime, "the killed process left a zombie (not reaped while frozen)", func() (bool, string) {
		p, err := procfs.Stat(pid)
		if err != nil {
			return false, err.Error()
		}
		return p.Zombie(), string(p.State)
	})
	if st := h1.s.Status(); len(st.Exits) != 0 {
		t.Fatalf("the frozen supervisor recorded %+v", st.Exits)
	}

	// The next program's supervisor takes the process over, with copies
	// of the descriptors (an exec keeps them; here the frozen supervisor
	// keeps its own, closed when it stops).
	for i := range f.Slots {
		if p := f.Slots[i].Proc; p != nil {
			p.PidFD, p.Stdout, p.Stderr = dupFD(t, p.PidFD), dupFD(t, p.Stdout), dupFD(t, p.Stderr)
		}
	}
	cfg.Launch = "launch-b"
	h2 := startAdopted(t, cfg, f)
	st = h2.waitFor("the exit recorded and the process restarted", func(st Status[string]) bool {
		return len(st.Exits) == 1 && st.Ready && st.PID != pid
	})
	if e := st.Exits[0]; e.PID != pid || e.Signal != "SIGKILL" || e.Reason != ReasonSignaled {
		t.Errorf("exit %+v, want pid %d signaled by SIGKILL", e, pid)
	}
	if st.Restarts != 1 || st.Slots[0].Restarts != 1 {
		t.Errorf("restarts %d (slot %d), want 1", st.Restarts, st.Slots[0].Restarts)
	}
	if got := h2.s.Config(0).Launch; got != "launch-a" {
		t.Errorf("next start's launch %q, want the one handed over", got)
	}
}

// A freeze waits for the app to come to rest: here a stop under way.
func TestFreezeWaitsForRest(t *testing.T) {
	argv, env := appCommand("ignore-term")
	cfg := defaultConfig(argv, env)
	cfg.StopTimeout = 2 * time.Second
	h := start(t, cfg, Options[string]{Watch: func(ctx context.Context, c *Child[string]) { c.Ready() }})
	h.waitFor("ready", func(st Status[string]) bool { return st.Ready })
	h.waitLine("pid ") // it ignores SIGTERM from now on
	stopped := make(chan error, 1)
	go func() { stopped <- h.s.Stop(context.Background()) }()
	h.waitFor("stopping", func(st Status[string]) bool { return st.State == Stopping })
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, _, err := h.s.Freeze(short, encodeString)
	cancel()
	if err == nil {
		t.Fatal("froze while a process was stopping")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	f, thaw, err := h.s.Freeze(ctx, encodeString)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if f.Slots[0].State != Stopped || f.Slots[0].Proc != nil {
		t.Errorf("frozen slot %+v, want stopped with no process", f.Slots[0])
	}
	thaw()
	// Thawed, it acts again.
	if err := h.s.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

func dupFD(t *testing.T, fd int) int {
	t.Helper()
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// startAdopted runs a supervisor that takes over f.
func startAdopted(t *testing.T, cfg Config[string], f *Frozen) *harness {
	t.Helper()
	return startWithSetup(t, cfg, Options[string]{Watch: func(ctx context.Context, c *Child[string]) { c.Ready() }},
		func(ev Event[string]) { ev.Gate(nil) },
		func(s *Supervisor[string]) {
			if err := s.Adopt(f, decodeString); err != nil {
				t.Fatal(err)
			}
			s.SetConfig(0, func() Config[string] { c := s.Config(0); c.Launch = s.Next()[0]; return c }())
		})
}
