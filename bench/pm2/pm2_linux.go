package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// installPM2 installs pm2@version from npm into dir and returns the path of
// its command and its exact version.
func installPM2(ctx context.Context, dir, version string) (bin, got string, err error) {
	bin = filepath.Join(dir, "node_modules", ".bin", "pm2")
	if _, err := os.Stat(bin); err != nil {
		cmd := exec.CommandContext(ctx, "npm", "install", "--prefix", dir, "--no-audit", "--no-fund", "pm2@"+version)
		// npm must not start anything; PM2_HOME keeps any stray pm2 call
		// away from the machine's own ~/.pm2.
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

// pm2Side is one app started in a PM2 daemon.
type pm2Side struct {
	d    *pm2Daemon
	name string
	god  int
}

// startPM2 writes an ecosystem file for spec into dir and starts it in the
// daemon (starting the daemon on first use). Delays are 0 like the agent's:
// autorestart, restart_delay 0; max_memory_restart is the memory limit.
func startPM2(ctx context.Context, d *pm2Daemon, dir string, spec appSpec) (*pm2Side, error) {
	app := map[string]any{
		"name":               spec.name,
		"script":             spec.command[0],
		"args":               spec.command[1:],
		"cwd":                spec.dir,
		"env":                spec.env,
		"autorestart":        true,
		"restart_delay":      0,
		"max_memory_restart": spec.maxRSS + "M",
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
	return &pm2Side{d: d, name: spec.name, god: god}, nil
}

func (p *pm2Side) PID() int { return p.god }

func (p *pm2Side) AppPID(ctx context.Context) (int, error) {
	out, err := p.d.run(ctx, "jlist")
	if err != nil {
		return 0, err
	}
	var list []struct {
		Name string `json:"name"`
		PID  int    `json:"pid"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return 0, fmt.Errorf("pm2 jlist: %w", err)
	}
	for _, a := range list {
		if a.Name == p.name {
			return a.PID, nil
		}
	}
	return 0, errors.New("pm2 jlist: app not listed")
}

func (p *pm2Side) Restart(ctx context.Context) error {
	_, err := p.d.run(ctx, "restart", p.name)
	return err
}

// Output returns the app's stdout and stderr log files.
func (p *pm2Side) Output(context.Context) (string, error) {
	var all []byte
	for _, s := range []string{"out", "error"} {
		b, err := os.ReadFile(filepath.Join(p.d.home, "logs", p.name+"-"+s+".log"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		all = append(all, b...)
	}
	return string(all), nil
}

func (p *pm2Side) Close(ctx context.Context) error {
	_, err := p.d.run(ctx, "delete", p.name)
	return err
}
