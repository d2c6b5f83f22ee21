package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"agent/internal/testkit"
)

// The end-to-end test boots a Debian 12 root filesystem with systemd-nspawn (a
// real systemd as PID 1), installs the agent's .deb in it with a demo Node app
// and a config written by user_data.sh's config writer, and then kills, stops,
// breaks and reboots things the way production will.
//
// It needs root, systemd-nspawn, nsenter and the cached tree that
// deploy/e2e/prepare.sh builds (default /var/cache/agent-e2e/bookworm; another
// one with AGENT_E2E_ROOTFS). The cached tree is never written to: the container
// runs on an overlay whose upper layer lives in the test's temporary directory.

const (
	defaultRootfs = "/var/cache/agent-e2e/bookworm"
	bootTimeout   = 3 * time.Minute
	stepTimeout   = 2 * time.Minute
	// SIGSTOP -> missed WatchdogSec (30s) -> SIGABRT, TimeoutAbortSec (10s) ->
	// SIGKILL -> RestartSec (1s) -> start; doubled for a loaded machine.
	watchdogTimeout = 3 * time.Minute
	execTimeout     = time.Minute
	pollInterval    = 250 * time.Millisecond // each question runs a command in the container

	appPort    = "3000"
	healthPort = "8081"
)

// containerEnv is the environment of commands run inside the container.
var containerEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LANG=C.UTF-8",
	"SYSTEMD_COLORS=0",
	"SYSTEMD_PAGER=",
}

func e2eRootfs(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: boots a container")
	}
	if os.Geteuid() != 0 {
		t.Skip("end-to-end test needs root (systemd-nspawn, overlay mounts)")
	}
	if _, err := exec.LookPath("systemd-nspawn"); err != nil {
		t.Skip("end-to-end test needs systemd-nspawn: run deploy/e2e/prepare.sh as root")
	}
	dir := os.Getenv("AGENT_E2E_ROOTFS")
	if dir == "" {
		dir = defaultRootfs
	}
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		t.Skipf("no cached Debian 12 tree at %s: run deploy/e2e/prepare.sh %s as root (about 2 minutes, 370 MB)", dir, dir)
	}
	for _, tool := range []string{"nsenter", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("end-to-end test needs %s: run deploy/e2e/prepare.sh as root", tool)
		}
	}
	return dir
}

// overlay mounts an overlay of lower (read-only) with an upper layer in a
// temporary directory and returns the merged tree; unmounted at cleanup.
func overlay(t *testing.T, lower string) string {
	t.Helper()
	tmp := t.TempDir()
	upper, work, merged := filepath.Join(tmp, "upper"), filepath.Join(tmp, "work"), filepath.Join(tmp, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay on %s: %v", merged, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(merged, 0); err != nil {
			t.Logf("unmount %s: %v; detaching it", merged, err)
			if err := syscall.Unmount(merged, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", merged, err)
			}
		}
	})
	return merged
}

