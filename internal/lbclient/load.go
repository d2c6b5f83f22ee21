package lbclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Load is a stream of requests to one address over one Client's kept
// connections, bounded by Duration, Count or both.
//
// With Rate set it is open loop: the i-th request goes out at i/Rate
// seconds from the start whether or not the earlier ones came back, so a
// stall cannot slow the load down and hide itself (the requests it holds
// each take a connection of their own, as at a load balancer). Without
// Rate it is closed loop: Conns workers each send a request as soon as
// their previous one is answered.
type Load struct {
	Addr     string    // host:port, the only place traffic goes
	Requests []Request // sent in turn; none means GET /
	Rate     int       // requests a second; 0 means closed loop
	// Conns is the kept connections: the requests of a fixed rate spread
	// over them (Client.Conns; 0 reuses an idle one whenever there is
	// one), a closed loop runs that many workers (0 means 1).
	Conns    int
	MaxIdle  int           // Client.MaxIdle
	Timeout  time.Duration // per request; 0 means DefaultTimeout
	Duration time.Duration // no request starts after this long
	Count    int           // no more requests than this
	// Check, if set, is asked about the body of every 2xx answer; an
	// answer it fails counts as KindBody.
	Check func(body []byte) error
	// Key, if set, names the answerer of every answer that counts as
	// ok (the app process, say): Report.Answers tallies them.
	Key       func(body []byte) string
	UserAgent string // Client.UserAgent
	Errors    int    // distinct failure texts kept in Report.Errors; 0 means 5
	// Timeline keeps every request's outcome in Report.Timeline.
	Timeline bool
}

// Report is what a load saw. Latencies are of the requests that succeeded,
// from the request's start (its dial, if any) to its last body byte.
type Report struct {
	Sent    int            // requests that went out and are over
	OK      int            // 2xx answers that passed the check
	Failed  int            // the others
	Kinds   map[string]int // failure kind -> count
	Errors  []string       // the first few distinct failure texts
	P50     time.Duration
	P99     time.Duration
	Max     time.Duration
	Answers map[string]int // with Load.Key: ok answers by key
	Conns   int            // connections opened
	// Timeline is every request with Load.Timeline set, in the order
	// they ended.
	Timeline []Outcome
}

// Outcome is one request of a load: when it began (its dial, if any) and
// ended, and its failure kind, "" for a success.
type Outcome struct {
	Start, End time.Time
	Kind       string
}

// String is "FAILED of SENT".
func (r Report) String() string { return fmt.Sprintf("%d of %d", r.Failed, r.Sent) }

// Share is the fraction of the ok answers whose key was key, 0 for none.
func (r Report) Share(key string) float64 {
	if r.OK == 0 {
		return 0
	}
	return float64(r.Answers[key]) / float64(r.OK)
}

// FormatKinds lists failure kinds with their counts, most frequent first:
// "connection refused 40, HTTP 502 2, reset 2".
func FormatKinds(kinds map[string]int) string {
	type kv struct {
		k string
		v int
	}
	var s []kv
	for k, v := range kinds {
		s = append(s, kv{k, v})
	}
	sort.Slice(s, func(i, j int) bool {
		if s[i].v != s[j].v {
			return s[i].v > s[j].v
		}
		return s[i].k < s[j].k
	})
	out := make([]string, len(s))
	for i, e := range s {
		out[i] = fmt.Sprintf("%s %d", e.k, e.v)
	}
	return strings.Join(out, ", ")
}

// Prefix is a Load.Check: the body must start with p.
func Prefix(p string) func(body []byte) error {
	return func(body []byte) error {
		if !bytes.HasPrefix(body, []byte(p)) {
			return fmt.Errorf("body %q does not start with %q", clip(body), p)
		}
		return nil
	}
}

// Word is a Load.Key: the body's i-th word (from 0) on its first line, ""
// if it has fewer. Word(1) of "ok 4711\n" is "4711".
func Word(i int) func(body []byte) string {
	return func(body []byte) string {
		line, _, _ := bytes.Cut(body, []byte("\n"))
		if f := strings.Fields(string(line)); i < len(f) {
			return f[i]
		}
		return ""
	}
}

// Run sends the load until its bound, or until ctx ends, and returns what
// it saw once the requests in flight are over.
func (l Load) Run(ctx context.Context) (Report, error) {
	r, err := l.Start(ctx)
	if err != nil {
		return Report{}, err
	}
	return r.Wait(), nil
}

// Running is a load under way.
type Running struct {
	l      Load
	c      *Client
	sent   atomic.Int64
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	rep       Report
	latencies []time.Duration
}

