package cli

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
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
	metrics string
	client  *agent.Client
	agent   *exec.Cmd
	logPath string
	cfgPath string
	cfgText string
}

// requestsCounted sums agent_proxy_requests_total over its codes.
func (r *upgradeRig) requestsCounted() uint64 {
	r.t.Helper()
	resp, err := http.Get("http://" + r.metrics + "/metrics")
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum uint64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "agent_proxy_requests_total{"); ok {
			_, v, _ := strings.Cut(rest, "} ")
			n, _ := strconv.ParseFloat(v, 64)
			sum += uint64(n)
		}
	}
	return sum
}

// waitLog waits for a line of the agent's log that holds text.
func (r *upgradeRig) waitLog(text string) {
	r.t.Helper()
	testkit.Eventually(r.t, waitTime, "agent log line "+strconv.Quote(text), func() bool {
		b, _ := os.ReadFile(r.logPath)
		return bytes.Contains(b, []byte(text))
	})
}

// notifySocket is a stand-in for systemd's notify socket: a real unix
// datagram socket that keeps what the agent sends.
type notifySocket struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T, dir string) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(dir, "notify.sock"), msgs: make(chan string, 1000)}
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		oob := make([]byte, 1024)
		for {
			k, oobn, _, _, err := pc.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			// Descriptors sent along (FDSTORE=1) are closed here.
			if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if fds, err := syscall.ParseUnixRights(&m); err == nil {
						for _, fd := range fds {
							syscall.Close(fd)
						}
					}
				}
			}
			select {
			case n.msgs <- string(buf[:k]):
			default:
			}
		}
	}()
	return n
}

// drain forgets the messages received so far.
func (n *notifySocket) drain() {
	for {
		select {
		case <-n.msgs:
		default:
			return
		}
	}
}

// wait waits for a message holding each of parts, in any order, and
// returns what it saw.
func (n *notifySocket) wait(t *testing.T, parts ...string) {
	t.Helper()
	left := map[string]bool{}
	for _, p := range parts {
		left[p] = true
	}
	deadline := time.After(waitTime)
	var seen []string
	for len(left) > 0 {
		select {
		case m := <-n.msgs:
			seen = append(seen, m)
			for p := range left {
				if strings.Contains(m, p) {
					delete(left, p)
				}
			}
		case <-deadline:
			t.Fatalf("notify: never saw %v; saw %q", left, seen)
		}
	}
}

// startUpgradeRig starts the agent program bin (as the path bin, its
// argv[0]) supervising the demo app behind the traffic front.
func startUpgradeRig(t *testing.T, dir, bin string, env ...string) *upgradeRig {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node not installed")
	}
	ports := testkit.Ports(t, 4)
	app, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	r := &upgradeRig{t: t, dir: dir, socket: filepath.Join(dir, "agent.sock"), proxy: fmt.Sprintf("127.0.0.1:%d", ports[0]),
		metrics: fmt.Sprintf("127.0.0.1:%d", ports[3])}
	text := fmt.Sprintf(`name = "web"
[app]
command = ["node", "app.js"]
dir = %q
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
[metrics]
listen = %q
[log]
format = "json"
`, app, ports[1], r.proxy, ports[2], r.socket, r.metrics)
	cfg := filepath.Join(dir, "agent.toml")
	r.cfgPath, r.cfgText = cfg, text
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	r.logPath = filepath.Join(dir, "agent.log")
	logf, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	r.agent = exec.Command(bin, "run", "--config", cfg)
	r.agent.Env = append(os.Environ(), env...)
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

// socketsOf returns the sockets process pid has open, by inode.
func socketsOf(t *testing.T, pid int) map[string]bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			out[l] = true
		}
	}
	return out
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

// keptConn is one client connection kept alive between requests.
type keptConn struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialKept(t *testing.T, addr string) *keptConn {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	k := &keptConn{t: t, nc: nc, br: bufio.NewReader(nc)}
	k.get("first")
	return k
}