// nspawnRuntime makes sure /run/systemd/nspawn is a tmpfs: nspawn refuses to
// work when /run is not one, as on these machines.
func nspawnRuntime(t *testing.T) {
	t.Helper()
	const dir = "/run/systemd/nspawn"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if isMountpoint(dir) {
		return
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
}

// isMountpoint reports whether dir is listed as a mount point in /proc/self/mountinfo.
func isMountpoint(dir string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	return false
}

// container is one boot of the tree under systemd-nspawn.
type container struct {
	t       *testing.T
	dir     string
	name    string
	console string
	opts    bootOptions

	cmd    *exec.Cmd
	done   chan struct{} // closed when nspawn has exited
	err    error         // nspawn's exit, valid after done
	init   int           // PID (in our namespace) of the container's systemd
	served int           // how many times serving succeeded

	bootTime time.Duration // from starting nspawn to a running systemd
	runs     int           // user_data runs so far (names their units)
	localCAs bool          // this machine's local CAs are trusted inside
}

// bootOptions says how a container is booted and where its agent listens.
type bootOptions struct {
	// hostNetwork shares this machine's network (and loopback) with the
	// container instead of giving it a private one.
	hostNetwork bool
	// appPort and healthPort are the app's and the agent's health ports
	// (defaults appPort and healthPort).
	appPort, healthPort string
	// proxyPort is the agent's traffic port in proxy mode ("" = no proxy).
	proxyPort string
}

// boot starts nspawn on dir and waits until the container's systemd reports
// running (or degraded). The caller stops the container; boot does when it fails.
// It holds the boot lock until t ends: no VM or other container runs beside it.
func boot(t *testing.T, dir, name, console string, opts bootOptions) *container {
	t.Helper()
	holdBootLock(t)
	logf, err := os.OpenFile(console, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "\n==== boot %s ====\n", time.Now().Format(time.RFC3339))

	if opts.appPort == "" {
		opts.appPort = appPort
	}
	if opts.healthPort == "" {
		opts.healthPort = healthPort
	}
	c := &container{t: t, dir: dir, name: name, console: console, opts: opts, done: make(chan struct{})}
	args := []string{"-q", "-D", dir, "--boot", "--register=no", "--keep-unit",
		"-M", name, "--console=read-only",
		// As on a real machine: the agent may lower its OOM score and read the
		// kernel log for OOM kills (nspawn drops both abilities by default).
		"--capability=CAP_SYSLOG,CAP_SYS_RESOURCE"}
	if !opts.hostNetwork {
		args = append(args, "--private-network")
	}
	if _, err := os.Stat("/dev/kmsg"); err == nil {
		args = append(args, "--bind-ro=/dev/kmsg")
	}
	c.cmd = exec.Command("systemd-nspawn", args...)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	// If the test binary dies, the container halts with it.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start systemd-nspawn: %v", err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	booted := false
	defer func() {
		if !booted {
			c.stop()
		}
	}()

	testkit.EventuallyEvery(t, bootTimeout, pollInterval, "the container's systemd to start", func() (bool, string) {
		select {
		case <-c.done:
			t.Fatalf("systemd-nspawn exited during boot: %v\n%s", c.err, tail(console, 40))
		default:
		}
		pid, err := childOf(c.cmd.Process.Pid)
		if err != nil {
			return false, err.Error()
		}
		c.init = pid
		return true, ""
	})
	testkit.EventuallyEvery(t, bootTimeout, pollInterval, "the container's systemd to be running", func() (bool, string) {
		out, _ := c.run("systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		return state == "running" || state == "degraded", "is-system-running: " + state
	})
	if out, _ := c.run("systemctl", "--failed", "--no-legend", "--plain"); strings.TrimSpace(out) != "" {
		t.Logf("failed units in the container (tolerated):\n%s", out)
	}
	booted = true
	return c
}

// childOf returns the PID of the (single) child of pid: nspawn's child is the
// container's PID 1.
func childOf(pid int) (int, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	if err != nil {
		return 0, err
	}
	for _, f := range tasks {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if fields := strings.Fields(string(data)); len(fields) > 0 {
			child, err := strconv.Atoi(fields[0])
			if err != nil {
				return 0, err
			}
			// nspawn's child is itself for a moment before it execs the
			// container's init: only systemd will do.
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", child)); strings.TrimSpace(string(comm)) != "systemd" {
				return 0, fmt.Errorf("the child %d of systemd-nspawn is %q, not yet systemd", child, strings.TrimSpace(string(comm)))
			}
			return child, nil
		}
	}
	return 0, fmt.Errorf("systemd-nspawn (pid %d) has no child yet", pid)
}

// run runs a command inside the container and returns its combined output.
func (c *container) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	argv := append([]string{"-t", strconv.Itoa(c.init), "-a", "--", "/usr/bin/env", "-i"}, containerEnv...)
	out, err := exec.CommandContext(ctx, "nsenter", append(argv, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// must runs a command inside the container and fails the test if it fails.
func (c *container) must(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("in the container: %v", err)
	}
	return out
}

// exited reports whether nspawn has exited.
func (c *container) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop halts the container (SIGTERM to nspawn asks its systemd to power off)
// and waits for nspawn to exit, killing it if it takes too long.
func (c *container) stop() {
	if c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(2 * time.Minute):
		c.t.Errorf("systemd-nspawn did not stop within 2 minutes after SIGTERM; killing it")
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// agentStatus is the part of `agentctl status --json` the test reads.
type agentStatus struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	PID       int    `json:"pid"`
	Ready     bool   `json:"ready"`
	Healthy   bool   `json:"healthy"`
	Restarts  int    `json:"restarts"`
	HeapCapMB int    `json:"heap_cap_mb"`
	LastExit  *struct {
		Reason string `json:"reason"`
		Signal string `json:"signal"`
		Code   *int   `json:"code"`
	} `json:"last_exit"`
	Proxy *struct {
		Upstream string `json:"upstream"`
		Requests int    `json:"requests"`
		Replayed int    `json:"replayed"`
		Failed   int    `json:"failed"`
	} `json:"proxy"`
	Agent struct {
		Version  string `json:"version"`
		PID      int    `json:"pid"`
		OOMWatch string `json:"oom_watch"`
		Upgrades int    `json:"upgrades"`
	} `json:"agent"`
}

const capSysResource = 24

// hasCap reports whether the CapEff line of a /proc/PID/status text has bit cap.
func hasCap(status string, cap uint) bool {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			bits, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && bits&(1<<cap) != 0
		}
	}
	return false
}

