package lbclient

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"agent/internal/testkit"
)

func TestLoadCountsEveryFailure(t *testing.T) {
	cases := append(misbehaving(t), failingServer{"ok", func() string {
		return tcpServer(t, answer("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"))
	}, ""})
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Only a stall may take the timeout: on a busy machine a short
			// one would count slow answers as timeouts.
			timeout := 5 * time.Second
			if tt.want == KindTimeout {
				timeout = 300 * time.Millisecond
			}
			r, err := Load{
				Addr: tt.addr(), Requests: []Request{{Path: "/"}, {Path: "/slow"}},
				Rate: 100, Timeout: timeout, Duration: 300 * time.Millisecond,
			}.Run(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if r.Sent < 5 || r.Sent != r.OK+r.Failed {
				t.Fatalf("sent %d, ok %d, failed %d", r.Sent, r.OK, r.Failed)
			}
			if tt.want == "" {
				if r.Failed != 0 || r.Max <= 0 || r.P50 > r.P99 || r.P99 > r.Max {
					t.Fatalf("%s failed: %s; p50 %s p99 %s max %s", r, FormatKinds(r.Kinds), r.P50, r.P99, r.Max)
				}
				if r.Conns >= r.Sent {
					t.Fatalf("%d connections for %d requests: keep-alive not used", r.Conns, r.Sent)
				}
				return
			}
			if r.Failed != r.Sent || r.Kinds[tt.want] != r.Sent {
				t.Fatalf("want all %d failed as %q, got %s failed: %s", r.Sent, tt.want, r, FormatKinds(r.Kinds))
			}
			if len(r.Errors) == 0 || len(r.Errors) > 5 || !strings.HasPrefix(r.Errors[0], tt.want+": ") {
				t.Fatalf("error texts %q, want 1 to 5 starting %q", r.Errors, tt.want)
			}
			if r.Max != 0 {
				t.Fatalf("max latency %s with no request answered", r.Max)
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
	r, err := Load{Addr: addr, Rate: 100, Timeout: 5 * time.Second, Duration: 500 * time.Millisecond}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 0 {
		t.Fatalf("%s failed: %s", r, FormatKinds(r.Kinds))
	}
	// 50 ticks in 500 ms; the ones held by the stall each needed a
	// connection of their own.
	if r.Sent < 40 || r.Conns < 20 {
		t.Fatalf("%d requests on %d connections: the load waited for the stalled server", r.Sent, r.Conns)
	}
	if r.Max < 200*time.Millisecond {
		t.Fatalf("slowest answer %s, want the stall in it", r.Max)
	}
}

// twoProcesses is a server that stands for two app processes behind one
// address: each connection is served by one of them in turn, which answers
// "ok NAME".
func twoProcesses(t *testing.T) (addr string, requests *atomic.Int64) {
	requests = new(atomic.Int64)
	var next atomic.Int64
	type who struct{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		fmt.Fprintf(w, "ok %s\n", r.Context().Value(who{}))
	}))
	srv.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, who{}, []string{"a", "b"}[next.Add(1)%2])
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), requests
}

func TestLoadTalliesTheAnswerers(t *testing.T) {
	addr, _ := twoProcesses(t)
	r, err := Load{Addr: addr, Rate: 200, Conns: 4, Count: 100, Check: Prefix("ok "), Key: Word(1)}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 100 || r.OK != 100 || r.Conns < 4 {
		t.Fatalf("%d sent, %d ok, over %d connections; want 100, 100, at least 4 (%s)", r.Sent, r.OK, r.Conns, FormatKinds(r.Kinds))
	}
	for _, p := range []string{"a", "b"} {
		if r.Share(p) < 0.3 {
			t.Fatalf("process %s got %.0f %% of the answers (%v), want at least 30 %%", p, 100*r.Share(p), r.Answers)
		}
	}
}

func TestLoadChecksTheBody(t *testing.T) {
	addr, _ := twoProcesses(t)
	r, err := Load{Addr: addr, Conns: 2, Count: 20, Check: Prefix("ok b"), Key: Word(1)}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Both connections carry a request at the start; which carries the
	// others depends on timing.
	if r.OK == 0 || r.Failed == 0 || r.OK+r.Failed != 20 || r.Kinds[KindBody] != r.Failed || r.Answers["b"] != r.OK || len(r.Answers) != 1 {
		t.Fatalf("%d ok, %d failed (%s), answers %v; want the b answers ok, the a ones %q", r.OK, r.Failed, FormatKinds(r.Kinds), r.Answers, KindBody)
	}
	if len(r.Errors) != 1 || !strings.HasPrefix(r.Errors[0], KindBody+`: body "ok a\n" does not start with "ok b"`) {
		t.Fatalf("error texts %q", r.Errors)
	}
}

