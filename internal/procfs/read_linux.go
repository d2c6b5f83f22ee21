package procfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

var pageSize = uint64(os.Getpagesize())

// reader reads /proc files into buffers it reuses, with plain system calls:
// an os.File costs allocations per open, which add up at one sample of a
// whole tree every second. It is not safe for concurrent use.
type reader struct {
	buf  []byte
	path []byte // the path of the last open, NUL-terminated for the kernel
}

func newReader() *reader {
	return &reader{buf: make([]byte, 4096), path: make([]byte, 0, 64)}
}

// setPath makes r.path "/proc/PID/name" or, with tid > 0,
// "/proc/PID/task/TID/name".
func (r *reader) setPath(pid, tid int, name string) {
	b := append(r.path[:0], "/proc/"...)
	b = strconv.AppendInt(b, int64(pid), 10)
	if tid > 0 {
		b = append(b, "/task/"...)
		b = strconv.AppendInt(b, int64(tid), 10)
	}
	if name != "" {
		b = append(b, '/')
		b = append(b, name...)
	}
	r.path = append(b, 0)
}

// pathErr wraps err with the path last set.
func (r *reader) pathErr(op string, err error) error {
	return &os.PathError{Op: op, Path: string(r.path[:len(r.path)-1]), Err: err}
}

// open opens r.path.
func (r *reader) open(flags int) (int, error) {
	dirfd := unix.AT_FDCWD
	for {
		fd, _, errno := unix.Syscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(&r.path[0])),
			uintptr(flags|unix.O_RDONLY|unix.O_CLOEXEC), 0, 0, 0)
		switch errno {
		case 0:
			return int(fd), nil
		case unix.EINTR:
			continue
		}
		return -1, r.pathErr("open", errno)
	}
}

// read reads the whole file at r.path into r.buf, growing it as needed,
// and returns the content.
func (r *reader) read() ([]byte, error) {
	fd, err := r.open(0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n := 0
	for {
		if n == len(r.buf) {
			r.buf = append(r.buf, make([]byte, len(r.buf))...)
		}
		k, err := unix.Read(fd, r.buf[n:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return nil, r.pathErr("read", err)
		case k == 0:
			return r.buf[:n], nil
		}
		n += k
	}
}

// proc reads /proc/PID/stat, and the memory from /proc/PID/statm: recent
// kernels count the resident memory exactly there (and in VmRSS), while the
// rss field of stat may lag by a few hundred kilobytes.
func (r *reader) proc(pid int) (Proc, error) {
	p, err := r.stat(pid)
	if err != nil {
		return Proc{}, err
	}
	r.setPath(pid, 0, "statm")
	b, err := r.read()
	if err != nil {
		return Proc{}, err
	}
	p.VSize, p.RSS, err = parseStatm(b, pageSize)
	if err != nil {
		return Proc{}, fmt.Errorf("/proc/%d/statm: %w", pid, err)
	}
	return p, nil
}

// stat reads /proc/PID/stat.
func (r *reader) stat(pid int) (Proc, error) {
	r.setPath(pid, 0, "stat")
	b, err := r.read()
	if err != nil {
		return Proc{}, err
	}
	p, err := parseStat(b, pageSize)
	if err != nil {
		return Proc{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return p, nil
}

// children appends the children of every thread of pid to dst: a child
// belongs to the thread that forked it. threads is the process's thread
// count from its stat, 0 if unknown: with one thread, its task directory
// need not be listed.
func (r *reader) children(dst []int, pid, threads int) ([]int, error) {
	if threads == 1 {
		return r.taskChildren(dst, pid, pid)
	}
	var tidBuf [64]int
	tids, err := r.tasks(pid, tidBuf[:0])
	if err != nil {
		return dst, err
	}
	for _, tid := range tids {
		dst, err = r.taskChildren(dst, pid, tid)
		if err != nil && !Vanished(err) { // a thread that ended is fine
			return dst, err
		}
	}
	return dst, nil
}

func (r *reader) taskChildren(dst []int, pid, tid int) ([]int, error) {
	r.setPath(pid, tid, "children")
	b, err := r.read()
	if err != nil {
		return dst, err
	}
	return parseChildren(dst, b)
}

// tasks appends the thread IDs of pid, the entries of /proc/PID/task, to dst.
func (r *reader) tasks(pid int, dst []int) ([]int, error) {
	r.setPath(pid, 0, "task")
	fd, err := r.open(unix.O_DIRECTORY)
	if err != nil {
		return dst, err
	}
	defer unix.Close(fd)
	for {
		n, err := unix.Getdents(fd, r.buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return dst, r.pathErr("getdents", err)
		}
		if n <= 0 {
			return dst, nil
		}
		dst = appendDirentIDs(dst, r.buf[:n])
	}
}

// appendDirentIDs appends the names of the linux_dirent64 records in b that
// are process or thread IDs. A record is d_ino (8 bytes), d_off (8),
// d_reclen (2), d_type (1), then the NUL-terminated name; getdents64 is the
// one way to list a directory without an allocation per name.
func appendDirentIDs(dst []int, b []byte) []int {
	const reclenOff, nameOff = 16, 19
	for len(b) >= nameOff {
		reclen := int(binary.NativeEndian.Uint16(b[reclenOff:]))
		if reclen < nameOff || reclen > len(b) {
			break
		}
		name := b[nameOff:reclen]
		for i, c := range name {
			if c == 0 {
				name = name[:i]
				break
			}
		}
		if id, ok := parseUint(name); ok && id > 0 && id <= maxPID {
			dst = append(dst, int(id))
		}
		b = b[reclen:]
	}
	return dst
}

// Vanished reports whether err means that the process (or thread) it is
// about is gone.
func Vanished(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH)
}
