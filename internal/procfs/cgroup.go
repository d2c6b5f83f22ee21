package procfs

import (
	"fmt"
	"strings"
)

// ParseCgroup returns the memory cgroup of a process from the content of
// /proc/PID/cgroup: the path on the cgroup v1 memory hierarchy (a line like
// "4:memory:/system.slice/agent.service") and the path on the unified v2
// hierarchy ("0::/system.slice/agent.service"), each "" when absent.
func ParseCgroup(data string) (v1Memory, v2 string, err error) {
	for line := range strings.SplitSeq(data, "\n") {
		if line == "" {
			continue
		}
		id, rest, ok := strings.Cut(line, ":")
		controllers, path, ok2 := strings.Cut(rest, ":")
		if !ok || !ok2 || id == "" {
			return "", "", fmt.Errorf("cgroup line %q: %w", line, ErrMalformed)
		}
		switch {
		case id == "0" && controllers == "":
			v2 = path
		case hasController(controllers, "memory"):
			v1Memory = path
		}
	}
	return v1Memory, v2, nil
}

// hasController reports whether name is in the comma-separated list.
func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}
