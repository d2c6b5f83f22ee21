package procfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"agent/internal/testkit"
)

// The test binary doubles as the processes the tests look at: with
// PROCFS_TEST_APP set it runs one of the small programs below (the os/exec
// helper-process pattern).
func TestMain(m *testing.M) {
	if mode := os.Getenv("PROCFS_TEST_APP"); mode != "" {
		runApp(mode)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runApp(mode string) {
	switch mode {
	case "sleep": // print the pid, wait to be killed
		fmt.Println(os.Getpid())
		sleepForever()
	case "tree": // this process, a child, a grandchild: print the three pids
		fmt.Println(os.Getpid())
		spawnSelf("tree-mid")
		sleepForever()
	case "tree-mid":
		fmt.Println(os.Getpid())
		spawnSelf("sleep")
		sleepForever()
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		os.Exit(99)
	}
}

// sleepForever blocks until the process is killed (a bare select {} would
// be reported as a deadlock).
func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

func spawnSelf(mode string) {
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "PROCFS_TEST_APP="+mode)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		panic(err)
	}
}

// startApp starts this binary as mode in its own process group, reads n
// PIDs it prints, and kills the group when the test ends.
func startApp(tb testing.TB, mode string, n int) (*exec.Cmd, []int) {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "PROCFS_TEST_APP="+mode)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	return cmd, readPIDs(tb, out, n)
}

func readPIDs(tb testing.TB, r io.Reader, n int) []int {
	tb.Helper()
	got := make(chan []int, 1)
	go func() {
		var pids []int
		sc := bufio.NewScanner(r)
		for len(pids) < n && sc.Scan() {
			if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil {
				pids = append(pids, pid)
			}
		}
		got <- pids
		io.Copy(io.Discard, r)
	}()
	select {
	case pids := <-got:
		if len(pids) < n {
			tb.Fatalf("got pids %v, want %d", pids, n)
		}
		return pids
	case <-time.After(30 * time.Second):
		tb.Fatalf("no %d pids within 30s", n)
		return nil
	}
}

func pidsOf(procs []Proc) []int {
	out := make([]int, len(procs))
	for i, p := range procs {
		out[i] = p.PID
	}
	return out
}

func vmRSS(t *testing.T, pid int) uint64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}

func TestTree(t *testing.T) {
	_, pids := startApp(t, "tree", 3)
	root, mid, leaf := pids[0], pids[1], pids[2]

	procs, err := Tree(root)
	if err != nil {
		t.Fatal(err)
	}
	if got := pidsOf(procs); !slices.Equal(got, pids) {
		t.Fatalf("Tree(%d) = %v, want %v (root first, then breadth first)", root, got, pids)
	}
	for i, p := range procs {
		if p.PGID != root {
			t.Errorf("%d: PGID = %d, want %d", p.PID, p.PGID, root)
		}
		if i > 0 && p.PPID != pids[i-1] {
			t.Errorf("%d: PPID = %d, want %d", p.PID, p.PPID, pids[i-1])
		}
		if p.Comm != "procfs.test" || p.Start == 0 || p.Threads < 1 || p.Zombie() {
			t.Errorf("proc = %+v", p)
		}
		// The rss field is VmRSS; a Go process's moves a little as it runs.
		if want := vmRSS(t, p.PID); p.RSS < want/2 || p.RSS > want*2 {
			t.Errorf("%d: RSS = %d, VmRSS %d", p.PID, p.RSS, want)
		}
	}

	desc, err := Descendants(mid)
	if err != nil || !slices.Equal(pidsOf(desc), []int{leaf}) {
		t.Errorf("Descendants(%d) = %v, %v; want [%d]", mid, pidsOf(desc), err, leaf)
	}
	self, err := Descendants(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if !slices.Contains(pidsOf(self), pid) {
			t.Errorf("Descendants(self) = %v, want %d in it", pidsOf(self), pid)
		}
	}
}

func TestTreeGone(t *testing.T) {
	const gone = 1 << 29 // above pid_max
	if procs, err := Tree(gone); err != nil || len(procs) != 0 {
		t.Errorf("Tree(missing) = %v, %v; want nothing, nil", procs, err)
	}
	if procs, err := Descendants(gone); err != nil || len(procs) != 0 {
		t.Errorf("Descendants(missing) = %v, %v; want nothing, nil", procs, err)
	}
	if _, err := Stat(gone); !Vanished(err) {
		t.Errorf("Stat(missing): err = %v, want one that Vanished reports", err)
	}
	if _, err := Stat(-1); err == nil {
		t.Error("Stat(-1): no error")
	}
}

