package procs

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// TestSet runs the test binary again with and without $GOMAXPROCS and
// reads back the number in force.
func TestSet(t *testing.T) {
	if os.Getenv("PROCS_TEST_CHILD") == "1" {
		Set()
		os.Stdout.WriteString(strings.Repeat("x", runtime.GOMAXPROCS(0)))
		os.Exit(0)
	}
	for _, c := range []struct {
		env  string
		want int
	}{{"", Default}, {"GOMAXPROCS=3", 3}} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSet$")
		cmd.Env = append(os.Environ(), "PROCS_TEST_CHILD=1")
		cmd.Env = removeEnv(cmd.Env, "GOMAXPROCS")
		if c.env != "" {
			cmd.Env = append(cmd.Env, c.env)
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Count(string(out), "x"); got != c.want {
			t.Errorf("with %q: GOMAXPROCS %d, want %d", c.env, got, c.want)
		}
	}
}

func removeEnv(env []string, key string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}
