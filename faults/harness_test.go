package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"agent/internal/testkit"
)

// agentBin is the agent binary TestMain builds.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "agent")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	build := exec.Command(gobin, "build", "-o", agentBin, ".")
	build.Dir = ".." // the module root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build the agent:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	table := results.markdown()
	fmt.Print("\n" + table)
	if p := os.Getenv("FAULTS_TABLE"); p != "" {
		if !filepath.IsAbs(p) {
			// Relative to the module root, where the README's command runs
			// (go test runs this binary in the package's directory).
			p = filepath.Join("..", p)
		}
		if err := os.WriteFile(p, []byte(table), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "write the table:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// row is one line of the results table.
type row struct {
	Fault    string
	Happened string
	Recover  string // time to recover, "—" when nothing needed recovering
	Lost     string // requests lost, "—" when none were sent
	seq      int
	failed   bool
	skipped  bool
}

type resultTable struct {
	mu   sync.Mutex
	rows []*row
}

var results resultTable

// newRow starts the test's row; call it before t.Parallel so that rows
// keep the order of the tests. The row is marked when the test fails or is
// skipped.
func newRow(t *testing.T, fault string) *row {
	results.mu.Lock()
	r := &row{Fault: fault, Recover: "—", Lost: "—", seq: len(results.rows)}
	results.rows = append(results.rows, r)
	results.mu.Unlock()
	t.Cleanup(func() {
		results.mu.Lock()
		defer results.mu.Unlock()
		r.failed, r.skipped = t.Failed(), t.Skipped()
	})
	return r
}

func (r *row) set(happened, recover, lost string) {
	results.mu.Lock()
	defer results.mu.Unlock()
	r.Happened, r.Recover, r.Lost = happened, recover, lost
}

func (tb *resultTable) markdown() string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	rows := slices.Clone(tb.rows)
	slices.SortFunc(rows, func(a, b *row) int { return a.seq - b.seq })
	var b strings.Builder
	b.WriteString("| fault | what happened | time to recover | requests lost |\n|---|---|---|---|\n")
	for _, r := range rows {
		h := r.Happened
		switch {
		case r.skipped:
			h = "SKIPPED: " + h
		case r.failed:
			h = "**FAILED**: " + h
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Fault, strings.ReplaceAll(h, "|", "\\|"), r.Recover, r.Lost)
	}
	return b.String()
}

// ms formats a duration for the table.
func ms(d time.Duration) string {
	if d >= 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// appSpec describes the agent's config for one test.
type appSpec struct {
	Env     map[string]string // the app's env besides PORT
	Restart string            // body of [restart]; default: fast restarts
	Probe   string            // body of [probe]; default: an HTTP probe of the app; PORT is the app's port
	Memory  string            // body of [memory]; default: watch_oom = false
	Socket  string            // control.socket; default: in the test's dir
	Health  int               // health port; default: a free one
	Proxy   bool              // [proxy] on: the agent's traffic port in front of the app
}

// agentRun is one agent process under test.
type agentRun struct {
	t       *testing.T
	dir     string
	config  string
	socket  string
	health  string // http://127.0.0.1:PORT/health.html
	appPort int
	proxy   int // the traffic port; 0 = no proxy
	cmd     *exec.Cmd
	stderr  *syncBuffer // nil when the test gave its own stderr
	done    chan struct{}
	exit    error
	client  *http.Client // over the control socket
}

// syncBuffer collects a process's output for the test to search.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// writeConfig writes the agent's config for spec into a new directory and
// returns the run, not started.
func newAgentRun(t *testing.T, spec appSpec) *agentRun {
	t.Helper()
	dir := t.TempDir()
	app, err := filepath.Abs(filepath.Join("testdata", "apps", "server.js"))
	if err != nil {
		t.Fatal(err)
	}
	ports := testkit.Ports(t, 3) // the app's, the health page's, the proxy's
	r := &agentRun{t: t, dir: dir, config: filepath.Join(dir, "agent.toml"), socket: spec.Socket, appPort: ports[0], done: make(chan struct{})}
	if r.socket == "" {
		r.socket = filepath.Join(dir, "agent.sock")
	}
	hp := spec.Health
	if hp == 0 {
		hp = ports[1]
	}
	r.health = fmt.Sprintf("http://127.0.0.1:%d/health.html", hp)
	env := map[string]string{"PORT": strconv.Itoa(r.appPort)}
	if spec.Proxy {
		r.proxy = ports[2]
		delete(env, "PORT") // the agent gives the app its upstream's port
	}
	for k, v := range spec.Env {
		env[k] = v
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var envs []string
	for _, k := range keys {
		envs = append(envs, fmt.Sprintf("%s = %q", k, env[k]))
	}
	restart := spec.Restart
	if restart == "" {
		restart = "delay = \"100ms\"\nmax_delay = \"500ms\"\nmax_restarts = 0"
	}
	memory := spec.Memory
	if memory == "" {
		memory = "watch_oom = false"
	}
	cfg := fmt.Sprintf(`name = "faults"

[app]
command = ["node", %q]
dir = %q
env = { %s }

[restart]
%s

[stop]
timeout = "2s"

[memory]
%s

[health]
listen = "127.0.0.1:%d"

[control]
socket = %q

[log]
level = "info"
`, app, dir, strings.Join(envs, ", "), restart, memory, hp, r.socket)
	probe := spec.Probe
	if probe == "" {
		probe = `http = "http://127.0.0.1:PORT/"`
	}
	cfg += "\n[probe]\n" + strings.ReplaceAll(probe, "127.0.0.1:PORT", "127.0.0.1:"+strconv.Itoa(r.appPort)) + "\n"
	if r.proxy != 0 {
		cfg += fmt.Sprintf("\n[proxy]\nlisten = \"127.0.0.1:%d\"\nupstream = \"127.0.0.1:%d\"\n", r.proxy, r.appPort)
	}
	if err := os.WriteFile(r.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r.client = &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", r.socket)
		}},
	}
	return r
}

// start runs the agent (wrapped by wrap's argv, if any) with stderr going
// to stderr, or to a buffer when nil. The agent is stopped with SIGTERM when
// the test ends, SIGKILLed (with the app's group) if it does not stop.
func (r *agentRun) start(stderr *os.File, wrap ...string) {
	t := r.t
	t.Helper()
	argv := append(slices.Clone(wrap), agentBin, "run", "--config", r.config)
	r.cmd = exec.Command(argv[0], argv[1:]...)
	r.cmd.Stdout = io.Discard
	if stderr != nil {
		r.cmd.Stderr = stderr
	} else {
		r.stderr = &syncBuffer{}
		r.cmd.Stderr = r.stderr
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		r.exit = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		appPID := 0
		if st, err := r.status(); err == nil && st.PID != nil {
			appPID = *st.PID
		}
		r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(20 * time.Second):
			t.Errorf("agent did not stop within 20s of SIGTERM; killing it")
			r.cmd.Process.Kill()
			<-r.done
		}
		if appPID > 0 {
			syscall.Kill(-appPID, syscall.SIGKILL) // nothing left behind, whatever happened
		}
		if t.Failed() && r.stderr != nil {
			t.Logf("agent's log:\n%s", tail(r.stderr.String(), 4000))
		}
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// exited reports whether the agent process has ended.
func (r *agentRun) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// waitExit waits for the agent to end and returns its exit code.
func (r *agentRun) waitExit(timeout time.Duration) int {
	r.t.Helper()
	select {
	case <-r.done:
	case <-time.After(timeout):
		r.t.Fatalf("agent still running after %v", timeout)
	}
	var ee *exec.ExitError
	if errors.As(r.exit, &ee) {
		return ee.ExitCode()
	}
	if r.exit != nil {
		r.t.Fatalf("agent: %v", r.exit)
	}
	return 0
}

// agentStatus is the part of `agentctl status --json` the suite reads.
type agentStatus struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	PID      *int   `json:"pid"`
	Ready    bool   `json:"ready"`
	Healthy  bool   `json:"healthy"`
	Restarts int    `json:"restarts"`
	Message  string `json:"message"`
	LastExit *struct {
		Reason string  `json:"reason"`
		Signal *string `json:"signal"`
		Detail string  `json:"detail"`
	} `json:"last_exit"`
	Exits []struct {
		Reason string `json:"reason"`
	} `json:"exits"`
	Agent struct {
		PID      int    `json:"pid"`
		RSSBytes uint64 `json:"rss_bytes"`
		OOMWatch string `json:"oom_watch"`
	} `json:"agent"`
	Proxy *struct {
		Replayed int64 `json:"replayed"`
		Failed   int64 `json:"failed"`
	} `json:"proxy"`
}

// status asks the agent over its control socket.
func (r *agentRun) status() (agentStatus, error) {
	var st agentStatus
	resp, err := r.client.Get("http://agent/v1/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return st, fmt.Errorf("status: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (r *agentRun) mustStatus() agentStatus {
	r.t.Helper()
	st, err := r.status()
	if err != nil {
		r.t.Fatalf("status: %v", err)
	}
	return st
}

// healthCheck makes one fresh health check, as the load balancer does: a
// new connection and a 5 s timeout. It returns the status code (0 on
// error), the body and how long it took.
func (r *agentRun) healthCheck() (int, string, time.Duration, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	resp, err := c.Get(r.health)
	if err != nil {
		return 0, "", time.Since(start), err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), time.Since(start), nil
}

func (r *agentRun) healthy() bool {
	code, _, _, _ := r.healthCheck()
	return code == 200
}

// waitHealthy waits until the health page answers 200.
func (r *agentRun) waitHealthy(timeout time.Duration) {
	r.t.Helper()
	testkit.Eventually(r.t, timeout, "health 200", func() bool {
		if r.exited() {
			r.t.Fatalf("agent exited: %v\n%s", r.exit, r.log())
		}
		return r.healthy()
	})
}

func (r *agentRun) log() string {
	if r.stderr == nil {
		return ""
	}
	return tail(r.stderr.String(), 4000)
}

// trafficAddr is where a load balancer sends requests: the proxy's port
// when it is on, else the app's own (then an app fault shows as lost
// requests).
func (r *agentRun) trafficAddr() string {
	if r.proxy != 0 {
		return fmt.Sprintf("127.0.0.1:%d", r.proxy)
	}
	return fmt.Sprintf("127.0.0.1:%d", r.appPort)
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}
