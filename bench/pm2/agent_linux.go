package main

import (
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
	"strings"
	"syscall"
	"time"
)

// supervisor is one side of the comparison, supervising one app.
type supervisor interface {
	// PID is the supervisor's own process: the agent, or PM2's God daemon.
	PID() int
	// AppPID is the app's main process as the supervisor reports it (0: none).
	AppPID(ctx context.Context) (int, error)
	// Restart restarts the app through the supervisor's command line.
	Restart(ctx context.Context) error
	// Output returns the app's output as the supervisor captured it.
	Output(ctx context.Context) (string, error)
	// Close stops the app and forgets it.
	Close(ctx context.Context) error
}

// appSpec is an app to supervise, with the knobs both sides share.
type appSpec struct {
	name    string
	dir     string
	command []string // argv, run in dir
	env     map[string]string
	maxRSS  string // "300" MB (MiB on both sides: PM2 "300M", agent "300MB")
}

// agentSide is a running `agent run` supervising one app.
type agentSide struct {
	bin    string
	socket string
	cmd    *exec.Cmd
	done   chan struct{}
	client *http.Client
}

// startAgent writes the config of spec into dir and starts the agent on it,
// health page on healthAddr. It returns once the control socket answers.
// Like PM2 it has no probe: the app counts as ready after 1 s alive.
func startAgent(ctx context.Context, bin, dir string, spec appSpec, healthAddr string) (*agentSide, error) {
	socket := filepath.Join(dir, "agent.sock")
	var env []string
	for k, v := range spec.env {
		env = append(env, fmt.Sprintf("%s = %q", k, v))
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
max_rss = "%sMB"
rss_grace = "1s"

[health]
listen = %q

[control]
socket = %q

[log]
level = "warn"
`, spec.name, tomlList(spec.command), spec.dir, strings.Join(env, ", "), spec.maxRSS, healthAddr, socket)
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
	a := &agentSide{
		bin:    bin,
		socket: socket,
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
	err = poll(ctx, 20*time.Second, 10*time.Millisecond, func() (bool, error) {
		select {
		case <-a.done:
			return false, fmt.Errorf("agent exited: %s (log %s)", cmd.ProcessState, logf.Name())
		default:
		}
		_, err := a.status(ctx)
		return err == nil, nil
	})
	if err != nil {
		a.Close(ctx)
		return nil, fmt.Errorf("agent control socket: %w", err)
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
	State string `json:"state"`
	PID   *int   `json:"pid"`
	Ready bool   `json:"ready"`
}

func (a *agentSide) get(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return b, nil
}

func (a *agentSide) status(ctx context.Context) (agentStatus, error) {
	var s agentStatus
	b, err := a.get(ctx, "/v1/status")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("status: %w", err)
	}
	return s, nil
}

func (a *agentSide) PID() int { return a.cmd.Process.Pid }

func (a *agentSide) AppPID(ctx context.Context) (int, error) {
	s, err := a.status(ctx)
	if err != nil || s.PID == nil {
		return 0, err
	}
	return *s.PID, nil
}

func (a *agentSide) Restart(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, a.bin, "ctl", "--socket", a.socket, "restart").CombinedOutput()
	if err != nil {
		return fmt.Errorf("agentctl restart: %w: %s", err, out)
	}
	return nil
}

func (a *agentSide) Output(ctx context.Context) (string, error) {
	b, err := a.get(ctx, "/v1/logs?n=1000")
	return string(b), err
}

// Close stops the agent (SIGTERM), which stops the app; SIGKILL after 20 s.
func (a *agentSide) Close(ctx context.Context) error {
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(20 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
		return errors.New("agent did not stop within 20s of SIGTERM")
	}
	return nil
}
