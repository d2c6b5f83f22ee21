package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// vmStatus is the part of `agentctl status --json` the VM tests read.
type vmStatus struct {
	State     string    `json:"state"`
	PID       int       `json:"pid"`
	Ready     bool      `json:"ready"`
	Restarts  int       `json:"restarts"`
	HeapCapMB int       `json:"heap_cap_mb"`
	OOMKills  int       `json:"oom_kills"`
	LastExit  *vmExit   `json:"last_exit"`
	Exits     []vmExit  `json:"exits"`
	Proxy     *struct{} `json:"proxy"`
	Agent     struct {
		PID      int    `json:"pid"`
		OOMWatch string `json:"oom_watch"`
		Version  string `json:"version"`
		Upgrades int    `json:"upgrades"`
	} `json:"agent"`
}

type vmExit struct {
	Reason string  `json:"reason"`
	Signal *string `json:"signal"`
	Code   *int    `json:"code"`
	Detail string  `json:"detail"`
}

func (v *vm) status() (vmStatus, error) {
	var s vmStatus
	out, err := v.run("agentctl", "status", "--json")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		return s, fmt.Errorf("agentctl status --json: %w: %s", err, out)
	}
	return s, nil
}

func (v *vm) show(prop string) string {
	out, _ := v.run("systemctl", "show", "-p", prop, "--value", "agent.service")
	return strings.TrimSpace(out)
}

// serving waits until agent.service is active, the app running and ready,
// and url answers 200 in the guest; it returns the status.
func (v *vm) serving(timeout time.Duration, what string, urls ...string) vmStatus {
	v.t.Helper()
	var st vmStatus
	v.eventually(timeout, what, func() (bool, string) {
		if a := v.show("ActiveState"); a != "active" {
			return false, "ActiveState=" + a
		}
		s, err := v.status()
		if err != nil {
			return false, err.Error()
		}
		if s.State != "running" || !s.Ready {
			return false, fmt.Sprintf("state %s, ready %v", s.State, s.Ready)
		}
		for _, u := range urls {
			out, _ := v.run("curl", "-s", "-o", "/dev/null", "-m", "10", "-w", "%{http_code}", u)
			if code := strings.TrimSpace(out); code != "200" {
				return false, u + " answered " + code
			}
		}
		st = s
		return true, ""
	})
	return st
}

// nextExit waits for an exit of the app after before (a new PID serving, or
// at least a new last exit) and returns the status that shows it.
func (v *vm) nextExit(before vmStatus, timeout time.Duration, what string) vmStatus {
	v.t.Helper()
	var st vmStatus
	v.eventually(timeout, what, func() (bool, string) {
		s, err := v.status()
		if err != nil {
			return false, err.Error()
		}
		st = s
		return len(s.Exits) > len(before.Exits) && s.PID != 0 && s.PID != before.PID,
			fmt.Sprintf("pid %d, state %s, %d exits", s.PID, s.State, len(s.Exits))
	})
	return st
}

const agentCgroup = "/sys/fs/cgroup/system.slice/agent.service"

