// Package metrics serves the agent's figures in the Prometheus text
// exposition format at /metrics: the app's state, restarts and exits by
// reason, memory, OOM kills and uptime, dropped log lines, the traffic
// front's requests, and the agent's own process figures.
//
// The figures the agent already holds are read once per scrape from a
// Snapshot; the only ones kept here are the proxy's per-request counters and
// duration histogram, which ObserveRequest updates with a few atomic adds.
// The exposition is written by hand: it is a few dozen lines of text (see
// the package README for the libraries measured against it).
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"agent/internal/lifecycle"
)

// Snapshot is what the agent knows at the moment of a scrape.
type Snapshot struct {
	Version string // the agent's version, for agent_build_info; "" leaves it out

	State         lifecycle.State             // starting, running, backoff, ..., draining
	Up            bool                        // a process of the app runs
	Ready         bool                        // it is ready (serving)
	Restarts      uint64                      // restarts since the agent started
	Exits         map[lifecycle.Reason]uint64 // exits since the agent started, by reason (exited, crashed, oom-kill, ...)
	RSSBytes      uint64                      // resident memory of the app's whole process tree
	HeapCapMB     int                         // the V8 heap cap given to the app; 0 when left alone
	OOMKills      uint64                      // kernel OOM kills of the app's processes since the agent started
	UptimeSeconds float64                     // how long the current app process has run; 0 when none runs
	LogDropped    uint64                      // log lines the agent's log sinks dropped

	Proxy *ProxySnapshot // nil when the traffic front is off

	// Slots are the app's processes, one a slot (app.instances), with the
	// series labelled slot="INDEX".
	Slots []SlotSnapshot
}

// SlotSnapshot is one app process slot's part of a Snapshot.
type SlotSnapshot struct {
	Index         int
	Up, Ready     bool
	Restarts      uint64
	RSSBytes      uint64
	CPUSeconds    float64 // CPU use over the last sampling second, in CPU seconds a second
	UptimeSeconds float64
}

// ProxySnapshot is the traffic front's part of a Snapshot. Requests by
// status code and their durations come from ObserveRequest.
type ProxySnapshot struct {
	InFlight int64  // requests being forwarded or held now
	Held     int64  // requests waiting now for a ready app
	Replayed uint64 // requests sent a second time after a failed connection
	Failed   uint64 // responses the agent gave instead of the app (502, 503, 504)
}

// knownStates and knownReasons are the label values written even while
// their series are zero, so that rates and alerts work from the first
// scrape.
var (
	knownStates  = lifecycle.States()
	knownReasons = lifecycle.Reasons()
)

// durationBuckets are the upper bounds of the request duration histogram:
// from a fast cached response to a request held across a restart (hold
// defaults to 30 s).
var durationBuckets = []time.Duration{
	1 * time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	1 * time.Second, 2500 * time.Millisecond, 5 * time.Second,
	10 * time.Second, 30 * time.Second, 60 * time.Second,
}

// Status codes 100..599 are counted one by one; anything else as code
// "other".
const (
	minCode = 100
	maxCode = 599
)

// Metrics holds the per-request figures and serves the exposition.
type Metrics struct {
	source func() Snapshot

	codes    [maxCode - minCode + 2]atomic.Uint64 // last: other
	buckets  []atomic.Uint64                      // per durationBuckets, then +Inf
	sumNanos atomic.Uint64

	bufs sync.Pool // *[]byte for the exposition
}

// New returns Metrics that read the agent's figures from source, once per
// scrape. source must be safe to call from any goroutine.
func New(source func() Snapshot) *Metrics {
	return &Metrics{
		source:  source,
		buckets: make([]atomic.Uint64, len(durationBuckets)+1),
	}
}

// ObserveRequest counts one response of the traffic front with its status
// code and duration. It takes no lock: three atomic adds.
func (m *Metrics) ObserveRequest(code int, d time.Duration) {
	i := code - minCode
	if code < minCode || code > maxCode {
		i = len(m.codes) - 1
	}
	m.codes[i].Add(1)

	b := 0
	for b < len(durationBuckets) && d > durationBuckets[b] {
		b++
	}
	m.buckets[b].Add(1)
	if d > 0 {
		m.sumNanos.Add(uint64(d))
	}
}

// Counters are the per-request figures Metrics keeps, as an upgrade hands
// them to the next program so that its counters go on from there.
type Counters struct {
	Codes    map[int]uint64 `json:"codes,omitempty"` // by status code; 0 for "other"
	Buckets  []uint64       `json:"buckets"`         // per durationBuckets, then +Inf
	SumNanos uint64         `json:"sum_nanos"`
}

// Counters returns the per-request figures counted so far.
func (m *Metrics) Counters() Counters {
	c := Counters{Codes: map[int]uint64{}, SumNanos: m.sumNanos.Load()}
	for i := range m.codes {
		if n := m.codes[i].Load(); n > 0 {
			code := i + minCode
			if i == len(m.codes)-1 {
				code = 0
			}
			c.Codes[code] = n
		}
	}
	for i := range m.buckets {
		c.Buckets = append(c.Buckets, m.buckets[i].Load())
	}
	return c
}

