package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawIO reads and writes a socket with plain read(2) and write(2) calls
// that do not go through the Go scheduler's system call bookkeeping
// (syscall.RawSyscall instead of syscall.Syscall), and waits through the
// runtime's network poller like any net.Conn when the socket is not
// ready (syscall.RawConn), so deadlines and Close work as usual.
//
// Why: the sockets are non-blocking, so a read or write never sleeps in
// the kernel, yet a write on loopback takes some 10–20 µs (the receiving
// side's TCP work runs in it). Through net.Conn each such call enters
// and leaves a "system call" state: the runtime wakes its monitor thread
// when the process was idle, and the monitor hands the goroutine's
// processor to another thread when the call takes longer than its tick,
// which then finds nothing to do and goes back to sleep. At a few
// thousand requests a second that was about one thread wake-up and one
// sleep per request, on top of the poller's. nginx's worker has none of
// these.
type rawIO struct {
	rc syscall.RawConn
	// A read and a write may run at the same time (the watch of a client
	// reads while the response is written): each has its own.
	rp, wp     []byte
	rn, wn     int
	rerr, werr error
	// The callbacks, bound once so that a call allocates nothing.
	rd, wr func(fd uintptr) bool
}

// newRawIO returns nc's reads and writes as raw system calls, or nc
// itself when it is not a socket that allows it.
func newRawIO(nc net.Conn) io.ReadWriter {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nc
	}
	r := &rawIO{rc: rc}
	r.rd, r.wr = r.read, r.write
	return r
}

func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rp, r.rn, r.rerr = p, 0, nil
	err := r.rc.Read(r.rd)
	n, rerr := r.rn, r.rerr
	r.rp, r.rerr = nil, nil
	if err != nil {
		return 0, err
	}
	return n, rerr
}

func (r *rawIO) Write(p []byte) (int, error) {
	r.wp, r.wn, r.werr = p, 0, nil
	err := r.rc.Write(r.wr)
	n, werr := r.wn, r.werr
	r.wp, r.werr = nil, nil
	if err == nil {
		err = werr
	}
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}

// read is one read(2); false asks the poller to wait until the socket is
// readable.
func (r *rawIO) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.rp[0])), uintptr(len(r.rp)))
		switch e {
		case 0:
			r.rn = int(n)
			if n == 0 {
				r.rerr = io.EOF
			}
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.rerr = os.NewSyscallError("read", e)
			return true
		}
	}
}

// write writes all of r.wp; false asks the poller to wait until the
// socket is writable again.
func (r *rawIO) write(fd uintptr) bool {
	for len(r.wp) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&r.wp[0])), uintptr(len(r.wp)))
		switch e {
		case 0:
			r.wn += int(n)
			r.wp = r.wp[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.werr = os.NewSyscallError("write", e)
			return true
		}
	}
	return true
}

// unwrap returns the connection nc wraps (connlimit's counted connection
// wraps the TCP one), or nc.
func unwrap(nc net.Conn) net.Conn {
	if w, ok := nc.(interface{ NetConn() net.Conn }); ok {
		return w.NetConn()
	}
	return nc
}
