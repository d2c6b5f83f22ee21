package probe

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"agent/internal/clock"
	"agent/internal/testkit"
)

// probeTestWait bounds every wait on a real event in these tests; generous
// because CI is a loaded two-core machine.
const probeTestWait = 30 * time.Second

// probeRun is one RunProbe on a fake clock.
type probeRun struct {
	t      *testing.T
	clk    *clock.Fake
	readyN atomic.Int32
	ready  chan struct{}
	done   chan ProbeResult
	cancel context.CancelFunc
}

func startProbe(t *testing.T, spec ProbeSpec) *probeRun {
	t.Helper()
	r := &probeRun{
		t:     t,
		clk:   clock.NewFake(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)),
		ready: make(chan struct{}, 1),
		done:  make(chan ProbeResult, 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		r.done <- RunProbe(ctx, r.clk, spec, func() {
			r.readyN.Add(1)
			select {
			case r.ready <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(probeTestWait):
			t.Error("RunProbe did not return after cancel")
		}
	})
	return r
}

// armed waits until the loop has n timers pending, i.e. it finished its
// last probe and is waiting for the next.
func (r *probeRun) armed(n int) {
	r.t.Helper()
	if !r.clk.WaitForWaiters(n, probeTestWait) {
		select {
		case res := <-r.done:
			r.t.Fatalf("RunProbe returned early: %+v", res)
		default:
		}
		r.t.Fatalf("probe loop never armed %d timers", n)
	}
}

// step advances the clock by d and waits for the loop to re-arm n timers.
func (r *probeRun) step(d time.Duration, n int) {
	r.t.Helper()
	r.clk.Advance(d)
	r.armed(n)
}

func (r *probeRun) waitReady() {
	r.t.Helper()
	select {
	case <-r.ready:
	case res := <-r.done:
		r.t.Fatalf("RunProbe returned before ready: %+v", res)
	case <-time.After(probeTestWait):
		r.t.Fatal("not ready")
	}
}

func (r *probeRun) result() ProbeResult {
	r.t.Helper()
	select {
	case res := <-r.done:
		r.done <- res // for the cleanup
		return res
	case <-time.After(probeTestWait):
		r.t.Fatal("RunProbe did not return")
		return ProbeResult{}
	}
}

// probeUnusedAddr returns a loopback address nothing listens on, reserved
// for the test (it may listen there later).
func probeUnusedAddr(t *testing.T) string {
	t.Helper()
	return "127.0.0.1:" + strconv.Itoa(testkit.Port(t))
}

func TestProbeReadyOnlyOnceListening(t *testing.T) {
	for _, kind := range []string{"http", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			addr := probeUnusedAddr(t)
			spec := ProbeSpec{Interval: 5 * time.Second, Timeout: 2 * time.Second, FailureThreshold: 3, StartupTimeout: time.Minute}
			if kind == "http" {
				spec.HTTP = "http://" + addr + "/"
			} else {
				spec.TCP = addr
			}
			r := startProbe(t, spec)
			r.armed(2) // start-up deadline and first probe
			for range 4 {
				r.step(startupProbeInterval, 2)
			}
			if n := r.readyN.Load(); n != 0 {
				t.Fatalf("ready called %d times while nothing listened", n)
			}

			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Skipf("port taken meanwhile: %v", err)
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})}
			go srv.Serve(ln)
			defer srv.Close()

			r.clk.Advance(startupProbeInterval)
			r.waitReady()
			r.armed(1) // deadline stopped, the interval timer set
			r.step(spec.Interval, 1)
			r.step(spec.Interval, 1)
			r.cancel()
			if res := r.result(); res != (ProbeResult{}) {
				t.Errorf("after cancel: %+v, want zero", res)
			}
			if n := r.readyN.Load(); n != 1 {
				t.Errorf("ready called %d times, want 1", n)
			}
		})
	}
}

func TestProbeStartTimeout(t *testing.T) {
	addr := probeUnusedAddr(t)
	r := startProbe(t, ProbeSpec{TCP: addr, StartupTimeout: time.Second})
	r.armed(2)
	for range 3 {
		r.step(startupProbeInterval, 2)
	}
	r.clk.Advance(startupProbeInterval)
	res := r.result()
	if res.Reason != ReasonStartTimeout {
		t.Fatalf("reason %q, want %q (%+v)", res.Reason, ReasonStartTimeout, res)
	}
	want := "not ready within 1s (last probe: dial tcp " + addr + ": connect: connection refused)"
	if res.Detail != want {
		t.Errorf("detail %q, want %q", res.Detail, want)
	}
	if n := r.readyN.Load(); n != 0 {
		t.Errorf("ready called %d times", n)
	}
}

