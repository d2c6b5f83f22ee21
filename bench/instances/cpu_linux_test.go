package main

import (
	"math"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestOtherWorkCountsOurs checks that CPU burnt by this process and by a
// child it has reaped is counted as the benchmark's own, not as other work.
func TestOtherWorkCountsOurs(t *testing.T) {
	o := startOtherWork()
	// Burn CPU time, not wall time: on a loaded machine a wall-time loop
	// gets only a share of a core.
	const burn = 200 * time.Millisecond
	start := selfCPU(t)
	for selfCPU(t)-start < burn {
	}
	cmd := exec.Command("sh", "-c", `i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done`)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	child := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	// Clock ticks round each figure down by up to 10 ms.
	if ours, want := o.oursNow()-o.ours, burn+child-30*time.Millisecond; ours < want {
		t.Fatalf("own CPU %s, want at least %s (%s here, %s in the child)", ours, want, burn, child)
	}
	if c := o.cores(); math.IsNaN(c) || c < 0 {
		t.Fatalf("other work %v cores", c)
	}
}

// selfCPU is this process's user and system time.
func selfCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
