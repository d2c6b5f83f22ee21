package lbclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
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
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn), bufio.NewReader(c))
			})
		}
	})
	return l.Addr().String()
}

// readRequest reads one request and its body; it reports false at the end
// of the connection.
func readRequest(br *bufio.Reader) bool {
	req, err := http.ReadRequest(br)
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, req.Body)
	return err == nil
}

// answer answers every request of a connection with resp.
func answer(resp string) func(*net.TCPConn, *bufio.Reader) {
	return func(c *net.TCPConn, br *bufio.Reader) {
		for readRequest(br) {
			if _, err := c.Write([]byte(resp)); err != nil {
				return
			}
		}
	}
}

// refusedAddr is a loopback address nothing listens on.
func refusedAddr(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", testkit.Port(t)) }

// How a server ends a connection after its one answer.
const (
	closeIt = iota // close (a FIN)
	resetIt        // close with a RST
	stallIt        // say nothing more until the client gives up
)

// answerOnce is a server that reads a request, writes resp (nothing, part
// of an answer, or garbage) and ends the connection as end says.
func answerOnce(t *testing.T, resp string, end int) func() string {
	return func() string {
		return tcpServer(t, func(c *net.TCPConn, br *bufio.Reader) {
			readRequest(br)
			c.Write([]byte(resp))
			switch end {
			case resetIt:
				c.SetLinger(0)
			case stallIt:
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				br.ReadByte()
			}
		})
	}
}

// failingServer fails a request in one way, counted as want.
type failingServer struct {
	name string
	addr func() string
	want string
}

// misbehaving are servers that fail a request in each way a load balancer
// tells apart.
func misbehaving(t *testing.T) []failingServer {
	const begun = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"
	return []failingServer{
		{"refused", func() string { return refusedAddr(t) }, KindRefused},
		{"connect error", func() string { return "127.0.0.1:70000" }, KindDial},
		{"closed before answering", answerOnce(t, "", closeIt), KindClosed},
		{"reset before answering", answerOnce(t, "", resetIt), KindReset},
		{"cut mid-body", answerOnce(t, begun, closeIt), KindCut},
		{"reset mid-body", answerOnce(t, begun, resetIt), KindCut},
		{"cut mid-chunk", answerOnce(t, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", closeIt), KindCut},
		{"cut in the header", answerOnce(t, "HTTP/1.1 200 OK\r\nContent-Le", closeIt), KindCut},
		{"stalls past the timeout", answerOnce(t, "", stallIt), KindTimeout},
		{"stalls mid-body", answerOnce(t, begun, stallIt), KindTimeout},
		{"garbage", func() string { return tcpServer(t, answer("SSH-2.0-OpenSSH\r\n\r\n")) }, KindBad},
		{"503", func() string {
			return tcpServer(t, answer("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"))
		}, "HTTP 503"},
	}
}

func TestDoCountsEachFailureByItsKind(t *testing.T) {
	for _, tt := range misbehaving(t) {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			timeout := 5 * time.Second // only a stall may take it
			if tt.want == KindTimeout {
				timeout = 300 * time.Millisecond
			}
			c := &Client{Addr: tt.addr(), Timeout: timeout}
			defer c.Close()
			resp, err := c.Do(context.Background(), Request{})
			if got := Kind(resp, err); got != tt.want {
				t.Fatalf("kind %q (%v), want %q", got, err, tt.want)
			}
			if err != nil {
				var e *Error
				if !errors.As(err, &e) || !strings.HasPrefix(err.Error(), tt.want+": ") {
					t.Fatalf("error %q (%T), want an *Error starting %q", err, err, tt.want)
				}
			}
		})
	}
}

func TestDoReadsEveryFraming(t *testing.T) {
	tests := []struct {
		name, resp, body string
		method           string
		keep             bool // whether the connection may carry the next request
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nok 12\n", "ok 12\n", "", true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok \r\n3\r\n12\n\r\n0\r\n\r\n", "ok 12\n", "", true},
		{"close-delimited", "HTTP/1.1 200 OK\r\n\r\nok 12\n", "ok 12\n", "", false},
		{"connection close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 6\r\n\r\nok 12\n", "ok 12\n", "", false},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nok 12\n", "ok 12\n", "", false},
		{"HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", "", http.MethodHead, true},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n", "", "", true},
		{"interim answer first", "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nok 12\n", "ok 12\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			serve := answer(tt.resp)
			if !tt.keep {
				serve = func(c *net.TCPConn, br *bufio.Reader) {
					if readRequest(br) {
						c.Write([]byte(tt.resp)) // and close: the end of the body
					}
				}
			}
			c := &Client{Addr: tcpServer(t, serve), Timeout: 2 * time.Second}
			defer c.Close()
			for i := range 2 {
				resp, err := c.Do(context.Background(), Request{Method: tt.method})
				if err != nil || resp.Status/100 != 2 || string(resp.Body) != tt.body {
					t.Fatalf("request %d: %d %q %v, want 2xx %q", i, resp.Status, resp.Body, err, tt.body)
				}
			}
			if want := map[bool]int{true: 1, false: 2}[tt.keep]; c.Dials() != want {
				t.Fatalf("%d connections for 2 requests, want %d", c.Dials(), want)
			}
		})
	}
}