// cgroupInt reads a "key value" line of a file of the agent's cgroup.
func (v *vm) cgroupInt(file, key string) int {
	v.t.Helper()
	for _, line := range strings.Split(v.must("cat", agentCgroup+"/"+file), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == key {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	v.t.Fatalf("no %s in %s/%s", key, agentCgroup, file)
	return 0
}

// metric returns the value of an unlabelled sample on the agent's /metrics.
func (v *vm) metric(name string) string {
	out, _ := v.run("curl", "-s", "-m", "10", "http://127.0.0.1:9100/metrics")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return "missing"
}

// strayCheck checks that the unit's cgroup holds only the agent and the
// current app's tree, and that the tree includes its detached grandchild.
func (v *vm) strayCheck(t *testing.T, st vmStatus, when string) {
	t.Helper()
	procs := strings.Fields(v.must("cat", agentCgroup+"/cgroup.procs"))
	parent := map[int]int{}
	for _, line := range strings.Split(v.must("ps", "-e", "-o", "pid=,ppid="), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			pid, _ := strconv.Atoi(f[0])
			ppid, _ := strconv.Atoi(f[1])
			parent[pid] = ppid
		}
	}
	inTree := func(pid int) bool {
		for p := pid; p > 1; p = parent[p] {
			if p == st.PID {
				return true
			}
		}
		return false
	}
	var tree, stray []string
	for _, p := range procs {
		pid, _ := strconv.Atoi(p)
		switch {
		case pid == st.Agent.PID:
		case inTree(pid):
			tree = append(tree, p)
		default:
			cmd, _ := v.run("ps", "-o", "pid=,ppid=,args=", "-p", p)
			stray = append(stray, strings.TrimSpace(cmd))
		}
	}
	if len(stray) > 0 {
		t.Errorf("%s: stray processes in agent.service's cgroup (agent %d, app %d): %q", when, st.Agent.PID, st.PID, stray)
	}
	if len(tree) != 2 {
		t.Errorf("%s: the app's tree in the cgroup is %q, want node and its detached sleep", when, tree)
	}
	if !slices.Contains(procs, strconv.Itoa(st.Agent.PID)) {
		t.Errorf("%s: the agent (%d) is not in agent.service's cgroup: %q", when, st.Agent.PID, procs)
	}
}

// TestVMCgroupV2OOM runs the agent's .deb on a real kernel with cgroup v2 and
// MemoryMax= on its unit: a kernel OOM kill, a V8 heap OOM and a
// memory.max_rss restart, each recorded with its own reason, the unit kept
// active, and no stray process left in the unit's cgroup.
func TestVMCgroupV2OOM(t *testing.T) {
	img := findVMImage(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	_, deb := buildPackage(t, root, work, "0.0.0-vm")
	_, deb2 := buildPackage(t, root, filepath.Join(work, "next"), "0.0.1-vm")

	config := func(maxRSS string) string {
		return fmt.Sprintf(`name = "mem"

[app]
command = ["node", "/srv/app/memapp.js"]
dir = "/srv/app"
user = "app"
env = { PORT = "3000" }

[node]
max_old_space_size = "auto"

[memory]
max_rss = %q
rss_grace = "2s"

[probe]
http = "http://127.0.0.1:3000/"

[health]
listen = ":8081"

[metrics]
listen = "127.0.0.1:9100"
`, maxRSS)
	}
	files := map[string]string{"agent.deb": deb, "agent-next.deb": deb2, "memapp.js": filepath.Join(root, "deploy/vm/memapp.js")}
	for name, content := range map[string]string{
		"agent.toml":     config("0"),
		"agent-rss.toml": config("120MB"),
		"memory.conf":    "[Service]\nMemoryMax=256M\n",
	} {
		p := filepath.Join(work, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		files[name] = p
	}

	start := time.Now()
	v := startVM(t, img, vmOptions{data: files})
	v.waitSystem(vmBootTimeout)
	t.Logf("boot to a running systemd: %v", time.Since(start).Round(time.Second))
	t.Cleanup(func() {
		if t.Failed() && !v.exited() {
			out, _ := v.run("journalctl", "-u", "agent.service", "--no-pager", "-n", "80")
			t.Logf("journal of agent.service:\n%s", out)
		}
	})

	if fs := strings.TrimSpace(v.must("stat", "-fc", "%T", "/sys/fs/cgroup")); fs != "cgroup2fs" {
		t.Fatalf("/sys/fs/cgroup is %s, want cgroup2fs", fs)
	}
	if c := v.must("cat", "/sys/fs/cgroup/cgroup.controllers"); !strings.Contains(c, "memory") {
		t.Fatalf("no memory controller in cgroup v2: %q", c)
	}
	v.mountData()
	v.must("sh", "-c", `set -e
useradd --system --create-home --shell /usr/sbin/nologin app
install -D -m 0644 /vm/memapp.js /srv/app/memapp.js
install -D -m 0644 /vm/memory.conf /etc/systemd/system/agent.service.d/memory.conf
install -D -m 0640 /vm/agent.toml /etc/agent/agent.toml
dpkg -i --force-confold /vm/agent.deb
agent check --config /etc/agent/agent.toml >/dev/null
systemctl daemon-reload`)
	v.must("systemctl", "enable", "--now", "agent.service")
	if m := strings.TrimSpace(v.must("cat", agentCgroup+"/memory.max")); m != strconv.Itoa(256<<20) {
		t.Fatalf("memory.max of agent.service = %s, want %d", m, 256<<20)
	}
	const app = "http://127.0.0.1:3000/"
	st := v.serving(2*time.Minute, "the agent to serve", app, "http://127.0.0.1:8081/health.html")
	t.Logf("installed and serving after %v", time.Since(start).Round(time.Second))

	t.Run("heap cap from MemoryMax", func(t *testing.T) {
		if st.HeapCapMB != 128 {
			t.Errorf("heap_cap_mb = %d, want 128 (half of MemoryMax=256M)", st.HeapCapMB)
		}
		env := v.must("cat", fmt.Sprintf("/proc/%d/environ", st.PID))
		if !strings.Contains(env, "--max-old-space-size=128") {
			t.Errorf("node's environment lacks --max-old-space-size=128: %q", strings.ReplaceAll(env, "\x00", " "))
		}
		if st.Agent.OOMWatch != "ok" {
			t.Errorf("agent.oom_watch = %q, want ok", st.Agent.OOMWatch)
		}
		v.strayCheck(t, st, "at start")
	})

	t.Run("kernel OOM kill", func(t *testing.T) {
		began := time.Now()
		before := v.serving(2*time.Minute, "the agent to serve", app)
		since := time.Now()
		v.must("curl", "-s", "-m", "10", app+"grow")
		after := v.nextExit(before, 3*time.Minute, "the OOM-killed app to be replaced")
		ex := after.Exits[0]
		if ex.Reason != "oom-kill" {
			t.Errorf("last exit reason = %q (%s), want oom-kill", ex.Reason, ex.Detail)
		}
		if ex.Signal == nil || *ex.Signal != "SIGKILL" {
			t.Errorf("last exit signal = %v, want SIGKILL", ex.Signal)
		}
		want := fmt.Sprintf("Memory cgroup out of memory: Killed process %d (node)", before.PID)
		if !strings.Contains(ex.Detail, want) {
			t.Errorf("last exit detail = %q, want the kernel's line %q", ex.Detail, want)
		}
		kmsg := v.must("dmesg")
		if !strings.Contains(kmsg, "task_memcg=/system.slice/agent.service") || !strings.Contains(kmsg, want) {
			t.Errorf("the kernel log lacks task_memcg=/system.slice/agent.service or %q:\n%s", want, tailString(kmsg, 20))
		}
		t.Logf("detail: %s", ex.Detail)
		now := v.serving(2*time.Minute, "the app to serve again", app)
		if a, n := v.show("ActiveState"), v.show("NRestarts"); a != "active" || n != "0" {
			t.Errorf("agent.service: ActiveState=%s NRestarts=%s, want active and 0", a, n)
		}
		if now.Agent.PID != before.Agent.PID {
			t.Errorf("the agent changed (%d -> %d): the unit was restarted", before.Agent.PID, now.Agent.PID)
		}
		events := v.cgroupInt("memory.events", "oom_kill")
		if events != 1 || now.OOMKills != 1 {
			t.Errorf("memory.events oom_kill = %d, status oom_kills = %d, want 1 and 1", events, now.OOMKills)
		}
		if m := v.metric("agent_app_oom_kills_total"); m != "1" {
			t.Errorf("agent_app_oom_kills_total = %s, want 1", m)
		}
		out, _ := v.run("journalctl", "-u", "agent.service", "--no-pager", "-o", "cat",
			"--since", "@"+strconv.FormatInt(since.Unix()-5, 10))
		if !strings.Contains(out, "killed by the OOM killer") {
			t.Errorf("systemd did not log the OOM kill of a process of the unit:\n%s", tailString(out, 20))
		}
		v.strayCheck(t, now, "after the OOM kill")
		t.Logf("kernel OOM kill to serving again: %v", time.Since(began).Round(time.Second))
	})

	t.Run("V8 heap OOM", func(t *testing.T) {
		began := time.Now()
		before := v.serving(2*time.Minute, "the agent to serve", app)
		v.must("curl", "-s", "-m", "10", app+"heap")
		after := v.nextExit(before, 3*time.Minute, "the app out of heap to be replaced")
		ex := after.Exits[0]
		if ex.Reason != "heap-oom" {
			t.Errorf("last exit reason = %q (%s), want heap-oom", ex.Reason, ex.Detail)
		}
		if ex.Signal == nil || *ex.Signal != "SIGABRT" {
			t.Errorf("last exit signal = %v, want SIGABRT", ex.Signal)
		}
		now := v.serving(2*time.Minute, "the app to serve again", app)
		if events := v.cgroupInt("memory.events", "oom_kill"); events != 1 || now.OOMKills != 1 {
			t.Errorf("after a heap OOM: memory.events oom_kill = %d, oom_kills = %d, want both still 1", events, now.OOMKills)
		}
		if n := v.show("NRestarts"); n != "0" {
			t.Errorf("NRestarts = %s, want 0", n)
		}
		v.strayCheck(t, now, "after the heap OOM")
		t.Logf("V8 heap OOM to serving again: %v", time.Since(began).Round(time.Second))
	})

	t.Run("memory.max_rss restart", func(t *testing.T) {
		began := time.Now()
		v.serving(2*time.Minute, "the agent to serve", app)
		v.must("install", "-m", "0640", "/vm/agent-rss.toml", "/etc/agent/agent.toml")
		v.must("systemctl", "reload", "agent.service")
		// memory limits apply from the app's next start.
		v.must("agentctl", "restart")
		before := v.serving(2*time.Minute, "the app to serve with max_rss", app)
		v.must("curl", "-s", "-m", "30", app+"hold?mb=100")
		after := v.nextExit(before, 2*time.Minute, "the app over max_rss to be replaced")
		ex := after.Exits[0]
		if ex.Reason != "rss-limit" {
			t.Errorf("last exit reason = %q (%s), want rss-limit", ex.Reason, ex.Detail)
		}
		now := v.serving(2*time.Minute, "the app to serve again", app)
		if events := v.cgroupInt("memory.events", "oom_kill"); events != 1 || now.OOMKills != 1 {
			t.Errorf("after max_rss: memory.events oom_kill = %d, oom_kills = %d, want both still 1", events, now.OOMKills)
		}
		if n := v.show("NRestarts"); n != "0" {
			t.Errorf("NRestarts = %s, want 0", n)
		}
		var reasons []string
		for _, e := range now.Exits {
			reasons = append(reasons, e.Reason)
		}
		if want := []string{"rss-limit", "restart", "heap-oom", "oom-kill"}; !slices.Equal(reasons, want) {
			t.Errorf("exit history %q, want %q", reasons, want)
		}
		v.strayCheck(t, now, "after the max_rss restart")
		t.Logf("max_rss restart to serving again: %v", time.Since(began).Round(time.Second))
	})

	// A package upgrade in place on this kernel (pidfds, a memfd, the exec),
	// then a kernel OOM kill: the kernel log handed over still explains it.
	t.Run("package upgrade in place, then a kernel OOM kill", func(t *testing.T) {
		began := time.Now()
		v.must("install", "-m", "0640", "/vm/agent.toml", "/etc/agent/agent.toml")
		v.must("systemctl", "reload", "agent.service")
		v.must("agentctl", "restart") // max_rss off again from the next start
		before := v.serving(2*time.Minute, "the agent to serve", app)
		mainPID := v.show("MainPID")
		v.must("dpkg", "-i", "--force-confold", "/vm/agent-next.deb")
		after := v.serving(2*time.Minute, "the upgraded agent to serve", app)
		if !strings.Contains(after.Agent.Version, "0.0.1") || after.Agent.Upgrades != 1 {
			t.Errorf("after dpkg -i: agent %+v, want version 0.0.1 and 1 upgrade", after.Agent)
		}
		if m := v.show("MainPID"); m != mainPID || after.Agent.PID != before.Agent.PID || after.PID != before.PID {
			t.Errorf("after dpkg -i: MainPID %s -> %s, agent %d -> %d, app %d -> %d: want all the same",
				mainPID, m, before.Agent.PID, after.Agent.PID, before.PID, after.PID)
		}
		if after.Restarts != before.Restarts || len(after.Exits) != len(before.Exits) || after.OOMKills != 1 {
			t.Errorf("after dpkg -i: restarts %d, %d exits, oom_kills %d; want %d, %d and 1 carried over",
				after.Restarts, len(after.Exits), after.OOMKills, before.Restarts, len(before.Exits))
		}
		if n := v.show("NRestarts"); n != "0" {
			t.Errorf("NRestarts = %s, want 0", n)
		}
		v.must("curl", "-s", "-m", "10", app+"grow")
		now := v.nextExit(after, 3*time.Minute, "the OOM-killed app to be replaced")
		if ex := now.Exits[0]; ex.Reason != "oom-kill" || !strings.Contains(ex.Detail, fmt.Sprintf("Killed process %d (node)", after.PID)) {
			t.Errorf("the OOM kill after the upgrade: %+v, want oom-kill with the kernel's line", ex)
		}
		now = v.serving(2*time.Minute, "the app to serve again", app)
		if events := v.cgroupInt("memory.events", "oom_kill"); events != 2 || now.OOMKills != 2 {
			t.Errorf("memory.events oom_kill = %d, oom_kills = %d, want 2 and 2", events, now.OOMKills)
		}
		v.strayCheck(t, now, "after the upgrade and the OOM kill")
		t.Logf("upgrade and OOM kill: %v", time.Since(began).Round(time.Second))
	})

	v.poweroff(2 * time.Minute)
	t.Logf("whole VM run: %v", time.Since(start).Round(time.Second))
}
