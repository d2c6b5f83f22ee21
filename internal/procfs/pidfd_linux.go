package procfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrGone is wrapped by Open's error when the process has exited, or its
// PID now names another process, or it changed parent or group since it
// was read.
var ErrGone = errors.New("process gone or changed")

// pidfdSignalProcessGroup is PIDFD_SIGNAL_PROCESS_GROUP (linux/pidfd.h,
// Linux 6.9): pidfd_send_signal sends to the process group the process
// leads.
const pidfdSignalProcessGroup = 1 << 2

// Handle holds one process by a pidfd. Whatever happens to the PID number,
// Signal reaches that process or fails, and Wait waits for that process.
type Handle struct {
	Proc // as read when the handle was opened
	fd   int
}

// NewHandle takes ownership of pidfd, a pidfd of process pid obtained when
// it was created (syscall.SysProcAttr.PidFD), and returns a handle for it.
func NewHandle(pid, pidfd int) *Handle {
	return &Handle{Proc: Proc{PID: pid}, fd: pidfd}
}

// Open opens a pidfd for p, a process read from /proc a moment ago, and
// checks that the PID still names that process: its stat, read again once
// the pidfd is open, must show the same start time, parent and group, and
// the process must not have exited. Otherwise the error wraps ErrGone.
func Open(p Proc) (*Handle, error) {
	return open(newReader(), p)
}

func open(r *reader, p Proc) (*Handle, error) {
	fd, err := unix.PidfdOpen(p.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("pidfd of %d: %w", p.PID, ErrGone)
		}
		return nil, fmt.Errorf("pidfd of %d: %w", p.PID, err)
	}
	h := &Handle{Proc: p, fd: fd}
	now, err := r.stat(p.PID)
	switch {
	case err != nil && Vanished(err):
		err = ErrGone
	case err != nil:
	case now.Start != p.Start || now.PPID != p.PPID || now.PGID != p.PGID || now.Zombie():
		err = ErrGone
	default:
		// The stat just read is the pidfd's process's only if that process
		// had not exited meanwhile (its PID reused by another).
		var exited bool
		if exited, err = h.Exited(); err == nil && exited {
			err = ErrGone
		}
	}
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("pidfd of %d (%s): %w", p.PID, p.Comm, err)
	}
	now.RSS = p.RSS
	h.Proc = now
	return h, nil
}

// OpenDescendants returns handles for the live descendants of pid (not pid
// itself), found as Descendants finds them, each opened as Open does while
// the tree is walked: a process that exited or changed meanwhile is left
// out with its descendants. The caller closes the handles (CloseAll).
func OpenDescendants(pid int) ([]*Handle, error) {
	return OpenDescendantsExcept(pid, nil)
}

// OpenDescendantsExcept is OpenDescendants leaving out the processes in
// except with their whole subtrees.
func OpenDescendantsExcept(pid int, except []int) ([]*Handle, error) {
	if !haveChildrenFiles() {
		return nil, ErrNoChildrenFiles
	}
	r := newReader()
	var hs []*Handle
	_, err := r.walk([]Proc{{PID: pid}}, 0, func(_, c *Proc) bool {
		if c.Zombie() || slices.Contains(except, c.PID) {
			return false
		}
		h, err := open(r, *c)
		if err != nil {
			return false
		}
		*c = h.Proc
		hs = append(hs, h)
		return true
	})
	if err != nil {
		err = fmt.Errorf("descendants of %d: %w", pid, err)
	}
	return hs, err
}

// Fd returns the pidfd, -1 once closed.
func (h *Handle) Fd() int { return h.fd }

// Signal sends sig to the process. Once it has exited (even if not yet
// reaped) the error satisfies errors.Is(err, syscall.ESRCH): a PID reused
// by another process is never signalled.
func (h *Handle) Signal(sig syscall.Signal) error {
	if err := unix.PidfdSendSignal(h.fd, sig, nil, 0); err != nil {
		return fmt.Errorf("signal %s to %d: %w", unix.SignalName(sig), h.PID, err)
	}
	return nil
}

// SignalGroup sends sig to every member of the process group the process
// leads (its PID is the group's ID), even after the leader itself has
// exited: the pidfd names the group, not its number. Kernels before 6.9
// refuse with an error wrapping syscall.EINVAL; with no member left the
// error wraps syscall.ESRCH.
func (h *Handle) SignalGroup(sig syscall.Signal) error {
	if err := unix.PidfdSendSignal(h.fd, sig, nil, pidfdSignalProcessGroup); err != nil {
		return fmt.Errorf("signal %s to group %d: %w", unix.SignalName(sig), h.PID, err)
	}
	return nil
}

// Exited reports whether the process has exited (a zombie not yet reaped
// has exited).
func (h *Handle) Exited() (bool, error) {
	fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("poll pidfd of %d: %w", h.PID, err)
		}
		return n > 0, nil
	}
}

// Close releases the pidfd. Closing twice is harmless.
func (h *Handle) Close() error {
	if h.fd < 0 {
		return nil
	}
	err := unix.Close(h.fd)
	h.fd = -1
	if err != nil {
		return fmt.Errorf("close pidfd of %d: %w", h.PID, err)
	}
	return nil
}

// CloseAll closes every handle of hs.
func CloseAll(hs []*Handle) {
	for _, h := range hs {
		h.Close()
	}
}

// Wait waits until every process of hs has exited or ctx is done, and
// returns the processes still running then, with ctx's error. It sleeps in
// poll(2) on the pidfds, which turn readable when their process exits.
func Wait(ctx context.Context, hs ...*Handle) ([]*Handle, error) {
	alive := make([]*Handle, 0, len(hs))
	for _, h := range hs {
		if h.fd >= 0 {
			alive = append(alive, h)
		}
	}
	if len(alive) == 0 {
		return nil, nil
	}
	// ctx ends the wait by writing to an eventfd polled with the pidfds.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return alive, fmt.Errorf("wait for processes: %w", os.NewSyscallError("eventfd", err))
	}
	defer unix.Close(efd)
	stop := context.AfterFunc(ctx, func() {
		one := [8]byte{1}
		unix.Write(efd, one[:])
	})
	defer stop()

	fds := make([]unix.PollFd, 0, len(alive)+1)
	for {
		fds = fds[:0]
		for _, h := range alive {
			fds = append(fds, unix.PollFd{Fd: int32(h.fd), Events: unix.POLLIN})
		}
		fds = append(fds, unix.PollFd{Fd: int32(efd), Events: unix.POLLIN})
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return alive, fmt.Errorf("wait for processes: %w", os.NewSyscallError("poll", err))
		}
		left := alive[:0]
		for i, h := range alive {
			if fds[i].Revents == 0 {
				left = append(left, h)
			}
		}
		alive = left
		if len(alive) == 0 {
			return nil, nil
		}
		if fds[len(fds)-1].Revents != 0 {
			return alive, ctx.Err()
		}
	}
}
