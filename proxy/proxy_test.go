package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/clock"
	"agent/internal/testkit"
)

const waitLong = 20 * time.Second

// nodeApp is a real node process running testdata/app.js.
type nodeApp struct {
	cmd   *exec.Cmd
	addr  string
	lines chan string
	done  chan struct{}
}

// startNode starts testdata/app.js with env added and waits for it to listen.
func startNode(t *testing.T, env ...string) *nodeApp {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	script, err := filepath.Abs("testdata/app.js")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, script)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &nodeApp{cmd: cmd, lines: make(chan string, 100), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case a.lines <- sc.Text():
			default:
			}
		}
		cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-a.done
	})
	line := a.line(t)
	port, ok := strings.CutPrefix(line, "listening ")
	if !ok {
		t.Fatalf("node said %q, want listening PORT", line)
	}
	a.addr = "127.0.0.1:" + port
	return a
}

// line returns the app's next line of output.
func (a *nodeApp) line(t *testing.T) string {
	t.Helper()
	select {
	case l := <-a.lines:
		return l
	case <-a.done:
		t.Fatal("node exited")
	case <-time.After(waitLong):
		t.Fatal("no output from node")
	}
	return ""
}

// signal sends sig to the app and waits for it to exit.
func (a *nodeApp) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	a.cmd.Process.Signal(sig)
	select {
	case <-a.done:
	case <-time.After(waitLong):
		t.Fatal("node did not exit")
	}
}

func (a *nodeApp) pid() string { return fmt.Sprint(a.cmd.Process.Pid) }

// startProxy runs a proxy until the test ends.
func startProxy(t *testing.T, cfg Config, clk clock.Clock) (*Proxy, string) {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	p := New(cfg, zerolog.Nop(), clk)
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return p, "http://" + p.Addr().String()
}

func newClient() *http.Client {
	return &http.Client{
		Timeout:   waitLong,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
	}
}

// get does a GET and returns the status and body.
func get(t *testing.T, c *http.Client, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

type result struct {
	code int
	body string
	hdr  http.Header
	err  error
}

// getAsync does a GET in the background.
func getAsync(c *http.Client, url string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		resp, err := c.Get(url)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		ch <- result{code: resp.StatusCode, body: string(b), hdr: resp.Header, err: err}
	}()
	return ch
}

func await(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("request failed: %v", r.err)
		}
		return r
	case <-time.After(waitLong):
		t.Fatal("request did not finish")
	}
	return result{}
}

func TestForwardsAndCounts(t *testing.T) {
	app := startNode(t)
	var observed atomic.Int64
	p, url := startProxy(t, Config{Observe: func(code int, d time.Duration) {
		if code == 200 && d >= 0 {
			observed.Add(1)
		}
	}}, clock.Real{})
	p.Ready(0, app.addr)
	c := newClient()
	for i := 0; i < 20; i++ {
		code, body, _ := get(t, c, url+"/")
		if code != 200 || body != "hello "+app.pid()+"\n" {
			t.Fatalf("got %d %q", code, body)
		}
	}
	code, _, _ := get(t, c, url+"/nope")
	if code != 404 {
		t.Fatalf("app's 404 came back as %d", code)
	}
	s := p.Stats()
	if s.Requests != 21 || s.Failed != 0 || s.Replayed != 0 || s.InFlight != 0 || s.Held != 0 {
		t.Fatalf("stats %+v", s)
	}
	if observed.Load() != 20 {
		t.Fatalf("observed %d 200s, want 20", observed.Load())
	}
}