// AddCounters adds c, the figures of the program before this one, to the
// ones counted here. Buckets of another layout are left out.
func (m *Metrics) AddCounters(c Counters) {
	for code, n := range c.Codes {
		i := code - minCode
		if code < minCode || code > maxCode {
			i = len(m.codes) - 1
		}
		m.codes[i].Add(n)
	}
	if len(c.Buckets) == len(m.buckets) {
		for i, n := range c.Buckets {
			m.buckets[i].Add(n)
		}
		m.sumNanos.Add(c.SumNanos)
	}
}

// Handler returns the handler of GET (and HEAD) /metrics; other paths get
// 404, other methods 405.
func (m *Metrics) Handler() http.Handler {
	return http.HandlerFunc(m.serveHTTP)
}

// contentType is the Prometheus text exposition format, version 0.0.4.
const contentType = "text/plain; version=0.0.4; charset=utf-8"

func (m *Metrics) serveHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	if r.URL.Path != "/metrics" {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("not found\n"))
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusMethodNotAllowed)
		_, _ = w.Write([]byte("method not allowed\n"))
		return
	}
	bp, _ := m.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	e := expo{b: (*bp)[:0]}
	m.write(&e, m.source())
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(e.b)))
	h.Set("Cache-Control", "no-store")
	if r.Method != http.MethodHead {
		_, _ = w.Write(e.b)
	}
	*bp = e.b
	m.bufs.Put(bp)
}

// write appends the whole exposition for s.
func (m *Metrics) write(e *expo, s Snapshot) {
	if s.Version != "" {
		e.help("agent_build_info", "gauge", "The agent's version, as a label; always 1.")
		e.sample("agent_build_info", "version", s.Version, 1)
	}

	e.help("agent_app_up", "gauge", "Whether a process of the app runs (1) or not (0).")
	e.sample("agent_app_up", "", "", b2f(s.Up))
	e.help("agent_app_ready", "gauge", "Whether the app is ready and serving (1) or not (0).")
	e.sample("agent_app_ready", "", "", b2f(s.Ready))
	e.help("agent_app_state", "gauge", "The app's state: 1 for the current one, 0 for the others.")
	for _, st := range knownStates {
		e.sample("agent_app_state", "state", string(st), b2f(s.State == st))
	}
	if s.State != "" && !slices.Contains(knownStates, s.State) {
		e.sample("agent_app_state", "state", string(s.State), 1)
	}
	e.help("agent_app_restarts_total", "counter", "Restarts of the app since the agent started.")
	e.sample("agent_app_restarts_total", "", "", float64(s.Restarts))
	e.help("agent_app_exits_total", "counter", "Exits of the app's processes since the agent started, by reason.")
	for _, r := range knownReasons {
		e.sample("agent_app_exits_total", "reason", string(r), float64(s.Exits[r]))
	}
	if len(s.Exits) > 0 {
		var other []lifecycle.Reason
		for r := range s.Exits {
			if !slices.Contains(knownReasons, r) {
				other = append(other, r)
			}
		}
		slices.Sort(other)
		for _, r := range other {
			e.sample("agent_app_exits_total", "reason", string(r), float64(s.Exits[r]))
		}
	}
	e.help("agent_app_rss_bytes", "gauge", "Resident memory of the app's whole process tree.")
	e.sample("agent_app_rss_bytes", "", "", float64(s.RSSBytes))
	e.help("agent_app_heap_cap_bytes", "gauge", "The V8 heap cap (--max-old-space-size) given to the app; 0 when not set.")
	e.sample("agent_app_heap_cap_bytes", "", "", float64(s.HeapCapMB)*(1<<20))
	e.help("agent_app_oom_kills_total", "counter", "Kernel OOM kills of the app's processes since the agent started.")
	e.sample("agent_app_oom_kills_total", "", "", float64(s.OOMKills))
	e.help("agent_app_uptime_seconds", "gauge", "How long the current app process has run; 0 when none runs.")
	e.sample("agent_app_uptime_seconds", "", "", s.UptimeSeconds)
	if len(s.Slots) > 0 {
		slot := func(name, typ, help string, v func(SlotSnapshot) float64) {
			e.help(name, typ, help)
			for _, sl := range s.Slots {
				e.sample(name, "slot", strconv.Itoa(sl.Index), v(sl))
			}
		}
		slot("agent_app_process_up", "gauge", "Whether the slot's process runs (1) or not (0).", func(sl SlotSnapshot) float64 { return b2f(sl.Up) })
		slot("agent_app_process_ready", "gauge", "Whether the slot's process is ready (1) or not (0).", func(sl SlotSnapshot) float64 { return b2f(sl.Ready) })
		slot("agent_app_process_restarts_total", "counter", "Restarts of the slot's process since the agent started.", func(sl SlotSnapshot) float64 { return float64(sl.Restarts) })
		slot("agent_app_process_rss_bytes", "gauge", "Resident memory of the slot's process tree.", func(sl SlotSnapshot) float64 { return float64(sl.RSSBytes) })
		slot("agent_app_process_cpu_usage", "gauge", "CPU use of the slot's process tree over the last second (1 = one CPU).", func(sl SlotSnapshot) float64 { return sl.CPUSeconds })
		slot("agent_app_process_uptime_seconds", "gauge", "How long the slot's process has run; 0 when none runs.", func(sl SlotSnapshot) float64 { return sl.UptimeSeconds })
	}
	e.help("agent_log_dropped_lines_total", "counter", "Log lines dropped because a log sink (stderr, the log file) could not keep up.")
	e.sample("agent_log_dropped_lines_total", "", "", float64(s.LogDropped))

	if p := s.Proxy; p != nil {
		m.writeProxy(e, p)
	}
	writeProcess(e)
}