func TestProbeCancelWhileStarting(t *testing.T) {
	r := startProbe(t, ProbeSpec{TCP: probeUnusedAddr(t), StartupTimeout: time.Second})
	r.armed(2)
	r.step(startupProbeInterval, 2)
	r.cancel()
	if res := r.result(); res != (ProbeResult{}) {
		t.Errorf("after cancel: %+v, want zero", res)
	}
}

// TestProbeLivenessHTTP500: only FailureThreshold failures in a row end
// it; a pass in between starts the count again.
func TestProbeLivenessHTTP500(t *testing.T) {
	var status, hits atomic.Int32
	status.Store(200)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()

	spec := ProbeSpec{HTTP: srv.URL + "/", Interval: 5 * time.Second, Timeout: 2 * time.Second, FailureThreshold: 3, StartupTimeout: time.Minute}
	r := startProbe(t, spec)
	r.armed(2)
	r.clk.Advance(startupProbeInterval)
	r.waitReady()
	r.armed(1)
	r.step(spec.Interval, 1) // pass

	status.Store(500)
	r.step(spec.Interval, 1) // 1
	r.step(spec.Interval, 1) // 2
	status.Store(200)
	r.step(spec.Interval, 1) // pass: count starts again
	status.Store(500)
	r.step(spec.Interval, 1) // 1
	r.step(spec.Interval, 1) // 2
	r.clk.Advance(spec.Interval)
	res := r.result() // 3
	want := ProbeResult{Reason: ReasonLiveness, Detail: "3 consecutive probe failures: GET " + srv.URL + "/: status 500"}
	if res != want {
		t.Errorf("got %+v, want %+v", res, want)
	}
	if n := hits.Load(); n != 8 {
		t.Errorf("%d probes reached the app, want 8", n)
	}
	if n := r.readyN.Load(); n != 1 {
		t.Errorf("ready called %d times, want 1", n)
	}
}

func TestProbeLivenessStopsAccepting(t *testing.T) {
	for _, kind := range []string{"http", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
			defer srv.Close()
			addr := srv.Listener.Addr().String()
			spec := ProbeSpec{Interval: 10 * time.Second, Timeout: 2 * time.Second, FailureThreshold: 2}
			if kind == "http" {
				spec.HTTP = srv.URL + "/"
			} else {
				spec.TCP = addr
			}
			r := startProbe(t, spec)
			r.armed(1) // no start-up deadline: just the probe timer
			r.clk.Advance(startupProbeInterval)
			r.waitReady()
			r.armed(1)
			r.step(spec.Interval, 1)

			srv.Close()
			r.step(spec.Interval, 1)
			r.clk.Advance(spec.Interval)
			res := r.result()
			if res.Reason != ReasonLiveness {
				t.Fatalf("got %+v, want liveness", res)
			}
			if !strings.HasPrefix(res.Detail, "2 consecutive probe failures: ") || !strings.Contains(res.Detail, "connection refused") {
				t.Errorf("detail %q", res.Detail)
			}
		})
	}
}

func TestProbeHTTPStatus(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/broken", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) })
	for _, code := range []int{200, 204, 299, 301, 302, 304, 307, 399, 400, 401, 404, 500, 503} {
		mux.HandleFunc("/code/"+strconv.Itoa(code), func(w http.ResponseWriter, _ *http.Request) {
			if code >= 300 && code < 400 {
				w.Header().Set("Location", "/broken") // followed, it would fail
			}
			w.WriteHeader(code)
		})
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, code := range []int{200, 204, 299, 301, 302, 304, 307, 399, 400, 401, 404, 500, 503} {
		url := srv.URL + "/code/" + strconv.Itoa(code)
		err := probeOnce(context.Background(), httpChecker(url), probeTestWait)
		if pass := code < 400; pass != (err == nil) {
			t.Errorf("status %d: err %v, want pass=%v", code, err, pass)
		}
		if err != nil && err.Error() != "GET "+url+": status "+strconv.Itoa(code) {
			t.Errorf("status %d: error %q", code, err)
		}
	}
}

// TestProbeHTTPRedirectIsReady: a 302 from the app counts as ready.
func TestProbeHTTPRedirectIsReady(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			w.WriteHeader(500)
			return
		}
		http.Redirect(w, r, "/login", http.StatusFound)
	}))
	defer srv.Close()
	r := startProbe(t, ProbeSpec{HTTP: srv.URL + "/", StartupTimeout: time.Minute})
	r.armed(2)
	r.clk.Advance(startupProbeInterval)
	r.waitReady()
}

func TestProbeTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	defer srv.Close()
	defer close(release)

	err := probeOnce(context.Background(), httpChecker(srv.URL+"/"), 50*time.Millisecond)
	if err == nil || err.Error() != "GET "+srv.URL+"/: context deadline exceeded" {
		t.Errorf("hung app: %v, want context deadline exceeded", err)
	}
}

func TestProbeNone(t *testing.T) {
	for _, tt := range []struct {
		name string
		spec ProbeSpec
		want time.Duration
	}{
		{"default", ProbeSpec{}, time.Second},
		{"ready_after", ProbeSpec{ReadyAfter: 3 * time.Second}, 3 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := startProbe(t, tt.spec)
			r.armed(1)
			r.clk.Advance(tt.want - time.Millisecond)
			if n := r.readyN.Load(); n != 0 {
				t.Fatal("ready before ReadyAfter")
			}
			r.clk.Advance(time.Millisecond)
			r.waitReady()
			r.clk.Advance(time.Hour)
			select {
			case res := <-r.done:
				t.Fatalf("returned without cancel: %+v", res)
			default:
			}
			r.cancel()
			if res := r.result(); res != (ProbeResult{}) {
				t.Errorf("after cancel: %+v, want zero", res)
			}
			if n := r.readyN.Load(); n != 1 {
				t.Errorf("ready called %d times, want 1", n)
			}
		})
	}
}

// TestProbeNodeWedged runs a real Node app that answers once and then
// blocks its event loop: the kernel keeps accepting connections, nothing
// answers, and the probe must report liveness once.
func TestProbeNodeWedged(t *testing.T) {
	const node = "/usr/bin/node"
	if _, err := os.Stat(node); err != nil {
		t.Skip("no node:", err)
	}
	cmd := exec.Command(node, "testdata/probe/hang-after-first.js")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	portc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			portc <- strings.TrimSpace(sc.Text())
		}
		close(portc)
	}()
	var port string
	select {
	case port = <-portc:
	case <-time.After(probeTestWait):
		t.Fatal("node did not print its port")
	}
	if port == "" {
		t.Fatal("node exited before listening")
	}

	url := "http://127.0.0.1:" + port + "/"
	spec := ProbeSpec{HTTP: url, Interval: 100 * time.Millisecond, Timeout: 300 * time.Millisecond, FailureThreshold: 3, StartupTimeout: probeTestWait}
	var readyN atomic.Int32
	done := make(chan ProbeResult, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- RunProbe(ctx, clock.Real{}, spec, func() { readyN.Add(1) }) }()

	var res ProbeResult
	select {
	case res = <-done:
	case <-time.After(2 * probeTestWait):
		t.Fatal("no liveness failure from a wedged app")
	}
	want := ProbeResult{Reason: ReasonLiveness, Detail: "3 consecutive probe failures: GET " + url + ": context deadline exceeded"}
	if res != want {
		t.Errorf("got %+v, want %+v", res, want)
	}
	if n := readyN.Load(); n != 1 {
		t.Errorf("ready called %d times, want 1", n)
	}
}

// TestProbeFirstStartupProbeIsQuick: an app already listening is seen ready
// 10 ms after the start, not a quarter second later; then the waits double.
func TestProbeFirstStartupProbeIsQuick(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := startProbe(t, ProbeSpec{TCP: ln.Addr().String(), StartupTimeout: time.Minute})
	r.armed(2) // start-up deadline and first probe
	r.clk.Advance(firstStartupProbe - time.Millisecond)
	if n := r.readyN.Load(); n != 0 {
		t.Fatalf("ready before the first probe was due")
	}
	r.clk.Advance(time.Millisecond)
	r.waitReady()
}
