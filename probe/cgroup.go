package probe

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"agent/internal/procfs"
)

// MemoryCgroup is the memory cgroup a process is in, named as the kernel
// names it in an OOM kill's task_memcg: "/system.slice/agent.service".
type MemoryCgroup struct {
	Path string
	// Version is 1 when the memory controller is on a cgroup v1 hierarchy
	// (older hosts, hybrid setups), 2 on the unified hierarchy (Amazon
	// Linux 2023, Ubuntu 22.04 and later).
	Version int
}

// IsRoot reports whether the cgroup is the root of its hierarchy, as it is
// for a process outside systemd or in a container with its own cgroup
// namespace. Every process is below the root, so it matches no kill.
func (m MemoryCgroup) IsRoot() bool { return m.Path == "" || m.Path == "/" }

// Contains reports whether the memory cgroup memcg (an OOM kill's
// task_memcg) is m or below it. It is false when m is the root, and for a
// memcg that merely shares a prefix ("/a.service2" is not below
// "/a.service").
func (m MemoryCgroup) Contains(memcg string) bool {
	if m.IsRoot() || memcg == "" {
		return false
	}
	own := path.Clean(m.Path)
	memcg = path.Clean(memcg)
	return memcg == own || strings.HasPrefix(memcg, own+"/")
}

// ParseProcCgroup finds the memory cgroup in the content of a
// /proc/PID/cgroup file, parsed by procfs.ParseCgroup: a cgroup v1 line that
// lists the memory controller ("4:memory:/g", "7:cpu,memory:/g") wins; on a
// hybrid host the unified hierarchy's "0::/g" line is there too but has no
// memory controller. Without a v1 memory line the "0::" line is the memory
// cgroup (cgroup v2).
func ParseProcCgroup(content string) (MemoryCgroup, error) {
	v1, v2, err := procfs.ParseCgroup(content)
	switch {
	case err != nil:
		return MemoryCgroup{}, err
	case v1 != "":
		return MemoryCgroup{Path: v1, Version: 1}, nil
	case v2 != "":
		return MemoryCgroup{Path: v2, Version: 2}, nil
	}
	return MemoryCgroup{}, errors.New("cgroup: no memory controller line and no cgroup v2 line")
}

// ReadMemoryCgroup reads the memory cgroup of process pid ("self" for this
// one) from root/proc/<pid>/cgroup; root is "/" in production.
func ReadMemoryCgroup(root, pid string) (MemoryCgroup, error) {
	file := filepath.Join(root, "proc", pid, "cgroup")
	data, err := os.ReadFile(file)
	if err != nil {
		return MemoryCgroup{}, fmt.Errorf("read memory cgroup: %w", err)
	}
	m, err := ParseProcCgroup(string(data))
	if err != nil {
		return MemoryCgroup{}, fmt.Errorf("read memory cgroup: %s: %w", file, err)
	}
	return m, nil
}

// OOMKillIsOurs reports whether the kernel's OOM kill k was of the app.
// It is when the victim's PID is one pids knows (the app's tree as last
// sampled), or when the victim's memory cgroup (task_memcg, from the
// kernel's summary line) is own or below it: the agent and the app share a
// systemd unit's cgroup, so a worker forked a moment before the kill, too
// new for any sample, is still recognised. With own the root cgroup (no
// unit, or a cgroup namespace), the cgroup says nothing and only the PID
// counts. pids may be nil.
func OOMKillIsOurs(k OOMKill, own MemoryCgroup, pids func(pid int) bool) bool {
	if pids != nil && pids(k.PID) {
		return true
	}
	return own.Contains(k.TaskMemcg)
}

// ParseOOMKillCount returns the oom_kill counter in the content of a
// cgroup v2 memory.events file ("oom_kill 3" among "low", "high", "max",
// "oom", "oom_group_kill" lines) or a cgroup v1 memory.oom_control file
// (Linux 4.13 and later), and reports whether the line was there.
func ParseOOMKillCount(content string) (uint64, bool) {
	for line := range strings.SplitSeq(content, "\n") {
		v, ok := strings.CutPrefix(line, "oom_kill ")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// OOMKillsFile returns the file that counts the kernel's OOM kills in the
// memory cgroup, below the cgroup file system mounted at sysfs
// ("/sys/fs/cgroup"): v1 memory/<path>/memory.oom_control; v2
// <path>/memory.events, or unified/<path>/memory.events on a hybrid host
// whose unified hierarchy is mounted there. The v2 counter covers the
// cgroup and every cgroup below it; the v1 one only the cgroup itself.
func (m MemoryCgroup) OOMKillsFile(sysfs string) string {
	p := filepath.FromSlash(path.Clean("/" + m.Path))
	if m.Version == 1 {
		return filepath.Join(sysfs, "memory", p, "memory.oom_control")
	}
	if _, err := os.Stat(filepath.Join(sysfs, "cgroup.controllers")); err != nil {
		if _, err := os.Stat(filepath.Join(sysfs, "unified", "cgroup.controllers")); err == nil {
			return filepath.Join(sysfs, "unified", p, "memory.events")
		}
	}
	return filepath.Join(sysfs, p, "memory.events")
}

// ErrNoOOMKillCount is returned by OOMKills when the cgroup keeps no
// oom_kill counter: the root cgroup, a v2 cgroup without the memory
// controller enabled, or a kernel before 4.13.
var ErrNoOOMKillCount = errors.New("no oom_kill counter")

// OOMKills reads how many processes the kernel's OOM killer has killed in
// the memory cgroup (v2: and below it) since the cgroup was created. A counter
// that goes up between an app process's start and its exit by SIGKILL says
// the kernel killed one of its processes, even when the kernel log cannot be
// read.
func (m MemoryCgroup) OOMKills(sysfs string) (uint64, error) {
	if m.IsRoot() {
		return 0, fmt.Errorf("oom kills of cgroup %q: %w", m.Path, ErrNoOOMKillCount)
	}
	file := m.OOMKillsFile(sysfs)
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("oom kills: %s: %w", file, ErrNoOOMKillCount)
	}
	if err != nil {
		return 0, fmt.Errorf("oom kills: %w", err)
	}
	n, ok := ParseOOMKillCount(string(data))
	if !ok {
		return 0, fmt.Errorf("oom kills: %s: %w", file, ErrNoOOMKillCount)
	}
	return n, nil
}
