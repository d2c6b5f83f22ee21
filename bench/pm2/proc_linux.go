package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"agent/internal/procfs"
)

// procStat is what the benchmark needs from /proc/PID/stat.
type procStat struct {
	comm  string
	state byte
	ppid  int
	cpu   time.Duration // utime + stime
}

// readStat reads /proc/PID/stat through procfs, as the agent does.
func readStat(pid int) (procStat, error) {
	p, err := procfs.Stat(pid)
	if err != nil {
		return procStat{}, err
	}
	return procStat{comm: p.Comm, state: p.State, ppid: p.PPID, cpu: p.CPU}, nil
}

// vmRSS returns the resident memory of pid in bytes (VmRSS, which procfs
// reads from /proc/PID/statm).
func vmRSS(pid int) (uint64, error) {
	p, err := procfs.Stat(pid)
	if err != nil {
		return 0, err
	}
	if p.Zombie() {
		return 0, fmt.Errorf("vmrss of %d: a zombie", pid)
	}
	return p.RSS, nil
}

// cmdline returns the arguments of pid joined by spaces.
func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
}

// pids lists the processes in /proc.
func pids() ([]int, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	out := make([]int, 0, len(names))
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil {
			out = append(out, pid)
		}
	}
	return out, nil
}

// procTable is one scan of /proc: every live process with its parent.
type procTable map[int]procStat

func scanProcs() (procTable, error) {
	list, err := pids()
	if err != nil {
		return nil, err
	}
	t := make(procTable, len(list))
	for _, pid := range list {
		st, err := readStat(pid)
		if err != nil || st.state == 'Z' {
			continue // gone meanwhile, or dead and not yet reaped
		}
		t[pid] = st
	}
	return t, nil
}

// children returns the live children of ppid.
func (t procTable) children(ppid int) []int {
	var out []int
	for pid, st := range t {
		if st.ppid == ppid {
			out = append(out, pid)
		}
	}
	return out
}

// tree returns root and all its live descendants.
func (t procTable) tree(root int) map[int]bool {
	in := map[int]bool{}
	if _, ok := t[root]; !ok {
		return in
	}
	in[root] = true
	for grew := true; grew; {
		grew = false
		for pid, st := range t {
			if !in[pid] && in[st.ppid] {
				in[pid] = true
				grew = true
			}
		}
	}
	return in
}

// appChild returns the child of the supervisor sup that runs the app: its
// only live child. It returns 0 when there is none yet (or several, which
// happens for an instant while a helper command runs).
func appChild(sup int) (int, error) {
	kids, err := procfs.Children(sup)
	if err != nil {
		return 0, err
	}
	live := 0
	for _, k := range kids {
		if !k.Zombie() {
			if live != 0 {
				return 0, nil
			}
			live = k.PID
		}
	}
	return live, nil
}

// childWatch finds new children of a process cheaply enough to run every
// millisecond: each poll lists /proc and reads the stat of new pids only.
type childWatch struct {
	parent int
	seen   map[int]bool
}

func newChildWatch(parent int) (*childWatch, error) {
	list, err := pids()
	if err != nil {
		return nil, err
	}
	w := &childWatch{parent: parent, seen: make(map[int]bool, len(list))}
	for _, pid := range list {
		w.seen[pid] = true
	}
	return w, nil
}

// poll returns a child of the parent that appeared since the last poll, or 0.
func (w *childWatch) poll() (int, error) {
	list, err := pids()
	if err != nil {
		return 0, err
	}
	found := 0
	for _, pid := range list {
		if w.seen[pid] {
			continue
		}
		w.seen[pid] = true
		if st, err := readStat(pid); err == nil && st.ppid == w.parent && found == 0 {
			found = pid
		}
	}
	return found, nil
}

// exitWatch reports the exit of a process that is not our child, through a
// pidfd (procfs.Handle): it turns readable once the process has exited,
// after the kernel has closed its files (so its listening socket is gone).
type exitWatch struct{ h *procfs.Handle }

func watchExit(pid int) (*exitWatch, error) {
	p, err := procfs.Stat(pid)
	if err != nil {
		return nil, fmt.Errorf("watch exit of %d: %w", pid, err)
	}
	h, err := procfs.Open(p)
	if err != nil {
		return nil, fmt.Errorf("watch exit of %d: %w", pid, err)
	}
	return &exitWatch{h: h}, nil
}

// wait reports whether the process exited within timeout.
func (w *exitWatch) wait(timeout time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	left, err := procfs.Wait(ctx, w.h)
	if len(left) == 0 {
		return true, nil
	}
	if ctx.Err() != nil {
		return false, nil
	}
	return false, err
}

func (w *exitWatch) close() { w.h.Close() }

// signal sends sig to the process through its pidfd, so a
// recycled pid is never hit.
func (w *exitWatch) signal(sig unix.Signal) error {
	return w.h.Signal(sig)
}
