package probe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// TreeSample is the resident memory of a process tree at one moment.
type TreeSample struct {
	RSS  uint64 // bytes, summed over PIDs
	PIDs []int  // the roots still alive first, then their descendants
}

// SampleTree measures the given processes and all their descendants
// (children, children of children, ...): the sum of their resident set
// sizes, as the kernel counts them in /proc/PID/statm (VmRSS). Processes that
// vanish while it looks are skipped; when the roots are gone it returns an
// empty sample. It runs every second, so it reads /proc directly: the
// children of each thread from /proc/PID/task/TID/children, or, on kernels
// built without that file, the parent of every process from one pass over
// /proc.
//
// Descendants that escaped the tree (re-parented after their parent died)
// are no longer found from the roots.
func SampleTree(roots ...int) (TreeSample, error) {
	if haveChildrenFiles() {
		return sampleTree(roots, childrenFromTasks)
	}
	return sampleTree(roots, newParentScan().children)
}

var (
	childrenFilesOnce sync.Once
	childrenFilesOK   bool
)

// haveChildrenFiles reports whether the kernel has /proc/PID/task/TID/children
// (CONFIG_PROC_CHILDREN).
func haveChildrenFiles() bool {
	childrenFilesOnce.Do(func() {
		pid := os.Getpid()
		_, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		childrenFilesOK = err == nil
	})
	return childrenFilesOK
}

var pageSize = uint64(os.Getpagesize())

// childrenFunc appends the PIDs of pid's children to dst.
type childrenFunc func(dst []int, pid int, buf []byte) ([]int, error)

func sampleTree(roots []int, children childrenFunc) (TreeSample, error) {
	buf := make([]byte, 4096)
	var s TreeSample
	var firstErr error
	keep := func(err error) {
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("sample process tree: %w", err)
		}
	}
	queue := make([]int, 0, 16)
	for _, pid := range roots {
		if pid > 0 && !containsPID(queue, pid) {
			queue = append(queue, pid)
		}
	}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if containsPID(s.PIDs, pid) {
			continue
		}
		rss, err := statmRSS(pid, buf)
		if err != nil {
			if !vanished(err) {
				keep(err)
			}
			continue
		}
		s.RSS += rss
		s.PIDs = append(s.PIDs, pid)
		queue, err = children(queue, pid, buf)
		if err != nil && !vanished(err) {
			keep(err)
		}
	}
	return s, firstErr
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

// vanished reports whether err means the process is gone.
func vanished(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH)
}

// statmRSS returns the resident set size of pid from /proc/PID/statm, whose
// second field is the resident pages.
func statmRSS(pid int, buf []byte) (uint64, error) {
	n, err := readProcFile(procPath(buf, pid, "statm"), buf)
	if err != nil {
		return 0, err
	}
	fields := bytes.Fields(buf[:n])
	if len(fields) < 2 {
		return 0, fmt.Errorf("/proc/%d/statm: unexpected %q", pid, buf[:n])
	}
	pages, ok := parseUint(fields[1])
	if !ok {
		return 0, fmt.Errorf("/proc/%d/statm: unexpected %q", pid, buf[:n])
	}
	return pages * pageSize, nil
}

// childrenFromTasks appends the children of every thread of pid: a child
// belongs to the thread that forked it.
func childrenFromTasks(dst []int, pid int, buf []byte) ([]int, error) {
	var tids [64]int
	tasks, err := listPIDDir(procPath(buf, pid, "task"), tids[:0], buf)
	if err != nil {
		return dst, err
	}
	for _, tid := range tasks {
		n, err := readProcFile(taskChildrenPath(buf, pid, tid), buf)
		if err != nil {
			if vanished(err) {
				continue // the thread ended
			}
			return dst, err
		}
		for _, f := range bytes.Fields(buf[:n]) {
			if c, ok := parseUint(f); ok && c > 0 && c <= 1<<31 {
				dst = append(dst, int(c))
			}
		}
	}
	return dst, nil
}

// parentScan is the parent of every process, read in one pass over /proc.
type parentScan struct {
	procs []procParent
	err   error
}

type procParent struct{ pid, ppid int }

