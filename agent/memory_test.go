package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestHeapOOMOfRealNode(t *testing.T) {
	node := needNode(t)
	r := startAgent(t, fmt.Sprintf(`
[app]
command = [%q, %q]
[node]
max_old_space_size = 32
[restart]
policy = "never"
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
`, node, appPath(t, "heap.js")))
	s := r.waitState("failed")
	e := s.LastExit
	if e == nil || e.Reason != "heap-oom" || !strings.Contains(e.Detail, "JavaScript heap out of memory") {
		t.Fatalf("last exit %+v, want heap-oom with V8's line", e)
	}
	if e.Signal == nil || *e.Signal != "SIGABRT" {
		t.Errorf("signal %v, want SIGABRT", e.Signal)
	}
	// The cap reached node through NODE_OPTIONS.
	found := false
	for _, l := range r.a.output.Last(100) {
		if l.Text == "NODE_OPTIONS=--max-old-space-size=32" {
			found = true
		}
	}
	if !found {
		t.Errorf("the app did not see NODE_OPTIONS=--max-old-space-size=32: %v", r.a.output.Last(5))
	}
}

func TestRSSLimitRestartsOncePerProcess(t *testing.T) {
	node := needNode(t)
	r := startAgent(t, fmt.Sprintf(`
[app]
command = [%q, %q]
env = { MAX_MB = "160", STEP_MB = "16" }
[node]
max_old_space_size = 0
[memory]
max_rss = "100MB"
rss_grace = "1s"
[restart]
delay = "1s"
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
`, node, appPath(t, "rss.js")))
	r.waitStatus("an rss-limit restart", func(s Status) bool { return s.Restarts >= 1 })
	s := r.a.Status()
	e := s.Exits[len(s.Exits)-1] // the first exit
	if e.Reason != "rss-limit" || !strings.Contains(e.Detail, "max_rss 100 MB") {
		t.Fatalf("first exit %+v, want rss-limit", e)
	}
	// One request per process: no exit of a process is recorded twice, and
	// none with another reason crept in while it was being stopped.
	for _, e := range s.Exits {
		if e.Reason != "rss-limit" {
			t.Errorf("exit %+v, want only rss-limit exits", e)
		}
	}
	if len(s.Exits) > s.Restarts+1 {
		t.Errorf("%d exits for %d restarts", len(s.Exits), s.Restarts)
	}
}

func TestKernelOOMKillInMemoryCgroup(t *testing.T) {
	node := needNode(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root for a memory cgroup and /dev/kmsg")
	}
	root := "/sys/fs/cgroup/memory"
	if _, err := os.Stat(filepath.Join(root, "memory.limit_in_bytes")); err != nil {
		t.Skip("no cgroup v1 memory controller here")
	}
	group := filepath.Join(root, "agent-test-oom-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(group, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(group) }) // after the agent's cleanup has stopped the app
	if err := os.WriteFile(filepath.Join(group, "memory.limit_in_bytes"), []byte(strconv.Itoa(96<<20)), 0); err != nil {
		t.Fatal(err)
	}
	// The shell puts itself into the group, then becomes node: the kernel
	// kills node when the group runs out of memory.
	script := fmt.Sprintf("echo $$ > %s/cgroup.procs && exec %s %s", group, node, appPath(t, "rss.js"))
	r := startAgent(t, fmt.Sprintf(`
[app]
command = ["/bin/sh", "-c", %q]
env = { MAX_MB = "512", STEP_MB = "8" }
[node]
max_old_space_size = 0
[restart]
delay = "0s"
max_restarts = 1
window = "10m"
[memory]
watch_oom = true
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
`, script))
	if w := r.a.Status().Agent.OOMWatch; w != "ok" {
		r.waitFor("the OOM watch", func() bool { return r.a.Status().Agent.OOMWatch == "ok" })
	}
	r.waitState("failed")
	// The kernel's record may be read a moment after the exit: the exit is
	// amended then.
	r.waitStatus("both exits explained", func(s Status) bool {
		return len(s.Exits) == 2 && s.Exits[0].Reason == "oom-kill" && s.Exits[1].Reason == "oom-kill"
	})
	s := r.a.Status()
	if len(s.Exits) != 2 {
		t.Fatalf("%d exits, want 2 (a kill, a restart, a kill): %+v", len(s.Exits), s.Exits)
	}
	for _, e := range s.Exits {
		if e.Reason != "oom-kill" || e.Signal == nil || *e.Signal != "SIGKILL" {
			t.Errorf("exit %+v, want oom-kill by SIGKILL", e)
		}
		if !strings.HasPrefix(e.Detail, "Memory cgroup out of memory: Killed process ") {
			t.Errorf("detail %q, want the kernel's line", e.Detail)
		}
	}
	if s.OOMKills != 2 {
		t.Errorf("oom_kills %d, want 2", s.OOMKills)
	}
	if s.Restarts != 1 {
		t.Errorf("restarts %d, want 1", s.Restarts)
	}
}