func TestHoldReleasedByReady(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	c := newClient()
	ch := getAsync(c, url+"/")
	testkit.Eventually(t, waitLong, "a held request", func() bool { return p.Stats().Held == 1 })
	p.Ready(0, app.addr)
	r := await(t, ch)
	if r.code != 200 || !strings.HasPrefix(r.body, "hello") {
		t.Fatalf("held request got %d %q", r.code, r.body)
	}
	if s := p.Stats(); s.Held != 0 || s.Failed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestHoldExpiresTo503(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	p, url := startProxy(t, Config{Hold: 30 * time.Second}, clk)
	ch := getAsync(newClient(), url+"/")
	testkit.Eventually(t, waitLong, "a held request", func() bool { return p.Stats().Held == 1 })
	// The reaper's ticker and the held request's timer.
	if !clk.WaitForWaiters(2, waitLong) {
		t.Fatal("hold timer not armed")
	}
	clk.Advance(29 * time.Second)
	select {
	case r := <-ch:
		t.Fatalf("answered before the hold ended: %+v", r)
	default:
	}
	clk.Advance(time.Second)
	r := await(t, ch)
	if r.code != 503 || r.hdr.Get("Retry-After") == "" {
		t.Fatalf("got %d, Retry-After %q; want 503 with Retry-After", r.code, r.hdr.Get("Retry-After"))
	}
	if ct := r.hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || r.body != "service unavailable\n" {
		t.Fatalf("error reply %q %q", ct, r.body)
	}
	if s := p.Stats(); s.Failed != 1 || s.Held != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDownAnswers503AtOnce(t *testing.T) {
	p, url := startProxy(t, Config{Hold: time.Hour}, clock.Real{})
	c := newClient()
	held := getAsync(c, url+"/")
	testkit.Eventually(t, waitLong, "a held request", func() bool { return p.Stats().Held == 1 })
	p.Down()
	if r := await(t, held); r.code != 503 {
		t.Fatalf("held request got %d after Down, want 503", r.code)
	}
	code, body, hdr := get(t, c, url+"/x")
	if code != 503 || hdr.Get("Retry-After") == "" || body != "service unavailable\n" {
		t.Fatalf("after Down: %d %q", code, body)
	}
	if s := p.Stats(); s.Failed != 2 {
		t.Fatalf("failed = %d, want 2", s.Failed)
	}
}

func TestHealthPath(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	p, url := startProxy(t, Config{HealthPath: "/health.html", Hold: 30 * time.Second}, clk)
	c := newClient()
	check := func(method string, wantCode int, wantBody string) {
		t.Helper()
		req, _ := http.NewRequest(method, url+"/health.html", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != wantCode || string(b) != wantBody {
			t.Fatalf("%s: %d %q, want %d %q", method, resp.StatusCode, b, wantCode, wantBody)
		}
		if resp.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("Cache-Control %q", resp.Header.Get("Cache-Control"))
		}
	}
	check("GET", 503, "starting\n")
	p.Ready(0, "127.0.0.1:1") // nobody there: the health answer never asks the app
	check("GET", 200, "ready\n")
	check("HEAD", 200, "")
	check("POST", 405, "method not allowed\n")
	p.NotReady(0)
	check("GET", 200, "restarting\n")
	clk.Advance(29 * time.Second)
	check("GET", 200, "restarting\n")
	clk.Advance(time.Second)
	check("GET", 503, "restarting\n")
	p.Ready(0, "127.0.0.1:1")
	check("GET", 200, "ready\n")
	p.Down()
	check("GET", 503, "down\n")
	if s := p.Stats(); s.Requests != 0 {
		t.Fatalf("health checks counted as requests: %+v", s)
	}
}

func TestSSEStreamedEventByEvent(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	c := newClient()
	resp, err := c.Get(url + "/sse")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	readEvent := func() string {
		t.Helper()
		ch := make(chan string, 1)
		go func() {
			var b strings.Builder
			for {
				l, err := br.ReadString('\n')
				b.WriteString(l)
				if err != nil || l == "\n" {
					break
				}
			}
			ch <- b.String()
		}()
		select {
		case e := <-ch:
			return e
		case <-time.After(waitLong):
			t.Fatal("event not delivered: the stream is buffered")
		}
		return ""
	}
	// The second event is sent only after the first one has arrived.
	if e := readEvent(); e != "data: one\n\n" {
		t.Fatalf("first event %q", e)
	}
	if code, _, _ := get(t, c, url+"/sse-next"); code != 200 {
		t.Fatal("sse-next failed")
	}
	if e := readEvent(); e != "data: two\n\n" {
		t.Fatalf("second event %q", e)
	}
}

func TestWebSocketUpgradeEcho(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitLong))
	keyRaw := make([]byte, 16)
	rand.Read(keyRaw)
	key := base64.StdEncoding.EncodeToString(keyRaw)
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n", key)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("handshake: %d %v", resp.StatusCode, resp.Header)
	}
	for _, msg := range []string{"hello", "over the proxy", strings.Repeat("x", 100000)} {
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != msg {
			t.Fatalf("echo %q, want %q", got[:min(len(got), 20)], msg[:min(len(msg), 20)])
		}
	}
	// An upgraded connection does not hold up a drain.
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if n := p.Gate(ctx, 0); n != 0 {
		t.Fatalf("Gate left %d in flight with only a WebSocket open", n)
	}
}

