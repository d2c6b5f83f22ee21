package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
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

// startSlots starts n Node apps on n consecutive reserved ports, as the
// agent lays out app.instances (slot i on the first port + i), and makes
// each ready in p.
func startSlots(t *testing.T, p *Proxy, n int, env ...string) []*nodeApp {
	t.Helper()
	ports := testkit.Ports(t, n)
	apps := make([]*nodeApp, n)
	for i, port := range ports {
		apps[i] = startNode(t, append(slices.Clone(env), fmt.Sprintf("PORT=%d", port))...)
		p.Ready(i, apps[i].addr)
	}
	return apps
}

// restartOn starts a new Node app on the port a, now dead, had: the
// slot's next process.
func restartOn(t *testing.T, a *nodeApp, env ...string) *nodeApp {
	t.Helper()
	_, port, _ := net.SplitHostPort(a.addr)
	return startNode(t, append(slices.Clone(env), "PORT="+port)...)
}

// rawConn is a client as a load balancer is one: it keeps its connection
// alive across requests and never retries. (Go's http.Transport silently
// sends a GET again when a kept connection was closed under it.) A request
// that fails is reported, and the next one dials anew.
type rawConn struct {
	addr string
	c    net.Conn
	br   *bufio.Reader
}

// reply is one answer a rawConn got.
type reply struct {
	code int
	body string
	hdr  http.Header
}

// get sends GET path with the extra header lines (each ending in CRLF).
func (rc *rawConn) get(path, extra string) (reply, error) {
	if rc.c == nil {
		c, err := net.Dial("tcp", rc.addr)
		if err != nil {
			return reply{}, fmt.Errorf("dial: %w", err)
		}
		rc.c, rc.br = c, bufio.NewReader(c)
	}
	rc.c.SetDeadline(time.Now().Add(waitLong))
	resp, err := rc.exchange(path, extra)
	if err != nil || resp.hdr.Get("Connection") == "close" {
		rc.close()
	}
	return resp, err
}

