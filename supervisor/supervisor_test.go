package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/clock"
	"agent/internal/procfs"
	"agent/internal/testkit"
)

// waitTime bounds every wait on real processes: generous, since CI is a
// loaded 2-core machine; a passing test never waits this long.
const waitTime = 30 * time.Second

type harness struct {
	t      *testing.T
	s      *Supervisor[string]
	out    *Ring
	clk    clock.Clock
	cancel context.CancelFunc
	errc   chan error

	mu      sync.Mutex
	changed chan struct{}
	history []State
	events  []Event[string]
}

func defaultConfig(argv, env []string) Config[string] {
	return Config[string]{
		Name:        "test",
		Command:     argv,
		Env:         env,
		Policy:      Policy{Mode: Always, MaxRestarts: 10, Window: time.Minute},
		StopSignal:  syscall.SIGTERM,
		StopTimeout: 5 * time.Second,
	}
}

// start runs a supervisor for cfg until the test ends. Its events are
// recorded; gated stops are answered at once, with no drain.
func start(t *testing.T, cfg Config[string], opts Options[string]) *harness {
	t.Helper()
	return startWith(t, cfg, opts, func(ev Event[string]) { ev.Gate(nil) })
}

// startWith is start with onEvent called for each event, in order.
func startWith(t *testing.T, cfg Config[string], opts Options[string], onEvent func(Event[string])) *harness {
	t.Helper()
	return startWithSetup(t, cfg, opts, onEvent, nil)
}

// startWithSetup is startWith with setup called on the supervisor before
// it runs.
func startWithSetup(t *testing.T, cfg Config[string], opts Options[string], onEvent func(Event[string]), setup func(*Supervisor[string])) *harness {
	t.Helper()
	h := &harness{t: t, out: NewRing(1000, 1<<20), changed: make(chan struct{})}
	opts.Log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	opts.Output = h.out
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	h.clk = opts.Clock
	events := make(chan Event[string], 16)
	opts.Events = events
	h.s = New(cfg, opts)
	if setup != nil {
		setup(h.s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.errc = make(chan error, 1)
	supDone := make(chan struct{})
	go func() {
		for {
			select {
			case ev := <-events:
				onEvent(ev)
				h.mu.Lock()
				if n := len(h.history); n == 0 || h.history[n-1] != ev.Status.State {
					h.history = append(h.history, ev.Status.State)
				}
				h.events = append(h.events, ev)
				close(h.changed)
				h.changed = make(chan struct{})
				h.mu.Unlock()
			case <-supDone:
				return
			}
		}
	}()
	go func() {
		err := h.s.Run(ctx)
		close(supDone)
		h.errc <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.errc:
		case <-time.After(waitTime):
			t.Error("supervisor did not return after cancel")
		}
	})
	return h
}

// waitFor waits until cond holds for the status, or fails the test.
func (h *harness) waitFor(what string, cond func(Status[string]) bool) Status[string] {
	h.t.Helper()
	deadline := time.After(waitTime)
	for {
		h.mu.Lock()
		ch := h.changed
		h.mu.Unlock()
		if st := h.s.Status(); cond(st) {
			return st
		}
		select {
		case <-ch:
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s; status %+v", what, h.s.Status())
		}
	}
}

// sawState reports whether the app's state was ever st.
func (h *harness) sawState(st State) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.history {
		if s == st {
			return true
		}
	}
	return false
}

// swaps counts the reload swaps seen.
func (h *harness) swaps() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, ev := range h.events {
		if ev.Kind == EventSwapped {
			n++
		}
	}
	return n
}

func (h *harness) waitState(want State) Status[string] {
	h.t.Helper()
	return h.waitFor("state "+string(want), func(st Status[string]) bool { return st.State == want })
}

// waitLine waits for an output line with prefix and returns it.
func (h *harness) waitLine(prefix string) string {
	h.t.Helper()
	return h.waitLineWithout(prefix, "\x00")
}

