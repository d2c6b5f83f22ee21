package probe

import (
	"fmt"
	"time"

	"agent/internal/procfs"
)

// TreeSample is the resident memory of a process tree at one moment.
type TreeSample struct {
	RSS  uint64        // bytes, summed over PIDs
	CPU  time.Duration // user and system time so far, summed over PIDs
	PIDs []int         // the roots still alive first (each with its descendants, breadth first)
}

// SampleTree measures the given processes and all their descendants
// (children, children of children, ...): the sum of their resident set
// sizes, as the kernel counts them (VmRSS). Each process counts once;
// processes that vanish while it looks are skipped; when the roots are gone
// it returns an empty sample. The tree comes from procfs.Tree: the
// children files of every thread.
//
// Descendants that escaped the tree (re-parented after their parent died)
// are no longer found from the roots.
func SampleTree(roots ...int) (TreeSample, error) {
	var s TreeSample
	for _, root := range roots {
		if root <= 0 || containsPID(s.PIDs, root) {
			continue
		}
		procs, err := procfs.Tree(root)
		if err != nil {
			return s, fmt.Errorf("sample process tree: %w", err)
		}
		s.add(procs)
	}
	return s, nil
}

// SampleDescendants samples the descendants of pid, without pid itself. The
// agent samples its own descendants: its app and, as child subreaper, the
// app's orphaned daemons.
//
// The processes in except are left out with their subtrees: during a
// reload, the other app process's tree.
func SampleDescendants(pid int, except ...int) (TreeSample, error) {
	procs, err := procfs.Descendants(pid, except...)
	if err != nil {
		return TreeSample{}, fmt.Errorf("sample process tree: %w", err)
	}
	var s TreeSample
	s.add(procs)
	return s, nil
}

// ProcessRSS returns the resident memory of process pid in bytes (VmRSS,
// from /proc/PID/statm as for the app's tree): the agent's own figure in
// status.
func ProcessRSS(pid int) (uint64, error) {
	p, err := procfs.Stat(pid)
	if err != nil {
		return 0, fmt.Errorf("rss of pid %d: %w", pid, err)
	}
	return p.RSS, nil
}

func (s *TreeSample) add(procs []procfs.Proc) {
	if s.PIDs == nil {
		s.PIDs = make([]int, 0, len(procs))
	}
	for _, p := range procs {
		if !containsPID(s.PIDs, p.PID) {
			s.RSS += p.RSS
			s.CPU += p.CPU
			s.PIDs = append(s.PIDs, p.PID)
		}
	}
}

// containsPID reports whether pid is in pids. Trees are small, so a scan
// beats a map.
func containsPID(pids []int, pid int) bool {
	for _, p := range pids {
		if p == pid {
			return true
		}
	}
	return false
}
