package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Failure kinds, as a load balancer in front would see them. Every one of
// them is a 502 (or the status itself) at an ALB.
const (
	kindRefused = "connection refused"  // dial refused: nothing listens
	kindDial    = "connect error"       // dial failed otherwise (timeout, ...)
	kindReset   = "reset"               // ECONNRESET/EPIPE before any response byte
	kindClosed  = "closed, no response" // EOF before any response byte
	kindCut     = "response cut"        // the response began, then the connection failed
	kindTimeout = "timeout"             // no complete response within the timeout
	kindBad     = "malformed response"  // bytes came that are not HTTP
)

// loadConfig is a fixed-rate load: rate requests a second to addr, cycling
// through paths, each given timeout to complete.
type loadConfig struct {
	addr    string // host:port
	paths   []string
	rate    int
	timeout time.Duration
	maxIdle int // keep-alive connections kept for reuse
}

// loadResult is what a load saw.
type loadResult struct {
	total     int
	failed    int
	kinds     map[string]int // failure kind -> count
	latencies []float64      // ms, of the successful requests
	conns     int            // connections opened
}

// merge adds o into r.
func (r *loadResult) merge(o loadResult) {
	r.total += o.total
	r.failed += o.failed
	r.conns += o.conns
	if r.kinds == nil {
		r.kinds = map[string]int{}
	}
	for k, v := range o.kinds {
		r.kinds[k] += v
	}
	r.latencies = append(r.latencies, o.latencies...)
}

// kindsString lists the failure kinds, most frequent first.
func kindsString(kinds map[string]int) string {
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
	var out []string
	for _, e := range s {
		out = append(out, fmt.Sprintf("%s %d", e.k, e.v))
	}
	return strings.Join(out, ", ")
}

// loadGen sends requests at a fixed rate, open loop: a request goes out on
// its tick whether or not the earlier ones came back, so a stall cannot slow
// the load down and hide itself. Requests go over a pool of keep-alive
// connections, as a load balancer's do: a request takes an idle connection
// when there is one and dials a new one otherwise; a connection goes back
// to the pool after a complete response. Nothing is ever retried: every
// failure counts, with its kind.
type loadGen struct {
	c    loadConfig
	idle chan *loadConn

	mu  sync.Mutex
	res loadResult
}

type loadConn struct {
	c  net.Conn
	rr *readRecorder
	br *bufio.Reader
}

// readRecorder keeps the connection's read error, so that a response cut
// in its header (which the HTTP parser reports as malformed) is told apart
// from one that really is malformed.
type readRecorder struct {
	r   io.Reader
	err error
}

func (r *readRecorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil {
		r.err = err
	}
	return n, err
}

func newLoadConn(c net.Conn) *loadConn {
	rr := &readRecorder{r: c}
	return &loadConn{c: c, rr: rr, br: bufio.NewReader(rr)}
}

func newLoadGen(c loadConfig) *loadGen {
	if c.maxIdle <= 0 {
		c.maxIdle = 64
	}
	return &loadGen{c: c, idle: make(chan *loadConn, c.maxIdle), res: loadResult{kinds: map[string]int{}}}
}

// run sends the load until ctx ends, then waits for the requests in flight
// and returns what it saw.
func (g *loadGen) run(ctx context.Context) loadResult {
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(g.c.rate)
	start := time.Now()
	for i := 0; ; i++ {
		// The i-th request's tick, measured from the start, so timer
		// slack does not lower the rate.
		next := start.Add(time.Duration(i) * interval)
		if d := time.Until(next); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				wg.Wait()
				return g.finish()
			case <-t.C:
			}
		} else if ctx.Err() != nil {
			wg.Wait()
			return g.finish()
		}
		path := g.c.paths[i%len(g.c.paths)]
		wg.Go(func() { g.one(path) })
	}
}

func (g *loadGen) finish() loadResult {
	for {
		select {
		case lc := <-g.idle:
			lc.c.Close()
		default:
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.res
		}
	}
}

// one sends one request and records its outcome.
func (g *loadGen) one(path string) {
	t0 := time.Now()
	kind := g.exchange(path, t0.Add(g.c.timeout))
	ms := float64(time.Since(t0)) / float64(time.Millisecond)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.res.total++
	if kind != "" {
		g.res.failed++
		g.res.kinds[kind]++
		return
	}
	g.res.latencies = append(g.res.latencies, ms)
}

// exchange sends GET path and reads the whole response; it returns the
// failure kind, or "" for a 200.
func (g *loadGen) exchange(path string, deadline time.Time) string {
	var lc *loadConn
	select {
	case lc = <-g.idle:
	default:
		d := net.Dialer{Deadline: deadline}
		c, err := d.Dial("tcp", g.c.addr)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				return kindRefused
			}
			if isTimeout(err) {
				return kindTimeout
			}
			return kindDial
		}
		g.mu.Lock()
		g.res.conns++
		g.mu.Unlock()
		lc = newLoadConn(c)
	}
	kind, reuse := exchangeOn(lc, g.c.addr, path, deadline)
	if !reuse {
		lc.c.Close()
		return kind
	}
	select {
	case g.idle <- lc:
	default:
		lc.c.Close()
	}
	return kind
}

// exchangeOn runs one request on lc and reports the failure kind ("" for a
// 200) and whether the connection can carry another request.
func exchangeOn(lc *loadConn, host, path string, deadline time.Time) (kind string, reuse bool) {
	lc.c.SetDeadline(deadline)
	if _, err := fmt.Fprintf(lc.c, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench-traffic\r\n\r\n", path, host); err != nil {
		return classify(err, false), false
	}
	// Whether any response byte came decides between "no response" (the
	// proxy could have replayed it) and "cut".
	if _, err := lc.br.Peek(1); err != nil {
		return classify(err, false), false
	}
	resp, err := http.ReadResponse(lc.br, nil)
	if err != nil {
		if lc.rr.err != nil {
			return classify(lc.rr.err, true), false
		}
		return kindBad, false
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return classify(err, true), false
	}
	if resp.StatusCode != http.StatusOK {
		kind = fmt.Sprintf("HTTP %d", resp.StatusCode)
	}
	return kind, !resp.Close
}

// classify names a connection error; began reports whether a response byte
// had already arrived.
func classify(err error, began bool) string {
	switch {
	case isTimeout(err):
		return kindTimeout
	case began:
		return kindCut
	case isReset(err):
		return kindReset
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return kindClosed
	}
	return "error: " + err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// percentile returns the q-quantile of v (nearest rank); NaN for none.
func percentile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)]
}
