package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"agent/internal/clock"
)

// keptConn is a client connection kept alive between requests.
type keptConn struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialKept(t *testing.T, addr string) *keptConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &keptConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (r *keptConn) get(step string) string {
	r.t.Helper()
	r.nc.SetDeadline(time.Now().Add(waitLong))
	io.WriteString(r.nc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		r.t.Fatalf("%s: %v", step, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		r.t.Fatalf("%s: %d close=%v %q", step, resp.StatusCode, resp.Close, b)
	}
	return string(b)
}

func (r *keptConn) upgrade() {
	r.t.Helper()
	r.nc.SetDeadline(time.Now().Add(waitLong))
	fmt.Fprintf(r.nc, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		r.t.Fatalf("handshake: %v %v", resp, err)
	}
}

func (r *keptConn) echo(msg string) {
	r.t.Helper()
	r.nc.SetDeadline(time.Now().Add(waitLong))
	io.WriteString(r.nc, msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r.br, got); err != nil || string(got) != msg {
		r.t.Fatalf("echo %q, %v; want %q", got, err, msg)
	}
}

// dupConn is what an exec keeps of a socket: its descriptor, as a new
// socket of the process.
func dupConn(t *testing.T, fd int) net.Conn {
	t.Helper()
	d, err := syscall.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(d), "dup")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFreezeHandsConnectionsAndTunnelsOver(t *testing.T) {
	app := startNode(t)
	p1, url := startProxy(t, Config{}, clock.Real{})
	p1.Ready(0, app.addr)
	addr := strings.TrimPrefix(url, "http://")
	kept := dialKept(t, addr)
	kept.get("before")
	ws := dialKept(t, addr)
	ws.upgrade()
	ws.echo("before")
	// A client that pipelined its next request before the freeze: its
	// bytes are read and handed over with the connection.
	piped := dialKept(t, addr)
	piped.get("before")

	pk := p1.Freeze(waitLong)
	if pk.Cut != 0 {
		t.Fatalf("cut %d with nothing in flight", pk.Cut)
	}
	conns, tunnels := pk.Handover()
	if len(conns) != 2 || len(tunnels) != 1 {
		t.Fatalf("handed over %d connections and %d tunnels, want 2 and 1", len(conns), len(tunnels))
	}
	// The next program: its own proxy serving the same sockets.
	p2, _ := startProxy(t, Config{}, clock.Real{})
	p2.Ready(0, app.addr)
	var ac []AdoptedConn
	for _, c := range conns {
		ac = append(ac, AdoptedConn{Conn: dupConn(t, c.FD), Buffered: c.Buffered})
	}
	var at []AdoptedTunnel
	for _, tn := range tunnels {
		at = append(at, AdoptedTunnel{Client: dupConn(t, tn.Client), ClientBuffered: tn.ClientBuffered,
			App: dupConn(t, tn.App), AppBuffered: tn.AppBuffered})
	}
	before := p1.Stats().Requests
	p2.Adopt(ac, at)
	kept.get("after")
	piped.get("after")
	ws.echo("after the hand-over")
	if got := p2.Stats().Requests; got != 2 {
		t.Errorf("the next program forwarded %d requests, want 2", got)
	}
	if got := p1.Stats().Requests; got != before {
		t.Errorf("the frozen proxy forwarded %d more requests", got-before)
	}
}

func TestThawServesOn(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	addr := strings.TrimPrefix(url, "http://")
	kept := dialKept(t, addr)
	kept.get("before")
	ws := dialKept(t, addr)
	ws.upgrade()
	ws.echo("before")
	pk := p.Freeze(waitLong)
	if conns, tunnels := pk.Handover(); len(conns) != 1 || len(tunnels) != 1 {
		t.Fatalf("parked %d connections and %d tunnels, want 1 and 1", len(conns), len(tunnels))
	}
	// A request sent while frozen waits in the socket.
	kept.nc.SetDeadline(time.Now().Add(waitLong))
	io.WriteString(kept.nc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	p.Thaw(pk)
	resp, err := http.ReadResponse(kept.br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the request sent while frozen: %v %v", resp, err)
	}
	resp.Body.Close()
	kept.get("after")
	ws.echo("after the thaw")
}
