package supervisor

import (
	"fmt"
	"strings"
)

// dropFromAgentEnv lists the variables of the agent's own environment that
// belong to the agent's relationship with systemd and must not reach the app:
// a Node app that saw NOTIFY_SOCKET could confuse systemd about the unit.
var dropFromAgentEnv = []string{"NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}

// BuildEnv assembles the app's environment: the agent's own (base) minus the
// systemd variables, then layers (env_file, then env, each KEY=VALUE, later
// wins), then NODE_OPTIONS with --max-old-space-size=heapMB when heapMB > 0.
// It returns a warning when an existing heap flag was replaced.
func BuildEnv(base []string, heapMB int, layers ...[]string) (env []string, warning string) {
	vars := make(map[string]string)
	var order []string
	set := func(kv string) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return
		}
		if _, seen := vars[k]; !seen {
			order = append(order, k)
		}
		vars[k] = v
	}
	for _, kv := range base {
		if k, _, _ := strings.Cut(kv, "="); isDropped(k) {
			continue
		}
		set(kv)
	}
	for _, layer := range layers {
		for _, kv := range layer {
			set(kv)
		}
	}
	if heapMB > 0 {
		opts, old := withHeapCap(vars["NODE_OPTIONS"], heapMB)
		if old != "" {
			warning = fmt.Sprintf("NODE_OPTIONS had %s; replaced by --max-old-space-size=%d", old, heapMB)
		}
		set("NODE_OPTIONS=" + opts)
	}
	env = make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vars[k])
	}
	return env, warning
}

func isDropped(k string) bool {
	for _, d := range dropFromAgentEnv {
		if k == d {
			return true
		}
	}
	return false
}

// withHeapCap returns opts with any heap size flag removed and
// --max-old-space-size=mb appended; old is the flag it removed, if any.
func withHeapCap(opts string, mb int) (out, old string) {
	fields := strings.Fields(opts)
	kept := fields[:0]
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		name, _, hasValue := strings.Cut(f, "=")
		if name != "--max-old-space-size" && name != "--max_old_space_size" {
			kept = append(kept, f)
			continue
		}
		old = f
		if !hasValue && i+1 < len(fields) { // "--max-old-space-size 512"
			i++
			old += " " + fields[i]
		}
	}
	kept = append(kept, fmt.Sprintf("--max-old-space-size=%d", mb))
	return strings.Join(kept, " "), old
}
