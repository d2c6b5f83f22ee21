package probe

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

func TestAutoHeapMB(t *testing.T) {
	tests := []struct {
		name              string
		memTotal, cgLimit uint64
		want              int
	}{
		{"1 GiB machine", 1 * gib, 0, 512},
		{"2 GiB machine, 768 MiB cgroup", 2 * gib, 768 * mib, 384},
		{"cgroup above the machine", 1 * gib, 4 * gib, 512},
		{"t3.micro as the kernel counts it", 981980 << 10, 0, 479},
		{"odd byte counts round down", 3*mib - 1, 0, 1},
		{"only a cgroup limit known", 0, 256 * mib, 128},
		{"nothing known", 0, 0, 0},
		{"large host", 64 * gib, 0, 32768},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := AutoHeapMB(tt.memTotal, tt.cgLimit); got != tt.want {
				t.Errorf("AutoHeapMB(%d, %d) = %d, want %d", tt.memTotal, tt.cgLimit, got, tt.want)
			}
		})
	}
}

func TestMemoryBudget(t *testing.T) {
	tests := []struct {
		tree              string
		memTotal, cgLimit uint64
		heapMB            int
	}{
		{"v1-limited", 2 * gib, 768 * mib, 384},
		{"v1-unlimited", 24684084 << 10, 0, 12052},
		{"v1-nested", 4 * gib, 512 * mib, 256},
		{"v1-container", 8 * gib, 256 * mib, 128},
		{"v2-limited", 1 * gib, 512 * mib, 256},
		{"v2-max", 1 * gib, 0, 512},
		{"no-cgroup", 1 * gib, 0, 512},
	}
	for _, tt := range tests {
		t.Run(tt.tree, func(t *testing.T) {
			memTotal, limit, err := MemoryBudget(filepath.Join("testdata", "memlimit", tt.tree))
			if err != nil {
				t.Fatal(err)
			}
			if memTotal != tt.memTotal || limit != tt.cgLimit {
				t.Errorf("MemoryBudget = %d, %d; want %d, %d", memTotal, limit, tt.memTotal, tt.cgLimit)
			}
			if got := AutoHeapMB(memTotal, limit); got != tt.heapMB {
				t.Errorf("AutoHeapMB = %d, want %d", got, tt.heapMB)
			}
		})
	}
}

func TestMemoryBudgetErrors(t *testing.T) {
	_, _, err := MemoryBudget(filepath.Join("testdata", "memlimit", "no-meminfo"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("without meminfo: err = %v, want one wrapping fs.ErrNotExist", err)
	}
	_, _, err = MemoryBudget(filepath.Join("testdata", "memlimit", "v2-bad"))
	if err == nil {
		t.Error("memory.max holding garbage: no error")
	}

	// A cgroup file that exists but cannot be read is an error, not "no limit".
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"proc/meminfo":                  "MemTotal: 1024 kB\n",
		"proc/self/cgroup":              "0::/app\n",
		"sys/fs/cgroup/app/memory.max/": "",
	})
	if _, _, err := MemoryBudget(root); err == nil {
		t.Error("memory.max a directory: no error")
	}
}

func TestMemoryBudgetBadMeminfo(t *testing.T) {
	for name, meminfo := range map[string]string{
		"no MemTotal":   "MemFree: 1024 kB\n",
		"not a number":  "MemTotal: lots kB\n",
		"overflow":      "MemTotal: 99999999999999999999 kB\n",
		"empty":         "",
		"negative size": "MemTotal: -1 kB\n",
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, map[string]string{"proc/meminfo": meminfo})
			if m, l, err := MemoryBudget(root); err == nil {
				t.Errorf("MemoryBudget = %d, %d, nil; want an error", m, l)
			}
		})
	}
}

func TestMemAvailableFromMeminfo(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{"proc/meminfo": "MemTotal:        1000000 kB\nMemFree:          200000 kB\nMemAvailable:     600000 kB\n"})
	vm, err := virtualMemory(root)
	if err != nil {
		t.Fatal(err)
	}
	if vm.Total != 1000000<<10 || vm.Available != 600000<<10 {
		t.Errorf("total %d, available %d; want %d, %d", vm.Total, vm.Available, 1000000<<10, 600000<<10)
	}
}

func TestMemAvailableHere(t *testing.T) {
	avail, err := MemAvailable()
	if err != nil {
		t.Fatal(err)
	}
	total, _, err := MemoryBudget("/")
	if err != nil {
		t.Fatal(err)
	}
	if avail == 0 || avail > total {
		t.Errorf("MemAvailable = %d with MemTotal %d", avail, total)
	}
}

func TestProcessRSS(t *testing.T) {
	rss, err := ProcessRSS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if rss < 1*mib || rss > 4*gib {
		t.Errorf("ProcessRSS(self) = %d, implausible", rss)
	}
	for _, pid := range []int{0, -1, 1 << 29} {
		if _, err := ProcessRSS(pid); err == nil {
			t.Errorf("ProcessRSS(%d): no error", pid)
		}
	}
}

// TestMemoryBudgetHere reads this machine's real files.
func TestMemoryBudgetHere(t *testing.T) {
	memTotal, limit, err := MemoryBudget("/")
	if err != nil {
		t.Fatal(err)
	}
	if memTotal < 64*mib {
		t.Errorf("MemTotal = %d, implausibly small", memTotal)
	}
	t.Logf("MemTotal %d MiB, cgroup limit %d MiB, auto heap %d MiB", memTotal>>20, limit>>20, AutoHeapMB(memTotal, limit))
}

// writeTree creates files (or, for names ending in "/", directories) below root.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if name[len(name)-1] == '/' {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
