package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"agent/agent"
	"agent/internal/lbclient"
	"agent/internal/testkit"
)

// The upgrade in place, end to end: real agent programs built from this
// tree with different versions, a real Node app behind the traffic front,
// load from a client that never retries, and agentctl asking.

// buildAgent builds the agent program stamped with version into dir.
func buildAgent(t *testing.T, dir, version string) string {
	t.Helper()
	out := filepath.Join(dir, "agent-"+version)
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", out, ".")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", version, err, b)
	}
	return out
}

// installAs copies src to dst (mode 0755) through a rename, as a package
// manager replaces a program.
func installAs(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

type upgradeRig struct {
	t       *testing.T
	dir     string
	socket  string
	proxy   string
	client  *agent.Client
	agent   *exec.Cmd
	logPath string
}

// startUpgradeRig starts the agent program bin (as the path bin, its
// argv[0]) supervising the demo app behind the traffic front.
func startUpgradeRig(t *testing.T, dir, bin string) *upgradeRig {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node not installed")
	}
	ports := testkit.Ports(t, 3)
	app, err := filepath.Abs("../deploy/demo")
	if err != nil {
		t.Fatal(err)
	}
	r := &upgradeRig{t: t, dir: dir, socket: filepath.Join(dir, "agent.sock"), proxy: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	text := fmt.Sprintf(`name = "web"
[app]
command = ["node", "server.js"]
dir = %q
env = { HOST = "127.0.0.1" }
[restart]
delay = "100ms"
[health]
listen = "127.0.0.1:%d"
[proxy]
listen = %q
upstream = "127.0.0.1:%d"
[control]
socket = %q
group = "nogroup"
[log]
format = "json"
`, app, ports[1], r.proxy, ports[2], r.socket)
	cfg := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	r.logPath = filepath.Join(dir, "agent.log")
	logf, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	r.agent = exec.Command(bin, "run", "--config", cfg)
	r.agent.Stdout, r.agent.Stderr = logf, logf
	if err := r.agent.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { r.agent.Wait(); close(exited) }()
	t.Cleanup(func() {
		r.agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			r.agent.Process.Kill()
			t.Error("agent did not stop")
		}
		if t.Failed() {
			b, _ := os.ReadFile(r.logPath)
			t.Logf("agent log:\n%s", tailLines(string(b), 60))
		}
	})
	r.client = &agent.Client{Socket: r.socket}
	r.waitStatus("the app running", func(s *agent.Status) bool { return s.State == "running" && s.Ready })
	return r
}

func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (r *upgradeRig) status() (*agent.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return r.client.Status(ctx)
}

func (r *upgradeRig) waitStatus(what string, cond func(*agent.Status) bool) *agent.Status {
	r.t.Helper()
	var last *agent.Status
	testkit.EventuallyMsg(r.t, waitTime, what, func() (bool, string) {
		s, err := r.status()
		if err != nil {
			return false, err.Error()
		}
		last = s
		return cond(s), fmt.Sprintf("state %s ready %v pid %v restarts %d agent %+v", s.State, s.Ready, s.PID, s.Restarts, s.Agent)
	})
	return last
}

