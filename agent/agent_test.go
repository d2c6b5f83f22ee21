package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/testkit"
	"agent/supervisor"
)

// waitTime bounds waits on real processes; generous for a loaded CI machine.
const waitTime = 60 * time.Second

func needNode(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	return node
}

// freePort returns a loopback port reserved for the test (testkit.Port):
// no other test, here or in another process, is given it meanwhile.
func freePort(t *testing.T) int { return testkit.Port(t) }

func appPath(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "apps", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type running struct {
	t      *testing.T
	a      *Agent
	cfg    *Config
	socket string
	health string // base URL of the health page
	reload chan struct{}
	cancel context.CancelFunc
	errc   chan error
}

// startAgent runs an agent on the TOML config text until the test ends.
// "SOCKET" in the text is replaced by a socket path in a temp dir.
func startAgent(t *testing.T, text string) *running {
	t.Helper()
	return startAgentWith(t, text, Options{Version: "test"})
}

// startAgentWith is startAgent with the agent's options (a fake clock).
func startAgentWith(t *testing.T, text string, opts Options) *running {
	t.Helper()
	dir := t.TempDir()
	socket := filepath.Join(dir, "agent.sock")
	text = strings.ReplaceAll(text, "SOCKET", socket)
	path := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	a := New(cfg, log, opts)
	r := &running{t: t, a: a, cfg: cfg, socket: socket, reload: make(chan struct{}, 1), errc: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.errc <- a.Run(ctx, r.reload) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.errc:
		case <-time.After(waitTime):
			t.Error("agent did not stop")
		}
	})
	r.waitFor("the health server", func() bool { return a.health.Addr() != nil })
	r.health = "http://" + a.health.Addr().String() + cfg.Health.Path
	return r
}

// waitFor waits until cond, a condition outside the agent's status (a
// process, an HTTP answer, an RSS sample), holds.
func (r *running) waitFor(what string, cond func() bool) {
	r.t.Helper()
	testkit.EventuallyMsg(r.t, waitTime, what, func() (bool, string) {
		if cond() {
			return true, ""
		}
		return false, fmt.Sprintf("status %+v", r.a.Status())
	})
}

// waitStatus waits until cond holds for the agent's status, looked at
// again on each change the agent publishes.
func (r *running) waitStatus(what string, cond func(Status) bool) Status {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	var s Status
	if err := r.a.WaitFor(ctx, func(st Status) bool { s = st; return cond(st) }); err != nil {
		r.t.Fatalf("timed out waiting for %s; status %+v", what, r.a.Status())
	}
	return s
}

func (r *running) waitState(state string) Status {
	r.t.Helper()
	return r.waitStatus("state "+state, func(s Status) bool { return s.State == state })
}

// client talks to the agent over its control socket, as agentctl does.
func (r *running) client() *Client { return &Client{Socket: r.socket} }

// ask runs one control request (restart, stop, start) and fails the test
// on an error.
func (r *running) ask(what string, do func(context.Context) (*Status, error)) *Status {
	r.t.Helper()
	s, err := do(context.Background())
	if err != nil {
		r.t.Fatalf("%s: %v", what, err)
	}
	return s
}

func (r *running) ctlStatus() Status {
	r.t.Helper()
	s, err := r.client().Status(context.Background())
	if err != nil {
		r.t.Fatalf("status over the control socket: %v", err)
	}
	return *s
}

// healthGet returns the health page's status code and body.
func healthGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func (r *running) waitHealth(code int, body string) {
	r.t.Helper()
	r.waitFor(fmt.Sprintf("health %d %q", code, body), func() bool {
		c, b := healthGet(r.t, r.health)
		return c == code && (body == "" || b == body)
	})
}

func serverConfig(t *testing.T, port int, extra string) string {
	node := needNode(t)
	return fmt.Sprintf(`
name = "web"
[app]
command = [%q, %q]
env = { PORT = "%d" }
%s
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
`, node, appPath(t, "server.js"), port, extra)
}

func TestHealthFollowsTheAppThroughItsStates(t *testing.T) {
	port := freePort(t)
	gate := filepath.Join(t.TempDir(), "listen-now")
	r := startAgent(t, serverConfig(t, port, fmt.Sprintf(`env_file = %q
[restart]
delay = "1s"
max_restarts = 1
window = "10m"
[stop]
drain = "1s"
timeout = "5s"
[probe]
tcp = "127.0.0.1:%d"
startup_timeout = "5m"
`, writeEnvFile(t, "LISTEN_WHEN="+gate), port)))

	// Held in starting until the app listens.
	r.waitHealth(503, "starting")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.waitHealth(200, "")
	s := r.ctlStatus()
	if s.State != "running" || !s.Ready || !s.Healthy || s.PID == nil {
		t.Fatalf("status %+v, want running, ready, healthy with a pid", s)
	}

	// A crash: backoff, then running again.
	http.Get(fmt.Sprintf("http://127.0.0.1:%d/crash", port))
	r.waitHealth(503, "backoff")
	r.waitHealth(200, "")
	if s := r.ctlStatus(); s.Restarts != 1 || s.LastExit == nil || s.LastExit.Reason != "crashed" || *s.LastExit.Code != 1 {
		t.Fatalf("after a crash: %+v", s)
	}

	// A second crash spends the budget (max_restarts = 1): failed.
	http.Get(fmt.Sprintf("http://127.0.0.1:%d/crash", port))
	r.waitHealth(503, "failed")

	// agentctl restart clears it.
	r.ask("restart", r.client().Restart)
	r.waitHealth(200, "")

	// Stop and start.
	r.ask("stop", r.client().Stop)
	r.waitHealth(503, "stopped")
	if s := r.ctlStatus(); s.PID != nil || s.LastExit.Reason != "stop" {
		t.Fatalf("after stop: %+v", s)
	}
	r.ask("start", r.client().Start)
	r.waitHealth(200, "")
	pid := *r.ctlStatus().PID

	// Shutdown: draining (503) while the app still runs, then stopped.
	r.cancel()
	r.waitHealth(503, "draining")
	if !processAlive(pid) {
		t.Fatal("app stopped before the drain ended")
	}
	select {
	case err := <-r.errc:
		if err != nil {
			t.Fatalf("Run returned %v on shutdown", err)
		}
		r.errc <- nil
	case <-time.After(waitTime):
		t.Fatal("agent did not stop")
	}
	r.waitFor("the app to be gone", func() bool { return !processAlive(pid) })
}

