package metrics

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"agent/internal/lifecycle"
)

func init() {
	// Parse with the classic metric-name rules Prometheus servers and the
	// CloudWatch agent apply.
	model.NameValidationScheme = model.LegacyValidation
}

// serve starts m on a loopback port and returns its base URL; the server
// stops at the end of the test, and Serve must then return nil.
func serve(t *testing.T, m *Metrics) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- m.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Serve after cancel = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return "http://" + ln.Addr().String()
}

// scrape GETs /metrics and parses it with Prometheus' own text parser.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); expfmt.ResponseFormat(resp.Header) != expfmt.NewFormat(expfmt.TypeTextPlain) {
		t.Errorf("Content-Type %q is not the text format", ct)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value returns the value of the sample of family name whose labels are
// exactly labels (name, value pairs), failing the test if it is missing.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no family %s", name)
	}
	for _, m := range f.Metric {
		if len(m.Label) != len(labels)/2 {
			continue
		}
		match := true
		for i, l := range m.Label {
			if l.GetName() != labels[2*i] || l.GetValue() != labels[2*i+1] {
				match = false
			}
		}
		if !match {
			continue
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.Counter.GetValue()
		case dto.MetricType_GAUGE:
			return m.Gauge.GetValue()
		}
		t.Fatalf("%s: type %v", name, f.GetType())
	}
	t.Fatalf("no sample %s%v", name, labels)
	return 0
}

