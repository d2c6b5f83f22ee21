package benchkit

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestPoll(t *testing.T) {
	ctx := context.Background()
	n := 0
	if err := Poll(ctx, 5*time.Second, time.Millisecond, func() (bool, error) { n++; return n == 3, nil }); err != nil || n != 3 {
		t.Fatalf("Poll = %v after %d calls, want nil after 3", err, n)
	}
	if err := Poll(ctx, 5*time.Millisecond, time.Millisecond, func() (bool, error) { return false, nil }); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Poll never true = %v, want ErrTimeout", err)
	}
	boom := errors.New("boom")
	if err := Poll(ctx, 5*time.Second, time.Millisecond, func() (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Fatalf("Poll failing = %v, want boom", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := Poll(cctx, 5*time.Second, time.Hour, func() (bool, error) { return false, nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Poll cancelled = %v, want context.Canceled", err)
	}
}

func TestFreePorts(t *testing.T) {
	ports, release, err := FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p <= 0 {
			t.Fatalf("ports %v: not distinct positive ports", ports)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d not free: %v", p, err)
		}
		l.Close()
	}
}

// TestAgentConfig checks that the config text is valid TOML with what was
// asked for in it.
func TestAgentConfig(t *testing.T) {
	c := AgentConfig{
		Name:      "web",
		Command:   []string{"node", `say "hi".js`},
		Dir:       "/srv/app",
		Env:       map[string]string{"A": "1", "B": `x"y`},
		Instances: 2,
		Memory:    "watch_oom = false\n",
		Health:    "127.0.0.1:8081",
		Extra:     "\n[proxy]\nlisten = \"127.0.0.1:80\"\n",
	}
	var got struct {
		Name string
		App  struct {
			Command   []string
			Dir       string
			Env       map[string]string
			Instances int
		}
		Memory struct {
			WatchOOM bool `toml:"watch_oom"`
		}
		Health  struct{ Listen string }
		Control struct{ Socket string }
		Proxy   struct{ Listen string }
		Log     struct{ Level string }
	}
	text := c.TOML("/run/a.sock")
	if _, err := toml.Decode(text, &got); err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	if got.Name != "web" || strings.Join(got.App.Command, "|") != `node|say "hi".js` || got.App.Dir != "/srv/app" ||
		got.App.Env["B"] != `x"y` || got.App.Instances != 2 || got.Health.Listen != c.Health || got.Control.Socket != "/run/a.sock" ||
		got.Proxy.Listen != "127.0.0.1:80" || got.Log.Level != "warn" {
		t.Fatalf("decoded %+v from\n%s", got, text)
	}
}

func TestMachineLine(t *testing.T) {
	with, without := MachineLine(true), MachineLine(false)
	if !strings.HasPrefix(without, "Machine: ") || !strings.HasSuffix(without, "\n") || strings.Contains(without, "GiB") {
		t.Fatalf("MachineLine(false) = %q", without)
	}
	if !strings.Contains(with, " GiB memory, kernel ") {
		t.Fatalf("MachineLine(true) = %q", with)
	}
}

func TestRSS(t *testing.T) {
	if RSS(os.Getpid()) == 0 {
		t.Fatal("RSS of this process is 0")
	}
	stop := PeakRSS(os.Getpid(), time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	if peak := stop(); peak == 0 {
		t.Fatal("peak RSS of this process is 0")
	}
	if RSS(-1) != 0 {
		t.Fatal("RSS of no process is not 0")
	}
}
