package agent

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notifyListener is the systemd side of sd_notify: a real unixgram socket.
type notifyListener struct {
	t    *testing.T
	msgs chan string
}

func listenNotify(t *testing.T) *notifyListener {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	n := &notifyListener{t: t, msgs: make(chan string, 4096)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			if strings.HasPrefix(string(buf[:k]), "FDSTORE") {
				continue // the descriptor store's: fdstore_test.go checks those
			}
			for _, line := range strings.Split(strings.TrimSpace(string(buf[:k])), "\n") {
				n.msgs <- line
			}
		}
	}()
	return n
}

// next returns the next message for which keep is true, skipping others.
func (n *notifyListener) next(what string, keep func(string) bool) string {
	n.t.Helper()
	deadline := time.After(waitTime)
	for {
		select {
		case m := <-n.msgs:
			if keep(m) {
				return m
			}
		case <-deadline:
			n.t.Fatalf("no sd_notify message %s", what)
		}
	}
}

func notWatchdog(m string) bool { return m != "WATCHDOG=1" }

func TestSystemdNotifications(t *testing.T) {
	n := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "200000")
	port := freePort(t)
	gate := filepath.Join(t.TempDir(), "listen-now")
	r := startAgent(t, serverConfig(t, port, fmt.Sprintf(`env_file = %q
[probe]
tcp = "127.0.0.1:%d"
`, writeEnvFile(t, "LISTEN_WHEN="+gate), port)))

	// Before the app listens: STATUS=starting, watchdog pings, no READY.
	if m := n.next("STATUS starting", notWatchdog); !strings.HasPrefix(m, "STATUS=starting pid ") {
		t.Fatalf("first message %q, want STATUS=starting ...", m)
	}
	for i := 0; i < 3; i++ {
		n.next("WATCHDOG=1", func(m string) bool {
			if m == "READY=1" {
				t.Fatal("READY=1 before the app listens")
			}
			return m == "WATCHDOG=1"
		})
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if m := n.next("STATUS running", notWatchdog); !strings.HasPrefix(m, "STATUS=running pid ") || !strings.Contains(m, "0 restarts") {
		t.Fatalf("got %q, want STATUS=running pid N, 0 restarts, rss ...", m)
	}
	if m := n.next("READY=1", notWatchdog); m != "READY=1" {
		t.Fatalf("got %q, want READY=1", m)
	}
	// READY=1 came after the app listens.
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("READY=1 sent but the app does not accept: %v", err)
	}
	c.Close()

	// A bad reload is refused and the old config kept.
	old := r.a.cfg.Load()
	if err := os.WriteFile(old.Path, []byte("name = \"broken\"\n[app]\ncomand = [\"x\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.reload <- struct{}{}
	if m := n.next("RELOADING=1", notWatchdog); !strings.HasPrefix(m, "RELOADING=1") {
		t.Fatalf("got %q, want RELOADING=1", m)
	}
	if m := n.next("MONOTONIC_USEC or STATUS", func(m string) bool { return notWatchdog(m) && !strings.HasPrefix(m, "MONOTONIC_USEC=") }); !strings.HasPrefix(m, "STATUS=reload refused: ") || !strings.Contains(m, "comand") {
		t.Fatalf("got %q, want STATUS=reload refused naming the bad key", m)
	}
	if m := n.next("READY=1 after reload", notWatchdog); m != "READY=1" {
		t.Fatalf("got %q, want READY=1", m)
	}
	if r.a.cfg.Load() != old || r.a.Status().State != "running" {
		t.Fatal("a refused reload changed the config or the app")
	}

	// A good reload is taken.
	text := strings.Replace(serverConfig(t, port, ""), `name = "web"`, `name = "renamed"`, 1)
	text = strings.ReplaceAll(text, "SOCKET", r.socket)
	if err := os.WriteFile(old.Path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	r.reload <- struct{}{}
	n.next("RELOADING=1", func(m string) bool { return strings.HasPrefix(m, "RELOADING=1") })
	n.next("READY=1 after reload", func(m string) bool { return m == "READY=1" })
	if got := r.a.Status().Name; got != "renamed" {
		t.Fatalf("name %q after reload, want renamed", got)
	}

	// Shutdown: STOPPING=1.
	r.cancel()
	n.next("STOPPING=1", func(m string) bool { return m == "STOPPING=1" })
}

func TestReadyOnFailureBeforeReady(t *testing.T) {
	n := listenNotify(t)
	startAgent(t, `
[app]
command = ["/bin/sh", "-c", "exit 7"]
[restart]
max_restarts = 1
delay = "0s"
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
`)
	m := n.next("STATUS failed", func(m string) bool { return strings.HasPrefix(m, "STATUS=failed") })
	if !strings.Contains(m, "crashed (code 7)") {
		t.Errorf("status %q does not say why", m)
	}
	if m := n.next("READY=1", notWatchdog); m != "READY=1" {
		t.Fatalf("got %q, want READY=1 so that systemctl start does not hang", m)
	}
}

func TestReloadDoesNotCompleteAStartInProgress(t *testing.T) {
	n := listenNotify(t)
	port := freePort(t)
	gate := filepath.Join(t.TempDir(), "never")
	r := startAgent(t, serverConfig(t, port, fmt.Sprintf(`env_file = %q
[probe]
tcp = "127.0.0.1:%d"
`, writeEnvFile(t, "LISTEN_WHEN="+gate), port)))
	n.next("STATUS starting", func(m string) bool { return strings.HasPrefix(m, "STATUS=starting") })
	r.reload <- struct{}{}
	n.next("RELOADING=1", func(m string) bool {
		if m == "READY=1" {
			t.Fatal("READY=1 before the app was ready")
		}
		return strings.HasPrefix(m, "RELOADING=1")
	})
	if m := n.next("the status after reload", func(m string) bool { return notWatchdog(m) && !strings.HasPrefix(m, "MONOTONIC_USEC=") }); !strings.HasPrefix(m, "STATUS=starting") {
		t.Fatalf("after RELOADING=1: %q, want STATUS=starting and no READY=1", m)
	}
	// Stopped before ever ready: the start is over, READY=1 so that
	// systemctl does not wait for it.
	r.ask("stop", r.client().Stop)
	n.next("READY=1 after stop", func(m string) bool {
		if strings.HasPrefix(m, "STATUS=") && strings.Contains(m, "running") {
			t.Fatalf("unexpected %q", m)
		}
		return m == "READY=1"
	})
}