func TestPOSTNotReplayedAfterCrash(t *testing.T) {
	seen := filepath.Join(t.TempDir(), "seen")
	app := startNode(t, "SEEN_FILE="+seen)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	c := newClient()
	resp, err := c.Post(url+"/crash", "text/plain", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || string(b) != "bad gateway\n" {
		t.Fatalf("got %d %q, want 502", resp.StatusCode, b)
	}
	<-app.done
	p.NotReady(0)
	next := startNode(t, "SEEN_FILE="+seen)
	p.Ready(0, next.addr)
	if code, _, _ := get(t, c, url+"/"); code != 200 {
		t.Fatalf("next process answered %d", code)
	}
	data, _ := os.ReadFile(seen)
	if n := strings.Count(string(data), "POST /crash"); n != 1 {
		t.Fatalf("the app saw the POST %d times:\n%s", n, data)
	}
	if s := p.Stats(); s.Replayed != 0 || s.Failed != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestGETReplayedAfterSIGKILL(t *testing.T) {
	app := startNode(t, "HANG=1")
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	c := newClient()
	ch := getAsync(c, url+"/hang")
	if l := app.line(t); l != "hang" {
		t.Fatalf("app said %q", l)
	}
	app.stop(t, syscall.SIGKILL)
	p.NotReady(0)
	testkit.Eventually(t, waitLong, "the replay to be held", func() bool { return p.Stats().Held == 1 })
	next := startNode(t)
	p.Ready(0, next.addr)
	r := await(t, ch)
	if r.code != 200 || r.body != "answered "+next.pid()+"\n" {
		t.Fatalf("replayed GET got %d %q", r.code, r.body)
	}
	if s := p.Stats(); s.Replayed != 1 || s.Failed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// loop runs workers doing GET path until stop is closed and returns the
// failures and the count of answers by body prefix.
func loop(t *testing.T, url string, workers int, stop <-chan struct{}, ok *atomic.Int64) (wait func() []string) {
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	c := newClient()
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get(url)
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%d %q %v", resp.StatusCode, b, err))
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		}()
	}
	return func() []string {
		wg.Wait()
		return failures
	}
}

func TestGateDrainsBeforeStop(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	stop := make(chan struct{})
	var ok atomic.Int64
	wait := loop(t, url+"/slow?ms=30", 8, stop, &ok)
	testkit.Eventually(t, waitLong, "traffic", func() bool { return ok.Load() >= 50 })

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if n := p.Gate(ctx, 0); n != 0 {
		t.Fatalf("Gate gave up with %d in flight", n)
	}
	if s := p.Stats(); s.InFlight != 0 {
		t.Fatalf("in flight after Gate: %d", s.InFlight)
	}
	app.stop(t, syscall.SIGTERM) // the app dies at once on SIGTERM
	testkit.Eventually(t, waitLong, "held requests", func() bool { return p.Stats().Held > 0 })
	next := startNode(t)
	p.Ready(0, next.addr)
	before := ok.Load()
	testkit.Eventually(t, waitLong, "traffic to the new process", func() bool { return ok.Load() >= before+50 })
	close(stop)
	if f := wait(); len(f) > 0 {
		t.Fatalf("%d failed requests across a gated restart, first: %s", len(f), f[0])
	}
	if s := p.Stats(); s.Failed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSwitchLosesNothing(t *testing.T) {
	a := startNode(t)
	b := startNode(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, a.addr)
	stop := make(chan struct{})
	var ok atomic.Int64
	wait := loop(t, url+"/slow?ms=20", 8, stop, &ok)
	testkit.Eventually(t, waitLong, "traffic", func() bool { return ok.Load() >= 50 })

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if n := p.Switch(ctx, 0, b.addr); n != 0 {
		t.Fatalf("Switch gave up with %d in flight", n)
	}
	a.stop(t, syscall.SIGTERM)
	before := ok.Load()
	testkit.Eventually(t, waitLong, "traffic to the new process", func() bool { return ok.Load() >= before+50 })
	close(stop)
	if f := wait(); len(f) > 0 {
		t.Fatalf("%d failed requests across a switch, first: %s", len(f), f[0])
	}
	code, body, _ := get(t, newClient(), url+"/")
	if code != 200 || body != "hello "+b.pid()+"\n" {
		t.Fatalf("after switch: %d %q", code, body)
	}
	if s := p.Stats(); s.Failed != 0 || s.Replayed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestForwardedHeaders(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	_, port, _ := net.SplitHostPort(p.Addr().String())

	send := func(extra string) map[string]string {
		t.Helper()
		conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(waitLong))
		fmt.Fprintf(conn, "GET /headers HTTP/1.1\r\nHost: shop.example.com\r\n%s\r\n", extra)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
		return h
	}

	h := send("X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n" +
		"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: x\r\nX-End: kept\r\n")
	want := map[string]string{
		"host": "shop.example.com", "x-forwarded-for": "203.0.113.7, 127.0.0.1",
		"x-forwarded-proto": "https", "x-forwarded-port": "443", "x-end": "kept",
	}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("%s = %q, want %q", k, h[k], v)
		}
	}
	for _, k := range []string{"x-hop", "keep-alive", "proxy-authorization"} {
		if _, ok := h[k]; ok {
			t.Errorf("hop-by-hop %s reached the app", k)
		}
	}

	h = send("")
	want = map[string]string{"x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "http", "x-forwarded-port": port}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("without ALB headers: %s = %q, want %q", k, h[k], v)
		}
	}
}

