package testapp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"agent/internal/testkit"
)

func TestNodeApp(t *testing.T) {
	dir := NodeApp(t, `console.log("hi " + process.argv.length)`)
	out, err := exec.Command("node", filepath.Join(dir, "server.js")).CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "hi 2" {
		t.Fatalf("output %q, want %q", got, "hi 2")
	}
}

// TestNextApp builds (or finds) the Next.js fixture and serves its page with next start.
func TestNextApp(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: builds a Next.js app")
	}
	dir := NextApp(t)
	if again := NextApp(t); again != dir {
		t.Fatalf("second call gave %s, want the cached %s", again, dir)
	}
	port := testkit.Port(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "node_modules/.bin/next"), "start", "-p", fmt.Sprint(port))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NEXT_TELEMETRY_DISABLED=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			t.Logf("next: %s", sc.Text())
		}
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	body := waitBody(t, 2*time.Minute, url)
	if !strings.Contains(body, "hello from next") {
		t.Fatalf("GET %s: body %q does not hold the page", url, body)
	}
}

// waitBody waits until a GET of url answers 200 and returns the body.
func waitBody(t *testing.T, timeout time.Duration, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	var body string
	testkit.EventuallyMsg(t, timeout, "GET "+url+" to answer 200", func() (bool, string) {
		resp, err := c.Get(url)
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return body
}