// waitLineWithout waits for an output line with prefix that does not
// contain not.
func (h *harness) waitLineWithout(prefix, not string) string {
	h.t.Helper()
	last, c, stop := h.out.Follow(1000)
	defer stop()
	ok := func(s string) bool { return strings.HasPrefix(s, prefix) && !strings.Contains(s, not) }
	for _, l := range last {
		if ok(l.Text) {
			return l.Text
		}
	}
	deadline := time.After(waitTime)
	for {
		select {
		case l := <-c:
			if ok(l.Text) {
				return l.Text
			}
		case <-deadline:
			h.t.Fatalf("no output line %q without %q", prefix, not)
		}
	}
}

// waitLines waits for n output lines with prefix and returns them.
func (h *harness) waitLines(prefix string, n int) []string {
	h.t.Helper()
	last, c, stop := h.out.Follow(1000)
	defer stop()
	var got []string
	for _, l := range last {
		if strings.HasPrefix(l.Text, prefix) {
			got = append(got, l.Text)
		}
	}
	deadline := time.After(waitTime)
	for len(got) < n {
		select {
		case l := <-c:
			if strings.HasPrefix(l.Text, prefix) {
				got = append(got, l.Text)
			}
		case <-deadline:
			h.t.Fatalf("%d of %d output lines %q", len(got), n, prefix)
		}
	}
	return got
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	p, err := procfs.Stat(pid)
	return err == nil && !p.Zombie()
}

