package main

import (
	"context"
	"fmt"
	"time"

	"agent/bench/internal/benchkit"
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
	*benchkit.Agent
}

// startAgent writes the config of spec into dir and starts the agent on it,
// health page on healthAddr. It returns once the control socket answers.
// Like PM2 it has no probe: the app counts as ready after 1 s alive.
func startAgent(ctx context.Context, bin, dir string, spec appSpec, healthAddr string) (*agentSide, error) {
	a, err := benchkit.StartAgent(ctx, bin, dir, benchkit.AgentConfig{
		Name:    spec.name,
		Command: spec.command,
		Dir:     spec.dir,
		Env:     spec.env,
		Memory:  fmt.Sprintf("max_rss = \"%sMB\"\nrss_grace = \"1s\"\n", spec.maxRSS),
		Health:  healthAddr,
	})
	if err != nil {
		return nil, err
	}
	return &agentSide{a}, nil
}

func (a *agentSide) Restart(ctx context.Context) error { return a.Ctl(ctx, "restart") }

func (a *agentSide) Output(ctx context.Context) (string, error) {
	b, err := a.Get(ctx, "/v1/logs?n=1000")
	return string(b), err
}

// Close stops the agent (SIGTERM), which stops the app; SIGKILL after 20 s.
func (a *agentSide) Close(context.Context) error { return a.Stop(20 * time.Second) }
