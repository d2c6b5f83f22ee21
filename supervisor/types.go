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

import "time"

// State is the lifecycle state of the supervised app, as shown in status and
// on the health page.
type State string

const (
	Starting State = "starting" // spawned, not yet ready
	Running  State = "running"  // ready
	Backoff  State = "backoff"  // waiting to restart
	Stopping State = "stopping"
	Stopped  State = "stopped" // asked to
	Failed   State = "failed"  // restart budget spent
)

// Reason says why an app process ended.
type Reason string

const (
	ReasonExited       Reason = "exited"        // exit code 0
	ReasonCrashed      Reason = "crashed"       // non-zero exit code
	ReasonSignaled     Reason = "signaled"      // killed by a signal nothing else explains
	ReasonOOMKill      Reason = "oom-kill"      // the kernel OOM killer
	ReasonHeapOOM      Reason = "heap-oom"      // V8 ran out of heap and aborted
	ReasonRSSLimit     Reason = "rss-limit"     // restarted for memory.max_rss
	ReasonLiveness     Reason = "liveness"      // restarted after failed probes
	ReasonStartTimeout Reason = "start-timeout" // never ready within startup_timeout
	ReasonRestart      Reason = "restart"       // asked to restart
	ReasonStop         Reason = "stop"          // asked to stop
	ReasonReload       Reason = "reload"        // replaced by a new process in a reload
)

// requested reports whether r is a reason the agent itself caused by
// stopping the process, rather than one the process died of.
func (r Reason) requested() bool {
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
}
