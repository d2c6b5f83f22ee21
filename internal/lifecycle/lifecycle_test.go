package lifecycle

import "testing"

// TestWords pins the words: status, the health page and the metrics' labels
// show them, so changing one breaks dashboards and scripts.
func TestWords(t *testing.T) {
	states := []State{"starting", "running", "backoff", "stopping", "stopped", "failed", "draining", "degraded"}
	reasons := []Reason{"exited", "crashed", "signaled", "oom-kill", "heap-oom", "rss-limit", "liveness", "start-timeout", "restart", "stop", "reload"}
	if got := States(); len(got) != len(states) {
		t.Fatalf("States() = %q, want %q", got, states)
	}
	for i, s := range States() {
		if s != states[i] {
			t.Errorf("States()[%d] = %q, want %q", i, s, states[i])
		}
	}
	if got := Reasons(); len(got) != len(reasons) {
		t.Fatalf("Reasons() = %q, want %q", got, reasons)
	}
	for i, r := range Reasons() {
		if r != reasons[i] {
			t.Errorf("Reasons()[%d] = %q, want %q", i, r, reasons[i])
		}
	}
	States()[0] = "changed"
	if States()[0] != Starting {
		t.Error("States returns a shared slice")
	}
}
