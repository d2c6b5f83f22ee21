package benchkit

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"agent/internal/testkit"
)

// tcpServer serves each connection with handle on a loopback port until the
// test ends.
func tcpServer(t *testing.T, handle func(c *net.TCPConn, br *bufio.Reader)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c.(*net.TCPConn), bufio.NewReader(c))
			}()
		}
	}()
	return l.Addr().String()
}

// readRequest reads one request's head; it reports false at the end of the
// connection.
func readRequest(br *bufio.Reader) bool {
	_, err := http.ReadRequest(br)
	return err == nil
}

func TestLoadClassifiesFailures(t *testing.T) {
	answer := func(resp string) func(*net.TCPConn, *bufio.Reader) {
		return func(c *net.TCPConn, br *bufio.Reader) {
			for readRequest(br) {
				if _, err := c.Write([]byte(resp)); err != nil {
					return
				}
			}
		}
	}
	refused := func() string { return fmt.Sprintf("127.0.0.1:%d", testkit.Port(t)) } // nothing listens there
	tests := []struct {
		name   string
		addr   func() string
		want   string // the only failure kind; "" = none
		reused bool   // whether connections must be reused
	}{
		{"ok", func() string { return tcpServer(t, answer("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")) }, "", true},
		{"502", func() string { return tcpServer(t, answer("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")) }, "HTTP 502", true},
		{"refused", refused, KindRefused, false},
		{"closed", func() string {
			return tcpServer(t, func(_ *net.TCPConn, br *bufio.Reader) { readRequest(br) })
		}, KindClosed, false},
		{"reset", func() string {
			return tcpServer(t, func(c *net.TCPConn, br *bufio.Reader) {
				readRequest(br)
				c.SetLinger(0) // close sends RST
			})
		}, KindReset, false},
		{"cut", func() string {
			return tcpServer(t, func(c *net.TCPConn, br *bufio.Reader) {
				readRequest(br)
				c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"))
			})
		}, KindCut, false},
		{"headers cut", func() string {
			return tcpServer(t, func(c *net.TCPConn, br *bufio.Reader) {
				readRequest(br)
				c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Le"))
			})
		}, KindCut, false},
		{"timeout", func() string {
			return tcpServer(t, func(c *net.TCPConn, br *bufio.Reader) {
				readRequest(br)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				br.ReadByte() // until the client gives up
			})
		}, KindTimeout, false},
		{"not http", func() string { return tcpServer(t, answer("SSH-2.0-OpenSSH\r\n\r\n")) }, KindBad, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewLoadGen(LoadConfig{Addr: tt.addr(), Paths: []string{"/", "/slow"}, Rate: 100, Timeout: 300 * time.Millisecond})
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			r := g.Run(ctx)
			if r.Total < 5 {
				t.Fatalf("only %d requests sent", r.Total)
			}
			if tt.want == "" {
				if r.Failed != 0 {
					t.Fatalf("%d of %d failed: %s", r.Failed, r.Total, KindsString(r.Kinds))
				}
				if len(r.Latencies) != r.Total {
					t.Fatalf("%d latencies for %d requests", len(r.Latencies), r.Total)
				}
			} else if r.Failed != r.Total || r.Kinds[tt.want] != r.Total {
				t.Fatalf("want all %d failed as %q, got %d failed: %s", r.Total, tt.want, r.Failed, KindsString(r.Kinds))
			}
			if tt.reused && r.Conns >= r.Total {
				t.Fatalf("%d connections for %d requests: keep-alive not used", r.Conns, r.Total)
			}
		})
	}
}

func TestLoadKeepsItsRateWhileTheServerStalls(t *testing.T) {
	// The server answers nothing for the first 300 ms: an open-loop load
	// keeps sending on its ticks meanwhile instead of waiting.
	release := make(chan struct{})
	addr := tcpServer(t, func(c *net.TCPConn, br *bufio.Reader) {
		for readRequest(br) {
			<-release
			if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")); err != nil {
				return
			}
		}
	})
	time.AfterFunc(300*time.Millisecond, func() { close(release) })
	g := NewLoadGen(LoadConfig{Addr: addr, Paths: []string{"/"}, Rate: 100, Timeout: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	r := g.Run(ctx)
	if r.Failed != 0 {
		t.Fatalf("%d failed: %s", r.Failed, KindsString(r.Kinds))
	}
	// 50 ticks in 500 ms; the ones held by the stall each needed a
	// connection of their own.
	if r.Total < 40 || r.Conns < 20 {
		t.Fatalf("%d requests on %d connections: the load waited for the stalled server", r.Total, r.Conns)
	}
}

func TestKindsString(t *testing.T) {
	got := KindsString(map[string]int{"reset": 2, "connection refused": 40, "HTTP 502": 2})
	want := "connection refused 40, HTTP 502 2, reset 2"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if s := fmt.Sprint(KindsString(nil)); s != "" {
		t.Fatalf("no kinds: got %q", s)
	}
}