// Start starts the load and returns at once. It ends at its bound, when
// ctx ends, or at Stop; a request already sent is never cut short: it
// ends with its answer or its timeout.
func (l Load) Start(ctx context.Context) (*Running, error) {
	switch {
	case l.Addr == "":
		return nil, errors.New("load: no address")
	case l.Duration <= 0 && l.Count <= 0:
		return nil, errors.New("load: no bound: set a duration or a count")
	case l.Rate < 0 || l.Conns < 0:
		return nil, errors.New("load: negative rate or connections")
	}
	if len(l.Requests) == 0 {
		l.Requests = []Request{{}}
	}
	if l.Errors <= 0 {
		l.Errors = 5
	}
	conns := l.Conns
	if l.Rate == 0 {
		conns = max(conns, 1)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &Running{
		l:      l,
		c:      &Client{Addr: l.Addr, Timeout: l.Timeout, Conns: conns, MaxIdle: l.MaxIdle, UserAgent: l.UserAgent},
		cancel: cancel,
		done:   make(chan struct{}),
		rep:    Report{Kinds: map[string]int{}},
	}
	if l.Key != nil {
		r.rep.Answers = map[string]int{}
	}
	go func() {
		defer close(r.done)
		defer cancel()
		var end time.Time
		if l.Duration > 0 {
			end = time.Now().Add(l.Duration)
		}
		// Requests in flight outlive the stop: each ends by its answer or
		// its timeout.
		reqCtx := context.WithoutCancel(ctx)
		if l.Rate > 0 {
			r.openLoop(ctx, reqCtx, end)
		} else {
			r.closedLoop(ctx, reqCtx, end, conns)
		}
		r.c.Close()
		r.finish()
	}()
	return r, nil
}

// Sent returns how many requests have gone out so far.
func (r *Running) Sent() int { return int(r.sent.Load()) }

// Dials returns how many connections the load has opened so far.
func (r *Running) Dials() int { return r.c.Dials() }

// Stop stops sending, waits for the requests in flight and returns the
// report.
func (r *Running) Stop() Report {
	r.cancel()
	return r.Wait()
}

// Wait waits for the load's end and returns the report.
func (r *Running) Wait() Report {
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rep
}

// openLoop sends Rate requests a second, each on its tick.
func (r *Running) openLoop(ctx, reqCtx context.Context, end time.Time) {
	var wg sync.WaitGroup
	defer wg.Wait()
	interval := time.Second / time.Duration(r.l.Rate)
	start := time.Now()
	for i := 0; r.l.Count <= 0 || i < r.l.Count; i++ {
		// The i-th request's tick, from the start: timer slack does not
		// lower the rate.
		tick := start.Add(time.Duration(i) * interval)
		if !end.IsZero() && tick.After(end) {
			return
		}
		if !sleepUntil(ctx, tick) {
			return
		}
		req := r.l.Requests[i%len(r.l.Requests)]
		r.sent.Add(1)
		wg.Go(func() { r.one(reqCtx, req) })
	}
}

// closedLoop runs workers that each send a request when their last one is
// over.
func (r *Running) closedLoop(ctx, reqCtx context.Context, end time.Time, workers int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil && (end.IsZero() || time.Now().Before(end)) {
				i := int(next.Add(1) - 1)
				if r.l.Count > 0 && i >= r.l.Count {
					return
				}
				r.sent.Add(1)
				r.one(reqCtx, r.l.Requests[i%len(r.l.Requests)])
			}
		})
	}
	wg.Wait()
}

// sleepUntil waits until t; it reports false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// one sends req and records its outcome.
func (r *Running) one(ctx context.Context, req Request) {
	t0 := time.Now()
	resp, err := r.c.Do(ctx, req)
	t1 := time.Now()
	took := t1.Sub(t0)
	kind, text := Kind(resp, err), ""
	switch {
	case err != nil:
		text = err.Error()
	case kind != "":
		text = fmt.Sprintf("%s: %q", kind, clip(resp.Body))
	case r.l.Check != nil:
		if err := r.l.Check(resp.Body); err != nil {
			kind, text = KindBody, KindBody+": "+err.Error()
		}
	}
	var key string
	if kind == "" && r.l.Key != nil {
		key = r.l.Key(resp.Body)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rep.Sent++
	if r.l.Timeline {
		r.rep.Timeline = append(r.rep.Timeline, Outcome{Start: t0, End: t1, Kind: kind})
	}
	if kind != "" {
		r.rep.Failed++
		r.rep.Kinds[kind]++
		if len(r.rep.Errors) < r.l.Errors && !slices.Contains(r.rep.Errors, text) {
			r.rep.Errors = append(r.rep.Errors, text)
		}
		return
	}
	r.rep.OK++
	r.latencies = append(r.latencies, took)
	if r.l.Key != nil {
		r.rep.Answers[key]++
	}
}

// finish fills in the figures taken over all requests.
func (r *Running) finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rep.Conns = r.c.Dials()
	// Appended as each took the lock: put the few that raced in order.
	slices.SortStableFunc(r.rep.Timeline, func(a, b Outcome) int { return a.End.Compare(b.End) })
	slices.Sort(r.latencies)
	r.rep.P50 = percentile(r.latencies, 0.50)
	r.rep.P99 = percentile(r.latencies, 0.99)
	r.rep.Max = percentile(r.latencies, 1)
}

// percentile returns the q-quantile of the sorted s (nearest rank), 0 for
// none.
func percentile(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)]
}

// clip is the start of a body, for an error text.
func clip(body []byte) []byte {
	if len(body) > 60 {
		return body[:60]
	}
	return body
}