// get sends one request on the kept connection and reads its answer.
func (k *keptConn) get(step string) {
	k.t.Helper()
	k.nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(k.nc, "GET / HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		k.t.Fatalf("%s: the kept connection: %v", step, err)
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		k.t.Fatalf("%s: the kept connection: %v", step, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || resp.Close || !strings.HasPrefix(string(body), "ok ") {
		k.t.Fatalf("%s: the kept connection: %d %q close=%v %v", step, resp.StatusCode, body, resp.Close, err)
	}
}

// dialWebSocket opens a WebSocket to the test app through the proxy.
func dialWebSocket(t *testing.T, addr string) *keptConn {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(nc, "GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	k := &keptConn{t: t, nc: nc, br: bufio.NewReader(nc)}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("websocket handshake: %v %v", resp, err)
	}
	k.echo("first")
	return k
}

// echo sends a message on the WebSocket and reads it back.
func (k *keptConn) echo(step string) {
	k.t.Helper()
	k.nc.SetDeadline(time.Now().Add(30 * time.Second))
	msg := "echo " + step
	if _, err := io.WriteString(k.nc, msg); err != nil {
		k.t.Fatalf("%s: websocket: %v", step, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(k.br, got); err != nil || string(got) != msg {
		k.t.Fatalf("%s: websocket echo %q, %v; want %q", step, got, err, msg)
	}
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

	// An idle keep-alive connection and an open WebSocket, used across
	// every upgrade: never reconnected.
	kept := dialKept(t, r.proxy)

	// A restart first, so that there is an exit and a count to carry.
	syscall.Kill(*first.PID, syscall.SIGKILL)
	before := r.waitStatus("restarted after the kill", func(s *agent.Status) bool {
		return s.Ready && s.State == "running" && s.Restarts == 1 && s.PID != nil && *s.PID != *first.PID
	})
	appPID, agentPID := *before.PID, before.Agent.PID
	ws := dialWebSocket(t, r.proxy) // to the app process that stays

	check := func(step, version string, upgrades int) {
		t.Helper()
		kept.get(step)
		ws.echo(step)
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
		case s.Proxy == nil || s.Proxy.Requests+50 < uint64(load.Sent()):
			// The load's requests since it began are all counted (but the
			// few in flight), those before each upgrade too.
			t.Errorf("%s: proxy counters %+v, want at least the %d requests sent", step, s.Proxy, load.Sent())
		case r.requestsCounted()+100 < s.Proxy.Requests:
			// Both count every forwarded request; both are carried over.
			t.Errorf("%s: /metrics counts %d requests, the status %d", step, r.requestsCounted(), s.Proxy.Requests)
		case s.State != "running" || !s.Ready:
			t.Errorf("%s: app %s ready %v", step, s.State, s.Ready)
		}
		// The log ring too: the first process's line is still there.
		if _, out := r.agentctl(v2, nil, "logs", "-n", "1000"); !strings.Contains(out, fmt.Sprintf(" %d | listening", *first.PID)) {
			t.Errorf("%s: agentctl logs lost the output from before the upgrade:\n%s", step, out)
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
	// The config file on disk, edited since the start into one the new
	// program refuses (what a restart would load): refused with where.
	os.WriteFile(r.cfgPath, []byte(r.cfgText+"\n[app]\nnope = 1\n"), 0o644)
	if code, out := r.agentctl(v2, nil, "upgrade", "--binary", v1); code != 1 || !strings.Contains(out, r.cfgPath+":") {
		t.Errorf("upgrade with a broken config on disk: exit %d %q, want 1 naming %s:LINE:COL", code, out, r.cfgPath)
	}
	os.WriteFile(r.cfgPath, []byte(r.cfgText), 0o644)
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

	// An app process the upgraded agent starts holds none of the agent's
	// descriptors: the ones handed over are close-on-exec again.
	if code, out := r.agentctl(v2, nil, "restart"); code != 0 {
		t.Fatalf("restart after the upgrades: exit %d %s", code, out)
	}
	s := r.waitStatus("restarted", func(s *agent.Status) bool { return s.Ready && s.PID != nil && *s.PID != appPID })
	agentSockets := socketsOf(t, agentPID)
	for inode := range socketsOf(t, *s.PID) {
		if agentSockets[inode] {
			t.Errorf("the app process %d holds the agent's socket %s", *s.PID, inode)
		}
	}
	if len(agentSockets) < 3 {
		t.Errorf("the agent has %d sockets open, want its listeners at least", len(agentSockets))
	}

	rep := load.Stop()
	stopped = true
	t.Logf("load across 3 upgrades and 7 refusals: %s failed (%s), %d connections", rep, lbclient.FormatKinds(rep.Kinds), rep.Conns)
	if rep.Failed != 0 || rep.Sent < 200 {
		t.Errorf("load: %s failed: %s %v", rep, lbclient.FormatKinds(rep.Kinds), rep.Errors)
	}
}

// An upgrade waits for the requests in flight; what is asked meanwhile
// waits for the new program (a SIGHUP, agentctl restart in the backlog) or
// is refused (a second upgrade). The new program tells systemd it is ready,
// feeds the watchdog and stores its listening sockets again.
func TestUpgradeDrainsAndCarriesWhatWasAsked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("upgrades are for root")
	}
	dir := t.TempDir()
	v1 := buildAgent(t, dir, "v1.0.0-test")
	v2 := buildAgent(t, dir, "v2.0.0-test")
	notify := listenNotify(t, dir)
	r := startUpgradeRig(t, dir, v1, "NOTIFY_SOCKET="+notify.path, "WATCHDOG_USEC=400000")
	notify.wait(t, "READY=1", "WATCHDOG=1", "FDNAME=proxy")
	first := r.waitStatus("running", func(s *agent.Status) bool { return s.Ready })

	// A request in flight when the upgrade begins: it is answered.
	slow := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + r.proxy + "/slow")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "ok slow") {
				err = fmt.Errorf("%d %q", resp.StatusCode, b)
			}
		}
		slow <- err
	}()
	r.waitStatus("the slow request in flight", func(s *agent.Status) bool { return s.Proxy != nil && s.Proxy.InFlight == 1 })
	upgraded := make(chan string, 1)
	go func() {
		code, out := r.agentctl(v2, nil, "upgrade", "--binary", v2)
		upgraded <- fmt.Sprintf("exit %d: %s", code, out)
	}()
	r.waitLog("upgrade: not accepting")
	// The config changes and the agent gets SIGHUP during the upgrade.
	os.WriteFile(r.cfgPath, []byte(strings.Replace(r.cfgText, `name = "web"`, `name = "web2"`, 1)), 0o644)
	r.agent.Process.Signal(syscall.SIGHUP)
	notify.drain()
	// A restart asked now waits in the control socket's backlog.
	restarted := make(chan string, 1)
	go func() {
		code, out := r.agentctl(v2, nil, "restart")
		restarted <- fmt.Sprintf("exit %d: %s", code, out)
	}()
	if err := <-slow; err != nil {
		t.Errorf("the request in flight: %v", err)
	}
	if got := <-upgraded; !strings.HasPrefix(got, "exit 0") {
		t.Fatalf("upgrade: %s", got)
	}
	if got := <-restarted; !strings.HasPrefix(got, "exit 0") {
		t.Errorf("restart asked during the upgrade: %s", got)
	}
	s := r.waitStatus("the reload carried over and the restart done", func(s *agent.Status) bool {
		return s.Name == "web2" && s.Restarts == 1 && s.Ready
	})
	if s.Agent.Version != "v2.0.0-test" || s.Agent.PID != first.Agent.PID {
		t.Errorf("agent %+v, want v2 in pid %d", s.Agent, first.Agent.PID)
	}
	// The new program speaks to systemd as the old one did.
	notify.wait(t, "READY=1", "WATCHDOG=1", "FDNAME=proxy", "FDNAME=health")

	// A second upgrade asked while one is under way waits for it (in the
	// control socket's backlog) and then runs in the new program.
	go func() {
		resp, err := http.Get("http://" + r.proxy + "/slow")
		if err == nil {
			resp.Body.Close()
		}
		slow <- err
	}()
	r.waitStatus("the slow request in flight", func(s *agent.Status) bool { return s.Proxy != nil && s.Proxy.InFlight == 1 })
	go func() {
		code, out := r.agentctl(v2, nil, "upgrade", "--binary", v1)
		upgraded <- fmt.Sprintf("exit %d: %s", code, out)
	}()
	r.waitLog(`"upgrade":2`)
	if code, out := r.agentctl(v2, nil, "upgrade", "--binary", v2); code != 0 {
		t.Errorf("the second upgrade: exit %d %s", code, out)
	}
	if got := <-upgraded; !strings.HasPrefix(got, "exit 0") {
		t.Errorf("the first upgrade: %s", got)
	}
	if err := <-slow; err != nil {
		t.Errorf("the request in flight: %v", err)
	}
	s = r.waitStatus("both upgrades done", func(s *agent.Status) bool { return s.Agent.Upgrades == 3 })
	if s.Agent.Version != "v2.0.0-test" {
		t.Errorf("after two upgrades in a row: %s, want v2", s.Agent.Version)
	}
}