func TestLoadKeepsATimelineWhenAsked(t *testing.T) {
	addr, _ := twoProcesses(t)
	t0 := time.Now()
	r, err := Load{Addr: addr, Rate: 200, Conns: 2, Count: 40, Check: Prefix("ok b"), Timeline: true}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Timeline) != r.Sent || r.Sent != 40 {
		t.Fatalf("%d outcomes for %d requests, want 40 each", len(r.Timeline), r.Sent)
	}
	ok, failed := 0, 0
	for i, o := range r.Timeline {
		if o.Start.Before(t0) || o.End.Before(o.Start) || (i > 0 && o.End.Before(r.Timeline[i-1].End)) {
			t.Fatalf("outcome %d: %v to %v, after %v: not in the order they ended", i, o.Start, o.End, r.Timeline[max(i-1, 0)].End)
		}
		switch o.Kind {
		case "":
			ok++
		case KindBody:
			failed++
		default:
			t.Fatalf("outcome %d: kind %q", i, o.Kind)
		}
	}
	if ok != r.OK || failed != r.Failed {
		t.Fatalf("timeline: %d ok, %d failed; report: %d ok, %d failed", ok, failed, r.OK, r.Failed)
	}
	// Without asking, none is kept.
	r, err = Load{Addr: addr, Rate: 200, Count: 5}.Run(context.Background())
	if err != nil || r.Timeline != nil {
		t.Fatalf("%v; timeline %v, want none", err, r.Timeline)
	}
}

func TestLoadClosedLoopSendsItsCountBackToBack(t *testing.T) {
	addr, requests := twoProcesses(t)
	t0 := time.Now()
	r, err := Load{Addr: addr, Conns: 3, Count: 300}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 300 || r.OK != 300 || requests.Load() != 300 || r.Conns != 3 {
		t.Fatalf("%d sent, %d ok, %d served, %d connections; want 300 over 3", r.Sent, r.OK, requests.Load(), r.Conns)
	}
	if time.Since(t0) > 10*time.Second {
		t.Fatalf("300 requests back to back took %s", time.Since(t0))
	}
}

func TestLoadEndsAtItsBound(t *testing.T) {
	addr, _ := twoProcesses(t)
	if _, err := (Load{Addr: addr, Rate: 10}).Start(context.Background()); err == nil {
		t.Fatal("a load with neither duration nor count started")
	}

	t0 := time.Now()
	r, err := Load{Addr: addr, Conns: 2, Duration: 200 * time.Millisecond}.Run(context.Background())
	if took := time.Since(t0); err != nil || took < 200*time.Millisecond || took > 5*time.Second || r.Sent == 0 {
		t.Fatalf("closed loop for 200ms: %d sent in %s, %v", r.Sent, took, err)
	}
	r, err = Load{Addr: addr, Rate: 1000, Count: 30, Duration: time.Minute}.Run(context.Background())
	if err != nil || r.Sent != 30 {
		t.Fatalf("fixed rate, count 30: %d sent, %v", r.Sent, err)
	}

	run, err := Load{Addr: addr, Rate: 100, Conns: 2, Duration: time.Minute}.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "5 requests sent", func() bool { return run.Sent() >= 5 })
	r = run.Stop()
	if r.Sent < 5 || r.Sent > 50 || r.Failed != 0 || run.Wait().Sent != r.Sent {
		t.Fatalf("stopped load: %s failed, %d sent", r, r.Sent)
	}
	if d := run.Dials(); d < 2 || d != r.Conns {
		t.Fatalf("Dials = %d, report's Conns %d; want the same, at least 2", d, r.Conns)
	}
}

func TestFormatKinds(t *testing.T) {
	got := FormatKinds(map[string]int{"reset": 2, "connection refused": 40, "HTTP 502": 2})
	if want := "connection refused 40, HTTP 502 2, reset 2"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if s := FormatKinds(nil); s != "" {
		t.Fatalf("no kinds: got %q", s)
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 200; i++ {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 100 * time.Millisecond}, {0.99, 198 * time.Millisecond}, {1, 200 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(s, tt.q); got != tt.want {
			t.Errorf("percentile %v: %s, want %s", tt.q, got, tt.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of none: %s", got)
	}
}

func TestWord(t *testing.T) {
	for _, tt := range []struct {
		body string
		i    int
		want string
	}{{"ok 4711\n", 1, "4711"}, {"ok 4711\nmore lines", 0, "ok"}, {"ok\n 4711", 1, ""}, {"", 0, ""}} {
		if got := Word(tt.i)([]byte(tt.body)); got != tt.want {
			t.Errorf("Word(%d) of %q: %q, want %q", tt.i, tt.body, got, tt.want)
		}
	}
}
