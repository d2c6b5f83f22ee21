package procfs

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
)

// ErrNoChildrenFiles is returned by the tree walks on a kernel built
// without CONFIG_PROC_CHILDREN (no /proc/PID/task/TID/children). Debian,
// Ubuntu, Amazon Linux and Fedora kernels have it.
var ErrNoChildrenFiles = errors.New("kernel has no /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN)")

var haveChildrenFiles = sync.OnceValue(func() bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d/children", os.Getpid(), os.Getpid()))
	return err == nil
})

// Stat reads /proc/PID/stat (and the resident and virtual memory from
// /proc/PID/statm). An error for a process that is gone satisfies Vanished.
func Stat(pid int) (Proc, error) {
	if pid <= 0 || pid > maxPID {
		return Proc{}, fmt.Errorf("stat of pid %d: %w", pid, os.ErrInvalid)
	}
	return newReader().proc(pid)
}

// Tree returns root and its descendants (children, their children, ...),
// root first and the others breadth first; zombies are included (see
// Proc.Zombie). Each process is listed once. A process that vanishes while
// Tree looks is left out with its descendants; when root is gone Tree
// returns nothing and no error.
//
// A descendant whose parent died before Tree reached it has been
// re-parented (to a child subreaper, or to PID 1) and is found only below
// its new parent.
func Tree(root int) ([]Proc, error) {
	if !haveChildrenFiles() {
		return nil, ErrNoChildrenFiles
	}
	r := newReader()
	p, err := r.proc(root)
	if err != nil {
		if Vanished(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("process tree of %d: %w", root, err)
	}
	return r.walk([]Proc{p}, 0, nil)
}

// Descendants returns the descendants of pid, as Tree does, without pid
// itself nor the processes in except with their subtrees. The agent, the child subreaper of its app, finds the app's whole
// tree, escaped daemons included, as its own descendants.
func Descendants(pid int, except ...int) ([]Proc, error) {
	if !haveChildrenFiles() {
		return nil, ErrNoChildrenFiles
	}
	var visit func(_, c *Proc) bool
	if len(except) > 0 {
		visit = func(_, c *Proc) bool { return !slices.Contains(except, c.PID) }
	}
	// pid's own stat is not needed: without its thread count, its task
	// directory is listed, and a pid that is gone has none.
	procs, err := newReader().walk([]Proc{{PID: pid}}, 0, visit)
	if len(procs) > 0 {
		procs = procs[1:]
	}
	return procs, err
}

// Children returns the children of pid, zombies included, from the
// children files of its threads. It reads each child's stat but not its
// memory.
func Children(pid int) ([]Proc, error) {
	if !haveChildrenFiles() {
		return nil, ErrNoChildrenFiles
	}
	r := newReader()
	kids, err := r.children(nil, pid, 0)
	if err != nil && !Vanished(err) {
		return nil, fmt.Errorf("children of %d: %w", pid, err)
	}
	procs := make([]Proc, 0, len(kids))
	for _, k := range kids {
		c, err := r.stat(k)
		if err != nil {
			if Vanished(err) {
				continue
			}
			return procs, fmt.Errorf("children of %d: %w", pid, err)
		}
		if !contains(procs, c.PID) {
			procs = append(procs, c)
		}
	}
	return procs, nil
}

// walk appends the descendants of procs[from:] to procs, breadth first.
// With visit set, each child found is passed to it with its parent and
// kept only if visit returns true; visit may change it (an opened pidfd
// re-reads the stat).
func (r *reader) walk(procs []Proc, from int, visit func(parent, child *Proc) bool) ([]Proc, error) {
	var firstErr error
	var kids []int
	for i := from; i < len(procs); i++ {
		parent := procs[i]
		if parent.Zombie() {
			continue // its children went to a reaper
		}
		var err error
		kids, err = r.children(kids[:0], parent.PID, parent.Threads)
		if err != nil && !Vanished(err) && firstErr == nil {
			firstErr = fmt.Errorf("process tree: %w", err)
		}
		for _, pid := range kids {
			if contains(procs, pid) {
				continue
			}
			c, err := r.proc(pid)
			if err != nil {
				if !Vanished(err) && firstErr == nil {
					firstErr = fmt.Errorf("process tree: %w", err)
				}
				continue
			}
			if visit != nil && !visit(&parent, &c) {
				continue
			}
			procs = append(procs, c)
		}
	}
	return procs, firstErr
}

// contains reports whether pid is in procs. Trees are small: a scan beats
// a map.
func contains(procs []Proc, pid int) bool {
	for i := range procs {
		if procs[i].PID == pid {
			return true
		}
	}
	return false
}

// Cgroup returns the memory cgroup of pid from /proc/PID/cgroup (0 for
// this process: /proc/self/cgroup): its path on the cgroup v1 memory
// hierarchy and its path on the unified (v2) hierarchy, each "" when the
// process has none. On a hybrid host both are set and the memory
// controller is on v1.
func Cgroup(pid int) (v1Memory, v2 string, err error) {
	file := "/proc/self/cgroup"
	if pid != 0 {
		file = fmt.Sprintf("/proc/%d/cgroup", pid)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", "", fmt.Errorf("cgroup: %w", err)
	}
	v1Memory, v2, err = ParseCgroup(string(data))
	if err != nil {
		return "", "", fmt.Errorf("cgroup: %s: %w", file, err)
	}
	return v1Memory, v2, nil
}
