package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"agent/agent"
	"agent/internal/testkit"
	"agent/supervisor"
)

// TestLogFileRotatesAndStuckStderrCostsOnlyLines runs a real agent whose
// app floods 4 MB of output, with log.file rotated at 1 MB and the agent's
// stderr a pipe nobody reads: the app and the agent go on, the file rotates
// within its bounds, its lines are JSON, and the stuck sink's losses are
// counted.
func TestLogFileRotatesAndStuckStderrCostsOnlyLines(t *testing.T) {
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "logs", "web.log")
	socket := filepath.Join(dir, "agent.sock")
	path := filepath.Join(dir, "agent.toml")
	os.WriteFile(path, []byte(fmt.Sprintf(`name = "web"
[app]
command = [%q, "-test.run=^$"]
env = { CLI_TEST_APP = "flood" }
[memory]
watch_oom = false
[health]
listen = "127.0.0.1:0"
[control]
socket = %q
[log]
file = %q
max_size = "1MB"
max_files = 2
`, exe, socket, logFile)), 0o644)
	cfg, err := agent.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe() // stderr that nobody reads
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	out, err := openLog(cfg, pw)
	if err != nil {
		t.Fatal(err)
	}
	a := agent.New(cfg, out.log, agent.Options{Version: "test", LogDropped: out.Dropped})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx, nil) }()
	defer func() {
		cancel()
		<-errc
		out.Close()
		pw.Close()
	}()

	testkit.EventuallyMsg(t, waitTime, "the flood to get through", func() (bool, string) {
		st := a.Status()
		logs := false
		(&agent.Client{Socket: socket}).Logs(ctx, 5, false, func(l supervisor.Line) { logs = logs || l.Text == "flood done" })
		return logs && st.State == "running", fmt.Sprintf("%+v", st)
	})
	if d := a.Status().Agent.LogDropped; d == 0 {
		t.Error("a stuck stderr dropped no line: the sink must have blocked or grown")
	}

	// The file: rotated, bounded, JSON.
	var names []string
	var total int64
	testkit.EventuallyMsg(t, waitTime, "the rotated log files compressed and pruned", func() (bool, string) {
		entries, _ := os.ReadDir(filepath.Dir(logFile))
		names, total = nil, 0
		gz, plain := 0, 0
		for _, e := range entries {
			fi, _ := e.Info()
			names = append(names, e.Name())
			total += fi.Size()
			switch {
			case strings.HasSuffix(e.Name(), ".gz"):
				gz++
			case e.Name() != "web.log":
				plain++ // rotated, being compressed
			}
		}
		// Rotated files are compressed and pruned in the background.
		return gz >= 1 && plain == 0 && len(names) <= 3, fmt.Sprint(names)
	})
	if len(names) < 2 || len(names) > 3 {
		t.Errorf("log dir holds %v: want the live file and at most max_files = 2 rotated ones", names)
	}
	if total > 3<<20 {
		t.Errorf("log dir holds %d bytes: rotation does not bound it", total)
	}
	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d is not JSON: %q", n+1, sc.Text())
		}
		if _, ok := m["time"]; !ok {
			t.Fatalf("line %d has no time: %q", n+1, sc.Text())
		}
		n++
	}
	if n == 0 {
		t.Error("the live log file is empty")
	}
	if fi, _ := os.Stat(logFile); fi.Mode().Perm() != 0o640 {
		t.Errorf("log file mode %v, want 0640", fi.Mode().Perm())
	}
}