func pidsIn(line string) []int {
	var out []int
	for _, f := range strings.Fields(line) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// waitDead waits until none of pids is a live process.
func waitDead(t *testing.T, pids ...int) {
	t.Helper()
	var hs []*procfs.Handle
	defer func() { procfs.CloseAll(hs) }()
	for _, pid := range pids {
		p, err := procfs.Stat(pid)
		if err != nil || p.Zombie() {
			continue // gone
		}
		h, err := procfs.Open(p)
		if err != nil {
			continue // exited meanwhile
		}
		hs = append(hs, h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	if left, _ := procfs.Wait(ctx, hs...); len(left) > 0 {
		t.Fatalf("processes %v still alive", pidsOf(left))
	}
}

func TestCrashLoopReachesFailedAfterMaxRestarts(t *testing.T) {
	argv, env := appCommand("exit", "3")
	cfg := defaultConfig(argv, env)
	cfg.Policy = Policy{Mode: Always, MaxRestarts: 3, Window: time.Hour}
	h := start(t, cfg, Options[string]{})
	st := h.waitState(Failed)
	if st.Restarts != 3 {
		t.Errorf("restarts = %d, want 3", st.Restarts)
	}
	if len(st.Exits) != 4 {
		t.Fatalf("%d exits recorded, want 4", len(st.Exits))
	}
	for _, e := range st.Exits {
		if e.Reason != ReasonCrashed || e.Code == nil || *e.Code != 3 {
			t.Errorf("exit %+v, want crashed with code 3", e)
		}
	}
	if !strings.Contains(st.Message, "restart budget spent") {
		t.Errorf("message %q does not say why it failed", st.Message)
	}
	// Restart clears the failed state, and answers with how the new
	// process ended, which it did before it was ready.
	err := h.s.Restart(context.Background(), 0)
	if !errors.Is(err, ErrStartFailed) || !strings.Contains(err.Error(), "crashed (code 3)") {
		t.Fatalf("restart of a crashing app: %v, want ErrStartFailed saying crashed (code 3)", err)
	}
	if st := h.s.Status(); len(st.Exits) < 5 {
		t.Fatalf("restart answered before the new run ended: %+v", st)
	}
}

func TestExitOnExhausted(t *testing.T) {
	argv, env := appCommand("exit", "1")
	cfg := defaultConfig(argv, env)
	cfg.Policy = Policy{Mode: Always, MaxRestarts: 1, Window: time.Hour}
	cfg.ExitOnExhausted = true
	h := start(t, cfg, Options[string]{})
	select {
	case err := <-h.errc:
		if !errors.Is(err, ErrExhausted) {
			t.Fatalf("Run returned %v, want ErrExhausted", err)
		}
		h.errc <- err // for the cleanup
	case <-time.After(waitTime):
		t.Fatal("Run did not return with on_exhausted = exit")
	}
}

func TestOnFailureDoesNotRestartCleanExit(t *testing.T) {
	argv, env := appCommand("exit", "0")
	cfg := defaultConfig(argv, env)
	cfg.Policy.Mode = OnFailure
	h := start(t, cfg, Options[string]{})
	st := h.waitState(Stopped)
	if st.Restarts != 0 || len(st.Exits) != 1 || st.Exits[0].Reason != ReasonExited {
		t.Fatalf("status %+v, want one exit (exited) and no restart", st)
	}
}

func TestBackoffUsesInjectedClock(t *testing.T) {
	fake := clock.NewFake(time.Now())
	argv, env := appCommand("exit", "2")
	cfg := defaultConfig(argv, env)
	cfg.Policy = Policy{Mode: Always, Delay: 10 * time.Second, MaxDelay: time.Minute}
	h := start(t, cfg, Options[string]{Clock: fake})
	h.waitState(Backoff)
	if !fake.WaitForWaiters(1, waitTime) {
		t.Fatal("no backoff timer armed")
	}
	fake.Advance(8 * time.Second) // below the lowest jittered delay (9 s)
	if st := h.s.Status(); st.State != Backoff || st.Restarts != 0 {
		t.Fatalf("restarted before the delay: %+v", st)
	}
	fake.Advance(4 * time.Second) // past the highest (11 s)
	h.waitFor("the restart", func(st Status[string]) bool { return st.Restarts == 1 })
	h.waitState(Backoff)
	if st := h.s.Status(); !strings.Contains(st.Message, "restarting in") {
		t.Fatalf("backoff message %q", st.Message)
	}
}

func TestStopKillsAppIgnoringSIGTERM(t *testing.T) {
	argv, env := appCommand("ignore-term")
	cfg := defaultConfig(argv, env)
	cfg.StopTimeout = 300 * time.Millisecond
	h := start(t, cfg, Options[string]{Watch: func(ctx context.Context, c *Child[string]) { c.Ready() }})
	st := h.waitState(Running)
	pid := pidsIn(h.waitLine("pid "))[0]
	if pid != st.PID {
		t.Fatalf("app says pid %d, status says %d", pid, st.PID)
	}
	if err := h.s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Stop answers once the tree is gone.
	st = h.s.Status()
	if st.State != Stopped || len(st.Live) != 0 || len(st.Exits) == 0 {
		t.Fatalf("stop answered at %+v, want stopped with no process left", st)
	}
	e := st.Exits[0]
	if e.Reason != ReasonStop || e.Signal != "SIGKILL" {
		t.Fatalf("exit %+v, want reason stop by SIGKILL", e)
	}
	waitDead(t, pid)
	// Start brings it back, and answers once it is ready.
	if err := h.s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := h.s.Status(); st.State != Running || !st.Ready {
		t.Fatalf("start answered at %+v, want running", st)
	}
	// Start of a running app answers at once.
	if err := h.s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestRestartLeavesNoProcessOfOldTree(t *testing.T) {
	for _, mode := range []string{"grandchild", "daemonize"} {
		t.Run(mode, func(t *testing.T) {
			argv, env := appCommand(mode)
			cfg := defaultConfig(argv, env)
			cfg.StopTimeout = 500 * time.Millisecond
			h := start(t, cfg, Options[string]{Watch: func(ctx context.Context, c *Child[string]) { c.Ready() }})
			h.waitState(Running)
			var old []int
			old = append(old, pidsIn(h.waitLine("pid "))...)
			if mode == "daemonize" {
				// The daemon's pid, printed by the short-lived middle process.
				old = append(old, pidsIn(h.waitLineWithout("pid ", "mid"))...)
			}
			if len(old) < 2 {
				t.Fatalf("expected the app and its descendant, got pids %v", old)
			}
			for _, p := range old {
				if !alive(p) {
					t.Fatalf("pid %d not alive before restart", p)
				}
			}
			if err := h.s.Restart(context.Background(), 0); err != nil {
				t.Fatal(err)
			}
			if st := h.s.Status(); st.Restarts != 1 || st.State != Running {
				t.Fatalf("restart answered at %+v, want running after 1 restart", st)
			}
			for _, p := range old {
				if alive(p) {
					t.Errorf("pid %d of the old tree survived the restart", p)
				}
			}
			if e := h.s.Status().Exits[0]; e.Reason != ReasonRestart {
				t.Errorf("exit reason %q, want restart", e.Reason)
			}
		})
	}
}

func TestOutputFloodDoesNotBlockOrGrow(t *testing.T) {
	const size = 50 << 20
	argv, env := appCommand("flood", strconv.Itoa(size))
	cfg := defaultConfig(argv, env)
	cfg.Policy.Mode = OnFailure
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	h := start(t, cfg, Options[string]{})
	st := h.waitState(Stopped)
	if st.Exits[0].Reason != ReasonExited {
		t.Fatalf("flooding app ended %+v, want exited", st.Exits[0])
	}
	h.waitLine("flood done")
	var cut *Line
	for _, l := range h.out.Last(10) {
		if l.Cut {
			l := l
			cut = &l
		}
	}
	if cut == nil || len(cut.Text) != MaxLine {
		t.Fatalf("the flood line was not kept cut to %d bytes: %+v", MaxLine, cut)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 8<<20 {
		t.Fatalf("heap grew by %d MB for a %d MB line", grew>>20, size>>20)
	}
}

func TestEnvReachesApp(t *testing.T) {
	argv, env := appCommand("env")
	env = append(env, "NOTIFY_SOCKET=/run/systemd/notify", "WATCHDOG_USEC=1")
	full, _ := BuildEnv(env, 0, []string{"FROM_FILE=1", "PORT=1"}, []string{"PORT=3000"})
	cfg := defaultConfig(argv, full)
	cfg.Policy.Mode = Never
	cfg.Dir = t.TempDir()
	h := start(t, cfg, Options[string]{})
	h.waitState(Stopped)
	h.waitLine("PORT=")
	got := map[string]string{}
	for _, l := range h.out.Last(1000) {
		if k, v, ok := strings.Cut(l.Text, "="); ok {
			got[k] = v
		}
	}
	if got["PORT"] != "3000" || got["FROM_FILE"] != "1" {
		t.Errorf("PORT=%q FROM_FILE=%q, want 3000 and 1", got["PORT"], got["FROM_FILE"])
	}
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC"} {
		if _, ok := got[k]; ok {
			t.Errorf("%s reached the app", k)
		}
	}
	if _, ok := got["NODE_OPTIONS"]; ok && os.Getenv("NODE_OPTIONS") == "" {
		t.Errorf("NODE_OPTIONS set with heap cap 0: %q", got["NODE_OPTIONS"])
	}
}

func TestRunsAsConfiguredUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody here")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cfg := defaultConfig([]string{"/bin/sh", "-c", `echo "ids $(id -u) $(id -g) $(id -G)"; echo "cwd $(pwd)"`}, []string{"PATH=/usr/bin:/bin"})
	cfg.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid)}}
	cfg.Dir = "/"
	cfg.Policy.Mode = Never
	h := start(t, cfg, Options[string]{})
	line := h.waitLine("ids ")
	if want := fmt.Sprintf("ids %d %d %d", uid, gid, gid); line != want {
		t.Fatalf("app ran with %q, want %q", line, want)
	}
	if line := h.waitLine("cwd "); line != "cwd /" {
		t.Fatalf("app ran in %q, want /", line)
	}
}

