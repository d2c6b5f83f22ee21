package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"agent/internal/testkit"
)

// instancesConfig is an agent config with n processes of front.js behind
// the proxy, on the ports after the proxy's (and a spare one after them),
// with the heap cap fixed unless heap is "auto". crash names the file that
// makes a start fail (a broken release).
func instancesConfig(t *testing.T, n int, heap string) (text, proxyAddr, crash string) {
	t.Helper()
	node := needNode(t)
	ports := testkit.Ports(t, 6) // the proxy, then up to 4 processes and the spare
	crash = filepath.Join(t.TempDir(), "broken")
	proxyAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	text = fmt.Sprintf(`
name = "web"
[app]
command = [%q, %q]
env = { CRASH_WHEN = %q }
instances = %d
[node]
max_old_space_size = %s
[restart]
delay = "0s"
[stop]
timeout = "5s"
[memory]
watch_oom = false
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
[proxy]
listen = %q
upstream = "127.0.0.1:%d"
hold = "30s"
`, node, appPath(t, "front.js"), crash, n, heap, proxyAddr, ports[1])
	return text, proxyAddr, crash
}

// allReady waits until n processes serve and returns the status.
func (r *running) allReady(n int) Status {
	r.t.Helper()
	return r.waitStatus(fmt.Sprintf("%d processes ready", n), func(s Status) bool {
		if len(s.Instances) != n || s.State != "running" {
			return false
		}
		for _, in := range s.Instances {
			if !in.Ready || in.PID == nil {
				return false
			}
		}
		return true
	})
}

// pidsOf returns the PID of each process of s, by index.
func pidsOf(s Status) []int {
	out := make([]int, len(s.Instances))
	for i, in := range s.Instances {
		if in.PID != nil {
			out[i] = *in.PID
		}
	}
	return out
}