func (rc *rawConn) exchange(path, extra string) (reply, error) {
	if _, err := fmt.Fprintf(rc.c, "GET %s HTTP/1.1\r\nHost: shop.example.com\r\n%s\r\n", path, extra); err != nil {
		return reply{}, fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		return reply{}, fmt.Errorf("read response: %w", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return reply{}, fmt.Errorf("read body: %w", err)
	}
	return reply{code: resp.StatusCode, body: string(b), hdr: resp.Header}, nil
}

func (rc *rawConn) close() {
	if rc.c != nil {
		rc.c.Close()
		rc.c, rc.br = nil, nil
	}
}

// mustGet is rawConn.get for a request that has to succeed with 200.
func (rc *rawConn) mustGet(t *testing.T, path, extra string) reply {
	t.Helper()
	r, err := rc.get(path, extra)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if r.code != 200 {
		t.Fatalf("GET %s: %d %q", path, r.code, r.body)
	}
	return r
}

// whose names the process that wrote an answer of testdata/app.js
// ("hello PID", "slow PID", "answered PID"): the index in apps, or -1.
func whose(apps []*nodeApp, body string) int {
	f := strings.Fields(body)
	if len(f) != 2 {
		return -1
	}
	for i, a := range apps {
		if a.pid() == f[1] {
			return i
		}
	}
	return -1
}

// load is traffic from a few kept-alive, never-retrying connections.
type load struct {
	mu      sync.Mutex
	ok      int
	failed  []string
	slow    int           // answered 200 after more than slowAfter
	slowest time.Duration // of the 200s
	by      map[string]int
	wg      sync.WaitGroup
	stop    chan struct{}
	done    atomic.Int64 // answered 200
}

const slowAfter = time.Second

// startLoad sends GET path from conns connections, rate requests a second
// in all (0: each connection sends its next request as soon as it has
// the answer), until stopped.
func startLoad(addr, path string, conns int, rate float64) *load {
	l := &load{by: map[string]int{}, stop: make(chan struct{})}
	var every time.Duration
	if rate > 0 {
		every = time.Duration(float64(conns) / rate * float64(time.Second))
	}
	for i := 0; i < conns; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rc := &rawConn{addr: addr}
			defer rc.close()
			next := time.Now().Add(every * time.Duration(i) / time.Duration(conns))
			for {
				if every > 0 {
					select {
					case <-l.stop:
						return
					case <-time.After(time.Until(next)): // pacing, not a wait for an event
					}
					if next = next.Add(every); next.Before(time.Now()) {
						next = time.Now() // late: no burst to catch up
					}
				} else {
					select {
					case <-l.stop:
						return
					default:
					}
				}
				start := time.Now()
				r, err := rc.get(path, "")
				took := time.Since(start)
				l.mu.Lock()
				switch {
				case err != nil:
					l.failed = append(l.failed, err.Error())
				case r.code != 200:
					l.failed = append(l.failed, fmt.Sprintf("%d %q", r.code, r.body))
				default:
					l.ok++
					l.by[r.body]++
					if took > slowAfter {
						l.slow++
					}
					l.slowest = max(l.slowest, took)
					l.done.Add(1)
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// waitDone waits until n more requests than now have been answered.
func (l *load) waitDone(t *testing.T, n int64, what string) {
	t.Helper()
	target := l.done.Load() + n
	testkit.Eventually(t, waitLong, what, func() bool { return l.done.Load() >= target })
}

// end stops the load and waits for its requests to finish.
func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

// perApp sums the answers by the app that gave them.
func (l *load) perApp(apps []*nodeApp) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := make([]int, len(apps)+1) // the last: none of apps
	for body, c := range l.by {
		i := whose(apps, body)
		if i < 0 {
			i = len(apps)
		}
		n[i] += c
	}
	return n
}

func TestRequestsSpreadOverSlots(t *testing.T) {
	p, url := startProxy(t, Config{}, clock.Real{})
	apps := startSlots(t, p, 2)
	const clients, each = 4, 500
	var mu sync.Mutex
	counts := make([]int, 3)
	var wg sync.WaitGroup
	errc := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := &rawConn{addr: strings.TrimPrefix(url, "http://")}
			defer rc.close()
			for range each {
				r, err := rc.get("/", "")
				if err == nil && r.code != 200 {
					err = fmt.Errorf("%d %q", r.code, r.body)
				}
				if err != nil {
					errc <- err
					return
				}
				i := whose(apps, r.body)
				if i < 0 {
					i = 2
				}
				mu.Lock()
				counts[i]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	t.Logf("slot 0: %d, slot 1: %d of %d", counts[0], counts[1], clients*each)
	for i := range 2 {
		if counts[i] < clients*each*30/100 {
			t.Errorf("slot %d got %d of %d requests, want at least 30%%", i, counts[i], clients*each)
		}
	}
	if counts[2] != 0 {
		t.Errorf("%d answers from no known process", counts[2])
	}
	if s := p.Stats(); s.Failed != 0 || s.Replayed != 0 || s.InFlight != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestStalledSlotKeepsFewRequests: one of two processes stops (SIGSTOP:
// the kernel still accepts its connections, so a TCP probe would say it is
// fine) for 3 s under 100 req/s on 20 kept connections: only a handful of
// requests wait for it longer than a second.
func TestStalledSlotKeepsFewRequests(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 3 s of load")
	}
	p, url := startProxy(t, Config{}, clock.Real{})
	apps := startSlots(t, p, 2)
	l := startLoad(strings.TrimPrefix(url, "http://"), "/slow?ms=5", 20, 100)
	l.waitDone(t, 100, "traffic before the stall")

	apps[1].cmd.Process.Signal(syscall.SIGSTOP)
	stalled := time.Now()
	<-time.After(3 * time.Second) // the stall
	stuck := p.SlotInFlight(1)
	apps[1].cmd.Process.Signal(syscall.SIGCONT)
	// Not a bound: it is the other process's highest count in flight
	// during the stall, which the machine's hiccups set.
	t.Logf("stalled %v; %d requests in flight to it at the end", time.Since(stalled).Round(time.Millisecond), stuck)
	l.waitDone(t, 100, "traffic after the stall")
	l.end()

	per := l.perApp(apps)
	t.Logf("%d answered (slot 0: %d, slot 1: %d), %d waited > %v, slowest %v",
		l.ok, per[0], per[1], l.slow, slowAfter, l.slowest.Round(time.Millisecond))
	if len(l.failed) > 0 {
		t.Fatalf("%d failed, first: %s", len(l.failed), l.failed[0])
	}
	// Round robin would leave half of the requests of the 3 s (about 150)
	// to wait, and soon every connection blocked on one of them. Least in
	// flight sends the stalled process a request only when the other has
	// as many in flight; what waits longer than a second is what it got
	// in the stall's first two seconds.
	if l.slow > 10 {
		t.Fatalf("%d requests waited more than %v for the stalled process, want a handful", l.slow, slowAfter)
	}
}

// TestKilledSlotReplayedToTheOther: SIGKILL of one of two processes under
// load loses no request: the ones it had are replayed to the other at
// once, and new ones go there, with no hold while the other is ready.
func TestKilledSlotReplayedToTheOther(t *testing.T) {
	p, url := startProxy(t, Config{}, clock.Real{})
	apps := startSlots(t, p, 2)
	l := startLoad(strings.TrimPrefix(url, "http://"), "/slow?ms=20", 10, 200)
	l.waitDone(t, 100, "traffic before the kill")

	testkit.Eventually(t, waitLong, "a request in flight to slot 1", func() bool { return p.SlotInFlight(1) > 0 })
	apps[1].stop(t, syscall.SIGKILL)
	// The proxy is not told yet: the process's death alone must not cost a
	// request, nor make one wait for a next process.
	l.waitDone(t, 100, "traffic with slot 1 dead and not yet known to be")
	if s := p.Stats(); s.Held != 0 {
		t.Fatalf("%d requests held while slot 0 was ready", s.Held)
	}
	p.NotReady(1)
	next := restartOn(t, apps[1])
	p.Ready(1, next.addr)
	apps = append(apps, next)
	l.waitDone(t, 100, "traffic after the restart")
	l.end()

	per := l.perApp(apps)
	s := p.Stats()
	t.Logf("%d answered (slot 0: %d, killed: %d, its next: %d), slowest %v; %d replayed",
		l.ok, per[0], per[1], per[2], l.slowest.Round(time.Millisecond), s.Replayed)
	if len(l.failed) > 0 {
		t.Fatalf("%d failed, first: %s", len(l.failed), l.failed[0])
	}
	if l.slow > 0 {
		t.Fatalf("%d requests waited more than %v: held, with slot 0 ready", l.slow, slowAfter)
	}
	if s.Failed != 0 {
		t.Fatalf("stats %+v", s)
	}
	if per[2] == 0 {
		t.Fatal("the restarted slot got no request")
	}
}

// TestGETReplayedToAnotherSlotAtOnce: a GET whose process dies under it
// goes to the other ready process at once (nothing tells the proxy, and a
// hold would last the hour); a POST gets 502 even then. Affinity pins
// both to the dying process.
func TestGETReplayedToAnotherSlotAtOnce(t *testing.T) {
	seen := filepath.Join(t.TempDir(), "seen")
	p, url := startProxy(t, Config{Hold: time.Hour, Affinity: true}, clock.Real{})
	ports := testkit.Ports(t, 2)
	apps := []*nodeApp{
		startNode(t, fmt.Sprintf("PORT=%d", ports[0]), "HANG=1", "SEEN_FILE="+seen),
		startNode(t, fmt.Sprintf("PORT=%d", ports[1]), "SEEN_FILE="+seen),
	}
	p.Ready(0, apps[0].addr)
	p.Ready(1, apps[1].addr)
	pinned := func(method, path string, body io.Reader) <-chan result {
		req, _ := http.NewRequest(method, url+path, body)
		req.Header.Set("Cookie", "agent_slot=0")
		ch := make(chan result, 1)
		go func() {
			resp, err := newClient().Do(req)
			if err != nil {
				ch <- result{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			ch <- result{code: resp.StatusCode, body: string(b), hdr: resp.Header, err: err}
		}()
		return ch
	}
	get := pinned("GET", "/hang", nil)
	if l := apps[0].line(t); l != "hang" {
		t.Fatalf("app said %q", l)
	}
	// Slot 0 reads the POST's body and exits without answering; the hung
	// GET's connection ends with it.
	post := pinned("POST", "/crash", strings.NewReader("payload"))
	if r := await(t, post); r.code != 502 || r.body != "bad gateway\n" {
		t.Fatalf("POST to a crashing process: %d %q, want 502", r.code, r.body)
	}
	r := await(t, get)
	if r.code != 200 || whose(apps, r.body) != 1 {
		t.Fatalf("replayed GET got %d %q, want slot 1's answer", r.code, r.body)
	}
	if sc := r.hdr.Get("Set-Cookie"); !strings.HasPrefix(sc, "agent_slot=1;") {
		t.Fatalf("replayed GET: Set-Cookie %q, want the client moved to slot 1", sc)
	}
	data, _ := os.ReadFile(seen)
	if n := strings.Count(string(data), "POST /crash"); n != 1 {
		t.Fatalf("the apps saw the POST %d times:\n%s", n, data)
	}
	if s := p.Stats(); s.Replayed != 1 || s.Failed != 1 || s.Held != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestGateSlotWhileAnotherServes: Gate(1) sends new requests to slot 0 at
// once, lets slot 1's requests in flight finish, and returns 0.
func TestGateSlotWhileAnotherServes(t *testing.T) {
	p, url := startProxy(t, Config{}, clock.Real{})
	ports := testkit.Ports(t, 2)
	apps := []*nodeApp{
		startNode(t, fmt.Sprintf("PORT=%d", ports[0])),
		startNode(t, fmt.Sprintf("PORT=%d", ports[1])),
	}
	// Slot 1 alone at first, so that the slow requests are all its own.
	p.Ready(1, apps[1].addr)
	c := newClient()
	var slow []<-chan result
	for range 3 {
		slow = append(slow, getAsync(c, url+"/slow?ms=1500"))
	}
	testkit.Eventually(t, waitLong, "3 requests in flight to slot 1", func() bool { return p.SlotInFlight(1) == 3 })
	p.Ready(0, apps[0].addr)

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	gated := make(chan int, 1)
	go func() { gated <- p.Gate(ctx, 1) }()
	testkit.Eventually(t, waitLong, "slot 1 out of the set", func() bool { return p.st.Load().slot(1) == nil })

	// While slot 1 drains, concurrent requests all go to slot 0, though
	// least in flight would otherwise send some to slot 1 once slot 0 had
	// 3 of its own.
	var fast []<-chan result
	for range 12 {
		fast = append(fast, getAsync(c, url+"/slow?ms=100"))
	}
	for _, ch := range fast {
		if r := await(t, ch); r.code != 200 || whose(apps, r.body) != 0 {
			t.Fatalf("request during slot 1's gate: %d %q, want slot 0's answer", r.code, r.body)
		}
	}
	select {
	case n := <-gated:
		t.Fatalf("Gate returned %d before slot 1's requests were answered", n)
	default:
	}
	for _, ch := range slow {
		if r := await(t, ch); r.code != 200 || whose(apps, r.body) != 1 {
			t.Fatalf("request in flight at the gate: %d %q, want slot 1's answer", r.code, r.body)
		}
	}
	if n := <-gated; n != 0 {
		t.Fatalf("Gate returned %d, want 0 (drained)", n)
	}
	if s := p.Stats(); s.Failed != 0 || s.Replayed != 0 || s.Held != 0 || p.SlotInFlight(1) != 0 {
		t.Fatalf("stats %+v, slot 1 in flight %d", s, p.SlotInFlight(1))
	}
}

// TestGateAfterNotReadyDrainsTheSlot: NotReady(1) just before Gate(1):
// the gate still waits for the requests slot 1's process had.
func TestGateAfterNotReadyDrainsTheSlot(t *testing.T) {
	p, url := startProxy(t, Config{}, clock.Real{})
	apps := startSlots(t, p, 2)
	p.NotReady(0)
	ch := getAsync(newClient(), url+"/slow?ms=1000")
	testkit.Eventually(t, waitLong, "a request in flight to slot 1", func() bool { return p.SlotInFlight(1) == 1 })
	p.NotReady(1)
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if n := p.Gate(short, 1); n != 1 {
		t.Fatalf("Gate with no time to wait returned %d, want 1 in flight", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if n := p.Gate(ctx, 1); n != 0 {
		t.Fatalf("Gate returned %d, want 0", n)
	}
	if r := await(t, ch); r.code != 200 || whose(apps, r.body) != 1 {
		t.Fatalf("drained request: %d %q", r.code, r.body)
	}
}

// TestHoldOnlyWhileNoSlotIsReady: with one slot not ready requests go to
// the other; with none they are held, the next Ready of either releases
// them, and Down answers 503 to held and new ones.
func TestHoldOnlyWhileNoSlotIsReady(t *testing.T) {
	p, url := startProxy(t, Config{Hold: time.Hour}, clock.Real{})
	apps := startSlots(t, p, 2)
	rc := &rawConn{addr: strings.TrimPrefix(url, "http://")}
	defer rc.close()

	p.NotReady(0)
	for range 10 {
		if r := rc.mustGet(t, "/", ""); whose(apps, r.body) != 1 {
			t.Fatalf("with slot 0 not ready: %q, want slot 1's answer", r.body)
		}
	}
	if s := p.Stats(); s.Held != 0 {
		t.Fatalf("held with slot 1 ready: %+v", s)
	}

	p.NotReady(1)
	c := newClient()
	var held []<-chan result
	for range 3 {
		held = append(held, getAsync(c, url+"/"))
	}
	testkit.Eventually(t, waitLong, "3 held requests", func() bool { return p.Stats().Held == 3 })
	p.Ready(0, apps[0].addr)
	for _, ch := range held {
		if r := await(t, ch); r.code != 200 || whose(apps, r.body) != 0 {
			t.Fatalf("released request: %d %q, want slot 0's answer", r.code, r.body)
		}
	}

	p.NotReady(0)
	ch := getAsync(c, url+"/")
	testkit.Eventually(t, waitLong, "a held request", func() bool { return p.Stats().Held == 1 })
	p.Down()
	if r := await(t, ch); r.code != 503 {
		t.Fatalf("held request after Down: %d, want 503", r.code)
	}
	if r, err := rc.get("/", ""); err != nil || r.code != 503 || r.body != "service unavailable\n" {
		t.Fatalf("after Down: %+v %v", r, err)
	}
	p.Ready(1, apps[1].addr)
	if r := rc.mustGet(t, "/", ""); whose(apps, r.body) != 1 {
		t.Fatalf("after Down and Ready(1): %q", r.body)
	}
}

// TestRouteOneSlotLeavesTheOther: a reload's swap of slot 1 moves its
// traffic to the new process, drains the old one and leaves slot 0 be.
func TestRouteOneSlotLeavesTheOther(t *testing.T) {
	seen := filepath.Join(t.TempDir(), "seen")
	p, url := startProxy(t, Config{}, clock.Real{})
	ports := testkit.Ports(t, 3)
	apps := []*nodeApp{
		startNode(t, fmt.Sprintf("PORT=%d", ports[0])),
		startNode(t, fmt.Sprintf("PORT=%d", ports[1]), "SEEN_FILE="+seen),
		startNode(t, fmt.Sprintf("PORT=%d", ports[2])), // the spare port
	}
	p.Ready(0, apps[0].addr)
	p.Ready(1, apps[1].addr)
	l := startLoad(strings.TrimPrefix(url, "http://"), "/slow?ms=10", 8, 0)
	l.waitDone(t, 100, "traffic before the swap")
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	drain := p.Route(1, apps[2].addr)
	if n := drain(ctx); n != 0 {
		t.Fatalf("drain left %d in flight", n)
	}
	// The app notes every request as it arrives, before it answers.
	atDrain, _ := os.ReadFile(seen)
	l.waitDone(t, 200, "traffic after the swap")
	apps[1].stop(t, syscall.SIGTERM)
	l.waitDone(t, 50, "traffic after the old process's stop")
	l.end()
	per := l.perApp(apps)
	t.Logf("slot 0: %d, slot 1 old: %d, new: %d", per[0], per[1], per[2])
	if len(l.failed) > 0 {
		t.Fatalf("%d failed, first: %s", len(l.failed), l.failed[0])
	}
	if after, _ := os.ReadFile(seen); len(after) != len(atDrain) {
		t.Fatalf("the old process of slot 1 got requests after its drain:\n%s", after[len(atDrain):])
	}
	if per[0] == 0 || per[2] == 0 {
		t.Fatalf("answers by process %v: want both slot 0 and the new slot 1", per)
	}
	if s := p.Stats(); s.Failed != 0 || s.Replayed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestAffinityCookie(t *testing.T) {
	p, url := startProxy(t, Config{Affinity: true}, clock.Real{})
	apps := startSlots(t, p, 2)
	rc := &rawConn{addr: strings.TrimPrefix(url, "http://")}
	defer rc.close()

	// A new client is balanced and pinned to the slot that answered.
	r := rc.mustGet(t, "/", "")
	slot := whose(apps, r.body)
	want := fmt.Sprintf("agent_slot=%d; Path=/; HttpOnly; SameSite=Lax", slot)
	if got := r.hdr.Values("Set-Cookie"); slot < 0 || len(got) != 1 || got[0] != want {
		t.Fatalf("first answer from %d, Set-Cookie %q; want %q", slot, got, want)
	}
	cookie := fmt.Sprintf("Cookie: theme=dark; agent_slot=%d; cart=42\r\n", slot)
	// Both slots idle: balancing alone would spread these.
	for range 30 {
		r := rc.mustGet(t, "/", cookie)
		if whose(apps, r.body) != slot {
			t.Fatalf("pinned client answered by %q, want slot %d", r.body, slot)
		}
		if sc := r.hdr.Values("Set-Cookie"); len(sc) != 0 {
			t.Fatalf("cookie set again on a pinned client: %q", sc)
		}
	}
	// The app sees the client's cookies, not the proxy's.
	r = rc.mustGet(t, "/headers", cookie)
	var h map[string]string
	if err := json.Unmarshal([]byte(r.body), &h); err != nil {
		t.Fatal(err)
	}
	if h["cookie"] != "theme=dark; cart=42" {
		t.Fatalf("the app got Cookie %q, want theme=dark; cart=42", h["cookie"])
	}
	r = rc.mustGet(t, "/headers", fmt.Sprintf("Cookie: agent_slot=%d\r\n", slot))
	h = nil
	json.Unmarshal([]byte(r.body), &h)
	if c, ok := h["cookie"]; ok {
		t.Fatalf("the app got Cookie %q, want none", c)
	}

	// Its slot not ready: the client moves, and the cookie with it.
	p.NotReady(slot)
	r = rc.mustGet(t, "/", cookie)
	other := whose(apps, r.body)
	wantOther := fmt.Sprintf("agent_slot=%d; Path=/; HttpOnly; SameSite=Lax", other)
	if other != 1-slot || r.hdr.Get("Set-Cookie") != wantOther {
		t.Fatalf("with slot %d not ready: answer %q, Set-Cookie %q; want slot %d's, %q",
			slot, r.body, r.hdr.Get("Set-Cookie"), 1-slot, wantOther)
	}
	// A cookie naming no slot is balanced like none.
	if r := rc.mustGet(t, "/", "Cookie: agent_slot=banana\r\n"); r.hdr.Get("Set-Cookie") != wantOther {
		t.Fatalf("bad cookie: Set-Cookie %q", r.hdr.Get("Set-Cookie"))
	}
}

// TestNoAffinityCookieByDefault: without Affinity the proxy sets no cookie
// and passes a client's agent_slot cookie on as any other.
func TestNoAffinityCookieByDefault(t *testing.T) {
	p, url := startProxy(t, Config{}, clock.Real{})
	startSlots(t, p, 2)
	rc := &rawConn{addr: strings.TrimPrefix(url, "http://")}
	defer rc.close()
	r := rc.mustGet(t, "/headers", "Cookie: agent_slot=1; a=b\r\n")
	if sc := r.hdr.Values("Set-Cookie"); len(sc) != 0 {
		t.Fatalf("Set-Cookie %q without affinity", sc)
	}
	var h map[string]string
	json.Unmarshal([]byte(r.body), &h)
	if h["cookie"] != "agent_slot=1; a=b" {
		t.Fatalf("the app got Cookie %q", h["cookie"])
	}
}

func TestHealthWithSlots(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	p, url := startProxy(t, Config{HealthPath: "/health.html", Hold: 30 * time.Second}, clk)
	rc := &rawConn{addr: strings.TrimPrefix(url, "http://")}
	defer rc.close()
	check := func(wantCode int, wantBody string) {
		t.Helper()
		r, err := rc.get("/health.html", "")
		if err != nil {
			t.Fatal(err)
		}
		if r.code != wantCode || r.body != wantBody {
			t.Fatalf("health %d %q, want %d %q", r.code, r.body, wantCode, wantBody)
		}
	}
	check(503, "starting\n")
	p.Ready(1, "127.0.0.1:1") // nobody there: the health answer never asks the app
	check(200, "ready\n")
	p.Ready(0, "127.0.0.1:1")
	p.NotReady(1)
	clk.Advance(time.Minute)
	check(200, "ready\n") // slot 0 still is
	p.NotReady(0)
	clk.Advance(29 * time.Second)
	check(200, "restarting\n")
	clk.Advance(time.Second)
	check(503, "restarting\n")
	p.Ready(1, "127.0.0.1:1")
	check(200, "ready\n")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Gate(ctx, 1)
	check(200, "restarting\n")
	p.Down()
	check(503, "down\n")
	p.NotReady(0) // a start after a stop: held, not refused
	check(200, "restarting\n")
}

// TestPickLeastInFlight checks the balancer's choice on its own: fewest in
// flight, ties at random, failed pools and affinity, and no allocation.
func TestPickLeastInFlight(t *testing.T) {
	p := New(Config{}, zerolog.Nop(), clock.Real{})
	for i := range 3 {
		p.Ready(i, fmt.Sprintf("127.0.0.1:%d", 1+i))
	}
	st := p.st.Load()
	pools := st.ready
	pools[0].inflight.Store(2)
	pools[1].inflight.Store(1)
	pools[2].inflight.Store(3)
	if got := st.pick(-1, nil); got != pools[1] {
		t.Fatalf("picked slot %d, want 1 (fewest in flight)", got.slot)
	}
	if got := st.pick(-1, []*pool{pools[1]}); got != pools[0] {
		t.Fatalf("with slot 1 failed: picked slot %d, want 0", got.slot)
	}
	if got := st.pick(2, nil); got != pools[2] {
		t.Fatalf("with affinity to slot 2: picked slot %d", got.slot)
	}
	if got := st.pick(2, []*pool{pools[2]}); got != pools[1] {
		t.Fatalf("affinity to a failed slot: picked slot %d, want 1", got.slot)
	}
	if got := st.pick(7, nil); got != pools[1] {
		t.Fatalf("affinity to no slot: picked slot %d, want 1", got.slot)
	}
	if got := st.pick(-1, pools); got != nil {
		t.Fatalf("all failed: picked slot %d, want none", got.slot)
	}

	pools[2].inflight.Store(1)
	seen := [3]int{}
	for range 1000 {
		seen[st.pick(-1, nil).slot]++
	}
	if seen[0] != 0 || seen[1] < 400 || seen[2] < 400 {
		t.Fatalf("ties of slots 1 and 2 went %v, want about half each and none to slot 0", seen)
	}

	failed := []*pool{pools[0]}
	if n := testing.AllocsPerRun(1000, func() { st.pick(-1, failed) }); n != 0 {
		t.Fatalf("pick allocates %v times", n)
	}
}

func TestAffinitySlotParse(t *testing.T) {
	tests := []struct {
		cookies []string
		want    int
	}{
		{nil, -1},
		{[]string{"a=b"}, -1},
		{[]string{"agent_slot=3"}, 3},
		{[]string{"a=b; agent_slot=12; c=d"}, 12},
		{[]string{"a=b", "agent_slot=1"}, 1},
		{[]string{"my_agent_slot=1"}, -1},
		{[]string{"agent_slot="}, -1},
		{[]string{"agent_slot=-1"}, -1},
		{[]string{"agent_slot=1x"}, -1},
		{[]string{"agent_slot=99999"}, -1},
	}
	for _, tt := range tests {
		var fields []field
		for _, v := range tt.cookies {
			fields = append(fields, field{"cookie", v})
		}
		if got := affinitySlot(fields); got != tt.want {
			t.Errorf("%q: slot %d, want %d", tt.cookies, got, tt.want)
		}
	}
}

func TestCookieFieldWithoutAffinity(t *testing.T) {
	tests := []struct{ in, want string }{
		{"a=b", "Cookie: a=b\r\n"},
		{"agent_slot=1", ""},
		{"a=b; agent_slot=1", "Cookie: a=b\r\n"},
		{"agent_slot=1; a=b;c=d", "Cookie: a=b; c=d\r\n"},
		{"my_agent_slot=1; agent_slot=0", "Cookie: my_agent_slot=1\r\n"},
	}
	for _, tt := range tests {
		var b strings.Builder
		bw := bufio.NewWriter(&b)
		writeCookieField(bw, tt.in)
		bw.Flush()
		if b.String() != tt.want {
			t.Errorf("%q: wrote %q, want %q", tt.in, b.String(), tt.want)
		}
	}
}
