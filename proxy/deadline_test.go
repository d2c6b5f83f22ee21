package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"agent/internal/clock"
)

// The client connection's idle deadline stays in place while a request
// without a body is forwarded (readBy): an answer that takes longer than
// the idle timeout must still reach the client, a body that comes slowly
// must still be read, and the idle connection must still be closed.
func TestIdleDeadlineOutlivedByRequests(t *testing.T) {
	const idle = 200 * time.Millisecond
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(3 * idle)
		}
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, "ok "+r.URL.Path+" "+string(b))
	}))
	defer app.Close()
	p, _ := startProxy(t, Config{IdleTimeout: idle}, clock.Real{})
	p.Ready(0, strings.TrimPrefix(app.URL, "http://"))

	nc, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	br := bufio.NewReader(nc)
	exchange := func(req, want string) {
		t.Helper()
		nc.SetDeadline(time.Now().Add(waitLong))
		if _, err := io.WriteString(nc, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: %v", req, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || string(b) != want {
			t.Fatalf("%q: %s %q %v, want 200 %q", req, resp.Status, b, err, want)
		}
	}
	exchange("GET /a HTTP/1.1\r\nHost: x\r\n\r\n", "ok /a ")
	// Half the idle time later: the deadline set before /a is still in
	// place, and /slow takes three times the idle time.
	time.Sleep(idle / 2)
	exchange("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", "ok /slow ")
	// A body that comes after more than the idle time.
	nc.SetDeadline(time.Now().Add(waitLong))
	io.WriteString(nc, "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
	time.Sleep(2 * idle)
	exchange("body", "ok /b body")

	// Then the connection is idle: open for the idle time, closed after.
	idleFrom := time.Now()
	nc.SetReadDeadline(time.Now().Add(idle / 2))
	if _, err := br.Peek(1); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of an idle connection before its idle timeout: %v, want our own deadline", err)
	}
	nc.SetReadDeadline(time.Now().Add(waitLong))
	if _, err := br.Peek(1); err != io.EOF {
		t.Fatalf("idle connection: %v, want it closed (EOF)", err)
	}
	if d := time.Since(idleFrom); d < idle {
		t.Fatalf("idle connection closed after %s, before the idle timeout %s", d, idle)
	}
}