func newParentScan() *parentScan {
	buf := make([]byte, 4096)
	pids, err := listPIDDir("/proc", make([]int, 0, 256), buf)
	if err != nil {
		return &parentScan{err: err}
	}
	s := &parentScan{procs: make([]procParent, 0, len(pids))}
	for _, pid := range pids {
		n, err := readProcFile(procPath(buf, pid, "stat"), buf)
		if err != nil {
			continue // gone, or unreadable: not in anyone's tree
		}
		if ppid, ok := statPPID(buf[:n]); ok {
			s.procs = append(s.procs, procParent{pid, ppid})
		}
	}
	return s
}

func (s *parentScan) children(dst []int, pid int, _ []byte) ([]int, error) {
	if s.err != nil {
		return dst, s.err
	}
	for _, p := range s.procs {
		if p.ppid == pid {
			dst = append(dst, p.pid)
		}
	}
	return dst, nil
}

// statPPID returns the parent PID from the contents of /proc/PID/stat,
// "pid (comm) state ppid ...", where comm may hold spaces and parentheses.
func statPPID(stat []byte) (int, bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	fields := bytes.Fields(stat[i+1:])
	if len(fields) < 2 {
		return 0, false
	}
	ppid, ok := parseUint(fields[1])
	return int(ppid), ok && ppid <= 1<<31
}

// procPath returns "/proc/PID/name", built in buf to spare an allocation.
func procPath(buf []byte, pid int, name string) string {
	b := append(buf[:0], "/proc/"...)
	b = strconv.AppendInt(b, int64(pid), 10)
	b = append(b, '/')
	b = append(b, name...)
	return string(b)
}

// taskChildrenPath returns "/proc/PID/task/TID/children", built in buf.
func taskChildrenPath(buf []byte, pid, tid int) string {
	b := append(buf[:0], "/proc/"...)
	b = strconv.AppendInt(b, int64(pid), 10)
	b = append(b, "/task/"...)
	b = strconv.AppendInt(b, int64(tid), 10)
	b = append(b, "/children"...)
	return string(b)
}

// readProcFile reads the small file at path into buf with plain system
// calls: an os.File costs allocations and a poller registration attempt per
// open, which add up at one sample a second over a whole tree.
func readProcFile(path string, buf []byte) (int, error) {
	fd, err := openRetry(path, syscall.O_RDONLY|syscall.O_CLOEXEC)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	total := 0
	for total < len(buf) {
		n, err := syscall.Read(fd, buf[total:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			break
		}
		total += n
	}
	return total, nil
}

func openRetry(path string, flags int) (int, error) {
	for {
		fd, err := syscall.Open(path, flags, 0)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// listPIDDir appends the numeric entries of the directory at path (/proc or
// /proc/PID/task) to dst, reading the directory with getdents into buf.
func listPIDDir(path string, dst []int, buf []byte) ([]int, error) {
	fd, err := openRetry(path, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC)
	if err != nil {
		return dst, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	for {
		n, err := syscall.ReadDirent(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return dst, &os.PathError{Op: "readdirent", Path: path, Err: err}
		}
		if n <= 0 {
			return dst, nil
		}
		dst = appendDirentPIDs(dst, buf[:n])
	}
}

// appendDirentPIDs appends the names of the linux_dirent64 records in b
// that are process or thread IDs. A record is d_ino (8 bytes), d_off (8),
// d_reclen (2), d_type (1), then the NUL-terminated name.
func appendDirentPIDs(dst []int, b []byte) []int {
	const reclenOff, nameOff = 16, 19
	for len(b) >= nameOff {
		reclen := int(binary.NativeEndian.Uint16(b[reclenOff:]))
		if reclen < nameOff || reclen > len(b) {
			break
		}
		name := b[nameOff:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if id, ok := parseUint(name); ok && id > 0 && id <= 1<<31 {
			dst = append(dst, int(id))
		}
		b = b[reclen:]
	}
	return dst
}

// SampleDescendants samples the descendants of pid, without pid itself. The
// agent samples its own descendants: its app and, as child subreaper, the
// app's orphaned daemons.
func SampleDescendants(pid int) (TreeSample, error) {
	buf := make([]byte, 4096)
	children := childrenFromTasks
	if !haveChildrenFiles() {
		children = newParentScan().children
	}
	roots, err := children(nil, pid, buf)
	if err != nil && !vanished(err) {
		return TreeSample{}, fmt.Errorf("sample process tree: %w", err)
	}
	return sampleTree(roots, children)
}
