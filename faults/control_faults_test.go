package faults

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"agent/internal/testkit"
)

// TestControlSocketPathTaken starts the agent where its control socket's
// path is held by a file, a directory and a dangling symbolic link: each
// must be a clear error at start, and nothing at the path removed.
func TestControlSocketPathTaken(t *testing.T) {
	row := newRow(t, "control socket path is a file / a directory / a dangling symlink")
	t.Parallel()
	cases := []struct {
		name  string
		make  func(path string) error
		check func(path string) error
	}{
		{"file", func(p string) error { return os.WriteFile(p, []byte("keep me"), 0o644) }, func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil || string(b) != "keep me" {
				return fmt.Errorf("file changed: %q %v", b, err)
			}
			return nil
		}},
		{"directory", func(p string) error {
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(p, "inside"), []byte("x"), 0o644)
		}, func(p string) error {
			_, err := os.Stat(filepath.Join(p, "inside"))
			return err
		}},
		{"dangling symlink", func(p string) error { return os.Symlink("/nonexistent/agent.sock", p) }, func(p string) error {
			target, err := os.Readlink(p)
			if err != nil || target != "/nonexistent/agent.sock" {
				return fmt.Errorf("symlink changed: %q %v", target, err)
			}
			return nil
		}},
	}
	var seen []string
	var example string
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newAgentRun(t, appSpec{})
			if err := c.make(r.socket); err != nil {
				t.Fatal(err)
			}
			r.start(nil)
			code := r.waitExit(30 * time.Second)
			msg := strings.TrimSpace(r.stderr.String())
			if code != 2 || !strings.Contains(msg, r.socket) || !strings.Contains(msg, "not removing it") {
				t.Errorf("exit %d, stderr %q: want exit 2 (systemd must not restart into it) naming the path and saying it is kept", code, msg)
			}
			if strings.Contains(msg, "app started") {
				t.Error("the app was started")
			}
			if err := c.check(r.socket); err != nil {
				t.Error(err)
			}
			seen = append(seen, fmt.Sprintf("%s: exit %d", c.name, code))
			example = strings.ReplaceAll(lastLine(msg), r.socket, "PATH")
		})
	}
	row.set(fmt.Sprintf("refused at start (%s), path left as it was, app never started; e.g. `%s`", strings.Join(seen, ", "), example), "—", "—")
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// ctl runs `agent ctl --socket S args...` and returns its exit code and
// output.
func (r *agentRun) ctl(args ...string) (int, string, string) {
	cmd := exec.Command(agentBin, append([]string{"ctl", "--socket", r.socket}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return code, stdout.String(), stderr.String()
}

func TestConcurrentAgentctlStatus(t *testing.T) {
	row := newRow(t, "200 concurrent `agentctl status`")
	t.Parallel()
	r := newAgentRun(t, appSpec{})
	r.start(nil)
	r.waitHealthy(60 * time.Second)
	const n = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := 0
	var firstBad string
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, out, errOut := r.ctl("status", "--json")
			var st agentStatus
			err := json.Unmarshal([]byte(out), &st)
			mu.Lock()
			defer mu.Unlock()
			if code != 0 || err != nil || st.State != "running" {
				bad++
				if firstBad == "" {
					firstBad = fmt.Sprintf("exit %d, %v, %q", code, err, errOut)
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if bad > 0 {
		t.Errorf("%d of %d agentctl status failed; first: %s", bad, n, firstBad)
	}
	r.freshChecks(3)
	row.set(fmt.Sprintf("%d of %d exit 0 with the JSON status, all in %s; health 200 after", n-bad, n, ms(took)), "—", fmt.Sprintf("%d of %d", bad, n))
}

func TestControlSocketRandomBytes(t *testing.T) {
	row := newRow(t, "random bytes to the control socket")
	t.Parallel()
	r := newAgentRun(t, appSpec{})
	r.start(nil)
	r.waitHealthy(60 * time.Second)
	const conns = 50
	answers := map[string]int{}
	for i := range conns {
		c, err := net.Dial("unix", r.socket)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		junk := make([]byte, 64<<10)
		rand.Read(junk)
		if i%2 == 0 {
			junk = junk[:100] // short junk, then the connection stays open
		}
		c.SetDeadline(time.Now().Add(15 * time.Second))
		c.Write(junk)
		if i%2 == 0 {
			c.(*net.UnixConn).CloseWrite()
		}
		reply, err := io.ReadAll(c)
		c.Close()
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("connection %d: neither answered nor closed in 15s", i)
			continue
		}
		status, _, _ := strings.Cut(string(reply), "\r\n")
		if status == "" {
			status = "closed"
		}
		answers[status]++
	}
	// The agent is unharmed: status answers, the app still runs.
	code, out, errOut := r.ctl("status")
	if code != 0 || !strings.Contains(out, "running") {
		t.Errorf("agentctl status after the junk: exit %d %q %q", code, out, errOut)
	}
	r.freshChecks(3)
	var parts []string
	for s, n := range answers {
		parts = append(parts, fmt.Sprintf("%d× %s", n, s))
	}
	row.set(fmt.Sprintf("%d connections of junk: %s; agentctl status fine after", conns, strings.Join(sorted(parts), ", ")), "—", "—")
}

// TestSecondAgent starts a second agent with the same control socket and
// health port as a running one: it must exit 2 on the socket, before it
// tries the health port, and the first agent must not notice.
func TestSecondAgent(t *testing.T) {
	row := newRow(t, "second agent on a live control socket")
	t.Parallel()
	first := newAgentRun(t, appSpec{})
	first.start(nil)
	first.waitHealthy(60 * time.Second)

	hp := first.healthAddr()
	_, port, _ := net.SplitHostPort(hp)
	var portNum int
	fmt.Sscan(port, &portNum)
	second := newAgentRun(t, appSpec{Socket: first.socket, Health: portNum})
	second.start(nil)
	code := second.waitExit(30 * time.Second)
	msg := strings.TrimSpace(second.stderr.String())
	if code != 2 || !strings.Contains(msg, "control socket in use") {
		t.Errorf("second agent: exit %d, %q; want exit 2 on the control socket", code, msg)
	}
	if strings.Contains(msg, "address already in use") || strings.Contains(msg, "app started") {
		t.Errorf("second agent went past the socket: %q", msg)
	}
	if _, err := os.Stat(first.socket); err != nil {
		t.Errorf("first agent's socket: %v", err)
	}
	st := first.mustStatus()
	if st.Agent.PID != first.cmd.Process.Pid || st.State != "running" {
		t.Errorf("first agent after the second: %+v", st)
	}
	first.freshChecks(3)
	row.set(fmt.Sprintf("exit %d before binding the health port: `%s`; first agent untouched (socket, status, health 200)", code, strings.ReplaceAll(lastLine(msg), first.socket, "PATH")), "—", "—")
}

// TestConfigReplacedThenSIGHUP replaces the config with garbage, an empty
// file and a 10 MB file, each followed by SIGHUP: each is refused, the old
// config kept and the agent keeps serving.
func TestConfigReplacedThenSIGHUP(t *testing.T) {
	row := newRow(t, "config replaced by garbage / empty / 10 MB, then SIGHUP")
	t.Parallel()
	r := newAgentRun(t, appSpec{})
	r.start(nil)
	r.waitHealthy(60 * time.Second)
	pid := r.appPID()
	good, err := os.ReadFile(r.config)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 10<<20)
	for i := range big {
		big[i] = "ab =[\"\n"[i%7]
	}
	cases := []struct {
		name string
		data []byte
	}{
		{"garbage", []byte("this is [not toml\n\x00\xff = = =\n")},
		{"empty", nil},
		{"10 MB", big},
	}
	var seen []string
	for i, c := range cases {
		if err := os.WriteFile(r.config, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		at := time.Now()
		r.cmd.Process.Signal(syscall.SIGHUP)
		testkit.Eventually(t, 60*time.Second, c.name+" refused", func() bool {
			return strings.Count(r.stderr.String(), "reload refused") > i
		})
		took := time.Since(at)
		st := r.mustStatus()
		if st.Name != "faults" || st.PID == nil || *st.PID != pid || st.State != "running" {
			t.Errorf("%s: status after the refused reload: %+v", c.name, st)
		}
		r.freshChecks(2)
		seen = append(seen, fmt.Sprintf("%s refused in %s", c.name, ms(took)))
	}
	if r.exited() {
		t.Fatal("agent exited")
	}
	// The real config back: the next SIGHUP is taken.
	os.WriteFile(r.config, good, 0o644)
	r.cmd.Process.Signal(syscall.SIGHUP)
	testkit.Eventually(t, 60*time.Second, "good config reloaded", func() bool {
		return strings.Contains(r.stderr.String(), "config reloaded")
	})
	row.set(strings.Join(seen, ", ")+"; old config kept, same app process serving, health 200; the good config is taken again after", "—", "—")
}
