package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"

	"agent/probe"
	"agent/supervisor"
)

// The app's processes: with app.instances = N, N slots, each on its own
// loopback port. The ports come from one pool: proxy.upstream's port and
// the N-1 after it, and one spare (spare_upstream, or for N > 1 the port
// after the last): a reload starts each slot's new process on the port no
// process holds, so the ports rotate among the slots over reloads.
// Restarts and reloads roll over the slots one at a time (rollout); scale
// starts or stops only the slots that change.

// ErrBadScale is returned by Scale for a count the config cannot take.
var ErrBadScale = errors.New("cannot scale")

// portPool returns the app's ports for g, in the order they are given out.
func (g *generation) portPool() []string {
	if !g.cfg.ProxyEnabled() {
		return nil
	}
	host, port, err := net.SplitHostPort(g.cfg.Proxy.Upstream)
	if err != nil {
		return []string{g.cfg.Proxy.Upstream}
	}
	base, _ := strconv.Atoi(port)
	var pool []string
	for i := range g.instances {
		pool = append(pool, net.JoinHostPort(host, strconv.Itoa(base+i)))
	}
	switch {
	case g.cfg.Proxy.SpareUpstream != "":
		pool = append(pool, g.cfg.Proxy.SpareUpstream)
	case g.instances > 1:
		pool = append(pool, net.JoinHostPort(host, strconv.Itoa(base+g.instances)))
	}
	return pool
}

// usedPorts returns the ports that the slots' next starts take or that a
// live process holds.
func (a *Agent) usedPorts() []string {
	var used []string
	for i := range a.sup.Slots() {
		if l := a.sup.Config(i).Launch; l != nil && l.upstream != "" {
			used = append(used, l.upstream)
		}
	}
	for _, c := range a.sup.Status().Live {
		used = append(used, c.Launch.upstream)
	}
	return used
}

// freePort returns the first port of g's pool not in used, "" if none is.
func (g *generation) freePort(used []string) string {
	for _, p := range g.portPool() {
		if !slices.Contains(used, p) {
			return p
		}
	}
	return ""
}

// slotConfigs returns the configs of n slots of g: the slots there are keep
// their ports, new ones take free ports of the pool.
func (a *Agent) slotConfigs(g *generation, n int) []appConfig {
	used := a.usedPorts()
	have := a.sup.Slots()
	cfgs := make([]appConfig, n)
	for i := range cfgs {
		up := ""
		if i < have {
			up = a.sup.Config(i).Launch.upstream
		} else if g.cfg.ProxyEnabled() {
			up = g.freePort(used)
			used = append(used, up)
		}
		cfgs[i] = g.supervisorConfig(i, up)
	}
	return cfgs
}

// firstConfigs returns the configs the slots of g start with: slot i on the
// i-th port of the pool.
func firstConfigs(g *generation) []appConfig {
	pool := g.portPool()
	cfgs := make([]appConfig, g.instances)
	for i := range cfgs {
		up := ""
		if i < len(pool) {
			up = pool[i]
		}
		cfgs[i] = g.supervisorConfig(i, up)
	}
	return cfgs
}

