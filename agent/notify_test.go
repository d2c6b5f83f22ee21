package agent

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// notifySocket listens on a unixgram socket like systemd's and points
// NOTIFY_SOCKET at it for the test.
func notifySocket(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return conn
}

// unsetenv removes key for the rest of the test and restores it after.
func unsetenv(t *testing.T, key string) {
	t.Helper()
	t.Setenv(key, "")
	os.Unsetenv(key)
}

// recv returns the next sd_notify message but the descriptor store's
// (FDSTORE=1, FDSTOREREMOVE=1: fdstore_test.go checks those).
func recv(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 4096)
	for {
		n, _, err := conn.ReadFromUnix(buf)
		if err != nil {
			t.Fatalf("no sd_notify message: %v", err)
		}
		if msg := string(buf[:n]); !strings.HasPrefix(msg, "FDSTORE") {
			return msg
		}
	}
}

func monotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

func TestNotifierMessages(t *testing.T) {
	conn := notifySocket(t)
	n := NewNotifier(zerolog.Nop())
	if !n.Enabled() {
		t.Fatal("Enabled() = false with NOTIFY_SOCKET set")
	}

	tests := []struct {
		name string
		send func()
		want string
	}{
		{"ready", n.Ready, "READY=1"},
		{"status", func() { n.Status("running pid 1234, 3 restarts, rss 175 MB") }, "STATUS=running pid 1234, 3 restarts, rss 175 MB"},
		{"status one line", func() { n.Status("failed\nREADY=1\r\nx\ry") }, "STATUS=failed READY=1 x y"},
		{"watchdog", n.Watchdog, "WATCHDOG=1"},
		{"stopping", n.Stopping, "STOPPING=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.send()
			if got := recv(t, conn); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}

	t.Run("reloading", func(t *testing.T) {
		before := monotonicUsec(t)
		n.Reloading()
		got := recv(t, conn)
		after := monotonicUsec(t)
		m := regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=([0-9]+)$`).FindStringSubmatch(got)
		if m == nil {
			t.Fatalf("got %q, want RELOADING=1 and MONOTONIC_USEC", got)
		}
		usec, _ := strconv.ParseInt(m[1], 10, 64)
		if usec < before || usec > after {
			t.Errorf("MONOTONIC_USEC=%d, not within [%d, %d]", usec, before, after)
		}
	})
}

func TestNotifierWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	tests := []struct {
		name         string
		socket       bool
		usec, pid    string
		wantInterval time.Duration
	}{
		{"off", true, "", "", 0},
		{"on", true, "3000000", "", 1500 * time.Millisecond},
		{"on for this pid", true, "20000000", self, 10 * time.Second},
		{"for another pid", true, "3000000", "1", 0},
		{"invalid", true, "soon", "", 0},
		{"zero", true, "0", "", 0},
		{"no socket", false, "3000000", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.socket {
				notifySocket(t)
			} else {
				unsetenv(t, "NOTIFY_SOCKET")
			}
			for key, v := range map[string]string{"WATCHDOG_USEC": tt.usec, "WATCHDOG_PID": tt.pid} {
				if v == "" {
					unsetenv(t, key)
				} else {
					t.Setenv(key, v)
				}
			}
			n := NewNotifier(zerolog.Nop())
			if got := n.WatchdogInterval(); got != tt.wantInterval {
				t.Errorf("WatchdogInterval() = %v, want %v", got, tt.wantInterval)
			}
			// The agent's own environment is left alone.
			if tt.usec != "" && os.Getenv("WATCHDOG_USEC") != tt.usec {
				t.Error("WATCHDOG_USEC was removed from the environment")
			}
		})
	}
}

// TestNotifierSilentWithoutSocket: a notifier made without NOTIFY_SOCKET
// sends nothing, even if the variable appears later; the first datagram to
// arrive is a marker sent afterwards by an enabled notifier.
func TestNotifierSilentWithoutSocket(t *testing.T) {
	unsetenv(t, "NOTIFY_SOCKET")
	t.Setenv("WATCHDOG_USEC", "3000000")
	off := NewNotifier(zerolog.Nop())
	if off.Enabled() {
		t.Fatal("Enabled() = true without NOTIFY_SOCKET")
	}
	if got := off.WatchdogInterval(); got != 0 {
		t.Errorf("WatchdogInterval() = %v without NOTIFY_SOCKET, want 0", got)
	}
	conn := notifySocket(t)
	off.Ready()
	off.Status("x")
	off.Watchdog()
	off.Stopping()
	off.Reloading()

	NewNotifier(zerolog.Nop()).Status("marker")
	if got := recv(t, conn); got != "STATUS=marker" {
		t.Errorf("first message %q, want the marker: the disabled notifier sent something", got)
	}
}

// TestNotifierSendErrorLogged: a socket nobody listens on is logged at
// debug level and nothing else happens.
func TestNotifierSendErrorLogged(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone"))
	var buf bytes.Buffer
	n := NewNotifier(zerolog.New(&buf).Level(zerolog.DebugLevel))
	n.Ready()
	n.Watchdog()
	out := buf.String()
	if strings.Count(out, `"level":"debug"`) != 2 || !strings.Contains(out, "sd_notify send failed") || !strings.Contains(out, "READY=1") {
		t.Errorf("log %q, want two debug lines about the failed sends", out)
	}
}