func TestHeapOOMAndSignalReasons(t *testing.T) {
	argv, env := appCommand("heap-oom")
	cfg := defaultConfig(argv, env)
	cfg.Policy.Mode = Never
	h := start(t, cfg, Options[string]{})
	st := h.waitState(Failed)
	e := st.Exits[0]
	if e.Reason != ReasonHeapOOM || e.Signal != "SIGABRT" || !strings.Contains(e.Detail, "JavaScript heap out of memory") {
		t.Fatalf("exit %+v, want heap-oom by SIGABRT with the V8 line", e)
	}

	// A SIGKILL that nothing explains is "signaled"; Explain can name it.
	argv, env = appCommand("sleep")
	cfg = defaultConfig(argv, env)
	cfg.Policy.Mode = Never
	h = start(t, cfg, Options[string]{Explain: func(ctx context.Context, c *Child[string], e Exit, wait bool) (Reason, string, bool) {
		if e.Signal == "SIGKILL" && wait {
			return ReasonOOMKill, "Killed process " + strconv.Itoa(c.PID), true
		}
		return "", "", false
	}})
	pid := pidsIn(h.waitLine("pid "))[0]
	syscall.Kill(pid, syscall.SIGKILL)
	st = h.waitState(Failed)
	if e := st.Exits[0]; e.Reason != ReasonSignaled && e.Reason != ReasonOOMKill {
		t.Fatalf("exit %+v, want signaled until explained", e)
	}
	st = h.waitFor("the late explanation", func(st Status[string]) bool { return st.Exits[0].Reason == ReasonOOMKill })
	if e := st.Exits[0]; e.Detail != "Killed process "+strconv.Itoa(pid) || e.Signal != "SIGKILL" {
		t.Fatalf("exit %+v, want oom-kill explained", e)
	}
}

