package agent

import (
	"context"
	"errors"
	"fmt"
	"net"

	"agent/metrics"
	"agent/probe"
	"agent/supervisor"
)

// What happens on `agentctl reload` (the agent's side; supervisor/reload.go
// has the supervisor's): with the proxy and a spare port, the new process
// starts beside the old one on the port the old one does not use, takes the
// traffic once ready (front.go: EventSwapped), and the old one stops once
// its requests in flight are done; otherwise, or when memory is short for
// two processes at once, the reload is a gated restart.

// upstream is where the first process of g listens: proxy.upstream, or ""
// without the proxy.
func (g *generation) upstream() string {
	if !g.cfg.ProxyEnabled() {
		return ""
	}
	return g.cfg.Proxy.Upstream
}

// ErrReloadFailed wraps the reason a reload's new process failed; the old
// one keeps serving.
var ErrReloadFailed = supervisor.ErrReloadFailed

// Reload replaces the app's process for a deploy (agentctl reload). It
// returns once the new process serves and the old one is gone, or with an
// error wrapping ErrReloadFailed when the new one failed and the old one
// kept serving.
func (a *Agent) Reload(ctx context.Context) error {
	g := a.gen.Load()
	st := a.sup.Status()
	if a.proxy == nil || !g.canOverlap() {
		a.log.Info().Msg("reload without overlap: restarting (gated)")
		return a.restart(ctx)
	}
	if avail, err := probe.MemAvailable(); err == nil && float64(avail) < 1.2*float64(st.Launch.rss()) {
		a.log.Warn().Uint64("mem_available", avail).Uint64("app_rss", st.Launch.rss()).Msg("reload: too little memory for two processes at once; restarting (gated) instead")
		return a.restart(ctx)
	}
	next := g.cfg.Proxy.SpareUpstream
	if st.Launch != nil && st.Launch.upstream == next {
		next = g.cfg.Proxy.Upstream // the ports swap roles from one reload to the next
	}
	err := a.sup.Reload(ctx, g.supervisorConfig(next), g.cfg.Probe.StartupTimeout.D())
	if errors.Is(err, supervisor.ErrNotServing) {
		a.log.Info().Msg("reload of an app that is not serving: restarting")
		return a.restart(ctx)
	}
	if errors.Is(err, supervisor.ErrReloadBusy) {
		return fmt.Errorf("%w: %w", ErrReloadFailed, err)
	}
	if err != nil {
		return err
	}
	// Restarts take the new port until the next reload, with the latest
	// config (a SIGHUP may have come meanwhile).
	a.sup.SetConfig(a.gen.Load().supervisorConfig(next))
	return nil
}

// restart is a reload's restart: it returns once the new process serves,
// or with an error wrapping ErrReloadFailed when it failed to.
func (a *Agent) restart(ctx context.Context) error {
	err := a.sup.Restart(ctx)
	if errors.Is(err, supervisor.ErrStartFailed) || errors.Is(err, supervisor.ErrStopped) {
		return fmt.Errorf("%w: %w", ErrReloadFailed, err)
	}
	return err
}

// listenMetrics binds metrics.listen, so a busy port fails the start; nil
// when metrics are off.
func (a *Agent) listenMetrics(cfg *Config) (net.Listener, error) {
	if cfg.Metrics.Listen == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.Metrics.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return ln, nil
}

// metricsSnapshot is what /metrics shows.
func (a *Agent) metricsSnapshot() metrics.Snapshot {
	st := a.sup.Status()
	s := a.Status()
	snap := metrics.Snapshot{
		Version:       a.version,
		State:         supervisor.State(s.State),
		Up:            st.PID != 0,
		Ready:         st.Ready,
		Restarts:      uint64(st.Restarts),
		Exits:         make(map[supervisor.Reason]uint64, len(st.ExitCounts)),
		RSSBytes:      s.RSSBytes,
		HeapCapMB:     s.HeapCapMB,
		OOMKills:      uint64(s.OOMKills),
		UptimeSeconds: s.UptimeSeconds,
		LogDropped:    s.Agent.LogDropped,
	}
	for r, n := range st.ExitCounts {
		snap.Exits[r] = n
	}
	if a.proxy != nil {
		ps := a.proxy.Stats()
		snap.Proxy = &metrics.ProxySnapshot{InFlight: ps.InFlight, Held: ps.Held, Replayed: ps.Replayed, Failed: ps.Failed}
	}
	return snap
}
