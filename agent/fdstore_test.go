package agent

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// storeSocket is a real sd_notify socket: what the agent sends, with the
// descriptors attached.
type storeSocket struct {
	path string
	c    *net.UnixConn
}

func newStoreSocket(t *testing.T) *storeSocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &storeSocket{path: path, c: c}
}

// next returns the next message and the descriptors that came with it.
func (n *storeSocket) next(t *testing.T) (string, []int) {
	t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, 1024)
	n.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, oobn, _, _, err := n.c.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("no sd_notify message: %v", err)
	}
	var fds []int
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range msgs {
		rights, err := syscall.ParseUnixRights(&cm)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, rights...)
	}
	return string(buf[:m]), fds
}

// TestFDStoreStoresAndTakesBack: a socket bound under systemd is sent to
// its store with its name; the next start (a new process, given the socket
// as systemd gives it: fd 3, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES) serves
// on that very socket without binding, and connections made while no
// process listened wait in its backlog.
func TestFDStoreStoresAndTakesBack(t *testing.T) {
	ns := newStoreSocket(t)
	s := &fdStore{log: zerolog.Nop(), notify: ns.path, inherited: map[string]net.Listener{}, stored: map[string]bool{}}
	ln, err := s.listen("proxy", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	msg, fds := ns.next(t)
	if msg != "FDSTORE=1\nFDNAME=proxy" || len(fds) != 1 {
		t.Fatalf("sent %q with %d descriptors", msg, len(fds))
	}
	if !s.has("proxy") {
		t.Fatal("not recorded as stored")
	}
	// This process stops serving; the stored descriptor keeps the socket.
	ln.Close()
	stored := os.NewFile(uintptr(fds[0]), "proxy")
	defer stored.Close()

	// A client connects while nothing accepts: it waits in the backlog.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("connect while no process listens: %v", err)
	}
	defer c.Close()

	// The next start, as systemd makes it: the helper execs itself from a
	// shell, so LISTEN_PID can be its own PID.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" -test.run=TestFDStoreHelper`, os.Args[0])
	cmd.Env = append(os.Environ(), "AGENT_FDSTORE_HELPER="+addr, "LISTEN_FDS=1", "LISTEN_FDNAMES=proxy", "NOTIFY_SOCKET="+ns.path)
	cmd.ExtraFiles = []*os.File{stored}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("next start: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "took "+addr) {
		t.Fatalf("next start did not take the socket over:\n%s", out)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "served by the next start\n" {
		t.Fatalf("the waiting connection got %q, %v", line, err)
	}
}

// TestFDStoreHelper is the next start of TestFDStoreStoresAndTakesBack.
func TestFDStoreHelper(t *testing.T) {
	addr := os.Getenv("AGENT_FDSTORE_HELPER")
	if addr == "" {
		t.Skip("helper process")
	}
	s := newFDStore(zerolog.Nop())
	if os.Getenv("LISTEN_FDS") != "" {
		t.Fatal("LISTEN_FDS left in the environment")
	}
	ln, err := s.listen("proxy", addr)
	if err != nil {
		t.Fatal(err)
	}
	if ln.Addr().String() != addr {
		t.Fatalf("bound %s, want the kept %s", ln.Addr(), addr)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("served by the next start\n"))
	c.Close()
	os.Stdout.WriteString("took " + addr + "\n")
}

// TestFDStoreChangedAddress: a kept socket for another address is dropped
// from the store and a new one bound and stored.
func TestFDStoreChangedAddress(t *testing.T) {
	ns := newStoreSocket(t)
	old, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fdStore{log: zerolog.Nop(), notify: ns.path, inherited: map[string]net.Listener{"proxy": old}, stored: map[string]bool{"proxy": true}}
	ln, err := s.listen("proxy", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() == old.Addr().String() {
		t.Fatal("kept the old address")
	}
	if msg, _ := ns.next(t); msg != "FDSTOREREMOVE=1\nFDNAME=proxy" {
		t.Fatalf("first message %q, want the removal", msg)
	}
	if msg, fds := ns.next(t); msg != "FDSTORE=1\nFDNAME=proxy" || len(fds) != 1 {
		t.Fatalf("second message %q with %d descriptors, want the new socket stored", msg, len(fds))
	}
}

func TestSameAddr(t *testing.T) {
	tests := []struct {
		bound net.TCPAddr
		addr  string
		want  bool
	}{
		{net.TCPAddr{IP: net.IPv6unspecified, Port: 80}, ":80", true},
		{net.TCPAddr{IP: net.IPv4zero, Port: 80}, "0.0.0.0:80", true},
		{net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}, "127.0.0.1:80", true},
		{net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}, ":80", false},
		{net.TCPAddr{IP: net.IPv6unspecified, Port: 80}, ":81", false},
		{net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}, "127.0.0.2:80", false},
	}
	for _, tt := range tests {
		if got := sameAddr(&tt.bound, tt.addr); got != tt.want {
			t.Errorf("sameAddr(%v, %q) = %v", &tt.bound, tt.addr, got)
		}
	}
}
