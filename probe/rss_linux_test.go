package probe

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"agent/internal/testkit"
)

// startPIDs starts argv in its own process group, reads n PIDs the processes
// print, one a line, and kills the whole group when the test ends.
func startPIDs(tb testing.TB, n int, argv ...string) []int {
	tb.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	type result struct {
		pids []int
		err  error
	}
	got := make(chan result, 1)
	go func() {
		var r result
		sc := bufio.NewScanner(out)
		for len(r.pids) < n && sc.Scan() {
			pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
			if err != nil {
				r.err = fmt.Errorf("not a pid: %q", sc.Text())
				break
			}
			r.pids = append(r.pids, pid)
		}
		if r.err == nil && len(r.pids) < n {
			r.err = fmt.Errorf("got %d pids, want %d: %v", len(r.pids), n, sc.Err())
		}
		got <- r
		io.Copy(io.Discard, out)
	}()
	select {
	case r := <-got:
		if r.err != nil {
			tb.Fatal(r.err)
		}
		return r.pids
	case <-time.After(30 * time.Second):
		tb.Fatalf("%v did not print %d pids", argv, n)
		return nil
	}
}

// startShellTree starts sh -> sh -> sleep and returns their PIDs, root first.
func startShellTree(tb testing.TB) []int {
	tb.Helper()
	return startPIDs(tb, 3, "/bin/sh", "-c",
		`echo $$; /bin/sh -c 'echo $$; sleep 1000 & echo $!; wait' & wait`)
}

// vmRSS returns VmRSS of pid from /proc/PID/status, the figure ps and top show.
func vmRSS(t *testing.T, pid int) uint64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS of %d: %v", pid, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}

var sampleImpls = []struct {
	name   string
	sample func(roots ...int) (TreeSample, error)
}{
	{"SampleTree", SampleTree},
}

func TestSampleTree(t *testing.T) {
	pids := startShellTree(t)
	root, inner, sleeper := pids[0], pids[1], pids[2]
	sumVmRSS := func() uint64 {
		var sum uint64
		for _, pid := range pids {
			sum += vmRSS(t, pid)
		}
		return sum
	}

	for _, impl := range sampleImpls {
		t.Run(impl.name, func(t *testing.T) {
			// The shells are still starting up and the last one becoming
			// sleep: compare once the figures hold still around a sample.
			var s TreeSample
			var want uint64
			var err error
			testkit.Eventually(t, 30*time.Second, "the tree's memory to settle", func() bool {
				before := sumVmRSS()
				s, err = impl.sample(root)
				want = sumVmRSS()
				return err != nil || before == want
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := slices.Sorted(slices.Values(s.PIDs)); !slices.Equal(got, slices.Sorted(slices.Values(pids))) {
				t.Fatalf("PIDs = %v, want %v", s.PIDs, pids)
			}
			if s.PIDs[0] != root {
				t.Errorf("PIDs = %v, want the root first", s.PIDs)
			}
			// Idle shells and sleep hardly change; allow for a page or two.
			if s.RSS == 0 || s.RSS < want-want/20-64<<10 || s.RSS > want+want/20+64<<10 {
				t.Errorf("RSS = %d, want about %d (sum of VmRSS)", s.RSS, want)
			}

			sub, err := impl.sample(inner)
			if err != nil {
				t.Fatal(err)
			}
			if got := slices.Sorted(slices.Values(sub.PIDs)); !slices.Equal(got, slices.Sorted(slices.Values([]int{inner, sleeper}))) {
				t.Errorf("subtree PIDs = %v, want %v", sub.PIDs, []int{inner, sleeper})
			}

			// Overlapping roots count each process once.
			both, err := impl.sample(inner, root, root)
			if err != nil {
				t.Fatal(err)
			}
			if len(both.PIDs) != 3 || both.RSS > s.RSS+s.RSS/10 {
				t.Errorf("overlapping roots = %+v, want the 3 processes once", both)
			}
		})
	}
}

func TestSampleTreeGone(t *testing.T) {
	const gone = 1 << 30 // above the kernel's largest pid_max
	for _, impl := range sampleImpls {
		t.Run(impl.name, func(t *testing.T) {
			s, err := impl.sample(gone)
			if err != nil || s.RSS != 0 || len(s.PIDs) != 0 {
				t.Errorf("sample of a missing process = %+v, %v; want empty, nil", s, err)
			}
			s, err = impl.sample()
			if err != nil || s.RSS != 0 || len(s.PIDs) != 0 {
				t.Errorf("sample of nothing = %+v, %v; want empty, nil", s, err)
			}
		})
	}

	// A root that exits: what remains is found from the other root.
	pids := startShellTree(t)
	s, err := SampleTree(gone, pids[1])
	if err != nil || len(s.PIDs) != 2 {
		t.Errorf("sample with a missing root = %+v, %v; want the live subtree", s, err)
	}
}

// TestSampleTreeChildOfAThread checks that a child forked by a thread other
// than the main one is found: Node's worker threads can spawn processes, and
// the kernel lists a child only under the thread that forked it.
func TestSampleTreeChildOfAThread(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skipf("node not installed: %v", err)
	}
	worker := `const {spawn} = require('child_process'); const c = spawn('sleep', ['1000'], {stdio: 'ignore'}); console.log(c.pid);`
	script := fmt.Sprintf(`console.log(process.pid); new (require('worker_threads').Worker)(%q, {eval: true});`, worker)
	pids := startPIDs(t, 2, node, "-e", script)
	nodePID, sleeper := pids[0], pids[1]

	mainChildren, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nodePID, nodePID))
	if err != nil {
		t.Skipf("no children files: %v", err)
	}
	if slices.Contains(strings.Fields(string(mainChildren)), strconv.Itoa(sleeper)) {
		t.Log("the child was forked by the main thread after all")
	}
	for _, impl := range sampleImpls {
		s, err := impl.sample(nodePID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(s.PIDs, sleeper) {
			t.Errorf("%s: PIDs = %v, want the worker's child %d in them", impl.name, s.PIDs, sleeper)
		}
	}
}

// BenchmarkSampleDescendants measures one sample as the agent takes it
// every second: the descendants of this process, here a sh -> sh -> sleep
// tree.
func BenchmarkSampleDescendants(b *testing.B) {
	pids := startShellTree(b)
	b.ReportAllocs()
	for b.Loop() {
		s, err := SampleDescendants(os.Getpid())
		if err != nil || len(s.PIDs) < len(pids) {
			b.Fatalf("sample = %+v, %v", s, err)
		}
	}
}

// BenchmarkSampleTree measures one sample of a real sh -> sh -> sleep tree,
// and of a Node process (many threads, each with its own children file).
func BenchmarkSampleTree(b *testing.B) {
	trees := map[string][]int{"sh-sh-sleep": startShellTree(b)}
	if node, err := exec.LookPath("node"); err == nil {
		trees["node"] = startPIDs(b, 1, node, "-e", `console.log(process.pid); setInterval(() => {}, 1000)`)
	}
	for _, tree := range []string{"sh-sh-sleep", "node"} {
		pids, ok := trees[tree]
		if !ok {
			continue
		}
		for _, impl := range sampleImpls {
			b.Run(tree+"/"+impl.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					s, err := impl.sample(pids[0])
					if err != nil || len(s.PIDs) < len(pids) {
						b.Fatalf("sample = %+v, %v", s, err)
					}
				}
			})
		}
	}
}