// rollout takes the right to change the app's processes (restart, reload,
// scale): one change at a time, the others wait their turn.
func (a *Agent) rollout(ctx context.Context) (release func(), err error) {
	select {
	case a.rolling <- struct{}{}:
		return func() { <-a.rolling }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Restart restarts the app's processes one at a time, each gated (its
// requests in flight finish, new ones go to the others), and returns once
// the last one serves again, or with the error that stopped the rollout.
func (a *Agent) Restart(ctx context.Context) error { return a.roll(ctx, a.sup.Restart) }

// roll runs step on each slot in turn, under the rollout, and stops at the
// first that fails.
func (a *Agent) roll(ctx context.Context, step func(ctx context.Context, slot int) error) error {
	release, err := a.rollout(ctx)
	if err != nil {
		return err
	}
	defer release()
	n := a.sup.Slots()
	for i := range n {
		if err := step(ctx, i); err != nil {
			return rolloutError(i, n, err)
		}
	}
	return nil
}

// rolloutError says which process stopped a rollout of n.
func rolloutError(i, n int, err error) error {
	if n == 1 {
		return err
	}
	return fmt.Errorf("process %d of %d: %w (the ones after it were not touched)", i, n, err)
}

// Reload replaces the app's processes for a deploy (agentctl reload), one
// at a time. With the proxy and a free port, each new process starts beside
// the old one and takes its traffic once ready; otherwise, or when memory is
// short for one more process, that slot is restarted (gated). It returns
// once the last new process serves and the old ones are gone, or with an
// error wrapping ErrReloadFailed when a new one failed: that slot's old
// process and those not yet replaced keep serving the old release.
func (a *Agent) Reload(ctx context.Context) error { return a.roll(ctx, a.reloadSlot) }

func (a *Agent) reloadSlot(ctx context.Context, i int) error {
	g := a.gen.Load()
	if a.proxy == nil || !g.canOverlap() {
		a.log.Info().Int("slot", i).Msg("reload without overlap: restarting (gated)")
		return a.restartSlot(ctx, i)
	}
	rss := a.sup.Status().Slots[i].Launch.rss()
	if avail, err := probe.MemAvailable(); err == nil && float64(avail) < 1.2*float64(rss) {
		a.log.Warn().Int("slot", i).Uint64("mem_available", avail).Uint64("app_rss", rss).Msg("reload: too little memory for one more process; restarting (gated) instead")
		return a.restartSlot(ctx, i)
	}
	next := g.freePort(a.usedPorts())
	if next == "" {
		a.log.Warn().Int("slot", i).Msg("reload: no free port; restarting (gated) instead")
		return a.restartSlot(ctx, i)
	}
	err := a.sup.Reload(ctx, i, g.supervisorConfig(i, next), g.cfg.Probe.StartupTimeout.D())
	if errors.Is(err, supervisor.ErrNotServing) {
		a.log.Info().Int("slot", i).Msg("reload of a process that is not serving: restarting")
		return a.restartSlot(ctx, i)
	}
	if errors.Is(err, supervisor.ErrReloadBusy) {
		return fmt.Errorf("%w: %w", ErrReloadFailed, err)
	}
	if err != nil {
		return err
	}
	// Restarts of the slot take the new port until the next reload, with
	// the latest config (a SIGHUP may have come meanwhile).
	a.sup.SetConfig(i, a.gen.Load().supervisorConfig(i, next))
	return nil
}

// restartSlot is a reload's restart of slot i: it returns once the new
// process serves, or with an error wrapping ErrReloadFailed.
func (a *Agent) restartSlot(ctx context.Context, i int) error {
	err := a.sup.Restart(ctx, i)
	if errors.Is(err, supervisor.ErrStartFailed) || errors.Is(err, supervisor.ErrStopped) {
		return fmt.Errorf("%w: %w", ErrReloadFailed, err)
	}
	return err
}

// Scale makes the app run n processes (agentctl scale, or app.instances
// changed on SIGHUP): only the slots that change start, or drain and stop.
// With more processes the heap cap per process shrinks: once the new ones
// serve, the ones already running are restarted onto it, one at a time;
// with fewer, the remaining keep theirs until their next start. It returns
// once n processes serve, or with the error that stopped it.
func (a *Agent) Scale(ctx context.Context, n int) error {
	g := a.gen.Load()
	switch {
	case n < 1 || n > MaxInstances:
		return fmt.Errorf("%w: %d processes: between 1 and %d", ErrBadScale, n, MaxInstances)
	case n > 1 && !g.cfg.ProxyEnabled():
		return fmt.Errorf("%w: %d processes need [proxy] (set proxy.listen)", ErrBadScale, n)
	case n > 1:
		if _, pinned := g.appPort(); pinned {
			return fmt.Errorf("%w: %d processes cannot share the PORT that app.env or app.env_file sets", ErrBadScale, n)
		}
	}
	release, err := a.rollout(ctx)
	if err != nil {
		return err
	}
	defer release()
	g = a.gen.Load()
	before := a.sup.Slots()
	ng := a.newGeneration(g.cfg, n)
	a.gen.Store(ng)
	cfgs := a.slotConfigs(ng, n)
	for i := range min(before, n) {
		a.sup.SetConfig(i, cfgs[i]) // their next start takes the new generation
	}
	a.log.Info().Int("from", before).Int("to", n).Int("heap_cap_mb", ng.heapMB).Msg("scaling the app")
	if err := a.sup.Scale(ctx, cfgs); err != nil {
		return err
	}
	if n > before && ng.heapMB > 0 && ng.heapMB < g.heapMB {
		for i := range before {
			if err := a.sup.Restart(ctx, i); err != nil {
				return rolloutError(i, before, fmt.Errorf("onto the smaller heap cap: %w", err))
			}
		}
	}
	return nil
}
