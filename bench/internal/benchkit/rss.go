package benchkit

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// RSS returns pid's resident memory (VmRSS) in bytes, 0 when it cannot be
// read.
func RSS(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for l := range strings.Lines(string(b)) {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// PeakRSS samples pid's resident memory every interval until the returned
// stop is called, which returns the largest sample in bytes.
func PeakRSS(pid int, interval time.Duration) (stop func() uint64) {
	quit := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		top := RSS(pid)
		for {
			select {
			case <-quit:
				peak <- max(top, RSS(pid))
				return
			case <-t.C:
				top = max(top, RSS(pid))
			}
		}
	}()
	return func() uint64 {
		close(quit)
		return <-peak
	}
}
