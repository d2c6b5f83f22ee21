package probe

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/canned"
	"agent/internal/lifecycle"
	"agent/internal/testkit"
)

const healthPath = "/health.html"

// startHealth runs a health server on a free loopback port until the test
// ends, and checks that Run returns nil when cancelled.
func startHealth(t *testing.T, tune func(*HealthServer)) (*HealthServer, string) {
	t.Helper()
	h := NewHealthServer("127.0.0.1:0", healthPath, zerolog.New(zerolog.NewTestWriter(t)))
	if tune != nil {
		tune(h)
	}
	if err := h.Listen(); err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, h.Run)
	return h, "http://" + h.Addr().String()
}

func healthTestClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second}
}

func healthGet(t *testing.T, c *http.Client, method, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// healthAllowedHeaders are all the header fields the health server may send.
var healthAllowedHeaders = map[string]bool{
	"Content-Type": true, "Content-Length": true, "Cache-Control": true,
	"X-Content-Type-Options": true, "Date": true, "Allow": true,
}

func checkHealthHeaders(t *testing.T, resp *http.Response, body string) {
	t.Helper()
	for k := range resp.Header {
		if !healthAllowedHeaders[k] {
			t.Errorf("unexpected header %s: %q", k, resp.Header.Get(k))
		}
	}
	if got := resp.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", got)
	}
	if got, want := resp.Header.Get("Content-Length"), strconv.Itoa(len(body)); got != want {
		t.Errorf("Content-Length = %q, want %s", got, want)
	}
}

func TestHealthStates(t *testing.T) {
	h, base := startHealth(t, nil)
	c := healthTestClient()

	t.Run("initial", func(t *testing.T) {
		resp, body := healthGet(t, c, http.MethodGet, base+healthPath)
		if resp.StatusCode != http.StatusServiceUnavailable || body != "starting\n" {
			t.Errorf("before Set: %d %q, want 503 \"starting\\n\"", resp.StatusCode, body)
		}
	})

	tests := []struct {
		state   string
		serving bool
		code    int
		ctype   string
		body    string
	}{
		{"starting", false, 503, "text/plain; charset=utf-8", "starting\n"},
		{"running", true, 200, "text/html; charset=utf-8", canned.Page},
		{"running", false, 503, "text/plain; charset=utf-8", "running\n"}, // alive, not ready
		{"backoff", false, 503, "text/plain; charset=utf-8", "backoff\n"},
		{"stopping", false, 503, "text/plain; charset=utf-8", "stopping\n"},
		{"stopped", false, 503, "text/plain; charset=utf-8", "stopped\n"},
		{"failed", false, 503, "text/plain; charset=utf-8", "failed\n"},
		{"draining", false, 503, "text/plain; charset=utf-8", "draining\n"},
		{"odd word\r\nX-Evil: 1", false, 503, "text/plain; charset=utf-8", "oddwordX-Evil:1\n"},
		{"running", true, 200, "text/html; charset=utf-8", canned.Page}, // and back
	}
	for _, tt := range tests {
		t.Run(tt.state+"/"+strconv.FormatBool(tt.serving), func(t *testing.T) {
			h.Set(lifecycle.State(tt.state), tt.serving)
			resp, body := healthGet(t, c, http.MethodGet, base+healthPath)
			if resp.StatusCode != tt.code {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.code)
			}
			if body != tt.body {
				t.Errorf("body %q, want %q", body, tt.body)
			}
			if got := resp.Header.Get("Content-Type"); got != tt.ctype {
				t.Errorf("Content-Type %q, want %q", got, tt.ctype)
			}
			checkHealthHeaders(t, resp, body)

			head, hbody := healthGet(t, c, http.MethodHead, base+healthPath)
			if head.StatusCode != tt.code || hbody != "" {
				t.Errorf("HEAD: %d %q, want %d and no body", head.StatusCode, hbody, tt.code)
			}
			if got, want := head.Header.Get("Content-Length"), strconv.Itoa(len(tt.body)); got != want {
				t.Errorf("HEAD Content-Length %q, want %s", got, want)
			}
			if got := head.Header.Get("Content-Type"); got != tt.ctype {
				t.Errorf("HEAD Content-Type %q, want %q", got, tt.ctype)
			}
		})
	}
}

// TestHealthHeadOnTheWire checks at the byte level that HEAD carries no body:
// a HEAD followed by a GET on one connection must parse as two responses.
func TestHealthHeadOnTheWire(t *testing.T) {
	h, _ := startHealth(t, nil)
	h.Set("running", true)
	conn, err := net.Dial("tcp", h.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(conn, "HEAD /health.html HTTP/1.1\r\nHost: t\r\n\r\nGET /health.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(conn)
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d", method, resp.StatusCode)
		}
		if method == http.MethodGet && string(b) != canned.Page {
			t.Errorf("GET after HEAD: body %q", b)
		}
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("trailing bytes after the two responses: %q", rest)
	}
}

