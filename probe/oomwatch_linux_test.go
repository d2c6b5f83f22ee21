package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/clock"
	"agent/internal/testkit"
)

// fakeKmsg stands in for /dev/kmsg: each Read takes one record (or error)
// from reads, and blocks until one is sent or the file is closed.
type fakeKmsg struct {
	reads  chan fakeKmsgRead
	closed chan struct{}
	once   sync.Once
}

type fakeKmsgRead struct {
	data string
	err  error
}

func newFakeKmsg() *fakeKmsg {
	return &fakeKmsg{reads: make(chan fakeKmsgRead), closed: make(chan struct{})}
}

func (f *fakeKmsg) Read(p []byte) (int, error) {
	select {
	case r := <-f.reads:
		if r.err != nil {
			return 0, r.err
		}
		return copy(p, r.data), nil
	case <-f.closed:
		return 0, os.ErrClosed
	}
}

func (f *fakeKmsg) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

// send hands one record to the watcher's next Read.
func (f *fakeKmsg) send(t *testing.T, data string) {
	t.Helper()
	f.sendRead(t, fakeKmsgRead{data: data})
}

func (f *fakeKmsg) sendRead(t *testing.T, r fakeKmsgRead) {
	t.Helper()
	select {
	case f.reads <- r:
	case <-time.After(10 * time.Second):
		t.Fatalf("watcher did not read %+v", r)
	}
}

// startOOMWatcher runs w until the test ends and checks that Run returns
// nil promptly once cancelled.
func startOOMWatcher(t *testing.T, w *OOMWatcher) {
	t.Helper()
	runUntilCleanup(t, w.Run)
}

// killsTo returns an onKill that forwards kills to the returned channel.
func killsTo() (func(OOMKill), chan OOMKill) {
	ch := make(chan OOMKill, 64)
	return func(k OOMKill) { ch <- k }, ch
}

func nextKill(t *testing.T, ch <-chan OOMKill) OOMKill {
	t.Helper()
	select {
	case k := <-ch:
		return k
	case <-time.After(10 * time.Second):
		t.Fatal("no kill reported")
		return OOMKill{}
	}
}

func oomTestLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
}

func fakeWatcher(t *testing.T, clk clock.Clock) (*OOMWatcher, *fakeKmsg, chan OOMKill) {
	src := newFakeKmsg()
	onKill, kills := killsTo()
	open := func(string) (io.ReadCloser, error) { return src, nil }
	return newOOMWatcher(oomTestLogger(t), "/dev/kmsg", onKill, open, clk), src, kills
}

const (
	kmsgSummaryRecord = "6,421,227801431,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/oomtest,task_memcg=/oomtest,task=node,pid=1984,uid=0"
	kmsgKilledRecord  = "3,422,227801473,-;Memory cgroup out of memory: Killed process 1984 (node) total-vm:984976kB, anon-rss:64768kB, file-rss:33552kB, shmem-rss:0kB, UID:0 pgtables:580kB oom_score_adj:0"
)

func killRecord(seq, pid int) string {
	return fmt.Sprintf("3,%d,%d,-;Out of memory: Killed process %d (node) total-vm:1kB, anon-rss:1kB", seq, seq, pid)
}

func TestOOMWatcherSurvivesLostAndBrokenRecords(t *testing.T) {
	w, src, kills := fakeWatcher(t, clock.Real{})
	startOOMWatcher(t, w)

	src.send(t, kmsgSummaryRecord)
	src.sendRead(t, fakeKmsgRead{err: &os.PathError{Op: "read", Path: "/dev/kmsg", Err: syscall.EPIPE}})
	src.send(t, "3,5,")                                // cut short
	src.send(t, " SUBSYSTEM=virtio")                   // continuation line alone
	src.send(t, "")                                    // nothing
	src.send(t, "14,423,1,-;Killed process 99 (node)") // user space imitating the kernel
	src.send(t, kmsgKilledRecord+"\n SUBSYSTEM=memory\n")
	if got := w.Status(); got != "ok" {
		t.Errorf("Status = %q, want ok", got)
	}

	k := nextKill(t, kills)
	want := OOMKill{
		PID: 1984, Comm: "node", Memcg: true,
		Line:      strings.SplitN(kmsgKilledRecord, ";", 2)[1],
		TaskMemcg: "/oomtest", Constraint: "CONSTRAINT_MEMCG",
	}
	if k != want {
		t.Fatalf("kill = %+v\nwant %+v", k, want)
	}
	if got, ok := w.Recent(func(pid int) bool { return pid == 1984 }, time.Time{}); !ok || got != want {
		t.Errorf("Recent = %+v, %v; want the kill", got, ok)
	}
	if _, ok := w.Recent(func(pid int) bool { return pid == 99 }, time.Time{}); ok {
		t.Error("a user space record was taken for a kill")
	}
}

