package benchkit

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
	KindRefused = "connection refused"  // dial refused: nothing listens
	KindDial    = "connect error"       // dial failed otherwise (timeout, ...)
	KindReset   = "reset"               // ECONNRESET/EPIPE before any response byte
	KindClosed  = "closed, no response" // EOF before any response byte
	KindCut     = "response cut"        // the response began, then the connection failed
	KindTimeout = "timeout"             // no complete response within the timeout
	KindBad     = "malformed response"  // bytes came that are not HTTP
)

// LoadConfig is a fixed-rate load: Rate requests a second to Addr, cycling
// through Paths, each given Timeout to complete.
type LoadConfig struct {
	Addr    string // host:port
	Paths   []string
	Rate    int
	Timeout time.Duration
	MaxIdle int // keep-alive connections kept for reuse (0: 64)
}

// LoadResult is what a load saw.
type LoadResult struct {
	Total     int
	Failed    int
	Kinds     map[string]int // failure kind -> count
	Latencies []float64      // ms, of the successful requests
	Conns     int            // connections opened
}

// Merge adds o into r.
func (r *LoadResult) Merge(o LoadResult) {
	r.Total += o.Total
	r.Failed += o.Failed
	r.Conns += o.Conns
	if r.Kinds == nil {
		r.Kinds = map[string]int{}
	}
	for k, v := range o.Kinds {
		r.Kinds[k] += v
	}
	r.Latencies = append(r.Latencies, o.Latencies...)
}

// KindsString lists the failure kinds, most frequent first.
func KindsString(kinds map[string]int) string {
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

// LoadGen sends requests at a fixed rate, open loop: a request goes out on
// its tick whether or not the earlier ones came back, so a stall cannot slow
// the load down and hide itself. Requests go over a pool of keep-alive
// connections, as a load balancer's do: a request takes an idle connection
// when there is one and dials a new one otherwise; a connection goes back
// to the pool after a complete response. Nothing is ever retried: every
// failure counts, with its kind.
type LoadGen struct {
	c    LoadConfig
	idle chan *loadConn

	mu  sync.Mutex
	res LoadResult
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

func NewLoadGen(c LoadConfig) *LoadGen {
	if c.MaxIdle <= 0 {
		c.MaxIdle = 64
	}
	return &LoadGen{c: c, idle: make(chan *loadConn, c.MaxIdle), res: LoadResult{Kinds: map[string]int{}}}
}

// Run sends the load until ctx ends, then waits for the requests in flight
// and returns what it saw.
func (g *LoadGen) Run(ctx context.Context) LoadResult {
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(g.c.Rate)
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
		path := g.c.Paths[i%len(g.c.Paths)]
		wg.Go(func() { g.one(path) })
	}
}

func (g *LoadGen) finish() LoadResult {
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
func (g *LoadGen) one(path string) {
	t0 := time.Now()
	kind := g.exchange(path, t0.Add(g.c.Timeout))
	ms := float64(time.Since(t0)) / float64(time.Millisecond)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.res.Total++
	if kind != "" {
		g.res.Failed++
		g.res.Kinds[kind]++
		return
	}
	g.res.Latencies = append(g.res.Latencies, ms)
}

// exchange sends GET path and reads the whole response; it returns the
// failure kind, or "" for a 200.
func (g *LoadGen) exchange(path string, deadline time.Time) string {
	var lc *loadConn
	select {
	case lc = <-g.idle:
	default:
		d := net.Dialer{Deadline: deadline}
		c, err := d.Dial("tcp", g.c.Addr)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				return KindRefused
			}
			if isTimeout(err) {
				return KindTimeout
			}
			return KindDial
		}
		g.mu.Lock()
		g.res.Conns++
		g.mu.Unlock()
		lc = newLoadConn(c)
	}
	kind, reuse := exchangeOn(lc, g.c.Addr, path, deadline)
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
	if _, err := fmt.Fprintf(lc.c, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench-load\r\n\r\n", path, host); err != nil {
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
		return KindBad, false
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
		return KindTimeout
	case began:
		return KindCut
	case isReset(err):
		return KindReset
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return KindClosed
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

// Percentile returns the q-quantile of v (nearest rank); NaN for none.
func Percentile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)]
}

// MedianInt returns the median of v (the mean of the middle two for an
// even count, rounded).
func MedianInt(v []int) int {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return int(math.Round(float64(s[n/2-1]+s[n/2]) / 2))
}

// Median returns the median of v leaving out NaNs (the mean of the middle
// two for an even count); NaN for none.
func Median(v []float64) float64 {
	s := slices.DeleteFunc(slices.Clone(v), math.IsNaN)
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
