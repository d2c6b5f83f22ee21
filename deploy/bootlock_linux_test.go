package deploy

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// The boot lock: one booted VM or container at a time on this machine, in
// any test process (an nspawn container and a VM on two cores starve each
// other into timeouts). Taken by every boot and held until the test that
// booted ends; nested holds in one process count.
const bootLockPath = "/run/agent-e2e.lock"

var bootLock struct {
	held int
	f    *os.File
}

// holdBootLock takes the boot lock until t ends, waiting for any other
// process that holds it.
func holdBootLock(t *testing.T) {
	t.Helper()
	if bootLock.held == 0 {
		f, err := os.OpenFile(bootLockPath, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatalf("boot lock: %v", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			t.Logf("waiting for %s: another VM or container is booted", bootLockPath)
			start := time.Now()
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
				f.Close()
				t.Fatalf("boot lock: %v", err)
			}
			t.Logf("got %s after %v", bootLockPath, time.Since(start).Round(time.Second))
		}
		bootLock.f = f
	}
	bootLock.held++
	t.Cleanup(func() {
		bootLock.held--
		if bootLock.held == 0 {
			bootLock.f.Close() // releases the flock
			bootLock.f = nil
		}
	})
}
