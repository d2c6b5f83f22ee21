package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// BecomeSubreaper makes the calling process the reaper of its orphaned
// descendants: an app's child that daemonizes (fork, setsid, parent exits)
// is re-parented to the agent instead of PID 1, so it stays visible as part
// of the app's tree and can be killed with it.
func BecomeSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set child subreaper: %w", err)
	}
	return nil
}

// procStat is the part of /proc/PID/stat the agent needs.
type procStat struct {
	pid, ppid, pgrp int
	state           byte
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// parseStat parses "pid (comm) S ppid pgrp ...", where comm may itself
// contain spaces and parentheses.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return procStat{}, errors.New("malformed stat")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:bytes.IndexByte(b, '(')])))
	if err != nil {
		return procStat{}, fmt.Errorf("malformed stat: %w", err)
	}
	f := bytes.Fields(b[i+2:])
	if len(f) < 3 || len(f[0]) != 1 {
		return procStat{}, errors.New("malformed stat")
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgrp, err2 := strconv.Atoi(string(f[2]))
	if err1 != nil || err2 != nil {
		return procStat{}, errors.New("malformed stat")
	}
	return procStat{pid: pid, ppid: ppid, pgrp: pgrp, state: f[0][0]}, nil
}

// allProcs reads the stat of every process.
func allProcs() []procStat {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	out := make([]procStat, 0, len(names))
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			out = append(out, st)
		}
	}
	return out
}

// appTree returns the live processes of an app: every member of process
// group pgid, and every descendant of this process (the agent owns no
// children but its app's, and as subreaper it inherits the app's orphans).
// Zombies are left out: they hold nothing but a PID. group reports whether
// any process is still in group pgid.
func appTree(pgid int) (pids []int, group bool) {
	procs := allProcs()
	children := make(map[int][]int)
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p.pid)
	}
	state := make(map[int]procStat, len(procs))
	for _, p := range procs {
		state[p.pid] = p
	}
	seen := make(map[int]bool)
	var out []int
	var walk func(pid int)
	walk = func(pid int) {
		if seen[pid] {
			return
		}
		seen[pid] = true
		if st, ok := state[pid]; ok && st.state != 'Z' && st.state != 'X' {
			out = append(out, pid)
		}
		for _, c := range children[pid] {
			walk(c)
		}
	}
	self := os.Getpid()
	for _, c := range children[self] {
		walk(c)
	}
	for _, p := range procs {
		if pgid > 0 && p.pgrp == pgid && p.pid != self {
			group = true
			walk(p.pid)
		}
	}
	return out, group
}

// signalTree sends sig to process group pgid and to each of pids.
func signalTree(pgid int, pids []int, sig syscall.Signal) {
	if pgid > 0 {
		_ = syscall.Kill(-pgid, sig)
	}
	for _, p := range pids {
		_ = syscall.Kill(p, sig)
	}
}

// reapOrphans collects the exit status of zombies that are children of this
// process, except those for which owned reports true (an app's main process,
// whose status belongs to its own cmd.Wait). These are the app's daemonized
// descendants that were re-parented to the agent as subreaper.
func reapOrphans(owned func(pid int) bool) {
	self := os.Getpid()
	for _, p := range allProcs() {
		if p.ppid == self && !owned(p.pid) && p.state == 'Z' {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(p.pid, &ws, unix.WNOHANG, nil)
		}
	}
}

// waitGone waits until every process of pids has exited or timeout passes,
// and returns those still alive. It waits on pidfds, so it wakes as soon as
// the last one exits.
func waitGone(pids []int, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	var ws []pidfd
	for _, p := range pids {
		fd, err := unix.PidfdOpen(p, 0)
		if err != nil {
			continue // already gone
		}
		ws = append(ws, pidfd{p, fd})
	}
	defer func() {
		for _, w := range ws {
			unix.Close(w.fd)
		}
	}()
	for {
		// A zombie's pidfd is readable too: exited is what matters here.
		fds := make([]unix.PollFd, 0, len(ws))
		var alive []pidfd
		for _, w := range ws {
			if st, err := readStat(w.pid); err == nil && st.state != 'Z' && st.state != 'X' {
				alive = append(alive, w)
				fds = append(fds, unix.PollFd{Fd: int32(w.fd), Events: unix.POLLIN})
			}
		}
		if len(alive) == 0 {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return pidsOf(alive)
		}
		ms := int(left / time.Millisecond)
		if ms > 1000 {
			ms = 1000 // re-check now and then: stat is the truth, the poll only wakes us
		}
		if _, err := unix.Poll(fds, ms+1); err != nil && !errors.Is(err, unix.EINTR) {
			return pidsOf(alive)
		}
		ws = alive
	}
}

type pidfd struct{ pid, fd int }

func pidsOf(ws []pidfd) []int {
	out := make([]int, len(ws))
	for i, w := range ws {
		out[i] = w.pid
	}
	return out
}

// resetOOMScore sets pid's oom_score_adj back to 0: the agent's unit lowers
// the agent's own score, which its children inherit, and the kernel must pick
// the app, not the agent, when memory runs out.
func resetOOMScore(pid int) error {
	return os.WriteFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", []byte("0\n"), 0)
}

// signalName returns "SIGKILL" for syscall.SIGKILL.
func signalName(s syscall.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return n
	}
	return "signal " + strconv.Itoa(int(s))
}
