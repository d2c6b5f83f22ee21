// Package handoff holds the small pieces an upgrade in place needs to hand
// the agent's sockets to the program it execs: a listener that stops
// accepting without closing, and descriptors taken without side effects.
package handoff

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// Listener is a listening socket that can stop accepting without closing
// (Pause): connections that arrive meanwhile wait in the kernel's backlog,
// for whoever accepts next, this program after Resume or the next one.
type Listener struct {
	net.Listener

	mu      sync.Mutex
	paused  bool
	resumed chan struct{} // closed by Resume
}

// deadliner is what TCP and unix listeners have.
type deadliner interface {
	SetDeadline(time.Time) error
	SyscallConn() (syscall.RawConn, error)
}

// Wrap returns ln as a Listener. ln must be a *net.TCPListener or a
// *net.UnixListener.
func Wrap(ln net.Listener) *Listener {
	return &Listener{Listener: ln, resumed: make(chan struct{})}
}

// Accept accepts the next connection; while paused it waits.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return nil, err
		}
		l.mu.Lock()
		paused, resumed := l.paused, l.resumed
		l.mu.Unlock()
		if !paused {
			return nil, err
		}
		<-resumed
	}
}

// Pause stops accepting: a pending Accept waits until Resume.
func (l *Listener) Pause() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.paused {
		return
	}
	l.paused = true
	if d, ok := l.Listener.(deadliner); ok {
		d.SetDeadline(time.Unix(1, 0))
	}
}

// Resume accepts again.
func (l *Listener) Resume() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.paused {
		return
	}
	l.paused = false
	if d, ok := l.Listener.(deadliner); ok {
		d.SetDeadline(time.Time{})
	}
	close(l.resumed)
	l.resumed = make(chan struct{})
}

// FD returns the socket's descriptor, -1 if it has none.
func (l *Listener) FD() int {
	d, ok := l.Listener.(deadliner)
	if !ok {
		return -1
	}
	return RawFD(d)
}

// RawFD returns the descriptor of a socket or file without the side
// effects of File or Fd (a dup, blocking mode); -1 if it has none.
func RawFD(sc interface {
	SyscallConn() (syscall.RawConn, error)
}) int {
	fd := -1
	if rc, err := sc.SyscallConn(); err == nil {
		rc.Control(func(p uintptr) { fd = int(p) })
	}
	return fd
}
