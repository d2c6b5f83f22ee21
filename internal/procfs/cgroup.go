package procfs

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseCgroup returns the memory cgroup of a process from the content of
// /proc/PID/cgroup, lines "ID:CONTROLLERS:PATH": the path on the cgroup v1
// hierarchy that has the memory controller (a line like
// "4:memory:/system.slice/agent.service" or "7:cpu,memory:/g") and the
// path on the unified v2 hierarchy ("0::/system.slice/agent.service"),
// each "" when absent. On a hybrid host both are there and the memory
// controller is on v1. A path starts with "/" and may itself hold colons.
// A line of another layout, or with a hierarchy ID that is not a number,
// is an error wrapping ErrMalformed.
func ParseCgroup(data string) (v1Memory, v2 string, err error) {
	n := 0
	for line := range strings.SplitSeq(data, "\n") {
		n++
		if line == "" {
			continue
		}
		id, rest, ok1 := strings.Cut(line, ":")
		controllers, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || !strings.HasPrefix(path, "/") {
			return "", "", fmt.Errorf("cgroup line %d: want ID:CONTROLLERS:/PATH, got %q: %w", n, line, ErrMalformed)
		}
		if _, err := strconv.ParseUint(id, 10, 32); err != nil {
			return "", "", fmt.Errorf("cgroup line %d: bad hierarchy id %q: %w", n, id, ErrMalformed)
		}
		switch {
		case id == "0" && controllers == "":
			v2 = path
		case v1Memory == "" && hasController(controllers, "memory"):
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