// tally sends n GETs over c concurrent kept connections and counts the
// answers by the PID in the body ("ok PID").
func tally(t *testing.T, base string, n, c int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{}
			for i := w; i < n; i += c {
				resp, err := client.Get(base + "/")
				if err != nil {
					t.Errorf("GET: %v", err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				pid, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "ok ")
				if resp.StatusCode != 200 || !ok {
					t.Errorf("GET: %d %q", resp.StatusCode, b)
					return
				}
				mu.Lock()
				got[pid]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return got
}

func TestInstancesServeEachOnItsPortAndShareTheRequests(t *testing.T) {
	text, proxyAddr, _ := instancesConfig(t, 2, "64")
	r := startAgent(t, text)
	s := r.allReady(2)
	pids := pidsOf(s)
	base := s.Instances[0].Port
	if pids[0] == pids[1] || s.Instances[1].Port != base+1 || s.Instances[0].HeapCapMB != 64 {
		t.Fatalf("instances %+v: want two processes on ports %d and %d", s.Instances, base, base+1)
	}
	for i, pid := range pids {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{fmt.Sprintf("NODE_APP_INSTANCE=%d", i), fmt.Sprintf("PORT=%d", base+i)} {
			if !bytes.Contains(env, append([]byte(want), 0)) {
				t.Errorf("process %d (%d) lacks %s in its environment", i, pid, want)
			}
		}
	}
	got := tally(t, "http://"+proxyAddr, 2000, 8)
	for _, pid := range pids {
		if n := got[fmt.Sprint(pid)]; n < 600 {
			t.Errorf("process %d answered %d of 2000, want ≥ 30 %% (%v)", pid, n, got)
		}
	}
	if st := r.ctlStatus(); st.Healthy != true || st.PID == nil || *st.PID != pids[0] {
		t.Errorf("status %+v: want healthy, pid of instance 0", st)
	}
}

func TestInstancesOneKilledUnderLoadLosesNothing(t *testing.T) {
	text, proxyAddr, _ := instancesConfig(t, 2, "64")
	r := startAgent(t, text)
	pids := pidsOf(r.allReady(2))
	l := startLoad("http://"+proxyAddr, 8)
	killApp(t, pids[1])
	s := r.waitStatus("process 1 back", func(s Status) bool {
		return len(s.Instances) == 2 && s.Instances[1].Ready && s.Instances[1].PID != nil && *s.Instances[1].PID != pids[1]
	})
	l.finish(t)
	if *s.Instances[0].PID != pids[0] || s.Instances[1].Restarts != 1 || s.Instances[0].Restarts != 0 || s.Restarts != 1 {
		t.Errorf("after killing process 1: %+v", s.Instances)
	}
	if s.LastExit == nil || s.LastExit.Instance != 1 || s.Instances[1].LastExit == nil || s.Instances[0].LastExit != nil {
		t.Errorf("exits %+v: want the one of instance 1", s.Exits)
	}
}

func TestInstancesRollingRestartAndReloadLoseNothing(t *testing.T) {
	text, proxyAddr, _ := instancesConfig(t, 2, "64")
	r := startAgent(t, text)
	before := r.allReady(2)
	l := startLoad("http://"+proxyAddr, 8)
	s := r.ask("restart", r.client().Restart)
	restarted := pidsOf(*s)
	for i := range restarted {
		if restarted[i] == pidsOf(before)[i] || !s.Instances[i].Ready {
			t.Errorf("restart answered with %+v, want each process new and ready", s.Instances)
		}
	}
	s = r.ask("reload", r.client().Reload)
	l.finish(t)
	reloaded := pidsOf(*s)
	ports := map[int]bool{}
	for i, in := range s.Instances {
		if reloaded[i] == restarted[i] || !in.Ready {
			t.Errorf("reload answered with %+v, want each process new and ready", s.Instances)
		}
		ports[in.Port] = true
	}
	// The new processes took the spare port first, then the one the last
	// old process left: two distinct ports of the three.
	if len(ports) != 2 || ports[before.Instances[0].Port] && ports[before.Instances[1].Port] {
		t.Errorf("ports after reload %v (before %d, %d): want the spare taken", ports, before.Instances[0].Port, before.Instances[1].Port)
	}
	if len(s.Exits) != 4 || s.Exits[0].Reason != "reload" || s.Exits[2].Reason != "restart" {
		t.Errorf("exits %+v: want 2 restarts then 2 reloads", s.Exits)
	}
}

func TestInstancesBrokenReleaseStopsTheRollout(t *testing.T) {
	text, proxyAddr, crash := instancesConfig(t, 2, "64")
	r := startAgent(t, text)
	pids := pidsOf(r.allReady(2))
	if err := os.WriteFile(crash, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l := startLoad("http://"+proxyAddr, 4)
	_, err := r.client().Reload(context.Background())
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != http.StatusConflict || !strings.Contains(err.Error(), "process 0 of 2") {
		t.Fatalf("reload of a broken release: %v, want 409 naming process 0", err)
	}
	l.finish(t)
	s := r.ctlStatus()
	if got := pidsOf(s); got[0] != pids[0] || got[1] != pids[1] || s.State != "running" {
		t.Errorf("after the failed rollout: %+v, want both old processes serving", s.Instances)
	}
}

func TestInstancesScaleUnderLoad(t *testing.T) {
	text, proxyAddr, _ := instancesConfig(t, 2, `"auto"`)
	r := startAgent(t, text)
	s := r.allReady(2)
	heap2 := s.HeapCapMB
	l := startLoad("http://"+proxyAddr, 8)

	s = *r.ask("scale 3", func(ctx context.Context) (*Status, error) { return r.client().Scale(ctx, 3) })
	if len(s.Instances) != 3 || s.State != "running" {
		t.Fatalf("scale to 3 answered %+v", s.Instances)
	}
	// The heap cap is a third of the budget now, for every process: the
	// two already running were restarted onto it.
	for _, in := range s.Instances {
		if in.HeapCapMB >= heap2 || in.HeapCapMB != s.Instances[2].HeapCapMB || !in.Ready {
			t.Errorf("after scale to 3: %+v, want each on the smaller cap (2 had %d MB)", s.Instances, heap2)
		}
	}
	keep := *s.Instances[0].PID
	s = *r.ask("scale 1", func(ctx context.Context) (*Status, error) { return r.client().Scale(ctx, 1) })
	l.finish(t)
	if len(s.Instances) != 1 || *s.Instances[0].PID != keep || s.State != "running" {
		t.Errorf("scale to 1 answered %+v, want process 0 (%d) alone, untouched", s.Instances, keep)
	}
	if _, err := r.client().Scale(context.Background(), 65); err == nil {
		t.Error("scale to 65 processes succeeded")
	}
}

// killApp SIGKILLs an app process, as the kernel's OOM killer would.
func killApp(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

func TestInstancesChangedOnSIGHUP(t *testing.T) {
	text, _, _ := instancesConfig(t, 2, "64")
	r := startAgent(t, text)
	pids := pidsOf(r.allReady(2))
	// Only the slot that changes starts: 0 and 1 are not touched.
	if err := os.WriteFile(r.cfg.Path, []byte(strings.Replace(strings.ReplaceAll(text, "SOCKET", r.socket), "instances = 2", "instances = 3", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	r.reload <- struct{}{}
	s := r.allReady(3)
	if got := pidsOf(s); got[0] != pids[0] || got[1] != pids[1] {
		t.Errorf("after instances 2 → 3 on SIGHUP: pids %v, want %v kept", got, pids)
	}
	// A config the running agent cannot take is refused, the 3 kept.
	bad := strings.Replace(strings.ReplaceAll(text, "SOCKET", r.socket), "instances = 2", "instances = 0", 1)
	if err := os.WriteFile(r.cfg.Path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	r.reload <- struct{}{}
	r.reload <- struct{}{} // taken once the first is done
	if s := r.ctlStatus(); len(s.Instances) != 3 || s.State != "running" {
		t.Errorf("after a refused config: %+v", s.Instances)
	}
}

func TestInstancesMaxRSSRestartsOnlyItsProcess(t *testing.T) {
	node := needNode(t)
	ports := testkit.Ports(t, 4)
	r := startAgent(t, fmt.Sprintf(`
[app]
command = [%q, %q]
env = { MAX_MB = "160", STEP_MB = "16", GROW_INSTANCE = "1" }
instances = 2
[node]
max_old_space_size = 0
[memory]
max_rss = "100MB"
rss_grace = "1s"
watch_oom = false
[restart]
delay = "1s"
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
[proxy]
listen = "127.0.0.1:%d"
upstream = "127.0.0.1:%d"
`, node, appPath(t, "rss.js"), ports[0], ports[1]))
	first := pidsOf(r.allReady(2))
	s := r.waitStatus("an rss-limit restart", func(s Status) bool { return s.Restarts >= 1 })
	if e := s.Exits[len(s.Exits)-1]; e.Reason != "rss-limit" || e.Instance != 1 {
		t.Fatalf("first exit %+v, want rss-limit of instance 1", e)
	}
	if s.Instances[0].PID == nil || *s.Instances[0].PID != first[0] || s.Instances[0].Restarts != 0 {
		t.Errorf("instance 0 %+v: its tree stayed small, it must not be restarted", s.Instances[0])
	}
	for _, e := range s.Exits {
		if e.Instance != 1 {
			t.Errorf("exit %+v of instance 0", e)
		}
	}
}
