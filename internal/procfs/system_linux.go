package procfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// bootTime is read once: the kernel keeps it.
var bootTime = sync.OnceValues(func() (time.Time, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, fmt.Errorf("boot time: %w", err)
	}
	t, err := parseBootTime(b)
	if err != nil {
		return time.Time{}, fmt.Errorf("boot time: /proc/stat: %w", err)
	}
	return t, nil
})

// BootTime returns when the kernel booted (btime in /proc/stat), which
// Proc.Started needs to turn a process's start into a time.
func BootTime() (time.Time, error) { return bootTime() }

// OpenFiles returns how many file descriptors process pid has open, the
// entries of /proc/PID/fd; for the calling process, the one it opens to
// count them included.
func OpenFiles(pid int) (int, error) {
	if pid <= 0 || pid > maxPID {
		return 0, fmt.Errorf("open files of pid %d: %w", pid, os.ErrInvalid)
	}
	r := newReader()
	r.setPath(pid, 0, "fd")
	fd, err := r.open(unix.O_DIRECTORY)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	n := 0
	for {
		k, err := unix.Getdents(fd, r.buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, r.pathErr("getdents", err)
		}
		if k <= 0 {
			return n, nil
		}
		n += countDirents(r.buf[:k])
	}
}

// countDirents counts the linux_dirent64 records in b (see
// appendDirentIDs) but "." and "..".
func countDirents(b []byte) int {
	const reclenOff, nameOff = 16, 19
	n := 0
	for len(b) >= nameOff {
		reclen := int(binary.NativeEndian.Uint16(b[reclenOff:]))
		if reclen < nameOff || reclen > len(b) {
			break
		}
		name := b[nameOff:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if s := string(name); s != "." && s != ".." { // no allocation: compared only
			n++
		}
		b = b[reclen:]
	}
	return n
}