func TestMetrics(t *testing.T) {
	snap := Snapshot{
		Version:       "1.2.3",
		State:         "running",
		Up:            true,
		Ready:         true,
		Restarts:      4,
		Exits:         map[lifecycle.Reason]uint64{"crashed": 2, "oom-kill": 1, `new "reason"` + "\n": 1},
		RSSBytes:      183500800,
		HeapCapMB:     512,
		OOMKills:      1,
		UptimeSeconds: 42.5,
		LogDropped:    17,
		Proxy:         &ProxySnapshot{InFlight: 3, Held: 1, Replayed: 2, Failed: 5},
	}
	var mu sync.Mutex
	m := New(func() Snapshot {
		mu.Lock()
		defer mu.Unlock()
		return snap
	})
	base := serve(t, m)

	for _, r := range []struct {
		code int
		d    time.Duration
	}{
		{200, 500 * time.Microsecond},
		{200, 3 * time.Millisecond},
		{200, 20 * time.Millisecond},
		{503, 2 * time.Second},
		{0, 90 * time.Second}, // no status: a client gone before the response
	} {
		m.ObserveRequest(r.code, r.d)
	}

	fams := scrape(t, base)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"agent_build_info", []string{"version", "1.2.3"}, 1},
		{"agent_app_up", nil, 1},
		{"agent_app_ready", nil, 1},
		{"agent_app_state", []string{"state", "running"}, 1},
		{"agent_app_state", []string{"state", "backoff"}, 0},
		{"agent_app_restarts_total", nil, 4},
		{"agent_app_exits_total", []string{"reason", "crashed"}, 2},
		{"agent_app_exits_total", []string{"reason", "oom-kill"}, 1},
		{"agent_app_exits_total", []string{"reason", "heap-oom"}, 0},
		{"agent_app_exits_total", []string{"reason", `new "reason"` + "\n"}, 1},
		{"agent_app_rss_bytes", nil, 183500800},
		{"agent_app_heap_cap_bytes", nil, 512 << 20},
		{"agent_app_oom_kills_total", nil, 1},
		{"agent_app_uptime_seconds", nil, 42.5},
		{"agent_log_dropped_lines_total", nil, 17},
		{"agent_proxy_requests_total", []string{"code", "200"}, 3},
		{"agent_proxy_requests_total", []string{"code", "503"}, 1},
		{"agent_proxy_requests_total", []string{"code", "other"}, 1},
		{"agent_proxy_in_flight_requests", nil, 3},
		{"agent_proxy_held_requests", nil, 1},
		{"agent_proxy_replayed_requests_total", nil, 2},
		{"agent_proxy_failed_requests_total", nil, 5},
		{"process_open_fds", nil, -1},
		{"go_goroutines", nil, -1},
	} {
		got := value(t, fams, c.name, c.labels...)
		if c.want < 0 {
			if got <= 0 {
				t.Errorf("%s = %v, want > 0", c.name, got)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if n := len(fams["agent_proxy_requests_total"].Metric); n != 3 {
		t.Errorf("%d request series, want 3 (only codes seen)", n)
	}

	// The agent's own process: its real RSS and start time.
	rss := value(t, fams, "process_resident_memory_bytes")
	if rss < 1<<20 || rss > 1<<32 {
		t.Errorf("process_resident_memory_bytes = %v", rss)
	}
	if vsize := value(t, fams, "process_virtual_memory_bytes"); vsize < rss {
		t.Errorf("process_virtual_memory_bytes = %v, below the resident %v", vsize, rss)
	}
	if st := value(t, fams, "process_start_time_seconds"); math.Abs(st-float64(time.Now().Unix())) > 3600 {
		t.Errorf("process_start_time_seconds = %v, now is %d", st, time.Now().Unix())
	}

	h := fams["agent_proxy_request_duration_seconds"]
	if h == nil || h.GetType() != dto.MetricType_HISTOGRAM || len(h.Metric) != 1 {
		t.Fatalf("duration histogram: %v", h)
	}
	hist := h.Metric[0].Histogram
	if hist.GetSampleCount() != 5 {
		t.Errorf("histogram count %d, want 5", hist.GetSampleCount())
	}
	wantSum := (500*time.Microsecond + 3*time.Millisecond + 20*time.Millisecond + 2*time.Second + 90*time.Second).Seconds()
	if math.Abs(hist.GetSampleSum()-wantSum) > 1e-9 {
		t.Errorf("histogram sum %v, want %v", hist.GetSampleSum(), wantSum)
	}
	wantCum := map[float64]uint64{0.001: 1, 0.0025: 1, 0.005: 2, 0.025: 3, 1: 3, 2.5: 4, 60: 4}
	for _, b := range hist.Bucket {
		if want, ok := wantCum[b.GetUpperBound()]; ok && b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}

	// Without the traffic front, no proxy series.
	mu.Lock()
	snap.Proxy = nil
	snap.State = "backoff"
	snap.Up, snap.Ready = false, false
	mu.Unlock()
	fams = scrape(t, base)
	for name := range fams {
		if strings.HasPrefix(name, "agent_proxy_") {
			t.Errorf("%s served with the proxy off", name)
		}
	}
	if got := value(t, fams, "agent_app_state", "state", "backoff"); got != 1 {
		t.Errorf("state backoff = %v", got)
	}
	if got := value(t, fams, "agent_app_up"); got != 0 {
		t.Errorf("agent_app_up = %v", got)
	}
}

func TestMetricsHTTP(t *testing.T) {
	base := serve(t, New(func() Snapshot { return Snapshot{State: "running"} }))
	for _, c := range []struct {
		method, path string
		code         int
		body         bool
	}{
		{"GET", "/metrics", 200, true},
		{"HEAD", "/metrics", 200, false},
		{"POST", "/metrics", 405, true},
		{"GET", "/", 404, true},
		{"GET", "/metrics/", 404, true},
		{"GET", "/health.html", 404, true},
	} {
		req, err := http.NewRequest(c.method, base+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.code)
		}
		if (len(body) > 0) != c.body {
			t.Errorf("%s %s: %d body bytes", c.method, c.path, len(body))
		}
	}
}

func TestServeListenerClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	err = New(func() Snapshot { return Snapshot{} }).Serve(context.Background(), ln)
	if err == nil || !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve on a closed listener = %v, want net.ErrClosed", err)
	}
}

func TestObserveWhileScraping(t *testing.T) {
	m := New(func() Snapshot { return Snapshot{Proxy: &ProxySnapshot{}} })
	base := serve(t, m)
	const workers, each = 4, 2000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				m.ObserveRequest(200+w, time.Duration(i)*time.Millisecond)
			}
		})
	}
	for range 5 {
		scrape(t, base)
	}
	wg.Wait()
	fams := scrape(t, base)
	if got := fams["agent_proxy_request_duration_seconds"].Metric[0].Histogram.GetSampleCount(); got != workers*each {
		t.Errorf("histogram count %d, want %d", got, workers*each)
	}
	for w := range workers {
		if got := value(t, fams, "agent_proxy_requests_total", "code", strconv.Itoa(200+w)); got != each {
			t.Errorf("code %d: %v, want %d", 200+w, got, each)
		}
	}
}