func TestLargeUploadStreamed(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	data := make([]byte, 10<<20)
	rand.Read(data)
	sum := sha256.Sum256(data)
	want := fmt.Sprintf("%d %s", len(data), hex.EncodeToString(sum[:]))
	c := newClient()

	t.Run("content-length", func(t *testing.T) {
		resp, err := c.Post(url+"/upload", "application/octet-stream", bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want {
			t.Fatalf("app got %q, want %q", b, want)
		}
	})
	t.Run("chunked", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			for off := 0; off < len(data); off += 64 << 10 {
				pw.Write(data[off:min(off+64<<10, len(data))])
			}
			pw.Close()
		}()
		resp, err := c.Post(url+"/upload", "application/octet-stream", pr)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want {
			t.Fatalf("app got %q, want %q", b, want)
		}
	})
}

// TestIdleKeepAliveOutlivesNode keeps one client connection idle until the
// proxy's idle connection to the app is gone (closed by the proxy after
// UpstreamIdle, or at the latest by Node after its 5 s keep-alive timeout),
// then reuses it: the proxy must not send the request on the dead
// connection (which would need a replay, or fail), and the client's
// connection must still be open.
func TestIdleKeepAliveOutlivesNode(t *testing.T) {
	if testing.Short() {
		t.Skip("waits about 4 s for the idle connection to the app to close")
	}
	app := startNode(t, "LOG_CONNS=1")
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	ask := func() {
		t.Helper()
		conn.SetDeadline(time.Now().Add(waitLong))
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reused connection: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "hello") {
			t.Fatalf("got %d %q", resp.StatusCode, b)
		}
	}
	ask()
	idle := time.Now()
	line := app.line(t) // Node's side of the proxy's connection closes
	if !strings.HasPrefix(line, "connection closed by ") {
		t.Fatalf("node said %q, want connection closed by ...", line)
	}
	t.Logf("node: %s, %v after the request", line, time.Since(idle).Round(10*time.Millisecond))
	ask()
	if s := p.Stats(); s.Replayed != 0 || s.Failed != 0 {
		t.Fatalf("stats %+v: the proxy reused an idle connection to the app that Node had closed", s)
	}
}

