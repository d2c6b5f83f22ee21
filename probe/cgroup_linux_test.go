package probe

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"agent/internal/testkit"
)

// oomApp is a Node app that, for every line on its stdin, forks a worker
// that allocates until its memory cgroup's limit makes the kernel kill it.
// The worker raises its own oom_score_adj so that it is the one chosen.
const oomApp = `
const { spawn } = require('child_process');
const worker = "require('fs').writeFileSync('/proc/self/oom_score_adj', '1000'); const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1));";
require('readline').createInterface({ input: process.stdin }).on('line', () => {
  const w = spawn(process.execPath, ['-e', worker], { stdio: 'inherit' });
  console.log('worker ' + w.pid);
  w.on('exit', (code, sig) => console.log('exit ' + w.pid + ' ' + sig));
});
console.log('ready');
`

// TestOOMKillOfNewWorkerMatchedByCgroup is the kill the agent used to miss:
// the app forks a worker that the kernel kills for its memory cgroup's limit
// within the same second, before any sample of the app's tree could see
// it. The test process plays the agent: it sits in the same fresh cgroup v1
// memory group as the app (as the agent and the app share their unit's
// cgroup), reads its own cgroup from /proc/self/cgroup, and must count the
// kill by the victim's task_memcg although its PID is unknown; kills of
// other groups on this machine must not count. The group's oom_kill counter
// must go up by one.
func TestOOMKillOfNewWorkerMatchedByCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a memory cgroup and read /dev/kmsg")
	}
	const sysfs = "/sys/fs/cgroup"
	memcgRoot := filepath.Join(sysfs, "memory")
	if _, err := os.Stat(filepath.Join(memcgRoot, "memory.limit_in_bytes")); err != nil {
		t.Skipf("no cgroup v1 memory controller at %s: %v", memcgRoot, err)
	}
	if f, err := os.Open("/dev/kmsg"); err != nil {
		t.Skipf("cannot read the kernel log here: %v", err)
	} else {
		f.Close()
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is needed to cause a real OOM kill: %v", err)
	}
	orig, err := ReadMemoryCgroup("/", "self")
	if err != nil || orig.Version != 1 {
		t.Skipf("memory controller not on cgroup v1 for this process: %+v, %v", orig, err)
	}

	// A fresh group below the one this test runs in.
	parent := filepath.Join(memcgRoot, filepath.FromSlash(orig.Path))
	name := fmt.Sprintf("agent-oomtest-%d-%d", os.Getpid(), time.Now().UnixNano())
	group := filepath.Join(parent, name)
	if err := os.Mkdir(group, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The group is busy for a moment after its last process left.
		testkit.EventuallyMsg(t, 10*time.Second, "the memory cgroup removed", func() (bool, string) {
			if err := os.Remove(group); err != nil && !errors.Is(err, os.ErrNotExist) {
				return false, err.Error()
			}
			return true, ""
		})
	})
	for file, v := range map[string]string{"memory.limit_in_bytes": strconv.Itoa(128 << 20), "memory.swappiness": "0"} {
		if err := os.WriteFile(filepath.Join(group, file), []byte(v), 0o644); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	moveSelf := func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644)
	}
	if err := moveSelf(group); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := moveSelf(parent); err != nil {
			t.Errorf("move the test back to %s: %v", parent, err)
		}
	})

	own, err := ReadMemoryCgroup("/", "self")
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimSuffix(orig.Path, "/") + "/" + name; own.Path != want || own.Version != 1 {
		t.Fatalf("own memory cgroup %+v, want %s on v1", own, want)
	}
	killsBefore, err := own.OOMKills(sysfs)
	if err != nil {
		t.Fatal(err)
	}

	// The agent's tree snapshot: taken before the worker exists.
	var mu sync.Mutex
	var snapshot map[int]bool
	var ours []OOMKill
	counted := make(chan struct{}, 16)
	onKill := func(k OOMKill) {
		mu.Lock()
		defer mu.Unlock()
		if OOMKillIsOurs(k, own, func(pid int) bool { return snapshot[pid] }) {
			ours = append(ours, k)
			counted <- struct{}{}
		}
	}
	w := NewOOMWatcher(oomTestLogger(t), "/dev/kmsg", onKill)
	startOOMWatcher(t, w)
	testkit.Eventually(t, 10*time.Second, "watcher reading", func() bool { return w.Status() == "ok" })

	cmd := exec.Command(node, "-e", oomApp)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func(what string) string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("app ended before %s", what)
			}
			return l
		case <-time.After(2 * time.Minute):
			t.Fatalf("app: no %s", what)
		}
		return ""
	}
	if l := next("ready line"); l != "ready" {
		t.Fatalf("app said %q, want ready", l)
	}
	mu.Lock()
	snapshot = map[int]bool{cmd.Process.Pid: true}
	mu.Unlock()

	forked := time.Now()
	if _, err := fmt.Fprintln(stdin, "fork"); err != nil {
		t.Fatal(err)
	}
	var workerPID int
	if _, err := fmt.Sscanf(next("worker line"), "worker %d", &workerPID); err != nil || workerPID <= 0 {
		t.Fatalf("no worker pid: %v", err)
	}
	if l, want := next("worker exit"), fmt.Sprintf("exit %d SIGKILL", workerPID); l != want {
		t.Fatalf("app said %q, want %q", l, want)
	}
	select {
	case <-counted:
	case <-time.After(time.Minute):
		t.Fatalf("the kernel's kill of worker %d was not counted as the app's", workerPID)
	}
	t.Logf("worker %d forked and killed within %v", workerPID, time.Since(forked).Round(time.Millisecond))

	mu.Lock()
	k := ours[0]
	inSnapshot := snapshot[k.PID]
	mu.Unlock()
	if k.PID != workerPID || k.TaskMemcg != own.Path || !k.Memcg {
		t.Errorf("counted kill %+v, want worker %d in %s", k, workerPID, own.Path)
	}
	if inSnapshot {
		t.Error("the worker was in the tree snapshot: the test shows nothing about cgroup matching")
	}
	// Matching by PID alone, as before, would have missed it.
	if OOMKillIsOurs(k, MemoryCgroup{Path: "/", Version: 1}, func(pid int) bool { return pid == cmd.Process.Pid }) {
		t.Error("the kill matched by PID alone")
	}
	// The app itself lives on.
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("app gone after its worker's kill: %v", err)
	}
	killsAfter, err := own.OOMKills(sysfs)
	if err != nil {
		t.Fatal(err)
	}
	if killsAfter != killsBefore+1 {
		t.Errorf("memory.oom_control oom_kill %d -> %d, want one more", killsBefore, killsAfter)
	}

	// Kills of other groups on this machine (other tests cause some) never
	// count.
	mu.Lock()
	defer mu.Unlock()
	if len(ours) != 1 {
		t.Errorf("counted %d kills as the app's, want 1: %+v", len(ours), ours)
	}
}
