package agent

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/rs/zerolog"
)

// fdStore keeps the agent's listening sockets in systemd's file descriptor
// store (FileDescriptorStoreMax= in the unit), so that a restart of the
// agent (systemctl restart, a crash, a package upgrade) never closes them:
// connections that arrive while no agent runs wait in the socket's backlog
// for the next one, which takes the sockets back from LISTEN_FDS instead of
// binding. Each socket is stored under its name (FDNAME=proxy, health,
// metrics). The control socket is not: its directory is made anew on each
// start.
//
// Outside systemd (no NOTIFY_SOCKET) sockets are bound as usual.
type fdStore struct {
	log       zerolog.Logger
	notify    string                  // NOTIFY_SOCKET; "" outside systemd
	inherited map[string]net.Listener // from LISTEN_FDS, by name, not yet taken
	stored    map[string]bool         // names this agent has in the store
}

// newFDStore takes the sockets systemd passed (LISTEN_PID, LISTEN_FDS,
// LISTEN_FDNAMES), and removes those variables from the environment.
func newFDStore(log zerolog.Logger) *fdStore {
	s := &fdStore{
		log:       log.With().Str("component", "fdstore").Logger(),
		notify:    os.Getenv("NOTIFY_SOCKET"),
		inherited: map[string]net.Listener{},
		stored:    map[string]bool{},
	}
	pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID"))
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(k)
	}
	if pid != os.Getpid() || n <= 0 {
		return s
	}
	for i := 0; i < n; i++ {
		fd := 3 + i
		syscall.CloseOnExec(fd)
		name := ""
		if i < len(names) {
			name = names[i]
		}
		f := os.NewFile(uintptr(fd), name)
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			s.log.Warn().Err(err).Str("name", name).Msg("passed descriptor is not a listening socket; dropped")
			s.remove(name)
			continue
		}
		if old, dup := s.inherited[name]; dup || name == "" {
			if dup {
				old.Close()
			}
			s.remove(name)
			ln.Close()
			continue
		}
		s.inherited[name] = ln
		s.stored[name] = true
	}
	return s
}

// listen returns the listening TCP socket called name for addr: the one
// systemd kept, if it is bound to addr, or a new one, then stored.
func (s *fdStore) listen(name, addr string) (net.Listener, error) {
	if ln, ok := s.inherited[name]; ok {
		delete(s.inherited, name)
		if sameAddr(ln.Addr(), addr) {
			s.log.Info().Str("name", name).Str("addr", ln.Addr().String()).Msg("listening socket taken over from the last run")
			return ln, nil
		}
		// The address changed: the kept socket goes.
		ln.Close()
		s.remove(name)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, unwrapListenErr(err)
	}
	s.store(name, ln)
	return ln, nil
}

// dropUnused removes from the store the kept sockets no listen asked for
// (metrics turned off, say).
func (s *fdStore) dropUnused() {
	for name, ln := range s.inherited {
		ln.Close()
		s.remove(name)
		delete(s.inherited, name)
	}
}

// store sends ln to systemd's store under name.
func (s *fdStore) store(name string, ln net.Listener) {
	if s.notify == "" {
		return
	}
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return
	}
	// The socket's own descriptor goes in the message (the kernel gives
	// systemd a copy): not a dup through File, which would put the shared
	// socket in blocking mode.
	rc, err := tl.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) { err = s.send("FDSTORE=1\nFDNAME="+name, int(fd)) })
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		s.log.Warn().Err(err).Str("name", name).Msg("listening socket not stored")
		return
	}
	s.stored[name] = true
}

// remove takes name out of systemd's store.
func (s *fdStore) remove(name string) {
	if s.notify == "" || name == "" {
		return
	}
	if err := s.send("FDSTOREREMOVE=1\nFDNAME="+name, -1); err != nil {
		s.log.Debug().Err(err).Str("name", name).Msg("remove from the descriptor store")
	}
	delete(s.stored, name)
}

// has reports whether the socket called name is in systemd's store.
func (s *fdStore) has(name string) bool { return s.stored[name] }

// send writes one sd_notify message, with fd attached when fd >= 0.
func (s *fdStore) send(msg string, fd int) error {
	sock, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer syscall.Close(sock)
	name := s.notify // "@…", an abstract socket, is understood by SockaddrUnix
	var oob []byte
	if fd >= 0 {
		oob = syscall.UnixRights(fd)
	}
	return os.NewSyscallError("sendmsg", syscall.Sendmsg(sock, []byte(msg), oob, &syscall.SockaddrUnix{Name: name}, 0))
}

// sameAddr reports whether a bound address is what addr asks for: the same
// port, and the same IP or both the unspecified one.
func sameAddr(bound net.Addr, addr string) bool {
	b, ok := bound.(*net.TCPAddr)
	if !ok {
		return false
	}
	want, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil || want.Port != b.Port {
		return false
	}
	if len(want.IP) == 0 || want.IP.IsUnspecified() {
		return b.IP.IsUnspecified()
	}
	return want.IP.Equal(b.IP)
}

// unwrapListenErr drops the "listen tcp ADDR:" layers, which the callers
// say themselves.
func unwrapListenErr(err error) error {
	if op, ok := err.(*net.OpError); ok && op.Err != nil {
		if se, ok := op.Err.(*os.SyscallError); ok {
			return se.Err
		}
		return op.Err
	}
	return fmt.Errorf("%w", err)
}