func TestObserverRestartReasonOncePerChild(t *testing.T) {
	argv, env := appCommand("sleep")
	cfg := defaultConfig(argv, env)
	var mu sync.Mutex
	calls := map[uint64]int{}
	h := start(t, cfg, Options[string]{Watch: func(ctx context.Context, c *Child[string]) {
		mu.Lock()
		calls[c.Gen]++
		first := c.Gen == 1
		mu.Unlock()
		c.Ready()
		if first {
			c.Restart(ReasonLiveness, "3 probe failures")
			c.Restart(ReasonRSSLimit, "second request must not count")
		}
	}})
	st := h.waitFor("the liveness restart", func(st Status[string]) bool { return st.Restarts == 1 && st.State == Running })
	if e := st.Exits[0]; e.Reason != ReasonLiveness || e.Detail != "3 probe failures" {
		t.Fatalf("exit %+v, want liveness", e)
	}
	if len(st.Exits) != 1 {
		t.Fatalf("%d exits, want 1", len(st.Exits))
	}
}

func TestSpawnFailureIsRecorded(t *testing.T) {
	cfg := defaultConfig([]string{"no-such-program-here"}, []string{"PATH=/nonexistent"})
	cfg.Policy = Policy{Mode: Always, MaxRestarts: 2, Window: time.Hour}
	h := start(t, cfg, Options[string]{})
	st := h.waitState(Failed)
	if len(st.Exits) != 3 || !strings.Contains(st.Exits[0].Detail, "not found") {
		t.Fatalf("status %+v, want 3 exits saying not found", st)
	}
}

func TestShutdownStopsApp(t *testing.T) {
	argv, env := appCommand("grandchild")
	cfg := defaultConfig(argv, env)
	cfg.StopTimeout = 300 * time.Millisecond
	h := start(t, cfg, Options[string]{Watch: func(ctx context.Context, c *Child[string]) { c.Ready() }})
	h.waitState(Running)
	pids := pidsIn(h.waitLine("pid "))
	h.cancel()
	select {
	case err := <-h.errc:
		if err != nil {
			t.Fatalf("Run returned %v on shutdown, want nil", err)
		}
		h.errc <- err
	case <-time.After(waitTime):
		t.Fatal("Run did not return")
	}
	for _, p := range pids {
		if alive(p) {
			t.Errorf("pid %d alive after shutdown", p)
		}
	}
	if st := h.s.Status(); st.State != Stopped || st.Exits[0].Reason != ReasonStop {
		t.Fatalf("status %+v after shutdown", st)
	}
}

