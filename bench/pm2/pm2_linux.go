package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"agent/bench/internal/benchkit"
)

// pm2Side is one app started in a PM2 daemon.
type pm2Side struct {
	d    *benchkit.PM2
	name string
	god  int
}

// startPM2 writes an ecosystem file for spec into dir and starts it in the
// daemon (starting the daemon on first use). Delays are 0 like the agent's:
// autorestart, restart_delay 0; max_memory_restart is the memory limit.
func startPM2(ctx context.Context, d *benchkit.PM2, dir string, spec appSpec) (*pm2Side, error) {
	god, err := d.Start(ctx, dir, spec.name, map[string]any{
		"name":               spec.name,
		"script":             spec.command[0],
		"args":               spec.command[1:],
		"cwd":                spec.dir,
		"env":                spec.env,
		"autorestart":        true,
		"restart_delay":      0,
		"max_memory_restart": spec.maxRSS + "M",
	})
	if err != nil {
		return nil, err
	}
	return &pm2Side{d: d, name: spec.name, god: god}, nil
}

func (p *pm2Side) PID() int { return p.god }

func (p *pm2Side) AppPID(ctx context.Context) (int, error) {
	out, err := p.d.Run(ctx, "jlist")
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
	_, err := p.d.Run(ctx, "restart", p.name)
	return err
}

// Output returns the app's stdout and stderr log files.
func (p *pm2Side) Output(context.Context) (string, error) {
	var all []byte
	for _, s := range []string{"out", "error"} {
		b, err := os.ReadFile(filepath.Join(p.d.Home, "logs", p.name+"-"+s+".log"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		all = append(all, b...)
	}
	return string(all), nil
}

func (p *pm2Side) Close(ctx context.Context) error {
	_, err := p.d.Run(ctx, "delete", p.name)
	return err
}
