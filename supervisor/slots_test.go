package supervisor

import (
	"context"
	"fmt"
	"testing"
)

// slotConfigs returns n configs of cfg, each with its slot's launch.
func slotConfigs(cfg Config[string], n int) []Config[string] {
	out := make([]Config[string], n)
	for i := range out {
		out[i] = cfg
		out[i].Launch = fmt.Sprint("slot ", i)
	}
	return out
}

func TestSlotsAreSupervisedEachOnItsOwn(t *testing.T) {
	argv, env := appCommand("sleep")
	cfg := defaultConfig(argv, env)
	h := start(t, cfg, Options[string]{Watch: readyWatch})
	h.waitState(Running)
	first := h.s.Status().PID

	// 1 → 3: the new slots start, slot 0 is not touched.
	if err := h.s.Scale(context.Background(), slotConfigs(cfg, 3)); err != nil {
		t.Fatal(err)
	}
	st := h.s.Status()
	if len(st.Slots) != 3 || st.State != Running || !st.Ready || st.PID != first {
		t.Fatalf("after scale to 3: %+v, want 3 slots running, slot 0 still pid %d", st, first)
	}
	for i, ss := range st.Slots {
		if ss.State != Running || ss.PID == 0 || (i > 0 && ss.Launch != fmt.Sprint("slot ", i)) || ss.Restarts != 0 {
			t.Errorf("slot %d: %+v", i, ss)
		}
	}
	pids := []int{st.Slots[0].PID, st.Slots[1].PID, st.Slots[2].PID}

	// A crash of slot 1 restarts slot 1 only; meanwhile the app is degraded.
	killPID(t, pids[1])
	st = h.waitFor("slot 1 back", func(st Status[string]) bool {
		return st.Slots[1].PID != pids[1] && st.Slots[1].State == Running
	})
	if st.Slots[0].PID != pids[0] || st.Slots[2].PID != pids[2] || st.Slots[1].Restarts != 1 || st.Restarts != 1 {
		t.Errorf("after slot 1's crash: %+v", st.Slots)
	}
	if e := st.Exits[0]; e.Slot != 1 || e.PID != pids[1] {
		t.Errorf("exit %+v, want slot 1's", e)
	}
	if !h.sawState(Degraded) {
		t.Error("the app never read degraded while slot 1 restarted")
	}

	// A restart of slot 2 answers once its new process is ready.
	if err := h.s.Restart(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	st = h.s.Status()
	if st.Slots[2].PID == pids[2] || st.Slots[2].State != Running || st.Slots[0].PID != pids[0] {
		t.Errorf("after restarting slot 2: %+v", st.Slots)
	}
	if err := h.s.Restart(context.Background(), 3); err == nil {
		t.Error("restart of a slot the app does not have succeeded")
	}

	// 3 → 1: slots 1 and 2 are stopped and removed, slot 0 is not touched.
	gone := []int{st.Slots[1].PID, st.Slots[2].PID}
	if err := h.s.Scale(context.Background(), slotConfigs(cfg, 1)); err != nil {
		t.Fatal(err)
	}
	st = h.s.Status()
	if len(st.Slots) != 1 || st.PID != pids[0] || st.State != Running || h.s.Slots() != 1 {
		t.Fatalf("after scale to 1: %+v", st)
	}
	waitDead(t, gone...)
	if st.ExitCounts[ReasonStop] != 2 {
		t.Errorf("exit counts %v, want 2 stops", st.ExitCounts)
	}

	// Stop answers once every slot's tree is gone.
	if err := h.s.Scale(context.Background(), slotConfigs(cfg, 2)); err != nil {
		t.Fatal(err)
	}
	if err := h.s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := h.s.Status(); st.State != Stopped || len(st.Live) != 0 || st.Slots[1].State != Stopped {
		t.Fatalf("after stop: %+v", st)
	}
	if err := h.s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := h.s.Status(); st.State != Running || st.Slots[0].State != Running || st.Slots[1].State != Running {
		t.Fatalf("after start: %+v", st)
	}
}