func TestIdleClientsClosedFirstAtCap(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{MaxConns: 4}, clock.Real{})
	p.Ready(0, app.addr)
	addr := strings.TrimPrefix(url, "http://")
	var idle []net.Conn
	for i := 0; i < 4; i++ {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(waitLong))
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		idle = append(idle, conn)
	}
	testkit.Eventually(t, waitLong, "idle connections", func() bool { return p.ln.Open() == 4 })
	// A fresh client still gets through at once.
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if code, _, _ := get(t, c, url+"/"); code != 200 {
		t.Fatalf("fresh client got %d", code)
	}
	// ...and the longest idle connection paid for it.
	idle[0].SetReadDeadline(time.Now().Add(waitLong))
	if _, err := idle[0].Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("oldest idle connection: read gave %v, want it closed", err)
	}
}

func TestGateGivesUpOnStuckRequests(t *testing.T) {
	app := startNode(t, "HANG=1")
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	go newClient().Get(url + "/hang")
	if l := app.line(t); l != "hang" {
		t.Fatalf("app said %q", l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if n := p.Gate(ctx, 0); n != 1 {
		t.Fatalf("Gate returned %d, want 1 request still in flight", n)
	}
	app.stop(t, syscall.SIGKILL) // the stuck request is then held, and ends with the proxy
}

func TestResponseCutAbortsClient(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)
	// The client must not take the response as complete: it fails either
	// before the headers (they were still buffered) or while reading the body.
	resp, err := newClient().Get(url + "/cut")
	if err == nil {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil {
			t.Fatalf("a cut response read as complete: %d %q", resp.StatusCode, b)
		}
	}
	if s := p.Stats(); s.Replayed != 0 || s.InFlight != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestOversizedHeadersRefused(t *testing.T) {
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, "127.0.0.1:1")
	req, _ := http.NewRequest("GET", url+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 200<<10))
	resp, err := newClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", resp.StatusCode)
	}
}

func TestUnreachableUpstreamHeldThen503(t *testing.T) {
	// Ready for an address where nothing listens: the refused request is
	// not lost but waits for the next process, and past the hold gets 503.
	p, url := startProxy(t, Config{Hold: 300 * time.Millisecond}, clock.Real{})
	p.Ready(0, "127.0.0.1:1")
	code, body, hdr := get(t, newClient(), url+"/")
	if code != 503 || hdr.Get("Retry-After") == "" || strings.Contains(body, "127.0.0.1") {
		t.Fatalf("got %d %q", code, body)
	}
}

func TestSilentClientsDoNotLockOutFreshOnes(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{MaxConns: 4}, clock.Real{})
	p.Ready(0, app.addr)
	addr := strings.TrimPrefix(url, "http://")
	for i := 0; i < 8; i++ { // connections that never send a request
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
	}
	testkit.Eventually(t, waitLong, "the cap to be reached", func() bool { return p.ln.Open() == 4 })
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if code, _, _ := get(t, c, url+"/"); code != 200 {
		t.Fatalf("fresh client got %d", code)
	}
}

func TestListenBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := New(Config{Listen: ln.Addr().String()}, zerolog.Nop(), clock.Real{})
	err = p.Listen()
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.HasPrefix(err.Error(), "proxy: listen ") {
		t.Fatalf("Listen on a busy port: %v", err)
	}
	if p.Addr() != nil {
		t.Fatal("Addr set after a failed Listen")
	}
	if err := New(Config{Listen: "nonsense"}, zerolog.Nop(), clock.Real{}).Listen(); err == nil {
		t.Fatal("Listen accepted a bad address")
	}
}

