// Package supervisor runs the app's processes and keeps them running:
// spawn with their environment and credentials, output capture, stop of a
// whole process tree, exit classification, the restart policy, and reloads.
//
// The files follow those jobs: supervisor.go is the API, events.go the
// events it publishes, loop.go the goroutine that owns all state (Run),
// slot.go a slot (one place for a process, with its restart policy state
// and the requests waiting on it), reload.go the reload plan, child.go the
// spawn and output capture of one process, exit.go the classification of
// its exit, stop_linux.go the stop of its tree, table_linux.go which
// processes are the app's, reaper_linux.go the reaping of orphans,
// policy.go the restart policy (pure), env.go and output.go the
// environment and the output ring.
package supervisor

import (
	"time"

	"agent/internal/lifecycle"
)

// State is the lifecycle state of the supervised app, as shown in status and
// on the health page. The words are lifecycle's.
type State = lifecycle.State

const (
	Starting = lifecycle.Starting
	Running  = lifecycle.Running
	Backoff  = lifecycle.Backoff
	Stopping = lifecycle.Stopping
	Stopped  = lifecycle.Stopped
	Failed   = lifecycle.Failed
	Draining = lifecycle.Draining
	Degraded = lifecycle.Degraded
)

// Reason says why an app process ended. The words are lifecycle's.
type Reason = lifecycle.Reason

const (
	ReasonExited       = lifecycle.ReasonExited
	ReasonCrashed      = lifecycle.ReasonCrashed
	ReasonSignaled     = lifecycle.ReasonSignaled
	ReasonOOMKill      = lifecycle.ReasonOOMKill
	ReasonHeapOOM      = lifecycle.ReasonHeapOOM
	ReasonRSSLimit     = lifecycle.ReasonRSSLimit
	ReasonLiveness     = lifecycle.ReasonLiveness
	ReasonStartTimeout = lifecycle.ReasonStartTimeout
	ReasonRestart      = lifecycle.ReasonRestart
	ReasonStop         = lifecycle.ReasonStop
	ReasonReload       = lifecycle.ReasonReload
)

// requested reports whether r is a reason the agent itself caused by
// stopping the process, rather than one the process died of.
func requested(r Reason) bool {
	switch r {
	case ReasonRSSLimit, ReasonLiveness, ReasonStartTimeout, ReasonRestart, ReasonStop, ReasonReload:
		return true
	}
	return false
}

// Exit records how one app process ended.
type Exit struct {
	At     time.Time     `json:"at"`
	Reason Reason        `json:"reason"`
	Code   *int          `json:"code"`   // nil when killed by a signal
	Signal string        `json:"signal"` // "" when it exited with a code
	Uptime time.Duration `json:"-"`
	Detail string        `json:"detail,omitempty"`
	PID    int           `json:"-"`
	Slot   int           `json:"-"` // the index of the slot it ran in
}