func TestOOMWatcherOpenFails(t *testing.T) {
	open := func(path string) (io.ReadCloser, error) {
		return nil, &os.PathError{Op: "open", Path: path, Err: syscall.EACCES}
	}
	w := newOOMWatcher(oomTestLogger(t), "/dev/kmsg", nil, open, clock.Real{})
	if got := w.Status(); !strings.HasPrefix(got, "unavailable: ") {
		t.Errorf("Status before Run = %q, want unavailable", got)
	}
	if err := w.Run(context.Background()); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if got, want := w.Status(), "unavailable: open /dev/kmsg: permission denied"; got != want {
		t.Errorf("Status = %q, want %q", got, want)
	}
	// Nothing will arrive, so Wait does not wait.
	if _, ok := w.Wait(context.Background(), nil, time.Time{}, time.Hour); ok {
		t.Error("Wait found a kill")
	}
}

func TestOOMWatcherMissingLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kmsg")
	w := NewOOMWatcher(oomTestLogger(t), path, nil)
	if err := w.Run(context.Background()); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if got, want := w.Status(), "unavailable: open "+path+": no such file or directory"; got != want {
		t.Errorf("Status = %q, want %q", got, want)
	}
}

func TestOOMWatcherReadFails(t *testing.T) {
	w, src, _ := fakeWatcher(t, clock.Real{})
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	src.sendRead(t, fakeKmsgRead{err: &os.PathError{Op: "read", Path: "/dev/kmsg", Err: syscall.EIO}})
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after a read error")
	}
	if got, want := w.Status(), "unavailable: read /dev/kmsg: input/output error"; got != want {
		t.Errorf("Status = %q, want %q", got, want)
	}
	select {
	case <-src.closed:
	default:
		t.Error("the kernel log was left open")
	}
}

