package main

import (
	"bytes"
	"math"
	"os"
	"strconv"
	"syscall"
	"time"

	"agent/internal/procfs"
)

// otherWork tells how much CPU went to work outside the benchmark over an
// interval: the machine's busy time (/proc/stat) less the CPU time of the
// benchmark's own processes (this one and its live descendants, the ones
// it has reaped, and the trees of the given roots, such as PM2's daemon).
// On a machine shared with other work, it says which rounds to trust.
type otherWork struct {
	roots      []int
	busy, ours time.Duration
	at         time.Time
}

func startOtherWork(roots ...int) *otherWork {
	o := &otherWork{roots: roots, at: time.Now()}
	o.busy, o.ours = machineBusy(), o.oursNow()
	return o
}

// cores returns the other work since the start, in cores (1 = one core
// busy all along); NaN when /proc/stat cannot be read.
func (o *otherWork) cores() float64 {
	busy, ours := machineBusy(), o.oursNow()
	el := time.Since(o.at)
	if busy == 0 || o.busy == 0 || el <= 0 {
		return math.NaN()
	}
	return math.Max(0, float64((busy-o.busy)-(ours-o.ours))/float64(el))
}

func (o *otherWork) oursNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	total := time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
	for _, root := range append([]int{os.Getpid()}, o.roots...) {
		procs, _ := procfs.Tree(root)
		for _, p := range procs {
			total += p.CPU
		}
	}
	return total
}

// machineBusy is the time all CPUs spent on anything but idle and iowait
// since boot (the first line of /proc/stat), 0 if it cannot be read.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	// cpu user nice system idle iowait irq softirq steal (guest is in user)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0
	}
	var ticks uint64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			return 0
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ
}
