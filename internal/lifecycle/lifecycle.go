// Package lifecycle holds the words for where the app is in its life and why
// one of its processes ended, as status, the health page, the metrics and the
// logs spell them. The supervisor decides them; the other packages show or
// compare them, so the words live here, below all of them.
package lifecycle

// State is the lifecycle state of the app, or of one of its processes.
type State string

const (
	Starting State = "starting" // spawned, not yet ready
	Running  State = "running"  // ready
	Backoff  State = "backoff"  // waiting to restart
	Stopping State = "stopping"
	Stopped  State = "stopped" // asked to
	Failed   State = "failed"  // restart budget spent
	// Draining is the agent's, not a process's: it is shutting down, the
	// health page answers 503 while requests are still served.
	Draining State = "draining"
	// Degraded is the app's as a whole with several instances: some of its
	// processes serve, not all.
	Degraded State = "degraded"
)

// States returns every State, in the order of the constants.
func States() []State {
	return []State{Starting, Running, Backoff, Stopping, Stopped, Failed, Draining, Degraded}
}

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

// Reasons returns every Reason, in the order of the constants.
func Reasons() []Reason {
	return []Reason{
		ReasonExited, ReasonCrashed, ReasonSignaled, ReasonOOMKill, ReasonHeapOOM, ReasonRSSLimit,
		ReasonLiveness, ReasonStartTimeout, ReasonRestart, ReasonStop, ReasonReload,
	}
}