func TestClientLeavingAbortsAppExchange(t *testing.T) {
	app := startNode(t, "HANG=1")
	var mu sync.Mutex
	var codes []int
	p, url := startProxy(t, Config{Observe: func(code int, _ time.Duration) {
		mu.Lock()
		codes = append(codes, code)
		mu.Unlock()
	}}, clock.Real{})
	p.Ready(0, app.addr)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/hang", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := newClient().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	if l := app.line(t); l != "hang" {
		t.Fatalf("app said %q", l)
	}
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("cancelled request succeeded")
	}
	if l := app.line(t); l != "client gone" {
		t.Fatalf("app said %q, want its connection closed", l)
	}
	testkit.Eventually(t, waitLong, "the request to finish", func() bool { return p.Stats().InFlight == 0 })
	testkit.Eventually(t, waitLong, "Observe", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(codes) == 1
	})
	if codes[0] != statusClientGone {
		t.Fatalf("observed %d, want %d", codes[0], statusClientGone)
	}
	if s := p.Stats(); s.Failed != 0 || s.Replayed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestHeadExpectContinueAndHTTP10(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, app.addr)

	c := newClient()
	resp, err := c.Head(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("HEAD: %d", resp.StatusCode)
	}
	// The connection stays usable after a HEAD: no body was expected or sent.
	if code, body, _ := get(t, c, url+"/"); code != 200 || body != "hello "+app.pid()+"\n" {
		t.Fatalf("after HEAD: %d %q", code, body)
	}

	ec := &http.Client{Timeout: waitLong, Transport: &http.Transport{ExpectContinueTimeout: 10 * time.Second}}
	req, _ := http.NewRequest("POST", url+"/upload", strings.NewReader("abc"))
	req.Header.Set("Expect", "100-continue")
	resp, err = ec.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(b), "3 ") {
		t.Fatalf("Expect: 100-continue upload: %d %q", resp.StatusCode, b)
	}

	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitLong))
	io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n")
	all, err := io.ReadAll(conn) // an HTTP/1.0 answer ends with the connection
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(all), "HTTP/1.0 200") || !strings.HasSuffix(string(all), "hello "+app.pid()+"\n") {
		t.Fatalf("HTTP/1.0: %q", all)
	}
}

// dyingApp is a real listening socket acting as an app in its last moments:
// it accepts connections and reads each request, then closes the
// connection without answering, as a process being SIGKILLed may still do
// for a few milliseconds.
func dyingApp(t *testing.T) (addr string, requests *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	requests = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					requests.Add(1)
					if requests.Load() > 1 {
						return // every later request: closed unanswered
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
				}
			}()
		}
	}()
	return ln.Addr().String(), requests
}

// TestGETReplayedPastADyingProcess: a kept connection fails, a new one to
// the same (dying) process fails too; the GET still reaches the next
// process rather than getting a 502.
func TestGETReplayedPastADyingProcess(t *testing.T) {
	addr, seen := dyingApp(t)
	p, url := startProxy(t, Config{}, clock.Real{})
	p.Ready(0, addr)
	c := newClient()
	if code, _, _ := get(t, c, url+"/"); code != 200 { // leaves a kept connection
		t.Fatalf("first GET: %d", code)
	}
	ch := getAsync(c, url+"/")
	testkit.Eventually(t, waitLong, "the retries on the dying process", func() bool { return seen.Load() >= 3 && p.Stats().Held == 1 })
	next := startNode(t)
	p.Ready(0, next.addr)
	if r := await(t, ch); r.code != 200 || r.body != "hello "+next.pid()+"\n" {
		t.Fatalf("GET past a dying process got %d %q, want the next process's answer", r.code, r.body)
	}
	if s := p.Stats(); s.Failed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestDrainHealthWhileServing: from Drain on, the traffic port's health page
// says 503 draining while requests still reach the app.
func TestDrainHealthWhileServing(t *testing.T) {
	app := startNode(t)
	p, url := startProxy(t, Config{HealthPath: "/health.html"}, clock.Real{})
	p.Ready(0, app.addr)
	c := newClient()
	if code, body, _ := get(t, c, url+"/health.html"); code != 200 || body != "ready\n" {
		t.Fatalf("health before the drain: %d %q", code, body)
	}
	p.Drain()
	if code, body, _ := get(t, c, url+"/health.html"); code != 503 || body != "draining\n" {
		t.Fatalf("health while draining: %d %q, want 503 draining", code, body)
	}
	if code, body, _ := get(t, c, url+"/"); code != 200 || body != "hello "+app.pid()+"\n" {
		t.Fatalf("request while draining: %d %q, want the app's answer", code, body)
	}
}