func (c *container) status() (agentStatus, error) {
	var s agentStatus
	out, err := c.run("agentctl", "status", "--json")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		return s, fmt.Errorf("agentctl status --json: %w: %s", err, out)
	}
	return s, nil
}

// httpCode returns the HTTP status code of a GET to url from inside the
// container ("000" when nothing answers).
func (c *container) httpCode(url string) string {
	out, _ := c.run("curl", "-s", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}", url)
	return strings.TrimSpace(out)
}

func (c *container) show(prop string) string {
	out, _ := c.run("systemctl", "show", "-p", prop, "--value", "agent.service")
	return strings.TrimSpace(out)
}

func (c *container) mainPID() int {
	pid, _ := strconv.Atoi(c.show("MainPID"))
	return pid
}

// journal returns the agent unit's journal since t (both the agent's lines and
// systemd's about the unit).
func (c *container) journal(since time.Time) string {
	out, _ := c.run("journalctl", "-u", "agent.service", "--no-pager", "-o", "cat",
		"--since", "@"+strconv.FormatInt(since.Unix()-1, 10))
	return out
}

// nodePIDs returns the PIDs of all node processes in the container.
func (c *container) nodePIDs() []int {
	out, _ := c.run("pgrep", "-x", "node")
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// serving waits until the agent is active under systemd, reports running and
// ready, the app answers and the health port says 200; it returns the status.
func (c *container) serving(t *testing.T, timeout time.Duration, what string) agentStatus {
	t.Helper()
	var st agentStatus
	testkit.EventuallyEvery(t, timeout, pollInterval, what, func() (bool, string) {
		if a := c.show("ActiveState"); a != "active" {
			return false, "ActiveState=" + a
		}
		s, err := c.status()
		if err != nil {
			return false, err.Error()
		}
		if s.State != "running" || !s.Ready {
			return false, fmt.Sprintf("state %s, ready %v", s.State, s.Ready)
		}
		if code := c.httpCode("http://127.0.0.1:" + c.opts.appPort + "/"); code != "200" {
			return false, "app answered " + code
		}
		if code := c.httpCode("http://127.0.0.1:" + c.opts.healthPort + "/health.html"); code != "200" {
			return false, "health answered " + code
		}
		st = s
		return true, ""
	})
	c.served++
	return st
}

// expectedHeapCapMB is the "auto" heap cap: half of min(MemTotal, the memory
// limit of the agent's cgroup), in MiB.
func (c *container) expectedHeapCapMB(t *testing.T) int {
	t.Helper()
	memTotal := 0
	for _, line := range strings.Split(c.must("cat", "/proc/meminfo"), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.Atoi(f[1])
			memTotal = kb / 1024
		}
	}
	if memTotal == 0 {
		t.Fatal("no MemTotal in /proc/meminfo")
	}
	limit := memTotal
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		out, err := c.run("cat", f)
		if err != nil {
			continue
		}
		if b, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64); err == nil && int(b>>20) < limit {
			limit = int(b >> 20)
		}
	}
	return limit / 2
}

