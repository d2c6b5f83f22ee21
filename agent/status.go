package agent

import (
	"os"
	"time"

	"agent/probe"
	"agent/supervisor"
)

// Status is the object of `agentctl status --json` and GET /v1/status.
type Status struct {
	Name          string       `json:"name"`
	State         string       `json:"state"`
	PID           *int         `json:"pid"` // null when no process runs
	Ready         bool         `json:"ready"`
	Healthy       bool         `json:"healthy"` // what /health.html says: 200
	UptimeSeconds float64      `json:"uptime_seconds"`
	Restarts      int          `json:"restarts"`
	RSSBytes      uint64       `json:"rss_bytes"`
	HeapCapMB     int          `json:"heap_cap_mb"`
	OOMKills      int64        `json:"oom_kills"`
	Message       string       `json:"message,omitempty"` // why: failed, backoff
	LastExit      *ExitStatus  `json:"last_exit"`
	Exits         []ExitStatus `json:"exits"`
	Proxy         *ProxyStatus `json:"proxy,omitempty"` // absent when the proxy is off
	Agent         AgentStatus  `json:"agent"`
}

// ProxyStatus is the traffic front's part of the status.
type ProxyStatus struct {
	Listen   string `json:"listen"`
	Upstream string `json:"upstream"` // where the current process listens
	InFlight int64  `json:"in_flight"`
	Held     int64  `json:"held"`
	Requests uint64 `json:"requests"`
	Replayed uint64 `json:"replayed"`
	Failed   uint64 `json:"failed"` // responses the agent gave instead of the app (502, 503, 504)
}

// ExitStatus is one recorded exit.
type ExitStatus struct {
	At            time.Time `json:"at"`
	Reason        string    `json:"reason"`
	Code          *int      `json:"code"`
	Signal        *string   `json:"signal"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	Detail        string    `json:"detail"`
}

// AgentStatus describes the agent itself.
type AgentStatus struct {
	Version       string  `json:"version"`
	PID           int     `json:"pid"`
	RSSBytes      uint64  `json:"rss_bytes"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	OOMWatch      string  `json:"oom_watch"`   // ok | off | unavailable: <why>
	LogDropped    uint64  `json:"log_dropped"` // log lines a stuck or failing sink lost
}

// Status returns the agent's current status.
func (a *Agent) Status() Status {
	st := a.sup.Status()
	draining := a.view.Load().draining
	cfg := a.cfg.Load()
	now := time.Now()
	s := Status{
		Name:      cfg.Name,
		State:     string(st.State),
		Ready:     st.Ready,
		Healthy:   st.State == supervisor.Running && st.Ready && !draining,
		Restarts:  st.Restarts,
		HeapCapMB: a.heapCap(st),
		OOMKills:  a.oomKills.Load(),
		Message:   st.Message,
		Exits:     make([]ExitStatus, 0, len(st.Exits)),
		Agent: AgentStatus{
			Version:       a.version,
			PID:           os.Getpid(),
			RSSBytes:      selfRSS(),
			UptimeSeconds: seconds(now.Sub(a.started)),
			OOMWatch:      "off",
			LogDropped:    a.logDropped(),
		},
	}
	if draining {
		s.State = string(supervisor.Draining)
	}
	if a.proxy != nil {
		ps := a.proxy.Stats()
		l := st.Launch
		if l == nil {
			l = a.sup.Config().Launch // where the next process listens
		}
		up := l.upstream
		s.Proxy = &ProxyStatus{Listen: cfg.Proxy.Listen, Upstream: up, InFlight: ps.InFlight, Held: ps.Held,
			Requests: ps.Requests, Replayed: ps.Replayed, Failed: ps.Failed}
	}
	if st.PID != 0 {
		pid := st.PID
		s.PID = &pid
		s.UptimeSeconds = seconds(now.Sub(st.Started))
		s.RSSBytes = st.Launch.rss()
	}
	if a.oom != nil {
		s.Agent.OOMWatch = a.oom.Status()
	}
	for _, e := range st.Exits {
		x := ExitStatus{At: e.At.UTC(), Reason: string(e.Reason), Code: e.Code, UptimeSeconds: seconds(e.Uptime), Detail: e.Detail}
		if e.Signal != "" {
			sig := e.Signal
			x.Signal = &sig
		}
		s.Exits = append(s.Exits, x)
	}
	if len(s.Exits) > 0 {
		s.LastExit = &s.Exits[0]
	}
	return s
}

// heapCap is the heap cap of the running process, or the one the next
// process gets when none runs.
func (a *Agent) heapCap(st appStatus) int {
	if st.Launch != nil {
		return st.Launch.gen.heapMB
	}
	return a.gen.Load().heapMB
}

func seconds(d time.Duration) float64 {
	return float64(d.Milliseconds()) / 1000
}

// selfRSS returns the agent's own resident memory in bytes.
func selfRSS() uint64 {
	rss, err := probe.ProcessRSS(os.Getpid())
	if err != nil {
		return 0
	}
	return rss
}
