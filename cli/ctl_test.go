package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agent/agent"
	"agent/internal/testkit"
)

// TestMain re-runs the test binary as the app when CLI_TEST_APP is set: it
// prints a line and waits to be stopped.
func TestMain(m *testing.M) {
	switch os.Getenv("CLI_TEST_APP") {
	case "1":
		fmt.Println("app up")
		select {}
	case "flood": // 40,000 lines of 100 bytes (4 MB), then wait
		line := strings.Repeat("x", 90)
		for i := range 40000 {
			fmt.Printf("%08d %s\n", i, line)
		}
		fmt.Println("flood done")
		select {}
	}
	os.Exit(m.Run())
}

// waitTime bounds waits on real processes; generous for a loaded CI machine.
const waitTime = 60 * time.Second

// startAgent runs a real agent supervising the test binary as its app and
// returns its control socket.
func startAgent(t *testing.T) string {
	t.Helper()
	return startAgentWith(t, "", "running")
}

// startAgentWith is startAgent with extra config text, returning once the
// app is in state.
func startAgentWith(t *testing.T, extra, state string) string {
	t.Helper()
	dir := t.TempDir()
	socket := filepath.Join(dir, "agent.sock")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	health := fmt.Sprintf("127.0.0.1:%d", testkit.Port(t))
	text := fmt.Sprintf(`name = "web"
[app]
command = [%q, "-test.run=^$"]
env = { CLI_TEST_APP = "1" }
[restart]
delay = "0s"
[memory]
watch_oom = false
[health]
listen = %q
[control]
socket = %q
%s`, exe, health, socket, extra)
	path := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := agent.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	a := agent.New(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), agent.Options{Version: "test"})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx, nil) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-errc:
		case <-time.After(waitTime):
			t.Error("agent did not stop")
		}
	})
	testkit.EventuallyMsg(t, waitTime, "the app "+state+" and the control socket up", func() (bool, string) {
		st := a.Status()
		c, err := net.Dial("unix", socket)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return st.State == state, fmt.Sprintf("%+v", st)
	})
	return socket
}

func ctl(t *testing.T, socket string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Ctl(context.Background(), append([]string{"--socket", socket}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestAgentctlAgainstAgent(t *testing.T) {
	socket := startAgent(t)

	code, out, errs := ctl(t, socket, "status", "--json")
	var s agent.Status
	if code != CtlOK || json.Unmarshal([]byte(out), &s) != nil || s.Name != "web" || s.State != "running" || s.PID == nil {
		t.Fatalf("status --json: exit %d, %q, %s", code, out, errs)
	}

	code, table, _ := ctl(t, socket, "status")
	for _, want := range []string{"NAME", "PID", "STATE", "web", "running", fmt.Sprint(*s.PID), "agent test, pid "} {
		if code != CtlOK || !strings.Contains(table, want) {
			t.Errorf("status table (exit %d) lacks %q:\n%s", code, want, table)
		}
	}

	if code, out, errs := ctl(t, socket, "restart"); code != CtlOK || !strings.HasPrefix(out, "restart: ") {
		t.Fatalf("restart: exit %d, %q, %s", code, out, errs)
	}
	code, logs, _ := ctl(t, socket, "logs", "-n", "5")
	if code != CtlOK || !strings.Contains(logs, "stdout") || !strings.Contains(logs, "| app up") {
		t.Errorf("logs (exit %d):\n%s", code, logs)
	}

	if code, out, _ := ctl(t, socket, "stop"); code != CtlOK || out != "stop: stopped\n" {
		t.Errorf("stop: exit %d, %q", code, out)
	}
	if code, out, _ := ctl(t, socket, "start"); code != CtlOK || !strings.HasPrefix(out, "start: ") {
		t.Errorf("start: exit %d, %q", code, out)
	}
}

func TestAgentctlWithoutAgent(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "none.sock")
	code, _, errs := ctl(t, socket, "status")
	if code != CtlUnreachable {
		t.Fatalf("exit %d, want %d", code, CtlUnreachable)
	}
	if !strings.Contains(errs, socket) || !strings.Contains(errs, "is it running") {
		t.Fatalf("message %q does not name the socket", errs)
	}
	if code, _, _ := ctl(t, socket, "frobnicate"); code != CtlUsage {
		t.Fatalf("unknown command: exit %d, want %d", code, CtlUsage)
	}
}

func TestMainExitCodes(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"agent", "version"}, Build{Version: "1.2.3"}, &out, &errb); code != 0 || out.String() != "agent 1.2.3\n" {
		t.Errorf("version: exit %d, %q", code, out.String())
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("name = \n"), 0o644)
	errb.Reset()
	if code := Main([]string{"agent", "check", "--config", bad}, Build{}, &out, &errb); code != 2 || !strings.HasPrefix(errb.String(), bad+":1:") {
		t.Errorf("check of a broken config: exit %d, %q", code, errb.String())
	}
	if code := Main([]string{"agent", "frobnicate"}, Build{}, &out, &errb); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	socket := filepath.Join(t.TempDir(), "none.sock")
	if code := Main([]string{"agent", "ctl", "--socket", socket, "status"}, Build{}, &out, &errb); code != CtlUnreachable {
		t.Errorf("agent ctl without an agent: exit %d, want %d", code, CtlUnreachable)
	}
	if code := Main([]string{"/usr/bin/agentctl", "--socket", socket, "status"}, Build{}, &out, &errb); code != CtlUnreachable {
		t.Errorf("agentctl without an agent: exit %d, want %d", code, CtlUnreachable)
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		5 * time.Second:                "5s",
		90 * time.Second:               "1m30s",
		3*time.Hour + 4*time.Minute:    "3h04m",
		58 * time.Hour:                 "2d10h",
		10*24*time.Hour + 10*time.Hour: "10d10h",
		72 * time.Hour:                 "3d",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestAgentctlTimeoutSaysStillUnderWay(t *testing.T) {
	// Never ready: the probe's port is never listened on.
	socket := startAgentWith(t, fmt.Sprintf("[probe]\ntcp = \"127.0.0.1:%d\"\n", testkit.Port(t)), "starting")
	code, _, errs := ctl(t, socket, "--timeout", "300ms", "restart")
	if code != CtlAgentError || !strings.Contains(errs, "restart: still under way after 300ms") {
		t.Fatalf("restart of an app that never gets ready: exit %d, %q", code, errs)
	}
}