// agentctl runs the program bin as agentctl with args, as cred's user
// when cred is not nil.
func (r *upgradeRig) agentctl(bin string, cred *syscall.Credential, args ...string) (int, string) {
	r.t.Helper()
	cmd := exec.Command(bin, append([]string{"ctl", "--socket", r.socket, "--timeout", "2m"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		r.t.Fatal(err)
	}
	return code, out.String()
}

func TestUpgradeInPlaceUnderLoad(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("upgrades are for root")
	}
	dir := t.TempDir()
	// agentctl as nobody reaches the socket and its own program.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	v1 := buildAgent(t, dir, "v1.0.0-test")
	v2 := buildAgent(t, dir, "v2.0.0-test")
	installed := filepath.Join(dir, "agent") // the path the agent is first started as
	installAs(t, v1, installed)

	r := startUpgradeRig(t, dir, installed)
	first := r.waitStatus("running", func(s *agent.Status) bool { return s.Ready })

	load, err := lbclient.Load{Addr: r.proxy, Rate: 200, Conns: 10, Duration: 10 * time.Minute}.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			load.Stop()
		}
	}()

	// A restart first, so that there is an exit and a count to carry.
	syscall.Kill(*first.PID, syscall.SIGKILL)
	before := r.waitStatus("restarted after the kill", func(s *agent.Status) bool {
		return s.Ready && s.State == "running" && s.Restarts == 1 && s.PID != nil && *s.PID != *first.PID
	})
	appPID, agentPID := *before.PID, before.Agent.PID

	check := func(step, version string, upgrades int) {
		t.Helper()
		s := r.waitStatus(step+": status after the upgrade", func(s *agent.Status) bool { return s.Agent.Upgrades == upgrades })
		switch {
		case s.Agent.Version != version:
			t.Errorf("%s: version %s, want %s", step, s.Agent.Version, version)
		case s.Agent.PID != agentPID:
			t.Errorf("%s: agent pid %d, want %d (the same process)", step, s.Agent.PID, agentPID)
		case s.PID == nil || *s.PID != appPID:
			t.Errorf("%s: app pid %v, want %d (not restarted)", step, s.PID, appPID)
		case s.Restarts != 1 || len(s.Exits) != 1 || s.Exits[0].Reason != "signaled":
			t.Errorf("%s: restarts %d, exits %+v: want the one SIGKILL carried", step, s.Restarts, s.Exits)
		case !s.Agent.Started.Equal(before.Agent.Started):
			t.Errorf("%s: agent.started %v, want %v (kept across upgrades)", step, s.Agent.Started, before.Agent.Started)
		case s.Proxy == nil || s.Proxy.Requests < before.Proxy.Requests:
			t.Errorf("%s: proxy counters %+v, want at least %+v", step, s.Proxy, before.Proxy)
		case s.State != "running" || !s.Ready:
			t.Errorf("%s: app %s ready %v", step, s.State, s.Ready)
		}
	}

	// v1 -> v2 with --binary.
	if code, out := r.agentctl(v2, nil, "upgrade", "--binary", v2); code != 0 {
		t.Fatalf("upgrade to v2: exit %d: %s", code, out)
	}
	check("v1 -> v2", "v2.0.0-test", 1)

	// v2 -> v1 without --binary: the path the agent was first started as,
	// replaced meanwhile as a package manager does.
	installAs(t, v1, installed)
	if code, out := r.agentctl(v2, nil, "upgrade"); code != 0 {
		t.Fatalf("upgrade back to v1 from the first path: exit %d: %s", code, out)
	}
	check("v2 -> v1", "v1.0.0-test", 2)

	// And again, now that the running program was started from v2's path
	// in between: the default stays the first path.
	installAs(t, v2, installed)
	if code, out := r.agentctl(installed, nil, "upgrade"); code != 0 {
		t.Fatalf("upgrade to v2 from the first path: exit %d: %s", code, out)
	}
	check("v1 -> v2 again", "v2.0.0-test", 3)

	// Refused upgrades change nothing: exit 1 with the reason.
	broken := filepath.Join(dir, "broken")
	os.WriteFile(broken, []byte("\x7fELF not really a program\n"), 0o755)
	rejects := filepath.Join(dir, "rejects")
	// A new program that refuses the config, as one with a stricter
	// schema would.
	os.WriteFile(rejects, []byte("#!/bin/sh\necho \"agent.toml:3:1: unknown key app.nope\" >&2\nexit 2\n"), 0o755)
	notRoot := filepath.Join(dir, "not-roots")
	installAs(t, v1, notRoot)
	os.Chown(notRoot, 65534, 65534)
	groupWritable := filepath.Join(dir, "group-writable")
	installAs(t, v1, groupWritable)
	os.Chmod(groupWritable, 0o775)
	for _, c := range []struct{ name, binary, want string }{
		{"a broken program", broken, "refused"},
		{"a program that rejects the config", rejects, "unknown key app.nope"},
		{"a program not owned by root", notRoot, "not owned by root"},
		{"a group-writable program", groupWritable, "writable by others"},
		{"a missing program", filepath.Join(dir, "nothing"), "no such file"},
	} {
		code, out := r.agentctl(v2, nil, "upgrade", "--binary", c.binary)
		if code != 1 || !strings.Contains(out, c.want) {
			t.Errorf("upgrade to %s: exit %d %q, want 1 and %q", c.name, code, out, c.want)
		}
	}
	// A caller that is not root, even in control.group: refused.
	g, err := user.LookupGroup("nogroup")
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	if code, out := r.agentctl(v2, &syscall.Credential{Uid: 65534, Gid: uint32(gid)}, "upgrade", "--binary", v1); code != 1 || !strings.Contains(out, "root only") {
		t.Errorf("upgrade by nobody: exit %d %q, want 1, root only", code, out)
	}
	check("after the refused ones", "v2.0.0-test", 3)

	rep := load.Stop()
	stopped = true
	t.Logf("load across 3 upgrades and 6 refusals: %s failed (%s), %d connections", rep, lbclient.FormatKinds(rep.Kinds), rep.Conns)
	if rep.Failed != 0 || rep.Sent < 200 {
		t.Errorf("load: %s failed: %s %v", rep, lbclient.FormatKinds(rep.Kinds), rep.Errors)
	}
}