// A new program that cannot take over goes back to the old one, which
// answers why: nothing is lost, nothing restarts.
func TestUpgradeGoesBackWhenTheNewProgramCannotTakeOver(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("upgrades are for root")
	}
	dir := t.TempDir()
	v1 := buildAgent(t, dir, "v1.0.0-test")
	v2 := buildAgent(t, dir, "v2.0.0-test")
	cannot := filepath.Join(dir, "cannot-take-over")
	os.WriteFile(cannot, []byte("#!/bin/sh\n"+agent.FaultTakeOverEnv+"=1 exec "+v2+` "$@"`+"\n"), 0o755)
	r := startUpgradeRig(t, dir, v1)
	before := r.waitStatus("running", func(s *agent.Status) bool { return s.Ready })
	kept := dialKept(t, r.proxy)
	load, err := lbclient.Load{Addr: r.proxy, Rate: 200, Conns: 10, Duration: 10 * time.Minute}.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer load.Stop()
	code, out := r.agentctl(v2, nil, "upgrade", "--binary", cannot)
	if code != 1 || !strings.Contains(out, "could not take over") || !strings.Contains(out, agent.FaultTakeOverEnv) {
		t.Fatalf("upgrade to a program that cannot take over: exit %d %q, want 1 and why", code, out)
	}
	kept.get("after going back")
	s := r.waitStatus("the old program serving", func(s *agent.Status) bool { return s.Ready })
	if s.Agent.Version != "v1.0.0-test" || s.Agent.Upgrades != 0 || s.Agent.PID != before.Agent.PID || *s.PID != *before.PID || s.Restarts != 0 {
		t.Errorf("after going back: agent %+v, app pid %v restarts %d; want v1, 0 upgrades, pids %d and %d",
			s.Agent, *s.PID, s.Restarts, before.Agent.PID, *before.PID)
	}
	// And it can still be upgraded.
	if code, out := r.agentctl(v2, nil, "upgrade", "--binary", v2); code != 0 {
		t.Fatalf("upgrade after going back: exit %d %s", code, out)
	}
	rep := load.Stop()
	t.Logf("load: %s failed (%s)", rep, lbclient.FormatKinds(rep.Kinds))
	if rep.Failed != 0 {
		t.Errorf("load: %s failed: %s %v", rep, lbclient.FormatKinds(rep.Kinds), rep.Errors)
	}
}