func TestDoKeepsConnectionsAlive(t *testing.T) {
	var mu sync.Mutex
	conns := map[string]int{} // remote address -> requests
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns[r.RemoteAddr]++
		mu.Unlock()
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s %s %s", r.Method, r.URL.Path, r.Host, r.Header.Get("X-Test"), b)
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	c := &Client{Addr: addr}
	defer c.Close()
	for i := range 5 {
		resp, err := c.Do(context.Background(), Request{
			Method: http.MethodPost, Path: "/p", Host: "example.test",
			Header: http.Header{"X-Test": {"x"}}, Body: []byte("body"),
		})
		if err != nil || resp.Status != 200 || string(resp.Body) != "POST /p example.test x body" {
			t.Fatalf("request %d: %d %q %v", i, resp.Status, resp.Body, err)
		}
		if resp.Reused != (i > 0) {
			t.Fatalf("request %d: reused %v", i, resp.Reused)
		}
	}
	if len(conns) != 1 || c.Dials() != 1 {
		t.Fatalf("5 sequential requests took %d connections (%v)", c.Dials(), conns)
	}

	// Spread over 3 connections, the requests take them in turn.
	clear(conns)
	s := &Client{Addr: addr, Conns: 3}
	defer s.Close()
	for i := range 9 {
		if resp, err := s.Do(context.Background(), Request{}); err != nil || resp.Status != 200 {
			t.Fatalf("request %d: %d %v", i, resp.Status, err)
		}
	}
	if s.Dials() != 3 || len(conns) != 3 {
		t.Fatalf("9 requests spread over 3 connections took %d (%v)", s.Dials(), conns)
	}
	for a, n := range conns {
		if n != 3 {
			t.Fatalf("connection %s carried %d of 9 requests, want 3 (%v)", a, n, conns)
		}
	}
}

// A server that closes a kept connection after each answer, without
// saying so: the next GET on that connection fails, and is not retried on
// a new one. It counts as an ALB would count it, a 502.
func TestDoDoesNotRetryAGETOnAClosedKeptConnection(t *testing.T) {
	closed := make(chan struct{}, 10)
	addr := tcpServer(t, func(c *net.TCPConn, br *bufio.Reader) {
		if readRequest(br) {
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"))
		}
		c.Close()
		closed <- struct{}{}
	})
	c := &Client{Addr: addr, Timeout: 2 * time.Second}
	defer c.Close()
	if resp, err := c.Do(context.Background(), Request{}); err != nil || resp.Status != 200 {
		t.Fatalf("first request: %d %v", resp.Status, err)
	}
	<-closed // the server has closed the kept connection
	resp, err := c.Do(context.Background(), Request{Method: http.MethodGet})
	if got := Kind(resp, err); got != KindClosed {
		t.Fatalf("GET on the closed kept connection: kind %q (%v), want %q", got, err, KindClosed)
	}
	if c.Dials() != 1 {
		t.Fatalf("%d connections: the GET was retried on a new one", c.Dials())
	}
	// The next request dials afresh.
	if resp, err := c.Do(context.Background(), Request{}); err != nil || resp.Status != 200 || resp.Reused {
		t.Fatalf("third request: %d %v reused %v", resp.Status, err, resp.Reused)
	}
	if c.Dials() != 2 {
		t.Fatalf("%d connections, want 2", c.Dials())
	}
}

func TestDoEndsWithItsContext(t *testing.T) {
	c := &Client{Addr: answerOnce(t, "", stallIt)()}
	defer c.Close()

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	resp, err := c.Do(ctx, Request{})
	if got := Kind(resp, err); got != KindCanceled {
		t.Fatalf("canceled: kind %q (%v), want %q", got, err, KindCanceled)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	resp, err = c.Do(ctx, Request{})
	if got := Kind(resp, err); got != KindTimeout || time.Since(t0) > 5*time.Second {
		t.Fatalf("context deadline: kind %q (%v) after %s, want %q at once", got, err, time.Since(t0), KindTimeout)
	}
}
