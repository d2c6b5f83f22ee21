package benchkit

import (
	"context"
	"encoding/json"
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

// Agent is a running `agent run` on a config of its own.
type Agent struct {
	bin    string
	socket string
	log    string
	cmd    *exec.Cmd
	done   chan struct{}
	client *http.Client
}

// AgentStatus is the part of the agent's status the harnesses read.
type AgentStatus struct {
	State     string           `json:"state"`
	PID       *int             `json:"pid"`
	Ready     bool             `json:"ready"`
	Instances []InstanceStatus `json:"instances"`
	Proxy     json.RawMessage  `json:"proxy"`
}

// InstanceStatus is one process of the app (app.instances) in the status.
type InstanceStatus struct {
	Index int  `json:"index"`
	PID   *int `json:"pid"` // nil while none runs
	Port  int  `json:"port"`
	Ready bool `json:"ready"`
}

// AgentConfig is an agent config as the harnesses write it: restart
// delays 0 and restarts unlimited (as PM2 is set), warnings only in the
// log, everything else given here or the agent's default.
type AgentConfig struct {
	Name    string
	Command []string // app.command
	Dir     string   // app.dir
	Env     map[string]string
	// Instances is app.instances: how many processes of the app (more
	// than 1 needs [proxy] in Extra); 0 leaves the key out (1 process).
	Instances int
	Memory    string // the [memory] section's lines
	Health    string // health.listen
	Extra     string // more sections, each starting with an empty line
	// Setsid starts the agent in a session of its own, as systemd starts
	// a service and as PM2's daemon runs. With the kernel's autogroups on
	// (/proc/sys/kernel/sched_autogroup_enabled), a session is a group
	// the scheduler shares the CPUs among: a side in a session of its own
	// competes with the machine's other work on the same terms as PM2.
	Setsid bool
}

// TOML returns the config's text, control.socket set to socket.
func (c AgentConfig) TOML(socket string) string {
	var env []string
	for k, v := range c.Env {
		env = append(env, fmt.Sprintf("%s = %q", k, v))
	}
	instances := ""
	if c.Instances > 0 {
		instances = fmt.Sprintf("instances = %d\n", c.Instances)
	}
	return fmt.Sprintf(`name = %q

[app]
command = %s
dir = %q
env = { %s }
%s
[restart]
delay = "0s"
max_delay = "0s"
max_restarts = 0

[memory]
%s
[health]
listen = %q

[control]
socket = %q
%s
[log]
level = "warn"
`, c.Name, TOMLList(c.Command), c.Dir, strings.Join(env, ", "), instances, c.Memory, c.Health, socket, c.Extra)
}

// StartAgent writes cfg to dir/agent.toml, its control socket
// dir/agent.sock, and runs the agent bin on it, its output going to
// dir/agent.log. It returns once the control socket answers (20 s at most).
func StartAgent(ctx context.Context, bin, dir string, cfg AgentConfig) (*Agent, error) {
	socket := filepath.Join(dir, "agent.sock")
	path := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(path, []byte(cfg.TOML(socket)), 0o644); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return nil, fmt.Errorf("agent log: %w", err)
	}
	cmd := exec.Command(bin, "run", "--config", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: cfg.Setsid}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start agent: %w", err)
	}
	a := &Agent{
		bin:    bin,
		socket: socket,
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
	err = Poll(ctx, 20*time.Second, 10*time.Millisecond, func() (bool, error) {
		select {
		case <-a.done:
			return false, fmt.Errorf("agent exited: %s: %s", cmd.ProcessState, TailFile(a.log))
		default:
		}
		_, err := a.Status(ctx)
		return err == nil, nil
	})
	if err != nil {
		a.Stop(20 * time.Second)
		return nil, fmt.Errorf("agent control socket: %w", err)
	}
	return a, nil
}

// PID is the agent's own process.
func (a *Agent) PID() int { return a.cmd.Process.Pid }

// Done is closed once the agent has exited.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Log is the path of the agent's output.
func (a *Agent) Log() string { return a.log }

// Get sends GET path to the control API (5 s at most) and returns the body
// of a 200 answer.
func (a *Agent) Get(ctx context.Context, path string) ([]byte, error) {
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

// Status returns the agent's status.
func (a *Agent) Status(ctx context.Context) (AgentStatus, error) {
	var s AgentStatus
	b, err := a.Get(ctx, "/v1/status")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("status: %w", err)
	}
	return s, nil
}

// AppPID returns the app's main process as the agent reports it (0: none).
func (a *Agent) AppPID(ctx context.Context) (int, error) {
	s, err := a.Status(ctx)
	if err != nil || s.PID == nil {
		return 0, err
	}
	return *s.PID, nil
}

// Ctl runs `agent ctl VERB` on the agent's socket (60 s at most) and
// returns once it does.
func (a *Agent) Ctl(ctx context.Context, verb string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, a.bin, "ctl", "--socket", a.socket, verb).CombinedOutput()
	if err != nil {
		return fmt.Errorf("agentctl %s: %w: %s", verb, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Stop stops the agent (SIGTERM), which stops the app; SIGKILL after
// timeout.
func (a *Agent) Stop(timeout time.Duration) error {
	a.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-a.done:
	case <-t.C:
		a.cmd.Process.Kill()
		<-a.done
		return fmt.Errorf("agent did not stop within %s of SIGTERM", timeout)
	}
	return nil
}
