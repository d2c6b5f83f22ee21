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

// The traffic front's wiring: the proxy follows the supervisor's state
// (ready, restarting, down), every stop the agent asks for is gated
// (new requests held, in-flight ones finished first), and agentctl reload
// swaps processes with overlap.

// upstream is where the first process of g listens: proxy.upstream, or ""
// without the proxy.
func (g *generation) upstream() string {
	if !g.cfg.ProxyEnabled() {
		return ""
	}
	return g.cfg.Proxy.Upstream
}

// upstreamOf returns the address the current process was given, "" when
// none runs or the proxy is off.
func upstreamOf(st supervisor.Status) string {
	if l, ok := st.Tag.(*launch); ok {
		return l.upstream
	}
	return ""
}

// followState tells the proxy what the supervisor's state means for
// requests: ready (to the current process), held (starting, backoff, a
// restart under way) or refused (failed, stopped). Called from onChange.
func (a *Agent) followState(st supervisor.Status) {
	if a.proxy == nil {
		return
	}
	switch {
	case a.swapping.Load():
		// A reload is moving the traffic (Switch); the swap settles it.
	case st.State == supervisor.Running && st.Ready:
		// Once per process: the proxy takes Ready as "a new process".
		if a.routed.Swap(int64(st.PID)) != int64(st.PID) {
			a.proxy.Ready(upstreamOf(st))
		}
	case st.State == supervisor.Failed || st.State == supervisor.Stopped:
		a.proxy.Down()
	default:
		a.proxy.NotReady()
	}
}

// gate is the supervisor's Gate: before the agent stops a running process
// (restart, stop, shutdown, rss-limit, liveness, start-timeout), new
// requests are held and the ones in flight finish, until ctx ends (the
// stop timeout).
func (a *Agent) gate(ctx context.Context, c *supervisor.Child, r supervisor.Reason) {
	if a.proxy == nil || a.routed.Load() != int64(c.PID) {
		// Not the process the proxy sends requests to: a reload's new
		// process that failed, or the old one, whose requests the swap
		// waited for.
		return
	}
	if left := a.proxy.Gate(ctx); left > 0 {
		a.log.Warn().Int("pid", c.PID).Str("reason", string(r)).Int("in_flight", left).Msg("stopping the app with requests still in flight (stop.timeout)")
	}
}

// ErrReloadFailed wraps the reason a reload's new process failed; the old
// one keeps serving.
var ErrReloadFailed = errors.New("reload failed")

// Reload replaces the app's process for a deploy (agentctl reload). With
// the proxy and a spare port, the new process starts beside the old one and
// takes the traffic once ready; otherwise, or when memory is short for two
// at once, it is a (gated) restart. It returns once the new process serves,
// or with an error wrapping ErrReloadFailed when it failed and the old one
// kept serving.
func (a *Agent) Reload(ctx context.Context) error {
	g := a.gen.Load()
	st := a.sup.Status()
	if a.proxy == nil || !g.canOverlap() {
		return a.restartAndWait(ctx, "reload without overlap: restarting (gated)")
	}
	if avail, err := probe.MemAvailable(); err == nil && float64(avail) < 1.2*float64(a.rss.Load()) {
		a.log.Warn().Uint64("mem_available", avail).Uint64("app_rss", a.rss.Load()).Msg("reload: too little memory for two processes at once; restarting (gated) instead")
		return a.restartAndWait(ctx, "")
	}
	next := g.cfg.Proxy.SpareUpstream
	if upstreamOf(st) == next {
		next = g.cfg.Proxy.Upstream // the ports swap roles from one reload to the next
	}
	sc := g.supervisorConfig(next)
	swap := func(ctx context.Context, c *supervisor.Child) {
		sctx, cancel := context.WithTimeout(ctx, g.cfg.Stop.Timeout.D())
		defer cancel()
		a.swapping.Store(true)
		defer a.swapping.Store(false)
		a.routed.Store(int64(c.PID))
		if left := a.proxy.Switch(sctx, next); left > 0 {
			a.log.Warn().Int("in_flight", left).Msg("reload: old process stopped with requests still in flight (stop.timeout)")
		}
	}
	err := a.sup.Reload(ctx, sc, g.cfg.Probe.StartupTimeout.D(), swap)
	switch {
	case errors.Is(err, supervisor.ErrNotServing):
		return a.restartAndWait(ctx, "reload of an app that is not serving: restarting")
	case errors.Is(err, supervisor.ErrReloadBusy):
		return fmt.Errorf("%w: %v", ErrReloadFailed, err)
	case err != nil && (errors.Is(err, supervisor.ErrShuttingDown) || errors.Is(err, context.Canceled)):
		return err
	case err != nil:
		return fmt.Errorf("%w: %v", ErrReloadFailed, err)
	}
	// Restarts take the new port until the next reload, with the latest
	// config (a SIGHUP may have come meanwhile).
	a.sup.SetConfig(a.gen.Load().supervisorConfig(next))
	return nil
}

// restartAndWait restarts the app and waits until it serves again.
func (a *Agent) restartAndWait(ctx context.Context, why string) error {
	if why != "" {
		a.log.Info().Msg(why)
	}
	before := a.sup.Status()
	if err := a.sup.Restart(ctx); err != nil {
		return err
	}
	limit := a.gen.Load().cfg.Stop.Timeout.D() + a.gen.Load().cfg.Probe.StartupTimeout.D()
	var last supervisor.Status
	a.waitSettled(ctx, limit, func(now supervisor.Status) bool {
		last = now
		return now.Restarts > before.Restarts && (now.State == supervisor.Running || now.State == supervisor.Failed)
	})
	if last.State != supervisor.Running {
		return fmt.Errorf("%w: the restarted app is %s: %s", ErrReloadFailed, last.State, last.Message)
	}
	return nil
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
