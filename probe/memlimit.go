package probe

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/shirou/gopsutil/v3/common"
	"github.com/shirou/gopsutil/v3/mem"

	"agent/internal/procfs"
)

// cgroupV1Unlimited is where cgroup v1 limits start to mean "no limit": the
// kernel shows an unset memory.limit_in_bytes as the largest page-aligned
// int64 (9223372036854771712).
const cgroupV1Unlimited = 1 << 62

// AutoHeapMB returns the V8 heap cap for max_old_space_size = "auto": half
// of the memory the app can have, min(memTotal, cgroupLimit), in MiB. A
// cgroupLimit of 0 means no limit; 1 GiB gives 512.
func AutoHeapMB(memTotal, cgroupLimit uint64) int {
	avail := memTotal
	if cgroupLimit != 0 && (avail == 0 || cgroupLimit < avail) {
		avail = cgroupLimit
	}
	return int(avail / 2 >> 20)
}

// MemoryBudget returns the machine's memory (MemTotal) and the memory limit
// of the cgroup this process runs in, 0 when there is none, reading the
// files below root ("/" in production). MemTotal comes from gopsutil's
// mem.VirtualMemory (proc/meminfo). The limit is the lowest set on the
// cgroup or any of its ancestors: cgroup v1's
// sys/fs/cgroup/memory/<path>/memory.limit_in_bytes, or cgroup v2's
// sys/fs/cgroup/<path>/memory.max, where <path> comes from proc/self/cgroup;
// gopsutil has no cgroup limits, so that walk is this package's own.
// Missing cgroup files mean no limit; a missing MemTotal is an error.
func MemoryBudget(root string) (memTotal, cgroupLimit uint64, err error) {
	vm, err := virtualMemory(root)
	if err != nil {
		return 0, 0, fmt.Errorf("read memory size: %w", err)
	}
	cgroupLimit, err = readCgroupLimit(root)
	if err != nil {
		return 0, 0, err
	}
	return vm.Total, cgroupLimit, nil
}

// MemAvailable returns the memory the kernel estimates is available for
// starting new programs without swapping (MemAvailable in /proc/meminfo):
// what a reload's overlap of two app processes must fit in.
func MemAvailable() (uint64, error) {
	vm, err := virtualMemory("/")
	if err != nil {
		return 0, fmt.Errorf("read available memory: %w", err)
	}
	return vm.Available, nil
}

// virtualMemory reads root/proc/meminfo with gopsutil. gopsutil takes a
// missing or empty file for zeros; here that is an error.
func virtualMemory(root string) (*mem.VirtualMemoryStat, error) {
	procDir := filepath.Join(root, "proc")
	file := filepath.Join(procDir, "meminfo")
	if _, err := os.Stat(file); err != nil {
		return nil, err
	}
	ctx := context.WithValue(context.Background(), common.EnvKey, common.EnvMap{common.HostProcEnvKey: procDir})
	vm, err := mem.VirtualMemoryWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if vm.Total == 0 {
		return nil, fmt.Errorf("%s: no MemTotal", file)
	}
	return vm, nil
}

// readCgroupLimit finds this process's memory cgroup in proc/self/cgroup
// and returns its effective limit. A cgroup v1 memory line ("4:memory:/g")
// wins over the v2 line ("0::/g"): on hybrid systems the memory controller
// is on v1 and the v2 hierarchy has none.
func readCgroupLimit(root string) (uint64, error) {
	data, err := os.ReadFile(filepath.Join(root, "proc", "self", "cgroup"))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read memory cgroup: %w", err)
	}
	v1, v2, err := procfs.ParseCgroup(string(data))
	if err != nil {
		return 0, fmt.Errorf("read memory cgroup: %w", err)
	}
	switch {
	case v1 != "":
		return lowestLimit(filepath.Join(root, "sys", "fs", "cgroup", "memory"), v1, "memory.limit_in_bytes")
	case v2 != "":
		return lowestLimit(filepath.Join(root, "sys", "fs", "cgroup"), v2, "memory.max")
	}
	return 0, nil
}

// lowestLimit returns the lowest limit in file found in the cgroup at
// cgPath below mount, or in any of its ancestors; 0 when none is set. The
// walk up also covers containers, where the cgroup's own directory is the
// mount's root and the path in proc/self/cgroup does not exist below it.
func lowestLimit(mount, cgPath, file string) (uint64, error) {
	var lowest uint64
	p := path.Clean("/" + cgPath)
	for {
		limit, err := readLimit(filepath.Join(mount, filepath.FromSlash(p), file))
		if err != nil {
			return 0, err
		}
		if limit != 0 && (lowest == 0 || limit < lowest) {
			lowest = limit
		}
		if p == "/" {
			return lowest, nil
		}
		p = path.Dir(p)
	}
}

// readLimit reads one cgroup memory limit file: a byte count, or "max"
// (v2) or a huge value (v1) for no limit, which it returns as 0, as it
// does for a missing file.
func readLimit(file string) (uint64, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read memory cgroup limit: %w", err)
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read memory cgroup limit: %s: bad value %q", file, s)
	}
	if n >= cgroupV1Unlimited {
		return 0, nil
	}
	return n, nil
}