// firstUpgradeCommit is the first commit of this repository whose agent
// upgrades in place (hand-over format 1).
const firstUpgradeCommit = "c50c345"

// buildAgentAt builds the agent program as it was at commit.
func buildAgentAt(t *testing.T, dir, commit, version string) string {
	t.Helper()
	if err := exec.Command("git", "-C", "..", "cat-file", "-e", commit+"^{commit}").Run(); err != nil {
		t.Skipf("commit %s is not in this clone's history (a shallow clone?): %v", commit, err)
	}
	src := filepath.Join(dir, "src-"+commit)
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	archive := exec.Command("sh", "-c", `git -C .. archive "$1" | tar -x -C "$2"`, "sh", commit, src)
	if b, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", commit, err, b)
	}
	out := filepath.Join(dir, "agent-"+version)
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s at %s: %v\n%s", version, commit, err, b)
	}
	return out
}

// The hand-over format's compatibility: an agent built from the first
// commit that had upgrades hands over to this one under load; this one
// does not hand over to that one (it could not serve the kept connections
// handed over): refused, exit 1, nothing changed.
func TestUpgradeFromTheFirstReleaseThatHadUpgrades(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("upgrades are for root")
	}
	dir := t.TempDir()
	old := buildAgentAt(t, dir, firstUpgradeCommit, "v0.1.0-first")
	cur := buildAgent(t, dir, "v2.0.0-test")
	r := startUpgradeRig(t, dir, old)
	kill := r.waitStatus("running", func(s *agent.Status) bool { return s.Ready })
	syscall.Kill(*kill.PID, syscall.SIGKILL)
	before := r.waitStatus("restarted", func(s *agent.Status) bool { return s.Ready && s.Restarts == 1 })
	load, err := lbclient.Load{Addr: r.proxy, Rate: 200, Conns: 10, Duration: 10 * time.Minute}.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer load.Stop()
	if code, out := r.agentctl(cur, nil, "upgrade", "--binary", cur); code != 0 {
		t.Fatalf("upgrade from %s: exit %d %s", firstUpgradeCommit, code, out)
	}
	s := r.waitStatus("upgraded", func(s *agent.Status) bool { return s.Agent.Upgrades == 1 })
	if s.Agent.Version != "v2.0.0-test" || s.Agent.PID != before.Agent.PID || *s.PID != *before.PID ||
		s.Restarts != 1 || len(s.Exits) != 1 {
		t.Errorf("after the upgrade: agent %+v, app pid %d, restarts %d, exits %d; want pids %d and %d, 1 restart and its exit",
			s.Agent, *s.PID, s.Restarts, len(s.Exits), before.Agent.PID, *before.PID)
	}
	code, out := r.agentctl(cur, nil, "upgrade", "--binary", old)
	if code != 1 || !strings.Contains(out, "version 2") {
		t.Errorf("downgrade to %s: exit %d %q, want 1 naming the hand-over version", firstUpgradeCommit, code, out)
	}
	s = r.waitStatus("still serving", func(s *agent.Status) bool { return s.Ready })
	if s.Agent.Version != "v2.0.0-test" || s.Agent.Upgrades != 1 {
		t.Errorf("after the refused downgrade: %+v", s.Agent)
	}
	rep := load.Stop()
	t.Logf("load: %s failed (%s)", rep, lbclient.FormatKinds(rep.Kinds))
	if rep.Failed != 0 {
		t.Errorf("load: %s failed: %s %v", rep, lbclient.FormatKinds(rep.Kinds), rep.Errors)
	}
}

