package probe

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
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
// files below root ("/" in production). The limit is the lowest set on the
// cgroup or any of its ancestors: cgroup v1's
// sys/fs/cgroup/memory/<path>/memory.limit_in_bytes, or cgroup v2's
// sys/fs/cgroup/<path>/memory.max, where <path> comes from proc/self/cgroup.
// Missing cgroup files mean no limit; a missing MemTotal is an error.
func MemoryBudget(root string) (memTotal, cgroupLimit uint64, err error) {
	memTotal, err = readMemTotal(filepath.Join(root, "proc", "meminfo"))
	if err != nil {
		return 0, 0, err
	}
	cgroupLimit, err = readCgroupLimit(root)
	if err != nil {
		return 0, 0, err
	}
	return memTotal, cgroupLimit, nil
}

func readMemTotal(file string) (uint64, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("read memory size: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		kb, ok := strings.CutSuffix(strings.TrimSpace(rest), " kB")
		n, err := strconv.ParseUint(kb, 10, 64)
		if !ok || err != nil || n > math.MaxUint64>>10 {
			return 0, fmt.Errorf("read memory size: %s: bad MemTotal %q", file, sc.Text())
		}
		return n << 10, nil
	}
	return 0, fmt.Errorf("read memory size: %s: no MemTotal", file)
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
	var v1, v2 string
	var haveV1, haveV2 bool
	for _, line := range strings.Split(string(data), "\n") {
		id, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		controllers, cgPath, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		switch {
		case id == "0" && controllers == "":
			v2, haveV2 = cgPath, true
		case hasController(controllers, "memory"):
			v1, haveV1 = cgPath, true
		}
	}
	switch {
	case haveV1:
		return lowestLimit(filepath.Join(root, "sys", "fs", "cgroup", "memory"), v1, "memory.limit_in_bytes")
	case haveV2:
		return lowestLimit(filepath.Join(root, "sys", "fs", "cgroup"), v2, "memory.max")
	}
	return 0, nil
}

// hasController reports whether name is in the comma-separated list of a
// proc/self/cgroup line.
func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
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