func TestHealthOtherPathsAndMethods(t *testing.T) {
	h, base := startHealth(t, nil)
	h.Set("running", true)
	c := healthTestClient()

	for _, path := range []string{"/", "/health", "/health.html/", "/HEALTH.HTML", "/health.htmlx", "/x/../health.htm"} {
		t.Run("path"+path, func(t *testing.T) {
			resp, body := healthGet(t, c, http.MethodGet, base+path)
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s: %d, want 404", path, resp.StatusCode)
			}
			checkHealthHeaders(t, resp, body)
		})
	}
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions, "BREW"} {
		t.Run("method/"+method, func(t *testing.T) {
			resp, body := healthGet(t, c, method, base+healthPath)
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("%s: %d, want 405", method, resp.StatusCode)
			}
			if got := resp.Header.Get("Allow"); got != "GET, HEAD" {
				t.Errorf("Allow = %q, want \"GET, HEAD\"", got)
			}
			checkHealthHeaders(t, resp, body)
		})
	}
	t.Run("query string", func(t *testing.T) {
		resp, _ := healthGet(t, c, http.MethodGet, base+healthPath+"?from=alb")
		if resp.StatusCode != 200 {
			t.Errorf("with query: %d, want 200", resp.StatusCode)
		}
	})
}

func TestHealthHeaderTooLarge(t *testing.T) {
	_, base := startHealth(t, nil)
	req, _ := http.NewRequest(http.MethodGet, base+healthPath, nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := healthTestClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header: %d, want 431", resp.StatusCode)
	}
}

func TestHealthListenBusyPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()

	h := NewHealthServer(addr, healthPath, zerolog.Nop())
	err = h.Listen()
	if err == nil {
		t.Fatal("Listen on a busy port succeeded")
	}
	if want := "health: listen " + addr + ": address already in use"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error %v is not EADDRINUSE", err)
	}
	if err := h.Run(context.Background()); err == nil {
		t.Error("Run on a busy port returned nil")
	}
}

func TestHealthRunStops(t *testing.T) {
	h := NewHealthServer("127.0.0.1:0", healthPath, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }() // Run binds by itself
	var addr string
	testkit.Eventually(t, 30*time.Second, "health server bound", func() bool {
		if a := h.Addr(); a != nil {
			addr = a.String()
			return true
		}
		return false
	})
	// An idle keep-alive connection must not hold up the shutdown.
	c := healthTestClient()
	healthGet(t, c, http.MethodGet, "http://"+addr+healthPath)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Error("still accepting after Run returned")
	}
}

// TestHealthSlowClients holds 500 connections that send half a request
// header and stop; a normal check must still be answered, and the server
// must drop the slow ones after its header timeout.
func TestHealthSlowClients(t *testing.T) {
	h, base := startHealth(t, nil)
	h.Set("running", true)

	const n = 500
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", h.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, "GET /health.html HTTP/1.1\r\nHost: t\r\nX-Slow: "); err != nil {
			t.Fatal(err)
		}
	}

	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	testkit.Eventually(t, 60*time.Second, "a normal GET answered beside 500 slow clients", func() bool {
		resp, err := c.Get(base + healthPath)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	// Each slow connection is closed by the server (header timeout): a read
	// ends with EOF or a reset rather than hanging.
	for i, conn := range conns {
		conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		_, err := io.ReadAll(conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("slow connection %d still open after 60s", i)
		}
	}
}

// TestHealthConcurrentSet publishes states from many goroutines while
// clients read; every answer must be one whole, consistent response.
func TestHealthConcurrentSet(t *testing.T) {
	h, base := startHealth(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	states := lifecycle.States()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				s := states[rand.IntN(len(states))]
				h.Set(s, s == "running" && rand.IntN(2) == 0)
				runtime.Gosched() // leave the two cores to the clients too
			}
		}()
	}
	known := map[string]bool{}
	for _, s := range states {
		known[string(s)+"\n"] = true
	}
	var cwg sync.WaitGroup
	errs := make(chan string, 100)
	for range 4 {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			c := healthTestClient()
			for range 200 {
				resp, err := c.Get(base + healthPath)
				if err != nil {
					errs <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				body := string(b)
				ok := resp.Header.Get("Content-Length") == strconv.Itoa(len(body))
				switch resp.StatusCode {
				case 200:
					ok = ok && body == canned.Page && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html")
				case 503:
					ok = ok && known[body] && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain")
				default:
					ok = false
				}
				if !ok {
					errs <- resp.Status + " " + strconv.Quote(body)
					return
				}
			}
		}()
	}
	cwg.Wait()
	cancel()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error("inconsistent answer:", e)
	}
}

// healthBenchWriter is a minimal http.ResponseWriter that keeps nothing, so the
// benchmark measures the handler alone.
type healthBenchWriter struct {
	h    http.Header
	code int
	n    int
}