// lastCommitWithoutUpgrades is the last commit whose agent has no upgrade
// in place.
const lastCommitWithoutUpgrades = "c896023"

// An agent from before upgrades in place answers agentctl upgrade with
// exit 4 (the packages then restart it instead), and is left running.
func TestUpgradeOfAnAgentThatPredatesUpgrades(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("upgrades are for root")
	}
	dir := t.TempDir()
	old := buildAgentAt(t, dir, lastCommitWithoutUpgrades, "v0.0.9-before")
	cur := buildAgent(t, dir, "v2.0.0-test")
	r := startUpgradeRig(t, dir, old)
	before := r.waitStatus("running", func(s *agent.Status) bool { return s.Ready })
	code, out := r.agentctl(cur, nil, "upgrade", "--binary", cur)
	if code != CtlNoUpgrade || !strings.Contains(out, "predates upgrades") {
		t.Errorf("upgrade of an agent from %s: exit %d %q, want %d", lastCommitWithoutUpgrades, code, out, CtlNoUpgrade)
	}
	s := r.waitStatus("still serving", func(s *agent.Status) bool { return s.Ready })
	if s.Agent.Version != "v0.0.9-before" || s.Agent.PID != before.Agent.PID || *s.PID != *before.PID {
		t.Errorf("after the refused upgrade: agent %+v, app %d; want it unchanged", s.Agent, *s.PID)
	}
}
