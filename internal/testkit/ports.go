// Package testkit holds what the tests and the benchmark programs share:
// loopback ports reserved against every other test process on the machine,
// and the one wait on a condition that something outside the test makes
// true. It is imported only from tests and benchmarks.
package testkit

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The ports handed out: a window below Linux's default ephemeral range
// (32768–60999), so that no socket the kernel binds to port 0 (a client's
// connect, a listener on :0) can take one while its test holds it.
const (
	windowLow  = 20000
	windowHigh = 32000 // exclusive
)

// lockDir holds one lock file per port; a port is reserved while a process
// holds an exclusive flock on its file. The files stay (removing one would
// let two processes lock two different files of the same name).
var lockDir = "/tmp/agent-test-ports"

// ephemeralRange is where the kernel reads the range it picks from.
var ephemeralRange = "/proc/sys/net/ipv4/ip_local_port_range"

// errTaken says a port of a block is locked by someone else or in use.
var errTaken = errors.New("taken")

// Port returns one free loopback TCP port reserved until t ends; see Ports.
func Port(t testing.TB) int {
	t.Helper()
	return Ports(t, 1)[0]
}

// Ports returns n consecutive TCP ports P, P+1, …, P+n-1 that nothing
// listens on (checked on 127.0.0.1 and on all addresses), reserved until t
// and its subtests end: no other caller of Ports or ReservePorts, in this
// process or another, gets any of them meanwhile, and the kernel does not
// hand them out for port 0. The ports are not bound: the caller binds them
// (or gives them to the process it starts).
func Ports(t testing.TB, n int) []int {
	t.Helper()
	ports, release, err := ReservePorts(n)
	if err != nil {
		t.Fatalf("reserve %d ports: %v", n, err)
	}
	t.Cleanup(release)
	return ports
}

// ReservePorts is Ports for programs without a testing.TB (the benchmark
// harnesses): the ports stay reserved until release is called or the
// process exits.
func ReservePorts(n int) (ports []int, release func(), err error) {
	if n < 1 || n > 64 {
		return nil, nil, fmt.Errorf("%d ports: want 1 to 64", n)
	}
	if err := os.MkdirAll(lockDir, 0o777); err != nil {
		return nil, nil, fmt.Errorf("port lock directory: %w", err)
	}
	// Anyone may lock here: root's tests and a user's tests share ports.
	// (Fails harmlessly when another user made the directory.)
	_ = os.Chmod(lockDir, 0o777|os.ModeSticky)
	spans := candidates()
	total := 0
	for _, s := range spans {
		total += max(0, s.hi-s.lo-n+1)
	}
	if total == 0 {
		return nil, nil, fmt.Errorf("no %d consecutive ports outside the ephemeral range", n)
	}
	var last error
	for range 500 {
		first, i := 0, rand.IntN(total)
		for _, s := range spans {
			k := max(0, s.hi-s.lo-n+1) // blocks starting in s
			if i < k {
				first = s.lo + i
				break
			}
			i -= k
		}
		release, err := tryReserve(first, n)
		if err == nil {
			ports := make([]int, n)
			for j := range ports {
				ports[j] = first + j
			}
			return ports, release, nil
		}
		last = err
		if !errors.Is(err, errTaken) {
			return nil, nil, err
		}
	}
	return nil, nil, fmt.Errorf("no %d free consecutive ports after 500 tries (last: %v)", n, last)
}

// tryReserve locks the files of ports first…first+n-1 and checks that each
// port can be bound; on any failure it lets go of what it took.
func tryReserve(first, n int) (release func(), err error) {
	var held []*os.File
	release = func() {
		for _, f := range held {
			f.Close() // closing the only descriptor drops the flock
		}
		held = nil
	}
	for p := first; p < first+n; p++ {
		f, err := lockPort(p)
		if err != nil {
			release()
			return nil, err
		}
		held = append(held, f)
	}
	for p := first; p < first+n; p++ {
		if err := bindable(p); err != nil {
			release()
			return nil, fmt.Errorf("port %d: %w (%v)", p, errTaken, err)
		}
	}
	return release, nil
}

// lockPort takes the exclusive, non-blocking flock of port p's file.
func lockPort(p int) (*os.File, error) {
	name := filepath.Join(lockDir, strconv.Itoa(p)+".lock")
	// Read-only is enough for flock, and opens a file another user made.
	f, err := os.OpenFile(name, os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("port lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("port %d: %w (locked)", p, errTaken)
		}
		return nil, fmt.Errorf("port lock %s: %w", name, err)
	}
	return f, nil
}

// bindable reports whether nothing holds port p on loopback or on all
// addresses (the agent and the apps bind either).
func bindable(p int) error {
	for _, host := range []string{"127.0.0.1", ""} {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			return err
		}
		l.Close()
	}
	return nil
}

type span struct{ lo, hi int } // [lo, hi)

// candidates is the window minus the kernel's ephemeral range, or, if that
// leaves nothing, every unprivileged port outside it.
func candidates() []span {
	elo, ehi, ok := readEphemeral()
	if !ok {
		return []span{{windowLow, windowHigh}}
	}
	out := minus(span{windowLow, windowHigh}, span{elo, ehi + 1})
	if len(out) == 0 {
		out = minus(span{1024, 65536}, span{elo, ehi + 1})
	}
	return out
}

func minus(s, e span) []span {
	var out []span
	if lo, hi := s.lo, min(s.hi, e.lo); lo < hi {
		out = append(out, span{lo, hi})
	}
	if lo, hi := max(s.lo, e.hi), s.hi; lo < hi {
		out = append(out, span{lo, hi})
	}
	return out
}

func readEphemeral() (lo, hi int, ok bool) {
	b, err := os.ReadFile(ephemeralRange)
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || lo > hi {
		return 0, 0, false
	}
	return lo, hi, true
}
