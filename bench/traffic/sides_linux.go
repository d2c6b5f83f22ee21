package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"agent/bench/internal/benchkit"
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
	*benchkit.Agent
	addr string
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
	a, err := benchkit.StartAgent(ctx, bin, dir, benchkit.AgentConfig{
		Name:    spec.name,
		Command: spec.agentCmd,
		Dir:     spec.dir,
		Env:     env,
		Memory:  "watch_oom = false\n",
		Health:  fmt.Sprintf("127.0.0.1:%d", p.health),
		Extra:   proxyCfg,
	})
	if err != nil {
		return nil, err
	}
	t := &agentTarget{Agent: a, addr: addr}
	if proxy {
		st, err := a.Status(ctx)
		if err == nil && st.Proxy == nil {
			err = errors.New("the agent runs without its proxy: this build does not wire [proxy]")
		}
		if err != nil {
			t.Close(ctx)
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	return t, nil
}

// proxyStatus is the proxy object of the agent's status.
type proxyStatus struct {
	Requests uint64 `json:"requests"`
	Replayed uint64 `json:"replayed"`
	Failed   uint64 `json:"failed"`
}

func (a *agentTarget) Addr() string { return a.addr }

func (a *agentTarget) Restart(ctx context.Context) error { return a.Ctl(ctx, "restart") }
func (a *agentTarget) Reload(ctx context.Context) error  { return a.Ctl(ctx, "reload") }

// Close stops the agent (SIGTERM), which stops the app; SIGKILL after 30 s.
func (a *agentTarget) Close(context.Context) error { return a.Stop(30 * time.Second) }

// pm2Target is one app in a PM2 daemon, fork mode.
type pm2Target struct {
	d    *benchkit.PM2
	name string
	god  int
	addr string
}

// startPM2 writes an ecosystem file for spec into dir and starts it in the
// daemon (starting the daemon on first use), fork mode, autorestart,
// restart_delay 0; everything else PM2's default (kill_timeout 1.6 s, SIGINT).
func startPM2(ctx context.Context, d *benchkit.PM2, dir string, spec appSpec, port int) (*pm2Target, error) {
	env := map[string]string{"PORT": fmt.Sprint(port)}
	for k, v := range spec.env {
		env[k] = v
	}
	god, err := d.Start(ctx, dir, spec.name, map[string]any{
		"name":          spec.name,
		"script":        spec.pm2.script,
		"args":          spec.pm2.args,
		"cwd":           spec.dir,
		"env":           env,
		"exec_mode":     "fork",
		"autorestart":   true,
		"restart_delay": 0,
	})
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
	_, err := p.d.Run(ctx, "restart", p.name)
	return err
}

func (p *pm2Target) Reload(ctx context.Context) error {
	_, err := p.d.Run(ctx, "reload", p.name)
	return err
}

func (p *pm2Target) Close(ctx context.Context) error {
	_, err := p.d.Run(ctx, "delete", p.name)
	return err
}
