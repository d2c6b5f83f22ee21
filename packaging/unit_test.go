package packaging

import (
	"bufio"
	"bytes"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// unitFile is a parsed systemd unit: section -> key -> values in file order
// (a key may repeat, as Environment= and After= do).
type unitFile map[string]map[string][]string

// parseUnit reads a systemd unit file: [Section] headers, Key=Value lines,
// comments starting with # or ;, and blank lines. Line continuations are not used
// by agent.service and are rejected.
func parseUnit(data []byte) (unitFile, error) {
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
			continue
		case strings.HasSuffix(line, "\\"):
			return nil, &parseError{n, "line continuation"}
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, &parseError{n, "not Key=Value inside a section: " + line}
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u, sc.Err()
}

type parseError struct {
	line int
	msg  string
}

func (e *parseError) Error() string { return "line " + strconv.Itoa(e.line) + ": " + e.msg }

// one returns the single value of key in section, failing the test when the key
// is missing or repeated.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	vs := u[section][key]
	if len(vs) != 1 {
		t.Fatalf("[%s] %s: want exactly one value, got %q", section, key, vs)
	}
	return vs[0]
}

// words returns all space-separated words of every value of key in section.
func (u unitFile) words(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

func TestUnitDirectives(t *testing.T) {
	u, err := parseUnit(Unit)
	if err != nil {
		t.Fatalf("parse agent.service: %v", err)
	}

	exact := []struct{ section, key, want string }{
		{"Service", "Type", "notify"},
		{"Service", "NotifyAccess", "main"},
		{"Service", "ExecStart", "/usr/bin/agent run --config /etc/agent/agent.toml"},
		{"Service", "ExecReload", "/bin/kill -HUP $MAINPID"},
		{"Service", "Restart", "always"},
		{"Service", "RestartSec", "1s"},
		{"Service", "RestartPreventExitStatus", "2"},
		{"Service", "WatchdogSec", "30s"},
		{"Service", "KillMode", "mixed"},
		{"Service", "OOMPolicy", "continue"},
		{"Service", "RuntimeDirectory", "agent"},
		{"Service", "RuntimeDirectoryMode", "0755"},
		{"Install", "WantedBy", "multi-user.target"},
	}
	for _, d := range exact {
		if got := u.one(t, d.section, d.key); got != d.want {
			t.Errorf("[%s] %s=%s, want %s", d.section, d.key, got, d.want)
		}
	}

	for _, key := range []string{"After", "Wants"} {
		if !slices.Contains(u.words("Unit", key), "network-online.target") {
			t.Errorf("[Unit] %s does not name network-online.target: %q", key, u["Unit"][key])
		}
	}

	// The agent lowers its own OOM score; the app is reset to 0, so the kernel
	// picks the app.
	adj, err := strconv.Atoi(u.one(t, "Service", "OOMScoreAdjust"))
	if err != nil || adj >= 0 || adj < -1000 {
		t.Errorf("OOMScoreAdjust=%q, want a number in [-1000, 0)", u["Service"]["OOMScoreAdjust"])
	}

	// Stopping covers stop.drain + stop.timeout (defaults 0s + 10s) with margin,
	// so systemd never SIGKILLs the tree while the agent is still stopping it.
	stop, err := time.ParseDuration(u.one(t, "Service", "TimeoutStopSec"))
	if err != nil || stop < 30*time.Second {
		t.Errorf("TimeoutStopSec=%q, want a duration of at least 30s", u["Service"]["TimeoutStopSec"])
	}
	// Starting waits for READY=1, which comes at the latest when a
	// crash-looping app is failed (about 5 min with the defaults) or after
	// probe.startup_timeout (5 min): the start timeout must cover both.
	start, err := time.ParseDuration(u.one(t, "Service", "TimeoutStartSec"))
	if err != nil || start < 6*time.Minute {
		t.Errorf("TimeoutStartSec=%q, want a duration of at least 6m", u["Service"]["TimeoutStartSec"])
	}
	// A wedged agent gets SIGABRT from the watchdog, then SIGKILL after
	// TimeoutAbortSec: keep that short so a stopped agent is replaced quickly.
	abort, err := time.ParseDuration(u.one(t, "Service", "TimeoutAbortSec"))
	if err != nil || abort > 30*time.Second {
		t.Errorf("TimeoutAbortSec=%q, want a duration of at most 30s", u["Service"]["TimeoutAbortSec"])
	}

	// A Go panic or an unhandled SIGABRT exits with code 2 unless GOTRACEBACK
	// is crash, and RestartPreventExitStatus=2 would then keep a crashed agent down.
	if !slices.Contains(u.words("Service", "Environment"), "GOTRACEBACK=crash") {
		t.Errorf("Environment does not set GOTRACEBACK=crash: %q", u["Service"]["Environment"])
	}
}

func TestParseUnitRejectsGarbage(t *testing.T) {
	for _, in := range []string{
		"Type=notify\n",                   // outside a section
		"[Service]\nType notify\n",        // no '='
		"[Service]\nExecStart=a \\\n b\n", // continuation
	} {
		if _, err := parseUnit([]byte(in)); err == nil {
			t.Errorf("parseUnit(%q) succeeded, want an error", in)
		}
	}
}
