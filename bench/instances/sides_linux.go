package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"agent/bench/internal/benchkit"
	"agent/internal/procfs"
)

// side is one way of running the app's processes, as the load sees it.
type side interface {
	// Addr is where clients send their requests (host:port).
	Addr() string
	// PIDs are the app's processes that run now.
	PIDs(ctx context.Context) ([]int, error)
	// Reload runs the supervisor's rolling reload and returns when it does.
	Reload(ctx context.Context) error
	// Close stops the app's processes and whatever runs them.
	Close(ctx context.Context) error
	// FrontCPU is the CPU time used so far by what stands between the
	// clients and the app's processes: the agent (its proxy), nginx's
	// master and workers, PM2's daemon (in cluster mode the cluster
	// master, which accepts the connections and hands them over).
	FrontCPU() time.Duration
}

// cpuOf is the CPU time of pid so far, 0 if it cannot be read.
func cpuOf(pid int) time.Duration {
	p, err := procfs.Stat(pid)
	if err != nil {
		return 0
	}
	return p.CPU
}

// agentSide is `agent run` with app.instances = n behind its proxy.
type agentSide struct {
	*benchkit.Agent
	addr string
}

// startAgent runs the agent on the app in appDir with n instances behind
// its [proxy], its files in dir. Restart delays are 0 and restarts
// unlimited (benchkit's config); no [probe], so a process is ready once its
// port accepts; with n > 1 spare_upstream is left unset (the port after
// the last process's). The agent runs in a session of its own (see
// benchkit.AgentConfig.Setsid).
func startAgent(ctx context.Context, bin, dir, appDir string, n int) (*agentSide, func(), error) {
	// health, listen, then n + 1 consecutive upstream ports.
	ports, release, err := benchkit.FreePorts(n + 3)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		release()
		return nil, nil, err
	}
	listen, up := fmt.Sprintf("127.0.0.1:%d", ports[1]), ports[2]
	spare := ""
	if n == 1 {
		spare = fmt.Sprintf("spare_upstream = \"127.0.0.1:%d\"\n", up+1)
	}
	a, err := benchkit.StartAgent(ctx, bin, dir, benchkit.AgentConfig{
		Name:      "burn",
		Command:   []string{"node", "server.js"},
		Dir:       appDir,
		Instances: n,
		Setsid:    true,
		Memory:    "watch_oom = false\n",
		Health:    fmt.Sprintf("127.0.0.1:%d", ports[0]),
		Extra: fmt.Sprintf(`
[proxy]
listen = %q
upstream = "127.0.0.1:%d"
%shold = "30s"
`, listen, up, spare),
	})
	if err != nil {
		release()
		return nil, nil, err
	}
	return &agentSide{Agent: a, addr: listen}, release, nil
}

func (a *agentSide) Addr() string { return a.addr }

// PIDs returns the processes the agent reports as ready.
func (a *agentSide) PIDs(ctx context.Context) ([]int, error) {
	st, err := a.Status(ctx)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, in := range st.Instances {
		if in.PID != nil && in.Ready {
			pids = append(pids, *in.PID)
		}
	}
	if len(st.Instances) == 0 && st.PID != nil && st.Ready {
		pids = append(pids, *st.PID) // a build without per-process rows
	}
	return pids, nil
}

func (a *agentSide) Reload(ctx context.Context) error { return a.Ctl(ctx, "reload") }

// FrontCPU is the agent's own CPU time, its app's not included.
func (a *agentSide) FrontCPU() time.Duration { return cpuOf(a.PID()) }

// Close stops the agent (SIGTERM), which stops the app, then SIGKILLs
// whatever is left of the app's tree.
func (a *agentSide) Close(context.Context) error {
	hs, _ := procfs.OpenDescendants(a.PID())
	defer procfs.CloseAll(hs)
	err := a.Stop(30 * time.Second)
	for _, h := range hs {
		h.Signal(syscall.SIGKILL)
	}
	return err
}

// pm2Side is the app in PM2's cluster mode.
type pm2Side struct {
	d    *benchkit.PM2
	name string
	god  int
	addr string
}

// startPM2 starts the app in appDir in the daemon d, cluster mode with n
// workers (`pm2 start server.js -i n`, written as an ecosystem file),
// autorestart, restart_delay 0; everything else PM2's default (kill_timeout
// 1.6 s, SIGINT, listen_timeout 3 s).
func startPM2(ctx context.Context, d *benchkit.PM2, dir, appDir string, n int) (*pm2Side, func(), error) {
	ports, release, err := benchkit.FreePorts(1)
	if err != nil {
		return nil, nil, err
	}
	god, err := d.Start(ctx, dir, "burn", map[string]any{
		"name":          "burn",
		"script":        filepath.Join(appDir, "server.js"),
		"cwd":           appDir,
		"exec_mode":     "cluster",
		"instances":     n,
		"env":           map[string]string{"PORT": fmt.Sprint(ports[0])},
		"autorestart":   true,
		"restart_delay": 0,
	})
	if err != nil {
		release()
		return nil, nil, err
	}
	return &pm2Side{d: d, name: "burn", god: god, addr: fmt.Sprintf("127.0.0.1:%d", ports[0])}, release, nil
}

