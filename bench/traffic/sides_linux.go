package main

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
	"strconv"
	"strings"
	"syscall"
	"time"

	"agent/internal/procfs"
)

// target is one supervisor running one app, as the load sees it.
type target interface {
	// Addr is where clients send their requests (host:port).
	Addr() string
	// AppPID is the app's main process as the supervisor reports it (0: none).
	AppPID(ctx context.Context) (int, error)
	// Restart and Reload run the supervisor's command and return when it does.
	Restart(ctx context.Context) error
	Reload(ctx context.Context) error
	// Close stops the app and the supervisor (PM2: forgets the app).
	Close(ctx context.Context) error
}

// appSpec is an app to run, the same on every side.
type appSpec struct {
	name     string
	dir      string
	agentCmd []string // argv for the agent's app.command
	pm2      pm2App   // how PM2 runs it
	env      map[string]string
	paths    []string // the request paths the load cycles through
	rate     int      // requests per second
}

// pm2App is the script and arguments PM2 starts.
type pm2App struct {
	script string
	args   []string
}

// agentTarget is a running `agent run`.
type agentTarget struct {
	bin    string
	socket string
	addr   string
	log    string
	cmd    *exec.Cmd
	done   chan struct{}
	client *http.Client
}

// agentPorts are the loopback ports an agent uses.
type agentPorts struct {
	health int
	app    int // without the proxy: the app's own port, where clients go
	listen int // with the proxy: where clients go
	up     int // with the proxy: the upstream
	spare  int // with the proxy: the spare upstream for reload
}

// startAgent writes a config for spec into dir and runs the agent on it,
// with the proxy in front of the app or without. It returns once the
// control socket answers. Restart delays are 0 and restarts unlimited, as
// PM2's are set; everything else is the agent's default (stop.timeout 10 s,
// no [probe]: with the proxy, ready = the upstream accepts; without, ready =
// alive 1 s).
func startAgent(ctx context.Context, bin, dir string, spec appSpec, proxy bool, p agentPorts) (*agentTarget, error) {
	socket := filepath.Join(dir, "agent.sock")
	env := map[string]string{}
	for k, v := range spec.env {
		env[k] = v
	}
	addr := fmt.Sprintf("127.0.0.1:%d", p.app)
	proxyCfg := ""
	if proxy {
		addr = fmt.Sprintf("127.0.0.1:%d", p.listen)
		proxyCfg = fmt.Sprintf(`
[proxy]
listen = "127.0.0.1:%d"
upstream = "127.0.0.1:%d"
spare_upstream = "127.0.0.1:%d"
hold = "30s"
`, p.listen, p.up, p.spare)
	} else {
		env["PORT"] = fmt.Sprint(p.app)
	}
	var envs []string
	for k, v := range env {
		envs = append(envs, fmt.Sprintf("%s = %q", k, v))
	}
	cfg := fmt.Sprintf(`name = %q

[app]
command = %s
dir = %q
env = { %s }

[restart]
delay = "0s"
max_delay = "0s"
max_restarts = 0

[memory]
watch_oom = false

[health]
listen = "127.0.0.1:%d"

[control]
socket = %q
%s
[log]
level = "warn"
`, spec.name, tomlList(spec.agentCmd), spec.dir, strings.Join(envs, ", "), p.health, socket, proxyCfg)
	path := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start agent: %w", err)
	}
	a := &agentTarget{
		bin:    bin,
		socket: socket,
		addr:   addr,
		log:    logf.Name(),
		cmd:    cmd,
		done:   make(chan struct{}),
		client: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
		}},
	}
	go func() {
		cmd.Wait()
		logf.Close()
		close(a.done)
	}()
	var st agentStatus
	err = poll(ctx, 20*time.Second, 10*time.Millisecond, func() (bool, error) {
		select {
		case <-a.done:
			return false, fmt.Errorf("agent exited: %s: %s", cmd.ProcessState, tailFile(a.log))
		default:
		}
		var err error
		st, err = a.status(ctx)
		return err == nil, nil
	})
	if err == nil && proxy && st.Proxy == nil {
		err = errors.New("the agent runs without its proxy: this build does not wire [proxy]")
	}
	if err != nil {
		a.Close(ctx)
		return nil, fmt.Errorf("agent: %w", err)
	}
	return a, nil
}

