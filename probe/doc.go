// Package probe holds the agent's observers: the resident memory of the app's
// process tree, the kernel's OOM kills read from /dev/kmsg, the heap cap sized
// from the machine's and the cgroup's memory, the app's readiness and liveness
// probes, and the /health.html server the load balancer polls.
//
// Observers only report; deciding what to do about an observation (restart,
// record an exit reason) belongs to the supervisor.
package probe
