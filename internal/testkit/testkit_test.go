package testkit

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestPortsConsecutiveDistinctBindable(t *testing.T) {
	a := Ports(t, 3)
	b := Ports(t, 5)
	seen := map[int]bool{}
	for _, ps := range [][]int{a, b} {
		for i, p := range ps {
			if i > 0 && p != ps[0]+i {
				t.Fatalf("ports %v are not consecutive", ps)
			}
			if seen[p] {
				t.Fatalf("port %d handed out twice: %v and %v", p, a, b)
			}
			seen[p] = true
			if lo, hi, ok := readEphemeral(); ok && p >= lo && p <= hi {
				t.Errorf("port %d is in the ephemeral range %d-%d", p, lo, hi)
			}
			for _, host := range []string{"127.0.0.1", ""} {
				l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
				if err != nil {
					t.Fatalf("reserved port %d not bindable on %q: %v", p, host, err)
				}
				l.Close()
			}
		}
	}
	if p := Port(t); seen[p] {
		t.Fatalf("Port returned %d, already held", p)
	}
}

// TestPortsManyNeverOverlap takes many blocks at once: none shares a port.
func TestPortsManyNeverOverlap(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		for _, p := range Ports(t, 4) {
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			seen[p] = true
		}
	}
}

// TestPortsSkipBusy: a port someone listens on is never handed out, even
// though its lock file is free.
func TestPortsSkipBusy(t *testing.T) {
	ports, release, err := ReservePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(ports[1]))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	release()
	if _, err := tryReserve(ports[0], 2); !errors.Is(err, errTaken) {
		t.Fatalf("reserve over a listening port: %v, want taken", err)
	}
	// The lock of the first port was let go again.
	f, err := lockPort(ports[0])
	if err != nil {
		t.Fatalf("first port's lock kept after a failed reserve: %v", err)
	}
	f.Close()
}

// TestPortsHeldAgainstOtherLockers: while a block is held, another open of
// its lock files (another process does the same) cannot lock them, nor can
// a reserve of an overlapping block; after release it can.
func TestPortsHeldAgainstOtherLockers(t *testing.T) {
	ports, release, err := ReservePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		f, err := os.Open(filepath.Join(lockDir, strconv.Itoa(p)+".lock"))
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
			t.Errorf("flock of held port %d's file: %v, want EWOULDBLOCK", p, err)
		}
		f.Close()
	}
	if _, err := tryReserve(ports[2], 2); !errors.Is(err, errTaken) {
		t.Errorf("overlapping reserve: %v, want taken", err)
	}
	release()
	r, err := tryReserve(ports[0], 3)
	if err != nil {
		t.Fatalf("reserve after release: %v", err)
	}
	r()
}

// TestPortsHeldAgainstAnotherProcess runs this test binary again as a second
// process: it cannot reserve a block overlapping the held one, and what it
// does get lies outside it.
func TestPortsHeldAgainstAnotherProcess(t *testing.T) {
	ports := Ports(t, 3)
	cmd := exec.Command(os.Args[0], "-test.run=^TestPortsChild$", "-test.v")
	cmd.Env = append(os.Environ(), "TESTKIT_CHILD_PORT="+strconv.Itoa(ports[0]))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	p := ports[0]
	want := fmt.Sprintf("%d+2: taken\n%d+1: taken\n%d+2: taken\n", p-1, p+1, p+2)
	if got := string(out); !strings.Contains(got, want) || !strings.Contains(got, "--- PASS: TestPortsChild") {
		t.Fatalf("child said\n%s\nwant\n%s", got, want)
	}
}

func TestPortsChild(t *testing.T) {
	held, err := strconv.Atoi(os.Getenv("TESTKIT_CHILD_PORT"))
	if err != nil {
		t.Skip("run by TestPortsHeldAgainstAnotherProcess")
	}
	for _, c := range []struct{ first, n int }{{held - 1, 2}, {held + 1, 1}, {held + 2, 2}} {
		r, err := tryReserve(c.first, c.n)
		switch {
		case err == nil:
			fmt.Printf("%d+%d: ok\n", c.first, c.n)
			r()
		case errors.Is(err, errTaken):
			fmt.Printf("%d+%d: taken\n", c.first, c.n)
		default:
			fmt.Printf("%d+%d: %v\n", c.first, c.n, err)
		}
	}
	for range 50 {
		for _, p := range Ports(t, 2) {
			if p >= held && p < held+3 {
				t.Errorf("port %d is held by the parent", p)
			}
		}
	}
}

func TestCandidates(t *testing.T) {
	for _, c := range []struct {
		eph  string
		want []span
	}{
		{"32768\t60999\n", []span{{20000, 32000}}},
		{"25000 40000", []span{{20000, 25000}}},
		{"10000 21000", []span{{21001, 32000}}},
		{"22000 23000", []span{{20000, 22000}, {23001, 32000}}},
		{"1024 40000", []span{{40001, 65536}}},
		{"junk", []span{{20000, 32000}}},
	} {
		f := filepath.Join(t.TempDir(), "range")
		os.WriteFile(f, []byte(c.eph), 0o644)
		old := ephemeralRange
		ephemeralRange = f
		got := candidates()
		ephemeralRange = old
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("ephemeral %q: candidates %v, want %v", c.eph, got, c.want)
		}
	}
}

// fakeTB records a failure and ends the goroutine as FailNow does.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls fn with a fakeTB on a goroutine of its own, so that a failure
// ends only that goroutine.
func run(fn func(t testing.TB)) string {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f.failed
}

func TestEventually(t *testing.T) {
	n := 0
	if msg := run(func(tb testing.TB) {
		Eventually(tb, 5*time.Second, "third call", func() bool { n++; return n == 3 })
	}); msg != "" || n != 3 {
		t.Fatalf("Eventually: failed %q after %d calls, want success after 3", msg, n)
	}
	start := time.Now()
	msg := run(func(tb testing.TB) {
		Eventually(tb, 100*time.Millisecond, "never", func() bool { return false })
	})
	if took := time.Since(start); took < 100*time.Millisecond || took > 5*time.Second {
		t.Errorf("gave up after %v, want about 100ms", took)
	}
	if msg != "timed out after 100ms waiting for never" {
		t.Errorf("failure %q", msg)
	}
}

func TestEventuallyMsg(t *testing.T) {
	calls := 0
	msg := run(func(tb testing.TB) {
		EventuallyMsg(tb, 60*time.Millisecond, "the answer", func() (bool, string) {
			calls++
			if calls == 1 {
				return false, "first"
			}
			return false, "" // an empty message keeps the last one
		})
	})
	if msg != "timed out after 60ms waiting for the answer; last: first" {
		t.Errorf("failure %q", msg)
	}
	if calls < 2 {
		t.Errorf("%d calls in 60ms at a %v interval", calls, PollInterval)
	}
	calls = 0
	if msg := run(func(tb testing.TB) {
		EventuallyEvery(tb, 250*time.Millisecond, 100*time.Millisecond, "slow", func() (bool, string) { calls++; return false, "no" })
	}); msg != "timed out after 250ms waiting for slow; last: no" || calls < 2 || calls > 4 {
		t.Errorf("every 100ms for 250ms: %d calls, failure %q", calls, msg)
	}
	if msg := run(func(tb testing.TB) {
		EventuallyMsg(tb, time.Second, "at once", func() (bool, string) { return true, "" })
	}); msg != "" {
		t.Errorf("a condition true at once failed: %q", msg)
	}
}
