package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100
// on every Linux architecture the agent is built for.
const clockTicks = 100

// procStat is what the benchmark needs from /proc/PID/stat.
type procStat struct {
	comm  string
	state byte
	ppid  int
	cpu   time.Duration // utime + stime
}

// readStat reads /proc/PID/stat.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// parseStat parses a /proc/PID/stat line. The command name sits in
// parentheses and may hold spaces and parentheses itself, so the fields are
// counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, errors.New("malformed stat line")
	}
	f := strings.Fields(string(b[end+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return procStat{}, errors.New("short stat line")
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("ppid: %w", err)
	}
	utime, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("utime: %w", err)
	}
	stime, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stime: %w", err)
	}
	return procStat{
		comm:  string(b[open+1 : end]),
		state: f[0][0],
		ppid:  ppid,
		cpu:   time.Duration(utime+stime) * time.Second / clockTicks,
	}, nil
}

// vmRSS returns the resident memory of pid in bytes (VmRSS of
// /proc/PID/status).
func vmRSS(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("vmrss of %d: %w", pid, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("vmrss of %d: no VmRSS line (a zombie?)", pid)
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
	t, err := scanProcs()
	if err != nil {
		return 0, err
	}
	c := t.children(sup)
	if len(c) != 1 {
		return 0, nil
	}
	return c[0], nil
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
// pidfd: it turns readable once the process has exited, after the kernel has
// closed its files (so its listening socket is gone).
type exitWatch struct{ fd int }

func watchExit(pid int) (*exitWatch, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return &exitWatch{fd: fd}, nil
}

// wait reports whether the process exited within timeout.
func (w *exitWatch) wait(timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(left.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("poll pidfd: %w", err)
		}
		if n > 0 {
			return true, nil
		}
		if left == 0 {
			return false, nil
		}
	}
}

func (w *exitWatch) close() { unix.Close(w.fd) }

// signal sends sig to the process through its pidfd, so a
// recycled pid is never hit.
func (w *exitWatch) signal(sig unix.Signal) error {
	return unix.PidfdSendSignal(w.fd, sig, nil, 0)
}