func TestOOMWatcherStopsOnCancel(t *testing.T) {
	w, src, _ := fakeWatcher(t, clock.Real{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	src.send(t, kmsgSummaryRecord) // Run is reading
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	select {
	case <-src.closed:
	default:
		t.Error("the kernel log was left open")
	}
}

func TestOOMWatcherWait(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC))
	w, src, kills := fakeWatcher(t, fake)
	startOOMWatcher(t, w)
	src.send(t, killRecord(1, 500)) // before since: never an answer
	nextKill(t, kills)
	fake.Advance(time.Second)
	since := fake.Now()

	is := func(want int) func(int) bool { return func(pid int) bool { return pid == want } }
	type result struct {
		k  OOMKill
		ok bool
	}
	got := make(chan result, 1)
	go func() {
		k, ok := w.Wait(context.Background(), is(1984), since, 2*time.Second)
		got <- result{k, ok}
	}()
	if !fake.WaitForWaiters(1, 10*time.Second) {
		t.Fatal("Wait armed no timer")
	}
	src.send(t, killRecord(2, 1985)) // another process
	nextKill(t, kills)
	select {
	case r := <-got:
		t.Fatalf("Wait returned %+v for another pid", r)
	default:
	}
	src.send(t, killRecord(3, 1984))
	select {
	case r := <-got:
		if !r.ok || r.k.PID != 1984 {
			t.Fatalf("Wait = %+v, want the kill of 1984", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return when the kill arrived")
	}
	nextKill(t, kills)

	// Already there: no waiting at all.
	if k, ok := w.Wait(context.Background(), is(1985), since, time.Hour); !ok || k.PID != 1985 {
		t.Errorf("Wait for a recorded kill = %+v, %v", k, ok)
	}
	if _, ok := w.Recent(is(500), since); ok {
		t.Error("Recent returned a kill from before since")
	}

	// A pid the OOM killer never touched times out.
	go func() {
		k, ok := w.Wait(context.Background(), is(4242), since, 2*time.Second)
		got <- result{k, ok}
	}()
	if !fake.WaitForWaiters(1, 10*time.Second) {
		t.Fatal("Wait armed no timer")
	}
	fake.Advance(2 * time.Second)
	select {
	case r := <-got:
		if r.ok {
			t.Fatalf("Wait for an unrelated pid = %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not time out")
	}

	// A cancelled context ends the wait.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		k, ok := w.Wait(ctx, is(4242), since, time.Hour)
		got <- result{k, ok}
	}()
	if !fake.WaitForWaiters(1, 10*time.Second) {
		t.Fatal("Wait armed no timer")
	}
	cancel()
	select {
	case r := <-got:
		if r.ok {
			t.Fatalf("cancelled Wait = %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait ignored its context")
	}
}

func TestOOMWatcherRingIsBounded(t *testing.T) {
	w, src, kills := fakeWatcher(t, clock.Real{})
	startOOMWatcher(t, w)
	const n = oomRingSize + 8
	for i := 1; i <= n; i++ {
		src.send(t, killRecord(i, 1000+i))
		nextKill(t, kills)
	}
	is := func(want int) func(int) bool { return func(pid int) bool { return pid == want } }
	if _, ok := w.Recent(is(1001), time.Time{}); ok {
		t.Error("the oldest kill is still remembered past the ring's size")
	}
	if _, ok := w.Recent(is(1000+n-oomRingSize+1), time.Time{}); !ok {
		t.Error("the oldest kill within the ring is forgotten")
	}
	k, ok := w.Recent(func(pid int) bool { return pid > 1000 }, time.Time{})
	if !ok || k.PID != 1000+n {
		t.Errorf("Recent of several = %+v, %v; want the newest, %d", k, ok, 1000+n)
	}
}

// TestOOMWatcherRealKmsgStops checks that cancelling Run interrupts a read
// of the real /dev/kmsg that has nothing to return.
func TestOOMWatcherRealKmsgStops(t *testing.T) {
	f, err := os.Open("/dev/kmsg")
	if err != nil {
		t.Skipf("cannot read the kernel log here: %v", err)
	}
	f.Close()
	w := NewOOMWatcher(oomTestLogger(t), "/dev/kmsg", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	testkit.Eventually(t, 10*time.Second, "watcher reading", func() bool { return w.Status() == "ok" })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel while blocked on /dev/kmsg")
	}
}

// TestOOMWatcherRealKernelOOMKill makes the kernel kill a real Node process
// for its memory cgroup's 64 MiB limit and checks that the watcher reports
// the kill, and only for that process.
func TestOOMWatcherRealKernelOOMKill(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a memory cgroup and read /dev/kmsg")
	}
	const memcgRoot = "/sys/fs/cgroup/memory"
	if _, err := os.Stat(filepath.Join(memcgRoot, "memory.limit_in_bytes")); err != nil {
		t.Skipf("no cgroup v1 memory controller at %s: %v", memcgRoot, err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is needed to cause a real OOM kill: %v", err)
	}

	name := fmt.Sprintf("probe-oomtest-%d-%d", os.Getpid(), time.Now().UnixNano())
	group := filepath.Join(memcgRoot, name)
	if err := os.Mkdir(group, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The group can be busy for a moment after its last process died.
		testkit.EventuallyMsg(t, 10*time.Second, "the memory cgroup removed", func() (bool, string) {
			if err := os.Remove(group); err != nil && !errors.Is(err, os.ErrNotExist) {
				return false, err.Error()
			}
			return true, ""
		})
	})
	if err := os.WriteFile(filepath.Join(group, "memory.limit_in_bytes"), []byte(strconv.Itoa(64<<20)), 0o644); err != nil {
		t.Fatal(err)
	}

	fake := clock.NewFake(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC))
	onKill, kills := killsTo()
	w := newOOMWatcher(oomTestLogger(t), "/dev/kmsg", onKill, openKmsg, fake)
	startOOMWatcher(t, w)
	testkit.Eventually(t, 10*time.Second, "watcher reading", func() bool { return w.Status() == "ok" })
	since := fake.Now()

	// The shell puts itself in the group, then becomes node, so node is in
	// the group before it allocates anything.
	script := fmt.Sprintf(`echo $$ > %s/cgroup.procs && exec %s -e 'const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1))'`, group, node)
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	select {
	case err := <-exited:
		exited <- err // for the cleanup
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("node ended with %v, want killed by SIGKILL", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("node was not killed for its memory cgroup's limit")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k, ok := w.Wait(ctx, func(p int) bool { return p == pid }, since, 30*time.Second)
	if !ok {
		t.Fatalf("no OOM kill of pid %d reported", pid)
	}
	if !k.Memcg || k.Comm != "node" || k.TaskMemcg != "/"+name || k.Constraint != "CONSTRAINT_MEMCG" {
		t.Errorf("kill = %+v, want a memory cgroup kill of node in /%s", k, name)
	}
	if prefix := fmt.Sprintf("Memory cgroup out of memory: Killed process %d (node) ", pid); !strings.HasPrefix(k.Line, prefix) {
		t.Errorf("Line = %q, want it to start %q", k.Line, prefix)
	}
	// The callback saw it too (other tests may cause kills of their own).
	for seen := nextKill(t, kills); seen.PID != pid; seen = nextKill(t, kills) {
	}

	// Attribution: nothing is reported for a process the kernel did not kill.
	type result struct {
		k  OOMKill
		ok bool
	}
	got := make(chan result, 1)
	go func() {
		k, ok := w.Wait(ctx, func(p int) bool { return p == pid+1_000_000 }, since, 2*time.Second)
		got <- result{k, ok}
	}()
	if !fake.WaitForWaiters(1, 10*time.Second) {
		t.Fatal("Wait armed no timer")
	}
	fake.Advance(2 * time.Second)
	if r := <-got; r.ok {
		t.Errorf("Wait for an unrelated pid = %+v, want none", r.k)
	}
}

// TestOOMWatcherWaitKillByCgroup waits for a kill matched by the victim's
// memory cgroup, as the agent does: the kernel's summary line names the
// cgroup; a kill of another unit is not the answer.
func TestOOMWatcherWaitKillByCgroup(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC))
	w, src, kills := fakeWatcher(t, fake)
	startOOMWatcher(t, w)
	testkit.Eventually(t, 10*time.Second, "watcher reading", func() bool { return w.Status() == "ok" })
	since := fake.Now()
	unit := MemoryCgroup{Path: "/system.slice/agent.service", Version: 2}
	match := func(k OOMKill) bool { return OOMKillIsOurs(k, unit, func(pid int) bool { return pid == 100 }) }

	type result struct {
		k  OOMKill
		ok bool
	}
	got := make(chan result, 1)
	go func() {
		k, ok := w.WaitKill(context.Background(), match, since, 2*time.Second)
		got <- result{k, ok}
	}()
	if !fake.WaitForWaiters(1, 10*time.Second) {
		t.Fatal("WaitKill armed no timer")
	}
	summary := func(seq int, memcg string, pid int) string {
		return fmt.Sprintf("6,%d,227801472,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=%s,task_memcg=%s,task=node,pid=%d,uid=0", seq, memcg, memcg, pid)
	}
	src.send(t, summary(1, "/system.slice/other.service", 300))
	src.send(t, killRecord(2, 300))
	nextKill(t, kills)
	select {
	case r := <-got:
		t.Fatalf("WaitKill returned %+v, a kill of another unit", r)
	default:
	}
	src.send(t, summary(3, "/system.slice/agent.service", 4242)) // a worker no sample has seen
	src.send(t, killRecord(4, 4242))
	select {
	case r := <-got:
		if !r.ok || r.k.PID != 4242 || r.k.TaskMemcg != unit.Path {
			t.Fatalf("WaitKill = %+v, want the kill of 4242 in %s", r, unit.Path)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitKill did not return when the kill arrived")
	}
	nextKill(t, kills)
	if k, ok := w.RecentKill(match, since); !ok || k.PID != 4242 {
		t.Errorf("RecentKill = %+v, %v; want the kill of 4242", k, ok)
	}
	if k, ok := w.Recent(func(pid int) bool { return pid == 4242 }, since); !ok || k.PID != 4242 {
		t.Errorf("Recent by pid = %+v, %v", k, ok)
	}
}
