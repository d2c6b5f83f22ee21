package agent

import (
	"fmt"
	"net"

	"agent/metrics"
	"agent/supervisor"
)

// What happens on `agentctl reload`: Agent.Reload (slots.go) rolls over
// the slots; for each, with the proxy and a free port, the new process
// starts beside the old one (supervisor/reload.go), takes the traffic once
// ready (front.go: EventSwapped), and the old one stops once its requests
// in flight are done; otherwise, or when memory is short for one more
// process, the slot is restarted, gated.

// ErrReloadFailed wraps the reason a reload's new process failed; the old
// one keeps serving.
var ErrReloadFailed = supervisor.ErrReloadFailed

// listenMetrics binds metrics.listen, so a busy port fails the start; nil
// when metrics are off.
func (a *Agent) listenMetrics(cfg *Config) (net.Listener, error) {
	if cfg.Metrics.Listen == "" {
		return nil, nil
	}
	ln, err := a.listenTCP("metrics", cfg.Metrics.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w", cfg.Metrics.Listen, err)
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
	for _, in := range s.Instances {
		snap.Slots = append(snap.Slots, metrics.SlotSnapshot{Index: in.Index, Up: in.PID != nil, Ready: in.Ready,
			Restarts: uint64(in.Restarts), RSSBytes: in.RSSBytes, CPUSeconds: in.CPUPercent / 100, UptimeSeconds: in.UptimeSeconds})
	}
	if a.proxy != nil {
		ps := a.proxy.Stats()
		snap.Proxy = &metrics.ProxySnapshot{InFlight: ps.InFlight, Held: ps.Held, Replayed: ps.Replayed, Failed: ps.Failed}
	}
	return snap
}
