package probe

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readCgroupTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "cgroup", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseProcCgroup(t *testing.T) {
	tests := []struct {
		file string
		want MemoryCgroup
	}{
		{"v1-hybrid-debian12.cgroup", MemoryCgroup{Path: "/process_api/3eb5a5261251a48fb8dc800574352e1f", Version: 1}},
		{"v1-ubuntu2004-unit.cgroup", MemoryCgroup{Path: "/system.slice/agent.service", Version: 1}},
		{"v1-combined-controllers.cgroup", MemoryCgroup{Path: "/docker/4f1c", Version: 1}},
		{"v2-al2023-unit.cgroup", MemoryCgroup{Path: "/system.slice/agent.service", Version: 2}},
		{"v2-namespace-root.cgroup", MemoryCgroup{Path: "/", Version: 2}},
		{"v2-colon-path.cgroup", MemoryCgroup{Path: "/system.slice/app:web.service", Version: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := ParseProcCgroup(readCgroupTestdata(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseProcCgroupErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "no memory controller line and no cgroup v2 line"},
		{"no memory", readCgroupTestdata(t, "v1-no-memory.cgroup"), "no memory controller line"},
		{"one field", "garbage\n", `cgroup line 1: want ID:CONTROLLERS:/PATH, got "garbage"`},
		{"relative path", "0::system.slice\n", "cgroup line 1: want"},
		{"bad id", "x:memory:/g\n", `cgroup line 1: bad hierarchy id "x"`},
		{"second line bad", "0::/\n4:memory\n", "cgroup line 2:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseProcCgroup(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestReadMemoryCgroupSelf(t *testing.T) {
	m, err := ReadMemoryCgroup("/", "self")
	if err != nil {
		t.Skipf("no /proc/self/cgroup here: %v", err)
	}
	if m.Version != 1 && m.Version != 2 || !strings.HasPrefix(m.Path, "/") {
		t.Errorf("own memory cgroup %+v", m)
	}
	if _, err := ReadMemoryCgroup(t.TempDir(), "self"); err == nil {
		t.Error("ReadMemoryCgroup of a missing file: no error")
	}
}

func TestMemoryCgroupContains(t *testing.T) {
	unit := MemoryCgroup{Path: "/system.slice/agent.service", Version: 2}
	tests := []struct {
		own   MemoryCgroup
		memcg string
		want  bool
	}{
		{unit, "/system.slice/agent.service", true},
		{unit, "/system.slice/agent.service/app", true},
		{unit, "/system.slice/agent.service/", true},
		{unit, "/system.slice/agent.service2", false},
		{unit, "/system.slice", false},
		{unit, "/", false},
		{unit, "", false},
		{MemoryCgroup{Path: "/", Version: 2}, "/system.slice/agent.service", false},
		{MemoryCgroup{Path: "/", Version: 2}, "/", false},
		{MemoryCgroup{}, "/x", false},
	}
	for _, tt := range tests {
		if got := tt.own.Contains(tt.memcg); got != tt.want {
			t.Errorf("%q.Contains(%q) = %v, want %v", tt.own.Path, tt.memcg, got, tt.want)
		}
	}
}

// TestOOMKillIsOurs decides kills read from real kernel lines: the
// summary and the kill of a worker the agent has not sampled yet, in the
// agent's unit, and kills elsewhere.
func TestOOMKillIsOurs(t *testing.T) {
	kill := func(lines ...string) OOMKill {
		t.Helper()
		var a oomAssembler
		for _, l := range lines {
			if k, ok := a.add(l); ok {
				return k
			}
		}
		t.Fatalf("no kill in %q", lines)
		return OOMKill{}
	}
	// As the kernel prints them on a cgroup v2 host for a worker of the app
	// in the agent's unit, and for a process of another unit.
	worker := kill(
		"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/system.slice/agent.service,task_memcg=/system.slice/agent.service,task=node,pid=4242,uid=1001",
		"Memory cgroup out of memory: Killed process 4242 (node) total-vm:1184976kB, anon-rss:464768kB, file-rss:33552kB, shmem-rss:0kB, UID:1001 pgtables:1580kB oom_score_adj:0",
	)
	other := kill(
		"oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/system.slice/postgres.service,task=postgres,pid=777,uid=113",
		"Out of memory: Killed process 777 (postgres) total-vm:984976kB, anon-rss:64768kB, file-rss:33552kB, shmem-rss:0kB, UID:113 pgtables:580kB oom_score_adj:0",
	)
	// Before Linux 4.19 there is no summary line: no task_memcg.
	old := kill("Memory cgroup out of memory: Kill process 4242 (node) score 900 or sacrifice child",
		"Killed process 4242 (node) total-vm:984976kB, anon-rss:64768kB, file-rss:33552kB, shmem-rss:0kB")

	unit := MemoryCgroup{Path: "/system.slice/agent.service", Version: 2}
	root := MemoryCgroup{Path: "/", Version: 2}
	appTree := func(pid int) bool { return pid == 4000 || pid == 4001 } // sampled before the worker forked
	hasWorker := func(pid int) bool { return pid == 4242 }
	tests := []struct {
		name string
		k    OOMKill
		own  MemoryCgroup
		pids func(int) bool
		want bool
	}{
		{"worker forked after the last sample, in the unit", worker, unit, appTree, true},
		{"worker in the unit, no tree known", worker, unit, nil, true},
		{"other unit", other, unit, appTree, false},
		{"root cgroup: the PID decides, not sampled", worker, root, appTree, false},
		{"root cgroup: the PID decides, sampled", worker, root, hasWorker, true},
		{"root cgroup, other process", other, root, hasWorker, false},
		{"no summary line: PID only", old, unit, hasWorker, true},
		{"no summary line, not sampled", old, unit, appTree, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := OOMKillIsOurs(tt.k, tt.own, tt.pids); got != tt.want {
				t.Errorf("OOMKillIsOurs(%+v, %q) = %v, want %v", tt.k, tt.own.Path, got, tt.want)
			}
		})
	}
}

func TestParseOOMKillCount(t *testing.T) {
	tests := []struct {
		in     string
		want   uint64
		wantOK bool
	}{
		{readCgroupTestdata(t, "v1-memory.oom_control"), 0, true},
		{readCgroupTestdata(t, "v2-sysfs/system.slice/agent.service/memory.events"), 2, true},
		{"low 0\nhigh 0\nmax 0\noom 0\noom_kill 7\n", 7, true}, // before Linux 5.17: no oom_group_kill
		{"oom_kill_disable 0\nunder_oom 0\n", 0, false},        // v1 before Linux 4.13
		{"oom_kill x\n", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := ParseOOMKillCount(tt.in)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("ParseOOMKillCount(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestMemoryCgroupOOMKills(t *testing.T) {
	td := filepath.Join("testdata", "cgroup")
	unit := "/system.slice/agent.service"
	tests := []struct {
		name    string
		sysfs   string
		m       MemoryCgroup
		want    uint64
		wantErr error
	}{
		{"v2 memory.events", "v2-sysfs", MemoryCgroup{unit, 2}, 2, nil},
		{"hybrid: v1 memory.oom_control", "hybrid-sysfs", MemoryCgroup{unit, 1}, 5, nil},
		{"v2 without the memory controller", "v2-sysfs-nomem", MemoryCgroup{unit, 2}, 0, ErrNoOOMKillCount},
		{"hybrid: memory on the unified hierarchy", "hybrid-sysfs", MemoryCgroup{unit, 2}, 0, ErrNoOOMKillCount},
		{"root cgroup", "v2-sysfs", MemoryCgroup{"/", 2}, 0, ErrNoOOMKillCount},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.m.OOMKills(filepath.Join(td, tt.sysfs))
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Errorf("OOMKills = %d, %v; want %d, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
	if got, want := (MemoryCgroup{unit, 2}).OOMKillsFile(filepath.Join(td, "hybrid-sysfs")), filepath.Join(td, "hybrid-sysfs", "unified", "system.slice", "agent.service", "memory.events"); got != want {
		t.Errorf("hybrid v2 file %s, want %s", got, want)
	}
}

func FuzzParseProcCgroup(f *testing.F) {
	for _, s := range []string{"0::/\n", "4:memory:/a:b\n0::/x\n", "1:name=systemd:/\n", "::\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseProcCgroup(s)
		if err == nil && !strings.HasPrefix(m.Path, "/") {
			t.Errorf("path %q without a leading slash", m.Path)
		}
		ParseOOMKillCount(s)
	})
}
