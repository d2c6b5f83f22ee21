package agent

import (
	"os"
	"slices"
	"strconv"
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
	// Instances lists every app process slot (one with app.instances = 1).
	Instances []InstanceStatus `json:"instances"`
	Proxy     *ProxyStatus     `json:"proxy,omitempty"` // absent when the proxy is off
	Agent     AgentStatus      `json:"agent"`
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

// InstanceStatus is one app process slot.
type InstanceStatus struct {
	Index         int         `json:"index"`
	PID           *int        `json:"pid"` // null when no process runs
	Port          int         `json:"port,omitempty"`
	State         string      `json:"state"`
	Ready         bool        `json:"ready"`
	UptimeSeconds float64     `json:"uptime_seconds"`
	Restarts      int         `json:"restarts"`
	RSSBytes      uint64      `json:"rss_bytes"`
	CPUPercent    float64     `json:"cpu_percent"` // over the last sampling second, of one CPU
	HeapCapMB     int         `json:"heap_cap_mb"`
	LastExit      *ExitStatus `json:"last_exit"`
}

// ExitStatus is one recorded exit.
type ExitStatus struct {
	Instance      int       `json:"instance"` // the slot it ran in
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
	// Upgrades counts the in-place upgrades since the agent first
	// started, which was at Started.
	Upgrades int       `json:"upgrades"`
	Started  time.Time `json:"started"`
}

// Status returns the agent's current status. With one process the
// top-level fields are that process's; with more they sum the processes up
// (see supervisor's Status).
func (a *Agent) Status() Status {
	st := a.sup.Status()
	draining := a.view.Load().draining
	cfg := a.cfg.Load()
	now := time.Now()
	s := Status{
		Name:      cfg.Name,
		State:     string(st.State),
		Ready:     st.Ready,
		Healthy:   serving(st) && !draining,
		Restarts:  st.Restarts,
		HeapCapMB: a.heapCap(st.Launch),
		OOMKills:  a.oomKills.Load(),
		Message:   st.Message,
		Exits:     make([]ExitStatus, 0, len(st.Exits)),
		Instances: make([]InstanceStatus, 0, len(st.Slots)),
		Agent: AgentStatus{
			Version:       a.version,
			PID:           os.Getpid(),
			RSSBytes:      selfRSS(),
			UptimeSeconds: seconds(now.Sub(a.started)),
			OOMWatch:      "off",
			LogDropped:    a.logDropped(),
			Upgrades:      a.upgrades,
			Started:       a.startedWall.UTC().Truncate(time.Millisecond),
		},
	}
	if draining {
		s.State = string(supervisor.Draining)
	}
	for _, e := range st.Exits {
		x := ExitStatus{Instance: e.Slot, At: e.At.UTC(), Reason: string(e.Reason), Code: e.Code, UptimeSeconds: seconds(e.Uptime), Detail: e.Detail}
		if e.Signal != "" {
			sig := e.Signal
			x.Signal = &sig
		}
		s.Exits = append(s.Exits, x)
	}
	if len(s.Exits) > 0 {
		s.LastExit = &s.Exits[0]
	}
	for _, ss := range st.Slots {
		in := InstanceStatus{Index: ss.Index, State: string(ss.State), Ready: ss.Ready, Restarts: ss.Restarts,
			HeapCapMB: a.heapCap(ss.Launch)}
		l := ss.Launch
		if l == nil {
			l = a.sup.Config(ss.Index).Launch // where its next process listens
		}
		if p, err := strconv.Atoi(portOf(l.upstream)); err == nil {
			in.Port = p
		}
		if ss.PID != 0 {
			pid := ss.PID
			in.PID = &pid
			in.UptimeSeconds = seconds(now.Sub(ss.Started))
			in.RSSBytes = ss.Launch.rss()
			in.CPUPercent = ss.Launch.cpuPercent()
		}
		for i := range s.Exits {
			if s.Exits[i].Instance == ss.Index {
				in.LastExit = &s.Exits[i]
				break
			}
		}
		s.RSSBytes += in.RSSBytes
		s.Instances = append(s.Instances, in)
	}
	if st.PID != 0 {
		pid := st.PID
		s.PID = &pid
	}
	if slices.ContainsFunc(st.Slots, func(ss supervisor.SlotStatus[*launch]) bool { return ss.PID != 0 }) {
		s.UptimeSeconds = seconds(now.Sub(st.Started)) // the longest-running process's
	}
	if a.proxy != nil {
		ps := a.proxy.Stats()
		l := st.Launch
		if l == nil {
			l = a.sup.Config(0).Launch // where the next process listens
		}
		s.Proxy = &ProxyStatus{Listen: cfg.Proxy.Listen, Upstream: l.upstream, InFlight: ps.InFlight, Held: ps.Held,
			Requests: ps.Requests, Replayed: ps.Replayed, Failed: ps.Failed}
	}
	if a.oom != nil {
		s.Agent.OOMWatch = a.oom.Status()
	}
	return s
}

// serving reports whether the app serves: its process is ready, or with
// several, at least one is (degraded included).
func serving(st appStatus) bool {
	return st.Ready && (st.State == supervisor.Running || st.State == supervisor.Degraded)
}

// heapCap is the heap cap of the running process, or the one the next
// process gets when none runs.
func (a *Agent) heapCap(l *launch) int {
	if l != nil {
		return l.gen.heapMB
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