func TestEndToEnd(t *testing.T) {
	rootfs := e2eRootfs(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	const version = "0.0.0-e2e"
	bin, deb := buildPackage(t, root, work, version)

	nspawnRuntime(t)
	tree := overlay(t, rootfs)
	console := filepath.Join(work, "console.log")
	name := fmt.Sprintf("agent-e2e-%d", os.Getpid())

	// Files go into the tree directly: the package, the demo app.
	copyInto(t, deb, filepath.Join(tree, "root/agent.deb"), 0o644)
	copyInto(t, filepath.Join(root, "deploy/demo/server.js"), filepath.Join(tree, "srv/app/server.js"), 0o644)

	c := boot(t, tree, name, console, bootOptions{})
	t.Cleanup(func() { c.stop() }) // the container of the last boot
	t.Cleanup(func() {
		if t.Failed() && !c.exited() {
			out, _ := c.run("systemctl", "status", "--no-pager", "-l", "agent.service")
			t.Logf("systemctl status agent:\n%s", out)
			out, _ = c.run("journalctl", "-u", "agent.service", "--no-pager", "-n", "150")
			t.Logf("journal of agent.service:\n%s", out)
		}
		if t.Failed() {
			t.Logf("container console (last lines):\n%s", tail(console, 30))
		}
	})

	c.must("dpkg", "-i", "/root/agent.deb")
	if v := c.must("agent", "version"); !strings.Contains(v, version) {
		t.Errorf("agent version = %q, want %s", v, version)
	}
	c.must("useradd", "--system", "--create-home", "--shell", "/usr/sbin/nologin", "app")

	// The config user_data.sh would write for this app.
	cfgPath := userDataConfig(t, map[string]string{
		"APP_NAME": "demo", "APP_REPO": "unused", "APP_REF": "main", "APP_DIR": "/srv/app",
		"APP_USER": "app", "APP_COMMAND": "node server.js", "APP_PORT": appPort,
		"NODE_MAJOR": "18", "MAX_RSS": "0", "HEALTH_PORT": healthPort, "PROXY_PORT": "", "STOP_DRAIN": "",
		"AGENT_PKG_URL": "", "AGENT_BIN_URL": "", "AGENT_SHA256": "",
	})
	goodConfig, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	confInTree := filepath.Join(tree, "etc/agent/agent.toml")
	if err := os.WriteFile(confInTree, goodConfig, 0o640); err != nil {
		t.Fatal(err)
	}
	c.must("agent", "check", "--config", "/etc/agent/agent.toml")
	c.must("systemctl", "enable", "agent.service")

	// Each step starts by waiting for a serving agent, so a failed step does not
	// hide the others; but once a step fails without the agent serving even
	// once, the rest are skipped rather than each waiting out its timeout.
	down := false
	step := func(name string, f func(t *testing.T)) {
		if c.exited() {
			t.Fatalf("the container is down (%v):\n%s", c.err, tail(console, 40))
		}
		if down {
			t.Run(name, func(t *testing.T) { t.Skip("the agent never served in the step before") })
			return
		}
		before := c.served
		if !t.Run(name, f) && c.served == before {
			down = true
		}
	}

	step("1 start returns once the app listens", func(t *testing.T) {
		if _, err := c.run("systemctl", "start", "agent.service"); err != nil {
			t.Fatalf("systemctl start: %v", err)
		}
		// No polling here: Type=notify means the app already serves.
		if code := c.httpCode("http://127.0.0.1:" + appPort + "/"); code != "200" {
			t.Errorf("right after systemctl start, the app answered %s, want 200", code)
		}
		if a, s := c.show("ActiveState"), c.show("SubState"); a != "active" || s != "running" {
			t.Errorf("agent.service is %s/%s, want active/running", a, s)
		}
		if st := c.show("StatusText"); st == "" {
			t.Errorf("StatusText is empty: the agent sends no STATUS=")
		} else {
			t.Logf("StatusText=%s", st)
		}
		c.serving(t, stepTimeout, "the agent to serve")
	})

	step("2 status and health", func(t *testing.T) {
		st := c.serving(t, stepTimeout, "the agent to serve")
		if st.PID == 0 {
			t.Errorf("status has no pid")
		}
		if want := c.expectedHeapCapMB(t); st.HeapCapMB < want-1 || st.HeapCapMB > want+1 {
			t.Errorf("heap_cap_mb = %d, want %d (half of the memory available)", st.HeapCapMB, want)
		}
		// The cap is what node really runs with.
		env := c.must("cat", fmt.Sprintf("/proc/%d/environ", st.PID))
		if want := fmt.Sprintf("--max-old-space-size=%d", st.HeapCapMB); !strings.Contains(env, want) {
			t.Errorf("node's environment lacks %s: %q", want, strings.ReplaceAll(env, "\x00", " "))
		}
		if user := strings.TrimSpace(c.must("ps", "-o", "user=", "-p", strconv.Itoa(st.PID))); user != "app" {
			t.Errorf("node runs as %q, want app", user)
		}
		if adj := strings.TrimSpace(c.must("cat", fmt.Sprintf("/proc/%d/oom_score_adj", st.PID))); adj != "0" {
			t.Errorf("node's oom_score_adj = %s, want 0", adj)
		}
		// systemd applies OOMScoreAdjust=-900 only with CAP_SYS_RESOURCE, which
		// a machine that is itself a container may not have to give.
		agentPID := c.mainPID()
		if hasCap(c.must("cat", fmt.Sprintf("/proc/%d/status", agentPID)), capSysResource) {
			if adj := strings.TrimSpace(c.must("cat", fmt.Sprintf("/proc/%d/oom_score_adj", agentPID))); adj != "-900" {
				t.Errorf("the agent's oom_score_adj = %s, want -900", adj)
			}
		} else {
			t.Logf("no CAP_SYS_RESOURCE here: the agent's OOMScoreAdjust cannot be applied or checked")
		}
		if _, err := os.Stat("/dev/kmsg"); err == nil && st.Agent.OOMWatch != "ok" {
			t.Errorf("agent.oom_watch = %q, want ok (/dev/kmsg is there)", st.Agent.OOMWatch)
		}
	})

	step("3 kill -9 node: restarted with the reason recorded", func(t *testing.T) {
		before := c.serving(t, stepTimeout, "the agent to serve")
		c.must("kill", "-9", strconv.Itoa(before.PID))
		var after agentStatus
		testkit.EventuallyEvery(t, stepTimeout, pollInterval, "a new node", func() (bool, string) {
			s, err := c.status()
			if err != nil {
				return false, err.Error()
			}
			after = s
			return s.PID != 0 && s.PID != before.PID && s.LastExit != nil, fmt.Sprintf("pid %d, state %s", s.PID, s.State)
		})
		if r := after.LastExit.Reason; r != "signaled" {
			t.Errorf("last_exit.reason = %q, want signaled", r)
		}
		if s := after.LastExit.Signal; s != "SIGKILL" {
			t.Errorf("last_exit.signal = %q, want SIGKILL", s)
		}
		if after.Restarts != before.Restarts+1 {
			t.Errorf("restarts = %d, want %d", after.Restarts, before.Restarts+1)
		}
		c.serving(t, stepTimeout, "the app to serve again")
	})

	step("4 kill -9 the agent: systemd restarts it, no orphan", func(t *testing.T) {
		before := c.serving(t, stepTimeout, "the agent to serve")
		agentPID := c.mainPID()
		restarts, _ := strconv.Atoi(c.show("NRestarts"))
		since := time.Now()
		c.must("kill", "-9", strconv.Itoa(agentPID))
		testkit.EventuallyEvery(t, stepTimeout, pollInterval, "systemd to start a new agent", func() (bool, string) {
			pid := c.mainPID()
			return pid != 0 && pid != agentPID, fmt.Sprintf("MainPID=%d", pid)
		})
		after := c.serving(t, stepTimeout, "the app to serve under the new agent")
		if after.PID == before.PID {
			t.Errorf("node pid %d survived the agent's death", before.PID)
		}
		if nodes := c.nodePIDs(); !slices.Equal(nodes, []int{after.PID}) {
			t.Errorf("node processes %v, want only the new app %d (orphans of the old tree?)", nodes, after.PID)
		}
		if n, _ := strconv.Atoi(c.show("NRestarts")); n != restarts+1 {
			t.Errorf("NRestarts = %d, want %d", n, restarts+1)
		}
		if j := c.journal(since); strings.Contains(j, "EADDRINUSE") {
			t.Errorf("the new app hit EADDRINUSE:\n%s", j)
		}
	})

	step("5 SIGSTOP the agent: the watchdog restarts it", func(t *testing.T) {
		c.serving(t, stepTimeout, "the agent to serve")
		agentPID := c.mainPID()
		since := time.Now()
		c.must("kill", "-STOP", strconv.Itoa(agentPID))
		testkit.EventuallyEvery(t, watchdogTimeout, pollInterval, "the watchdog to replace the stopped agent", func() (bool, string) {
			pid := c.mainPID()
			return pid != 0 && pid != agentPID, fmt.Sprintf("MainPID=%d", pid)
		})
		if j := c.journal(since); !strings.Contains(j, "Watchdog timeout") {
			t.Errorf("no watchdog timeout in the journal:\n%s", j)
		}
		after := c.serving(t, stepTimeout, "the app to serve under the new agent")
		if nodes := c.nodePIDs(); !slices.Equal(nodes, []int{after.PID}) {
			t.Errorf("node processes %v, want only the new app %d", nodes, after.PID)
		}
	})

	step("6 broken config and reload: old config kept", func(t *testing.T) {
		before := c.serving(t, stepTimeout, "the agent to serve")
		agentPID := c.mainPID()
		broken := append(slices.Clone(goodConfig), []byte("\n[bogus]\nkey = 1\n")...)
		if err := os.WriteFile(confInTree, broken, 0o640); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := os.WriteFile(confInTree, goodConfig, 0o640); err != nil {
				t.Error(err)
			}
		}()
		if out, err := c.run("agent", "check", "--config", "/etc/agent/agent.toml"); err == nil {
			t.Errorf("agent check accepted the broken config:\n%s", out)
		} else if !strings.Contains(err.Error(), "exit status 2") {
			t.Errorf("agent check on a broken config: %v, want exit status 2", err)
		}

		since := time.Now()
		if _, err := c.run("systemctl", "reload", "agent.service"); err != nil {
			t.Errorf("systemctl reload: %v", err)
		}
		// The agent logs the refused config (naming the file, with line:col).
		testkit.EventuallyEvery(t, stepTimeout, pollInterval, "the agent to log the refused config", func() (bool, string) {
			j := c.journal(since)
			return strings.Contains(j, "bogus"), "journal since reload:\n" + j
		})
		if pid := c.mainPID(); pid != agentPID {
			t.Errorf("MainPID changed %d -> %d: the agent restarted", agentPID, pid)
		}
		after := c.serving(t, stepTimeout, "the agent to keep serving")
		if after.PID != before.PID {
			t.Errorf("node pid changed %d -> %d on a refused reload", before.PID, after.PID)
		}
		if s := c.show("SubState"); s != "running" {
			t.Errorf("SubState = %s after the reload, want running", s)
		}
	})

	step("7 reboot: the agent and the app come back by themselves", func(t *testing.T) {
		c.serving(t, stepTimeout, "the agent to serve")
		// The container's systemd reboots cleanly; nspawn then exits (133), and
		// the tree boots again as a machine would.
		_, _ = c.run("systemctl", "reboot")
		select {
		case <-c.done:
		case <-time.After(bootTimeout):
			t.Fatalf("the container did not go down within %v after systemctl reboot", bootTimeout)
		}
		var ee *exec.ExitError
		if !errors.As(c.err, &ee) || ee.ExitCode() != 133 {
			t.Logf("systemd-nspawn exited with %v after reboot (133 expected)", c.err)
		}
		c = boot(t, tree, name, console, c.opts)
		st := c.serving(t, bootTimeout, "the agent to serve after the reboot")
		if st.Restarts != 0 {
			t.Errorf("restarts = %d after a fresh boot, want 0", st.Restarts)
		}
		if e := c.show("UnitFileState"); e != "enabled" {
			t.Errorf("UnitFileState = %s, want enabled", e)
		}
	})

	step("8 dpkg -r stops and disables the agent", func(t *testing.T) {
		before := c.serving(t, stepTimeout, "the agent to serve")
		c.must("dpkg", "-r", "agent")
		if a := c.show("ActiveState"); a != "inactive" {
			t.Errorf("ActiveState = %s after dpkg -r, want inactive", a)
		}
		if nodes := c.nodePIDs(); len(nodes) != 0 {
			t.Errorf("node processes %v left after dpkg -r (app was %d)", nodes, before.PID)
		}
		if _, err := os.Lstat(filepath.Join(tree, "etc/systemd/system/multi-user.target.wants/agent.service")); err == nil {
			t.Errorf("agent.service is still enabled after dpkg -r")
		}
		// dpkg keeps an edited conffile on remove.
		if data, err := os.ReadFile(confInTree); err != nil || string(data) != string(goodConfig) {
			t.Errorf("/etc/agent/agent.toml after dpkg -r: %v, want the config kept", err)
		}
	})

	step("9 agent install without a package", func(t *testing.T) {
		copyInto(t, filepath.Join(bin, "agent"), filepath.Join(tree, "root/agent"), 0o755)
		c.must("/root/agent", "install", "--config", "/etc/agent/agent.toml")
		st := c.serving(t, stepTimeout, "the installed agent to serve")
		unit, err := os.ReadFile(filepath.Join(tree, "etc/systemd/system/agent.service"))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(root, "packaging/agent.service"))
		if err != nil {
			t.Fatal(err)
		}
		if string(unit) != string(want) {
			t.Errorf("/etc/systemd/system/agent.service differs from packaging/agent.service")
		}
		if target, err := os.Readlink(filepath.Join(tree, "usr/bin/agentctl")); err != nil || target != "agent" {
			t.Errorf("/usr/bin/agentctl: readlink = %q, %v", target, err)
		}
		if e := c.show("UnitFileState"); e != "enabled" {
			t.Errorf("UnitFileState = %s, want enabled", e)
		}
		// Again: nothing changes, nothing restarts.
		agentPID := c.mainPID()
		c.must("/usr/bin/agent", "install", "--config", "/etc/agent/agent.toml")
		if pid := c.mainPID(); pid != agentPID {
			t.Errorf("a second install restarted the agent (MainPID %d -> %d)", agentPID, pid)
		}
		if after := c.serving(t, stepTimeout, "the agent to keep serving"); after.PID != st.PID {
			t.Errorf("a second install restarted the app (pid %d -> %d)", st.PID, after.PID)
		}
	})
}

// buildPackage builds the static binary and the .deb into work exactly as
// `make package` does, and returns the binary's directory and the .deb.
func buildPackage(t *testing.T, root, work, version string) (bin, deb string) {
	t.Helper()
	bin, dist := filepath.Join(work, "bin"), filepath.Join(work, "dist")
	out, err := exec.Command("make", "-C", root, "--no-print-directory", "package",
		"BINDIR="+bin, "DISTDIR="+dist, "VERSION="+version).CombinedOutput()
	if err != nil {
		t.Fatalf("make package: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one .deb in %s, got %q", dist, debs)
	}
	return bin, debs[0]
}

func copyInto(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, mode); err != nil {
		t.Fatal(err)
	}
}
