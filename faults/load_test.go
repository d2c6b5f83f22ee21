package faults

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The suite's client counts requests as a load balancer would: over
// kept-alive connections, never retried. Go's http.Transport is not used
// for counting: it silently retries a GET whose kept connection the server
// closed before answering, where an ALB answers 502.

// requestTimeout is how long a request may take before it counts as lost:
// far more than a hold through a restart needs, far less than an ALB's 60 s.
const requestTimeout = 10 * time.Second

// Failure kinds, as a load balancer in front would see them.
const (
	kindRefused = "connection refused"  // dial refused: nothing listens
	kindDial    = "connect error"       // dial failed otherwise
	kindReset   = "reset"               // ECONNRESET/EPIPE before any response byte
	kindClosed  = "closed, no response" // EOF before any response byte
	kindCut     = "response cut"        // the response began, then the connection failed
	kindTimeout = "timeout"             // no complete response within requestTimeout
	kindBad     = "malformed response"  // bytes came that are not HTTP
)

// kaClient sends GET / to addr over a pool of kept-alive connections: a
// request takes an idle connection when there is one and dials otherwise;
// a connection goes back to the pool after a complete response.
type kaClient struct {
	addr string
	idle chan *kaConn
}

type kaConn struct {
	c   net.Conn
	rec *readRecorder
	br  *bufio.Reader
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

func newKAClient(addr string) *kaClient {
	return &kaClient{addr: addr, idle: make(chan *kaConn, 64)}
}

// get sends one request and returns the failure kind, "" for a 200.
func (k *kaClient) get() string {
	deadline := time.Now().Add(requestTimeout)
	var kc *kaConn
	select {
	case kc = <-k.idle:
	default:
		d := net.Dialer{Deadline: deadline}
		c, err := d.Dial("tcp", k.addr)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			return kindRefused
		case err != nil && isTimeout(err):
			return kindTimeout
		case err != nil:
			return kindDial
		}
		rec := &readRecorder{r: c}
		kc = &kaConn{c: c, rec: rec, br: bufio.NewReader(rec)}
	}
	kind, reuse := kc.exchange(k.addr, deadline)
	if reuse {
		select {
		case k.idle <- kc:
			return kind
		default:
		}
	}
	kc.c.Close()
	return kind
}

// exchange runs one request on kc and reports the failure kind and whether
// the connection can carry another request.
func (kc *kaConn) exchange(host string, deadline time.Time) (kind string, reuse bool) {
	kc.c.SetDeadline(deadline)
	if _, err := fmt.Fprintf(kc.c, "GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: faults\r\n\r\n", host); err != nil {
		return classify(err, false), false
	}
	// Whether any response byte came decides between "no response" and "cut".
	if _, err := kc.br.Peek(1); err != nil {
		return classify(err, false), false
	}
	resp, err := http.ReadResponse(kc.br, nil)
	if err != nil {
		if kc.rec.err != nil {
			return classify(kc.rec.err, true), false
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

// close closes the idle connections.
func (k *kaClient) close() {
	for {
		select {
		case kc := <-k.idle:
			kc.c.Close()
		default:
			return
		}
	}
}

// classify names a connection error; began reports whether a response byte
// had already arrived.
func classify(err error, began bool) string {
	switch {
	case isTimeout(err):
		return kindTimeout
	case began:
		return kindCut
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
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

// loadResult is what a load saw.
type loadResult struct {
	sent, failed int
	kinds        map[string]int // failure kind -> count
	slowest      time.Duration  // of the requests answered 200
}

// String is the table's figure: "FAILED of SENT".
func (r loadResult) String() string { return fmt.Sprintf("%d of %d", r.failed, r.sent) }

// Kinds lists the failure kinds, most frequent first.
func (r loadResult) Kinds() string {
	type kv struct {
		k string
		v int
	}
	var s []kv
	for k, v := range r.kinds {
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

// loadLoop sends GETs at a fixed rate, open loop: a request goes out on its
// tick whether or not the earlier ones came back, so a hung app cannot
// slow the load down and hide itself.
type loadLoop struct {
	c    *kaClient
	sent atomic.Int64
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu  sync.Mutex
	res loadResult
}

// startLoad sends perSecond requests a second to addr until end (or the
// end of the test).
func startLoad(t *testing.T, addr string, perSecond int) *loadLoop {
	l := &loadLoop{c: newKAClient(addr), stop: make(chan struct{}), done: make(chan struct{}), res: loadResult{kinds: map[string]int{}}}
	go func() {
		defer close(l.done)
		var wg sync.WaitGroup
		interval := time.Second / time.Duration(perSecond)
		start := time.Now()
		for i := 0; ; i++ {
			// The i-th request's tick, from the start: timer slack does
			// not lower the rate.
			tick := time.NewTimer(time.Until(start.Add(time.Duration(i) * interval)))
			select {
			case <-l.stop:
				tick.Stop()
				wg.Wait()
				l.c.close()
				return
			case <-tick.C:
			}
			l.sent.Add(1)
			wg.Go(func() {
				t0 := time.Now()
				kind := l.c.get()
				took := time.Since(t0)
				l.mu.Lock()
				defer l.mu.Unlock()
				l.res.sent++
				if kind != "" {
					l.res.failed++
					l.res.kinds[kind]++
				} else {
					l.res.slowest = max(l.res.slowest, took)
				}
			})
		}
	}()
	t.Cleanup(func() { l.end() })
	return l
}

// end stops the loop, waits for the requests in flight and returns what it
// saw.
func (l *loadLoop) end() loadResult {
	l.once.Do(func() { close(l.stop) })
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res
}

// sequential sends n GETs to addr one after another on kept connections and
// returns how many failed; it gives up after 3 failures in a row and counts
// the rest as failed too.
func sequential(addr string, n int) (failed int) {
	c := newKAClient(addr)
	defer c.close()
	inRow := 0
	for i := range n {
		if c.get() != "" {
			failed++
			if inRow++; inRow == 3 {
				return failed + n - i - 1
			}
			continue
		}
		inRow = 0
	}
	return failed
}