func TestWatchdogTickFromLoop(t *testing.T) {
	fake := clock.NewFake(time.Now())
	argv, env := appCommand("sleep")
	ticks := make(chan struct{}, 10)
	start(t, defaultConfig(argv, env), Options[string]{Clock: fake, Tick: time.Second, OnTick: func() { ticks <- struct{}{} }})
	if !fake.WaitForWaiters(1, waitTime) {
		t.Fatal("no ticker armed")
	}
	fake.Advance(time.Second)
	select {
	case <-ticks:
	case <-time.After(waitTime):
		t.Fatal("no tick")
	}
}

func TestWatchdogStopsWhenLoopIsWedged(t *testing.T) {
	fake := clock.NewFake(time.Now())
	argv, env := appCommand("sleep")
	ticks := make(chan struct{}, 100)
	wedge := make(chan struct{})
	wedged := make(chan struct{})
	events := make(chan Event[string]) // no room: the loop waits for each reader's take
	s := New(defaultConfig(argv, env), Options[string]{
		Log:   zerolog.Nop(),
		Clock: fake,
		Tick:  time.Second, OnTick: func() { ticks <- struct{}{} },
		Watch:  func(ctx context.Context, c *Child[string]) { c.Ready() },
		Events: events,
	})
	go func() {
		for ev := range events {
			if ev.Kind == EventReady {
				close(wedged)
				<-wedge // the loop hangs on the next event, as with a wedged reader
			}
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		close(wedge)
		cancel()
		<-done
	})
	select {
	case <-wedged:
	case <-time.After(waitTime):
		t.Fatal("never running")
	}
	for i := 0; i < 5; i++ {
		fake.Advance(time.Second)
	}
	select {
	case <-ticks:
		t.Fatal("a wedged loop still pinged the watchdog")
	default:
	}
}

func TestOrphansAreReapedWhileAppRuns(t *testing.T) {
	argv, env := appCommand("detach", "5")
	h := start(t, defaultConfig(argv, env), Options[string]{})
	h.waitLine("detached 5")
	var orphans []int
	for _, l := range h.waitLines("orphan ", 5) {
		orphans = append(orphans, pidsIn(l)...)
	}
	for _, pid := range orphans {
		// Reaped, not a zombie: the pid is gone from /proc.
		testkit.EventuallyMsg(t, waitTime, fmt.Sprintf("orphan %d reaped", pid), func() (bool, string) {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
				return true, ""
			}
			p, _ := procfs.Stat(pid)
			return false, fmt.Sprintf("state %c, parent %d", p.State, p.PPID)
		})
	}
}

func TestNaturalExitStopsServingAtOnce(t *testing.T) {
	argv, env := appCommand("exit-leave-child")
	cfg := defaultConfig(argv, env)
	cfg.StopTimeout = 3 * time.Second
	cfg.Policy = Policy{Mode: Never}
	h := start(t, cfg, Options[string]{Watch: func(ctx context.Context, c *Child[string]) { c.Ready() }})
	// While the leftover child is given its stop timeout, the app is no
	// longer reported ready.
	st := h.waitFor("stopping after the exit", func(st Status[string]) bool { return st.State == Stopping })
	if st.Ready {
		t.Fatalf("still ready after the main process exited: %+v", st)
	}
	st = h.waitState(Failed)
	if e := st.Exits[0]; e.Reason != ReasonCrashed || *e.Code != 1 {
		t.Fatalf("exit %+v, want crashed with code 1", e)
	}
	child := pidsIn(h.waitLine("child "))[0]
	if alive(child) {
		t.Fatalf("leftover child %d survived", child)
	}
}