func tomlList(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = fmt.Sprintf("%q", v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

type agentStatus struct {
	State string          `json:"state"`
	PID   *int            `json:"pid"`
	Proxy json.RawMessage `json:"proxy"`
}

// proxyStatus is the proxy object of the agent's status.
type proxyStatus struct {
	Requests uint64 `json:"requests"`
	Replayed uint64 `json:"replayed"`
	Failed   uint64 `json:"failed"`
}

func (a *agentTarget) status(ctx context.Context) (agentStatus, error) {
	var s agentStatus
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/v1/status", nil)
	if err != nil {
		return s, err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return s, err
	}
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("status: %s: %s", resp.Status, b)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("status: %w", err)
	}
	return s, nil
}

func (a *agentTarget) Addr() string { return a.addr }

func (a *agentTarget) AppPID(ctx context.Context) (int, error) {
	s, err := a.status(ctx)
	if err != nil || s.PID == nil {
		return 0, err
	}
	return *s.PID, nil
}

func (a *agentTarget) ctl(ctx context.Context, verb string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, a.bin, "ctl", "--socket", a.socket, verb).CombinedOutput()
	if err != nil {
		return fmt.Errorf("agentctl %s: %w: %s", verb, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (a *agentTarget) Restart(ctx context.Context) error { return a.ctl(ctx, "restart") }
func (a *agentTarget) Reload(ctx context.Context) error  { return a.ctl(ctx, "reload") }

// Close stops the agent (SIGTERM), which stops the app; SIGKILL after 30 s.
func (a *agentTarget) Close(context.Context) error {
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
		return errors.New("agent did not stop within 30s of SIGTERM")
	}
	return nil
}

// installPM2 installs pm2@version from npm into dir and returns the path of
// its command and its exact version.
func installPM2(ctx context.Context, dir, version string) (bin, got string, err error) {
	bin = filepath.Join(dir, "node_modules", ".bin", "pm2")
	if _, err := os.Stat(bin); err != nil {
		cmd := exec.CommandContext(ctx, "npm", "install", "--prefix", dir, "--no-audit", "--no-fund", "pm2@"+version)
		// PM2_HOME keeps any stray pm2 call away from the machine's ~/.pm2.
		cmd.Env = append(os.Environ(), "PM2_HOME="+filepath.Join(dir, "home"))
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("npm install pm2@%s: %w\n%s", version, err, out)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", "pm2", "package.json"))
	if err != nil {
		return "", "", fmt.Errorf("pm2 version: %w", err)
	}
	var pkg struct{ Version string }
	if err := json.Unmarshal(b, &pkg); err != nil {
		return "", "", fmt.Errorf("pm2 version: %w", err)
	}
	return bin, pkg.Version, nil
}

// pm2Daemon is a PM2 God daemon with its own PM2_HOME.
type pm2Daemon struct {
	bin  string
	home string
}

func (d *pm2Daemon) run(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, args...)
	cmd.Env = append(os.Environ(), "PM2_HOME="+d.home, "PM2_DISCRETE_MODE=true")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("pm2 %s: %w: %s%s", strings.Join(args, " "), err, out.Bytes(), errb.Bytes())
	}
	return out.Bytes(), nil
}

// pid returns the God daemon's pid (PM2_HOME/pm2.pid).
func (d *pm2Daemon) pid() (int, error) {
	b, err := os.ReadFile(filepath.Join(d.home, "pm2.pid"))
	if err != nil {
		return 0, fmt.Errorf("pm2 daemon pid: %w", err)
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// kill stops the daemon and every app it runs (`pm2 kill`).
func (d *pm2Daemon) kill(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(d.home, "pm2.pid")); err != nil {
		return nil // never started
	}
	_, err := d.run(ctx, "kill")
	return err
}

// pm2Target is one app in a PM2 daemon, fork mode.
type pm2Target struct {
	d    *pm2Daemon
	name string
	god  int
	addr string
}

// startPM2 writes an ecosystem file for spec into dir and starts it in the
// daemon (starting the daemon on first use), fork mode, autorestart,
// restart_delay 0; everything else PM2's default (kill_timeout 1.6 s, SIGINT).
func startPM2(ctx context.Context, d *pm2Daemon, dir string, spec appSpec, port int) (*pm2Target, error) {
	env := map[string]string{"PORT": fmt.Sprint(port)}
	for k, v := range spec.env {
		env[k] = v
	}
	app := map[string]any{
		"name":          spec.name,
		"script":        spec.pm2.script,
		"args":          spec.pm2.args,
		"cwd":           spec.dir,
		"env":           env,
		"exec_mode":     "fork",
		"autorestart":   true,
		"restart_delay": 0,
	}
	b, err := json.MarshalIndent(map[string]any{"apps": []any{app}}, "", "  ")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, spec.name+".ecosystem.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return nil, err
	}
	if _, err := d.run(ctx, "start", path); err != nil {
		return nil, err
	}
	god, err := d.pid()
	if err != nil {
		return nil, err
	}
	return &pm2Target{d: d, name: spec.name, god: god, addr: fmt.Sprintf("127.0.0.1:%d", port)}, nil
}

func (p *pm2Target) Addr() string { return p.addr }

// AppPID returns the God daemon's live child: in fork mode, the app. (Not
// `pm2 jlist`: a Node CLI start costs a few hundred ms of CPU, which would
// compete with the app's own start on this 2-core machine.)
func (p *pm2Target) AppPID(context.Context) (int, error) {
	kids, err := procfs.Children(p.god)
	if err != nil {
		return 0, fmt.Errorf("pm2 daemon's children: %w", err)
	}
	for _, k := range kids {
		if !k.Zombie() {
			return k.PID, nil
		}
	}
	return 0, nil
}

func (p *pm2Target) Restart(ctx context.Context) error {
	_, err := p.d.run(ctx, "restart", p.name)
	return err
}

func (p *pm2Target) Reload(ctx context.Context) error {
	_, err := p.d.run(ctx, "reload", p.name)
	return err
}

func (p *pm2Target) Close(ctx context.Context) error {
	_, err := p.d.run(ctx, "delete", p.name)
	return err
}

// tailFile returns the last lines of a log file, for error messages.
func tailFile(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}