// TestTreeChildOfAThread checks that a child forked by a thread other than
// the main one is found: the kernel lists a child only in the children file
// of the thread that forked it.
func TestTreeChildOfAThread(t *testing.T) {
	exe, _ := os.Executable()
	type started struct {
		cmd *exec.Cmd
		tid int
		err error
	}
	var s started
	// The forking thread must outlive the check: when a thread ends, its
	// children move to another thread of the process.
	hold := make(chan struct{})
	defer close(hold)
	for range 20 {
		ch := make(chan started, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			defer func() { <-hold }()
			tid := unix.Gettid()
			if tid == os.Getpid() {
				ch <- started{tid: tid}
				return
			}
			cmd := exec.Command(exe)
			cmd.Env = append(os.Environ(), "PROCFS_TEST_APP=sleep")
			cmd.Stdout = io.Discard
			ch <- started{cmd: cmd, tid: tid, err: cmd.Start()}
		}()
		if s = <-ch; s.cmd != nil {
			break
		}
	}
	if s.cmd == nil || s.err != nil {
		t.Skipf("no child forked from a thread other than the main one: %v", s.err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	main, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", os.Getpid(), os.Getpid()))
	if slices.Contains(strings.Fields(string(main)), strconv.Itoa(s.cmd.Process.Pid)) {
		t.Fatal("the child is listed under the main thread after all")
	}
	procs, err := Descendants(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pidsOf(procs), s.cmd.Process.Pid) {
		t.Errorf("Descendants(self) = %v, want %d (forked by thread %d)", pidsOf(procs), s.cmd.Process.Pid, s.tid)
	}
}

func TestOpenDescendants(t *testing.T) {
	_, pids := startApp(t, "tree", 3)
	hs, err := OpenDescendants(pids[0])
	if err != nil {
		t.Fatal(err)
	}
	defer CloseAll(hs)
	if len(hs) != 2 || hs[0].PID != pids[1] || hs[1].PID != pids[2] {
		t.Fatalf("OpenDescendants = %v, want handles for %v", hs, pids[1:])
	}
	for _, h := range hs {
		if exited, err := h.Exited(); err != nil || exited {
			t.Errorf("%d: Exited = %v, %v; want false", h.PID, exited, err)
		}
		if h.PGID != pids[0] {
			t.Errorf("%d: PGID = %d, want %d", h.PID, h.PGID, pids[0])
		}
	}
	// Signal through the handles; Wait wakes on the exits.
	for _, h := range hs {
		if err := h.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if left, err := Wait(ctx, hs...); err != nil || len(left) != 0 {
		t.Fatalf("Wait = %v, %v; want all exited", left, err)
	}
}

// TestOpenRejectsAnotherProcess checks Open's re-check: a Proc whose start
// time, parent or group do not match what the PID names now, or that is
// gone, gives no handle.
func TestOpenRejectsAnotherProcess(t *testing.T) {
	_, pids := startApp(t, "sleep", 1)
	p, err := Stat(pids[0])
	if err != nil {
		t.Fatal(err)
	}
	h, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	h.Close()
	for name, q := range map[string]Proc{
		"earlier start": {PID: p.PID, PPID: p.PPID, PGID: p.PGID, Start: p.Start - 1},
		"other parent":  {PID: p.PID, PPID: p.PPID + 1, PGID: p.PGID, Start: p.Start},
		"other group":   {PID: p.PID, PPID: p.PPID, PGID: p.PGID + 1, Start: p.Start},
		"no process":    {PID: 1 << 29},
	} {
		if h, err := Open(q); !errors.Is(err, ErrGone) {
			t.Errorf("%s: Open = %v, %v; want ErrGone", name, h, err)
		}
	}
}

// TestStaleHandleIsNotSignalled shows the mechanism that keeps a reused
// PID from being signalled: a handle from a scan whose process has since
// exited and been reaped (its PID free for anyone) refuses to signal, and
// counts as exited, at once.
func TestStaleHandleIsNotSignalled(t *testing.T) {
	cmd, pids := startApp(t, "sleep", 1)
	procs, err := Descendants(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	i := slices.Index(pidsOf(procs), pids[0])
	if i < 0 {
		t.Fatalf("scan %v lacks %d", pidsOf(procs), pids[0])
	}
	h, err := Open(procs[i])
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	cmd.Process.Kill()
	cmd.Wait() // reaped: the PID may now be given to another process
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pids[0])); err == nil {
		t.Logf("PID %d already names another process", pids[0])
	}
	if err := h.Signal(syscall.SIGTERM); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("Signal on a stale handle = %v, want ESRCH", err)
	}
	if exited, err := h.Exited(); err != nil || !exited {
		t.Errorf("Exited = %v, %v; want true", exited, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if left, err := Wait(ctx, h); err != nil || len(left) != 0 {
		t.Errorf("Wait on an exited process = %v, %v; want at once", left, err)
	}
	if _, err := Open(procs[i]); !errors.Is(err, ErrGone) {
		t.Errorf("Open after the exit: err = %v, want ErrGone", err)
	}
}

// TestWaitEndsWithContext checks that Wait returns the live processes when
// its context ends, and wakes when one exits.
func TestWaitEndsWithContext(t *testing.T) {
	_, a := startApp(t, "sleep", 1)
	_, b := startApp(t, "sleep", 1)
	var hs []*Handle
	for _, pid := range []int{a[0], b[0]} {
		p, err := Stat(pid)
		if err != nil {
			t.Fatal(err)
		}
		h, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		hs = append(hs, h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		left []*Handle
		err  error
	}
	done := make(chan result, 1)
	go func() {
		left, err := Wait(ctx, hs...)
		done <- result{left, err}
	}()
	hs[0].Signal(syscall.SIGKILL)
	testkit.Eventually(t, 30*time.Second, "the first process to exit", func() bool {
		exited, _ := hs[0].Exited()
		return exited
	})
	select {
	case r := <-done:
		t.Fatalf("Wait returned %v, %v while a process runs", r.left, r.err)
	default:
	}
	cancel()
	select {
	case r := <-done:
		if !errors.Is(r.err, context.Canceled) || len(r.left) != 1 || r.left[0] != hs[1] {
			t.Errorf("Wait = %v, %v; want [%d], context.Canceled", r.left, r.err, hs[1].PID)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Wait did not return after cancel")
	}
}

// TestSignalGroup checks that the group signal reaches every member, even
// after the leader has exited and been reaped.
func TestSignalGroup(t *testing.T) {
	exe, _ := os.Executable()
	pidfd := -1
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "PROCFS_TEST_APP=tree")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, PidFD: &pidfd}
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	if pidfd < 0 {
		t.Skip("no pidfd from clone")
	}
	leader := NewHandle(cmd.Process.Pid, pidfd)
	defer leader.Close()
	pids := readPIDs(t, out, 3)
	hs, err := OpenDescendants(pids[0])
	if err != nil || len(hs) != 2 {
		t.Fatalf("OpenDescendants = %v, %v", hs, err)
	}
	defer CloseAll(hs)

	if err := leader.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait() // the leader is reaped; its group lives on in the others
	err = leader.SignalGroup(syscall.SIGKILL)
	if errors.Is(err, syscall.EINVAL) {
		t.Skipf("kernel before 6.9: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if left, err := Wait(ctx, hs...); err != nil || len(left) != 0 {
		t.Fatalf("group members after SignalGroup: %v, %v", left, err)
	}
	testkit.Eventually(t, 30*time.Second, "the group to be gone", func() bool {
		err := leader.SignalGroup(0)
		return errors.Is(err, syscall.ESRCH)
	})
}

func TestCgroupSelf(t *testing.T) {
	v1, v2, err := Cgroup(0)
	if err != nil {
		t.Fatal(err)
	}
	if v1 == "" && v2 == "" {
		t.Error("this process has neither a v1 memory cgroup nor a v2 one")
	}
	pv1, pv2, err := Cgroup(os.Getpid())
	if err != nil || pv1 != v1 || pv2 != v2 {
		t.Errorf("Cgroup(own pid) = %q, %q, %v; want %q, %q", pv1, pv2, err, v1, v2)
	}
	if _, _, err := Cgroup(1 << 29); !Vanished(err) {
		t.Errorf("Cgroup(missing): err = %v", err)
	}
}

// BenchmarkDescendants measures one walk of a three-process tree, as the
// RSS sampler does every second.
func BenchmarkDescendants(b *testing.B) {
	_, pids := startApp(b, "tree", 3)
	b.ReportAllocs()
	for b.Loop() {
		procs, err := Tree(pids[0])
		if err != nil || len(procs) != 3 {
			b.Fatalf("Tree = %v, %v", procs, err)
		}
	}
}
