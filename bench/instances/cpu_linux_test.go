package main

import (
	"math"
	"os/exec"
	"testing"
	"time"
)

// TestOtherWorkCountsOurs checks that CPU burnt by this process and by a
// child it has reaped is counted as the benchmark's own, not as other work.
func TestOtherWorkCountsOurs(t *testing.T) {
	o := startOtherWork()
	end := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(end) {
	}
	if err := exec.Command("sh", "-c", `end=$(($(date +%s%N)+200000000)); while [ $(date +%s%N) -lt $end ]; do :; done`).Run(); err != nil {
		t.Fatal(err)
	}
	if ours := o.oursNow() - o.ours; ours < 300*time.Millisecond {
		t.Fatalf("own CPU %s, want at least 300ms (200 ms here, about 200 ms in the child)", ours)
	}
	if c := o.cores(); math.IsNaN(c) || c < 0 {
		t.Fatalf("other work %v cores", c)
	}
}
