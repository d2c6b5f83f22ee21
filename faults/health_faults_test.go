package faults

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// healthAddr is host:port of the agent's health page.
func (r *agentRun) healthAddr() string {
	u, err := url.Parse(r.health)
	if err != nil {
		r.t.Fatal(err)
	}
	return u.Host
}

// freshChecks makes n fresh health checks and fails the test unless all
// answer 200; it returns the slowest.
func (r *agentRun) freshChecks(n int) time.Duration {
	r.t.Helper()
	var slowest time.Duration
	for i := range n {
		code, body, took, err := r.healthCheck()
		if err != nil || code != 200 {
			r.t.Fatalf("fresh check %d: %d %q %v, want 200", i, code, body, err)
		}
		slowest = max(slowest, took)
	}
	return slowest
}

func TestHealthIdleKeepAliveFlood(t *testing.T) {
	row := newRow(t, "health page: 1,100 idle keep-alive connections")
	t.Parallel()
	r := newAgentRun(t, appSpec{})
	r.start(nil)
	r.waitHealthy(60 * time.Second)
	addr := r.healthAddr()

	const n = 1100
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		io.WriteString(c, "GET /health.html HTTP/1.1\r\nHost: lb\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("GET on connection %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.SetReadDeadline(time.Time{})
	}
	slowest := r.freshChecks(20)
	closed := 0
	for _, c := range conns[:200] {
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				closed++
			}
		}
	}
	row.set(fmt.Sprintf("all 1,100 answered; oldest idle ones closed at the cap (%d of the first 200 closed); 20 fresh checks 200, slowest %s", closed, ms(slowest)), "—", "0 of 20 fresh checks")
}

func TestHealthHugeHeaderAndBody(t *testing.T) {
	row := newRow(t, "health page: 64 KiB header, 10 MB body")
	t.Parallel()
	r := newAgentRun(t, appSpec{})
	r.start(nil)
	r.waitHealthy(60 * time.Second)
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

	req, _ := http.NewRequest(http.MethodGet, r.health, nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("64 KiB header: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header: %d, want 431", resp.StatusCode)
	}
	headerCode := resp.StatusCode

	before := r.mustStatus().Agent.RSSBytes
	body := bytes.Repeat([]byte("b"), 10<<20)
	var outcomes []string
	for _, method := range []string{http.MethodPost, http.MethodGet} {
		req, _ = http.NewRequest(method, r.health, bytes.NewReader(body))
		resp, err = c.Do(req)
		if err != nil {
			// The server answers and closes without reading 10 MB: the
			// client sees a reset while still sending.
			t.Logf("%s with 10 MB body: %v", method, err)
			outcomes = append(outcomes, method+": connection closed unread")
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if method == http.MethodPost && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST with 10 MB body: %d, want 405", resp.StatusCode)
		}
		outcomes = append(outcomes, fmt.Sprintf("%s: %d", method, resp.StatusCode))
	}
	slowest := r.freshChecks(10)
	after := r.mustStatus().Agent.RSSBytes
	row.set(fmt.Sprintf("header: %d; 10 MB body (%s), not read (agent RSS %.1f → %.1f MB); fresh checks 200, slowest %s", headerCode, strings.Join(outcomes, ", "), float64(before)/(1<<20), float64(after)/(1<<20), ms(slowest)), "—", "0 of 10 fresh checks")
}

func TestHealthMalformedHTTP(t *testing.T) {
	row := newRow(t, "health page: malformed HTTP")
	t.Parallel()
	r := newAgentRun(t, appSpec{})
	r.start(nil)
	r.waitHealthy(60 * time.Second)
	inputs := []string{
		"GARBAGE\r\n\r\n",
		"GET /health.html HTTP/9.9\r\nHost: x\r\n\r\n",
		"GET /health.html HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
		"GET /health.html HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
		"GET /health.html HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
		"\x00\xff\x00\xff\r\n\r\n",
		"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
	}
	answers := map[string]int{}
	for _, in := range inputs {
		c, err := net.Dial("tcp", r.healthAddr())
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, in)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		reply, err := io.ReadAll(c)
		c.Close()
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("%q: connection neither answered nor closed in 10s", in)
			continue
		}
		status, _, _ := strings.Cut(string(reply), "\r\n")
		if strings.Contains(string(reply), "passwd") || strings.Contains(string(reply), "root:") {
			t.Errorf("%q: reply reveals too much: %q", in, reply)
		}
		answers[status]++
	}
	slowest := r.freshChecks(10)
	var parts []string
	for s, n := range answers {
		if s == "" {
			s = "closed"
		}
		parts = append(parts, fmt.Sprintf("%d× %s", n, s))
	}
	row.set(fmt.Sprintf("%d inputs: %s; agent fine, fresh checks 200, slowest %s", len(inputs), strings.Join(sorted(parts), ", "), ms(slowest)), "—", "0 of 10 fresh checks")
}