// writeProxy appends the traffic front's series.
func (m *Metrics) writeProxy(e *expo, p *ProxySnapshot) {
	e.help("agent_proxy_requests_total", "counter", "Responses of the traffic front, by status code.")
	var code [3]byte
	for i := range m.codes {
		n := m.codes[i].Load()
		if n == 0 {
			continue
		}
		label := "other"
		if i < len(m.codes)-1 {
			label = string(strconv.AppendInt(code[:0], int64(i+minCode), 10))
		}
		e.sample("agent_proxy_requests_total", "code", label, float64(n))
	}

	const h = "agent_proxy_request_duration_seconds"
	e.help(h, "histogram", "Time from a request's arrival to the end of its response, holding included.")
	var cum uint64
	for i, le := range durationBuckets {
		cum += m.buckets[i].Load()
		e.bucket(h, le.Seconds(), cum)
	}
	cum += m.buckets[len(durationBuckets)].Load()
	e.bucket(h, math.Inf(1), cum)
	e.sample(h+"_sum", "", "", float64(m.sumNanos.Load())/1e9)
	e.sample(h+"_count", "", "", float64(cum))

	e.help("agent_proxy_in_flight_requests", "gauge", "Requests being forwarded or held now.")
	e.sample("agent_proxy_in_flight_requests", "", "", float64(p.InFlight))
	e.help("agent_proxy_held_requests", "gauge", "Requests waiting now for the app to be ready.")
	e.sample("agent_proxy_held_requests", "", "", float64(p.Held))
	e.help("agent_proxy_replayed_requests_total", "counter", "Requests sent once more after their connection to the app failed before any response byte.")
	e.sample("agent_proxy_replayed_requests_total", "", "", float64(p.Replayed))
	e.help("agent_proxy_failed_requests_total", "counter", "Responses the agent gave instead of the app (502, 503, 504).")
	e.sample("agent_proxy_failed_requests_total", "", "", float64(p.Failed))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// expo appends the text exposition format.
type expo struct{ b []byte }

func (e *expo) help(name, typ, help string) {
	e.b = append(e.b, "# HELP "...)
	e.b = append(e.b, name...)
	e.b = append(e.b, ' ')
	e.b = append(e.b, help...)
	e.b = append(e.b, "\n# TYPE "...)
	e.b = append(e.b, name...)
	e.b = append(e.b, ' ')
	e.b = append(e.b, typ...)
	e.b = append(e.b, '\n')
}

// sample appends one sample with at most one label (label "" for none).
func (e *expo) sample(name, label, value string, v float64) {
	e.b = append(e.b, name...)
	if label != "" {
		e.b = append(e.b, '{')
		e.b = append(e.b, label...)
		e.b = append(e.b, `="`...)
		e.b = appendLabelValue(e.b, value)
		e.b = append(e.b, `"}`...)
	}
	e.b = append(e.b, ' ')
	e.b = appendFloat(e.b, v)
	e.b = append(e.b, '\n')
}

func (e *expo) bucket(name string, le float64, n uint64) {
	e.b = append(e.b, name...)
	e.b = append(e.b, `_bucket{le="`...)
	e.b = appendFloat(e.b, le)
	e.b = append(e.b, `"} `...)
	e.b = strconv.AppendUint(e.b, n, 10)
	e.b = append(e.b, '\n')
}

func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case math.IsNaN(v):
		return append(b, "NaN"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// appendLabelValue escapes a label value as the format requires: backslash,
// double quote and line feed.
func appendLabelValue(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// Limits of the metrics server: a scraper sends one small request every
// few seconds; nothing else should be talking to it.
const (
	readHeaderTimeout = 2 * time.Second
	readTimeout       = 5 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 65 * time.Second
	maxHeaderBytes    = 4 << 10
	shutdownGrace     = time.Second
)

// Serve serves Handler on ln until ctx is cancelled, then shuts down with a
// short grace for a scrape in flight. The caller binds ln (loopback by
// default, never the health or traffic port). A cancelled context is a
// clean stop and returns nil.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           m.Handler(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(discard{}, "", 0),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("metrics: shutdown: %w", err)
	}
	if errors.Is(sctx.Err(), context.DeadlineExceeded) {
		srv.Close()
	}
	return nil
}

// discard drops the server's own error lines (TLS handshakes, bad
// requests from port scanners): nothing a scraper needs to see.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