func (p *pm2Side) Addr() string { return p.addr }

// PIDs returns the God daemon's live children: in cluster mode, the
// workers. (Not `pm2 jlist`: a Node CLI start costs a few hundred ms of
// CPU on a 2-core machine that is serving the load.)
func (p *pm2Side) PIDs(context.Context) ([]int, error) {
	kids, err := procfs.Children(p.god)
	if err != nil {
		return nil, fmt.Errorf("pm2 daemon's children: %w", err)
	}
	var pids []int
	for _, k := range kids {
		if !k.Zombie() {
			pids = append(pids, k.PID)
		}
	}
	return pids, nil
}

func (p *pm2Side) FrontCPU() time.Duration { return cpuOf(p.god) }

func (p *pm2Side) Reload(ctx context.Context) error {
	_, err := p.d.Run(ctx, "reload", p.name)
	return err
}

func (p *pm2Side) Close(ctx context.Context) error {
	_, err := p.d.Run(ctx, "delete", p.name)
	return err
}

// nginxSide is n plain `node server.js` on ports of their own behind
// nginx, all started by one shell in a session of its own.
type nginxSide struct {
	sh   *exec.Cmd
	addr string
}

// startNginx starts n Node processes of the app in appDir and nginx in
// front of them (least_conn, upstream keepalive 64 closed after 4 s idle,
// before Node's 5 s), its files in dir. A shell starts them all in one
// session of their own, as a service runs them (see AgentConfig.Setsid).
func startNginx(ctx context.Context, dir, appDir string, n, workers int) (*nginxSide, func(), error) {
	ports, release, err := benchkit.FreePorts(n + 1)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		release()
		return nil, nil, err
	}
	var script strings.Builder
	var servers []string
	for i, p := range ports[1:] {
		servers = append(servers, fmt.Sprintf("127.0.0.1:%d", p))
		fmt.Fprintf(&script, "PORT=%d NODE_APP_INSTANCE=%d node server.js >%s 2>&1 &\n", p, i, shellQuote(filepath.Join(dir, fmt.Sprintf("node%d.log", i))))
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	conf := benchkit.NginxConfig{Dir: dir, Listen: addr, Servers: servers, Workers: workers,
		Balance: "least_conn", Keepalive: 64, KeepaliveTimeout: "4s"}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf.Text()), 0o644); err != nil {
		release()
		return nil, nil, err
	}
	// nginx a second later: a server it finds not listening yet is left
	// out for fail_timeout (10 s).
	fmt.Fprintf(&script, "sleep 1\nnginx -c %s -p %s >%s 2>&1 &\nwait\n", shellQuote(path), shellQuote(dir), shellQuote(filepath.Join(dir, "nginx.out")))
	sh := exec.Command("sh", "-c", script.String())
	sh.Dir = appDir
	sh.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sh.Start(); err != nil {
		release()
		return nil, nil, fmt.Errorf("start nginx and node: %w", err)
	}
	return &nginxSide{sh: sh, addr: addr}, release, nil
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func (s *nginxSide) Addr() string { return s.addr }

// PIDs returns the shell's Node children.
func (s *nginxSide) PIDs(context.Context) ([]int, error) {
	kids, err := procfs.Children(s.sh.Process.Pid)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, k := range kids {
		if k.Comm == "node" && !k.Zombie() {
			pids = append(pids, k.PID)
		}
	}
	return pids, nil
}

// FrontCPU is the CPU time of nginx's master and workers.
func (s *nginxSide) FrontCPU() time.Duration {
	procs, _ := procfs.Tree(s.sh.Process.Pid)
	var total time.Duration
	for _, p := range procs {
		if p.Comm == "nginx" {
			total += p.CPU
		}
	}
	return total
}

func (s *nginxSide) Reload(context.Context) error {
	return errors.New("two plain processes: no rolling reload")
}

// Close stops nginx and the Node processes: SIGTERM to the session's
// process group, SIGKILL after 10 s.
func (s *nginxSide) Close(context.Context) error {
	if s.sh == nil {
		return nil
	}
	pgid := s.sh.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.sh.Wait() }()
	var err error
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
		err = errors.New("nginx and node did not stop within 10s of SIGTERM")
	}
	s.sh = nil
	return err
}