func (w *healthBenchWriter) Header() http.Header         { return w.h }
func (w *healthBenchWriter) WriteHeader(code int)        { w.code = code }
func (w *healthBenchWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

func BenchmarkHealthHandler(b *testing.B) {
	h := NewHealthServer("127.0.0.1:0", healthPath, zerolog.Nop())
	h.Set("running", true)
	req, _ := http.NewRequest(http.MethodGet, "http://t"+healthPath, nil)
	w := &healthBenchWriter{h: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, req)
	}
	if w.code != 200 {
		b.Fatalf("status %d", w.code)
	}
}

func BenchmarkHealthLoopback(b *testing.B) {
	h := NewHealthServer("127.0.0.1:0", healthPath, zerolog.Nop())
	h.Set("running", true)
	if err := h.Listen(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	defer func() { cancel(); <-done }()

	url := "http://" + h.Addr().String() + healthPath
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

// keepAliveClient opens a connection to addr, makes one GET of the health
// page on it and leaves it open and silent, as an idle keep-alive client.
func keepAliveClient(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET /health.html HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
		c.Close()
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		t.Fatalf("GET on keep-alive connection: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetReadDeadline(time.Time{})
	return c
}

// TestHealthIdleKeepAliveFlood holds 1,100 idle keep-alive connections (one
// GET each, then silence), more than the connection cap. The server must
// close idle connections, oldest first, to make room, so every one of them
// got its answer and a fresh check is answered at once rather than after
// the 65 s idle timeout.
func TestHealthIdleKeepAliveFlood(t *testing.T) {
	h, base := startHealth(t, nil)
	h.Set("running", true)
	addr := h.Addr().String()

	const n = 1100
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		conns = append(conns, keepAliveClient(t, addr))
	}

	// A fresh check, as the load balancer makes it: a new connection and
	// its 5 s timeout, well below the 65 s the idle ones could hold a slot.
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 3 {
		resp, err := c.Get(base + healthPath)
		if err != nil {
			t.Fatalf("fresh check %d beside %d idle connections: %v", i, n, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("fresh check %d: %d, want 200", i, resp.StatusCode)
		}
	}

	// The oldest idle connection was closed by the server: a read ends
	// (EOF or reset) instead of waiting. The newest is still open.
	oldest := conns[0]
	oldest.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := oldest.Read(make([]byte, 1)); err == nil {
		t.Error("oldest idle connection: read data, want it closed")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("oldest idle connection still open after the cap was passed")
	}
	newest := conns[len(conns)-1]
	if _, err := io.WriteString(newest, "GET /health.html HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
		t.Fatalf("newest connection: %v", err)
	}
	newest.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(newest), nil)
	if err != nil {
		t.Fatalf("newest idle connection was closed, want it kept: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("second GET on newest connection: %d, want 200", resp.StatusCode)
	}
}

// TestHealthStalledConnsMakeRoom fills every slot with connections that
// never finish a request (some send nothing, some half a header) and checks
// that a fresh check is still answered: at the cap the server closes the
// connection stalled longest instead of waiting for its header timeout.
func TestHealthStalledConnsMakeRoom(t *testing.T) {
	// A header timeout far above the client's: only closing a stalled
	// connection can free a slot in time.
	h, base := startHealth(t, func(h *HealthServer) { h.maxConns, h.readHeaderTimeout = 16, 5*time.Minute })
	h.Set("running", true)
	addr := h.Addr().String()

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 16 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if i%2 == 1 {
			io.WriteString(c, "GET /health.html HTTP/1.1\r\nX-Slow: ")
		}
	}
	testkit.Eventually(t, 30*time.Second, "all slots taken", func() bool { return h.openConns() == 16 })

	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(base + healthPath)
	if err != nil {
		t.Fatalf("fresh check with every slot stalled: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("fresh check: %d, want 200", resp.StatusCode)
	}
}

// BenchmarkHealthFreshCheck measures a fresh check (a new connection, one
// GET, closed) with no other client, and while 1,100 idle keep-alive
// connections hold every slot, so that each check makes the server close
// the oldest idle one first.
func BenchmarkHealthFreshCheck(b *testing.B) {
	b.Run("alone", func(b *testing.B) { benchmarkFreshCheck(b, 0) })
	b.Run("beside-1100-idle", func(b *testing.B) { benchmarkFreshCheck(b, 1100) })
}

func benchmarkFreshCheck(b *testing.B, idle int) {
	h := NewHealthServer("127.0.0.1:0", healthPath, zerolog.Nop())
	if err := h.Listen(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	defer func() { cancel(); <-done }()
	h.Set("running", true)
	addr := h.Addr().String()

	var conns []net.Conn
	for range idle {
		conns = append(conns, keepAliveClient(b, addr))
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://" + addr + healthPath
	b.ResetTimer()
	for range b.N {
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
		if idle == 0 {
			continue
		}
		// Keep the cap full: a new idle connection for the one closed.
		b.StopTimer()
		conns = append(conns, keepAliveClient(b, addr))
		b.StartTimer()
	}
}