func BenchmarkObserveRequest(b *testing.B) {
	m := New(func() Snapshot { return Snapshot{} })
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveRequest(200, 12*time.Millisecond)
	}
}

func BenchmarkObserveRequestParallel(b *testing.B) {
	m := New(func() Snapshot { return Snapshot{} })
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ObserveRequest(200, 12*time.Millisecond)
		}
	})
}

func BenchmarkScrape(b *testing.B) {
	m := New(func() Snapshot {
		return Snapshot{State: "running", Up: true, Exits: map[lifecycle.Reason]uint64{"crashed": 1}, Proxy: &ProxySnapshot{}}
	})
	for c := 200; c < 210; c++ {
		m.ObserveRequest(c, time.Millisecond)
	}
	h := m.Handler()
	req, _ := http.NewRequest("GET", "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(discardResponse{}, req)
	}
}

type discardResponse struct{}

func (discardResponse) Header() http.Header         { return http.Header{} }
func (discardResponse) Write(p []byte) (int, error) { return len(p), nil }
func (discardResponse) WriteHeader(int)             {}

func TestSlotSeries(t *testing.T) {
	m := New(func() Snapshot {
		return Snapshot{State: lifecycle.Degraded, Up: true, Ready: true, Slots: []SlotSnapshot{
			{Index: 0, Up: true, Ready: true, Restarts: 2, RSSBytes: 100 << 20, CPUSeconds: 0.5, UptimeSeconds: 30},
			{Index: 1, Up: false, Restarts: 5},
		}}
	})
	fams := scrape(t, serve(t, m))
	for _, c := range []struct {
		name, slot string
		want       float64
	}{
		{"agent_app_process_up", "0", 1},
		{"agent_app_process_up", "1", 0},
		{"agent_app_process_ready", "1", 0},
		{"agent_app_process_restarts_total", "0", 2},
		{"agent_app_process_restarts_total", "1", 5},
		{"agent_app_process_rss_bytes", "0", 100 << 20},
		{"agent_app_process_cpu_usage", "0", 0.5},
		{"agent_app_process_uptime_seconds", "0", 30},
	} {
		if got := value(t, fams, c.name, "slot", c.slot); got != c.want {
			t.Errorf("%s{slot=%q} = %v, want %v", c.name, c.slot, got, c.want)
		}
	}
	if got := value(t, fams, "agent_app_state", "state", "degraded"); got != 1 {
		t.Errorf("agent_app_state{state=degraded} = %v, want 1", got)
	}
}

// An upgrade hands the per-request counters over: the next program's
// exposition goes on from them.
func TestCountersCarryOver(t *testing.T) {
	old := New(func() Snapshot { return Snapshot{Proxy: &ProxySnapshot{}} })
	old.ObserveRequest(200, 3*time.Millisecond)
	old.ObserveRequest(200, 3*time.Millisecond)
	old.ObserveRequest(502, 2*time.Second)
	old.ObserveRequest(700, time.Millisecond)
	next := New(func() Snapshot { return Snapshot{Proxy: &ProxySnapshot{}} })
	next.ObserveRequest(200, time.Millisecond)
	next.AddCounters(old.Counters())
	c := next.Counters()
	if c.Codes[200] != 3 || c.Codes[502] != 1 || c.Codes[0] != 1 {
		t.Errorf("codes %v, want 200: 3, 502: 1, other: 1", c.Codes)
	}
	var total uint64
	for _, n := range c.Buckets {
		total += n
	}
	if total != 5 {
		t.Errorf("histogram counts %d requests, want 5", total)
	}
	if want := uint64(2*time.Second + 8*time.Millisecond); c.SumNanos != want {
		t.Errorf("sum %d, want %d", c.SumNanos, want)
	}
}