func writeEnvFile(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "app.env")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func TestAgentctlAgainstRunningAgent(t *testing.T) {
	port := freePort(t)
	r := startAgent(t, serverConfig(t, port, fmt.Sprintf(`
[node]
max_old_space_size = 300
[probe]
http = "http://127.0.0.1:%d/"
`, port)))
	r.waitHealth(200, "")

	// The socket is the agent's alone.
	fi, err := os.Stat(r.socket)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode %o, want 600", perm)
	}

	// status --json, field by field.
	s := r.ctlStatus()
	if s.Name != "web" || s.State != "running" || !s.Ready || !s.Healthy || s.PID == nil || *s.PID <= 0 {
		t.Errorf("status identity: %+v", s)
	}
	if s.HeapCapMB != 300 {
		t.Errorf("heap_cap_mb %d, want 300", s.HeapCapMB)
	}
	if s.Restarts != 0 || s.LastExit != nil || len(s.Exits) != 0 {
		t.Errorf("fresh agent reports past exits: %+v", s)
	}
	r.waitFor("an RSS sample of the running node", func() bool { return r.a.Status().RSSBytes > 10<<20 })
	s = r.ctlStatus()
	if s.RSSBytes < 10<<20 || s.Agent.PID != os.Getpid() || s.Agent.Version != "test" || s.Agent.RSSBytes == 0 {
		t.Errorf("rss and agent fields: %+v", s)
	}
	if s.Agent.OOMWatch == "" || (s.Agent.OOMWatch != "ok" && !strings.HasPrefix(s.Agent.OOMWatch, "unavailable: ")) {
		t.Errorf("oom_watch %q", s.Agent.OOMWatch)
	}
	// The raw JSON has the contract's names, including nulls.
	resp, err := r.client().client().Get("http://agent/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	rawb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	raw := string(rawb)
	for _, key := range []string{`"name"`, `"state"`, `"pid"`, `"ready"`, `"healthy"`, `"uptime_seconds"`, `"restarts"`, `"rss_bytes"`, `"heap_cap_mb"`, `"oom_kills"`, `"last_exit": null`, `"exits": []`, `"oom_watch"`} {
		if !strings.Contains(raw, key) {
			t.Errorf("status JSON lacks %s:\n%s", key, raw)
		}
	}

	// restart: a new pid, reason restart.
	old := *s.PID
	// Restart answers once the new process is ready.
	if st := r.ask("restart", r.client().Restart); st.State != "running" || st.PID == nil || *st.PID == old {
		t.Fatalf("restart answered %+v, want a new process running", st)
	}
	s = r.ctlStatus()
	if s.LastExit == nil || s.LastExit.Reason != "restart" || s.Restarts != 1 || len(s.Exits) != 1 {
		t.Errorf("after restart: %+v", s)
	}
	if processAlive(old) {
		t.Errorf("old pid %d still alive", old)
	}

	// logs.
	var logs []supervisor.Line
	if err := r.client().Logs(context.Background(), 5, false, func(l supervisor.Line) { logs = append(logs, l) }); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(logs, func(l supervisor.Line) bool {
		return strings.Contains(l.Text, fmt.Sprintf("listening %d", port)) && l.Stream == "stdout"
	}) {
		t.Errorf("logs: %+v", logs)
	}
	// logs -f delivers lines as they come.
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan supervisor.Line, 10)
	go (&Client{Socket: r.socket}).Logs(ctx, 0, true, func(l supervisor.Line) { got <- l })
	r.ask("restart", r.client().Restart)
	select {
	case l := <-got:
		if !strings.Contains(l.Text, "listening") {
			t.Errorf("followed line %q", l.Text)
		}
	case <-time.After(waitTime):
		t.Error("logs -f delivered nothing")
	}
	cancel()

	// Requests carrying browser headers are refused.
	hc := (&Client{Socket: r.socket}).client()
	req, _ := http.NewRequest("POST", "http://agent/v1/stop", nil)
	req.Header.Set("Origin", "http://evil.example")
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("request with Origin: %d, want 403", resp.StatusCode)
	}
	if st := r.a.Status().State; st == "stopped" || st == "stopping" {
		t.Errorf("a refused request stopped the app")
	}

	// A second agent on the same socket refuses to start and leaves it.
	if _, err := listenControl(r.socket, -1); !errors.Is(err, ErrSocketInUse) {
		t.Errorf("second listen: %v, want ErrSocketInUse", err)
	}
	if _, err := os.Stat(r.socket); err != nil {
		t.Errorf("live socket removed: %v", err)
	}
}

func TestStaleSocketIsReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody listens: stale
	ln2, err := listenControl(path, -1)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln2.Close()
	// A regular file at the path is never removed.
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := listenControl(path, -1); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
}

func TestControlSocketGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	path := filepath.Join(t.TempDir(), "agent.sock")
	gid := 65534 // nogroup
	ln, err := listenControl(path, gid)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("mode %o, want 660", fi.Mode().Perm())
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Gid) != gid {
		t.Errorf("group %d, want %d", st.Gid, gid)
	}
}
