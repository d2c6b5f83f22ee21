package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"agent/internal/canned"
	"agent/internal/connlimit"
)

// The traffic port's server: one goroutine per client connection reads a
// request (request.go), forwards it (forward.go) and writes the answer
// back, then waits for the next one. It is net/http's server cut down to
// what a reverse proxy needs, for the CPU it saves per request: no
// per-request goroutine, context or header map.

// Buffer sizes of a client connection.
const (
	clientReadBuf  = 4 << 10
	clientWriteBuf = 4 << 10
)

// watchDelay is how long a request waits for the app's answer before the
// proxy starts watching the client for leaving (a read that would block);
// quicker answers cost no watch at all.
const watchDelay = 20 * time.Millisecond

var (
	clientReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, clientReadBuf) }}
	clientWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, clientWriteBuf) }}
)

// clientConn is one client connection.
type clientConn struct {
	p      *Proxy
	nc     net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	remote string // the client's IP, for X-Forwarded-For
	rq     request

	// Per request: see begin.
	wroteHead bool // the response head went out (or was buffered)
	bodyLeft  bool // the request body was not read to its end
	closeNow  bool // close the connection after this response

	// The connection's place in the server: idle between requests, or
	// closing (the server is shutting down). Guarded by mu.
	mu      sync.Mutex
	idle    bool
	closing bool
	// parked: its tunnel was handed to the next program by an upgrade
	// (set by the tunnel, read when the loop ends).
	parked bool

	w watcher

	// up is the app connection of the exchange under way, which a client
	// leaving aborts. Guarded by mu.
	up net.Conn
	// gone is closed when the client has left (the watcher saw its
	// connection end).
	gone     chan struct{}
	goneOnce sync.Once

	// rdl is the read deadline set on nc (zero: none), see readBy.
	rdl time.Time

	fields  []field // response fields, reused
	scratch [24]byte
}

// left reports whether the client has gone away.
func (c *clientConn) left() bool {
	select {
	case <-c.gone:
		return true
	default:
		return false
	}
}

// leave records that the client went away and aborts the exchange with
// the app, if one is under way.
func (c *clientConn) leave() {
	c.goneOnce.Do(func() { close(c.gone) })
	c.mu.Lock()
	if c.up != nil {
		c.up.SetDeadline(aLongTimeAgo)
	}
	c.mu.Unlock()
}

// setUp records (or, with nil, clears) the app connection of the exchange
// under way. Setting it after the client left aborts it at once; clearing
// reports whether the client is still there.
func (c *clientConn) setUp(nc net.Conn) bool {
	c.mu.Lock()
	c.up = nc
	c.mu.Unlock()
	gone := c.left()
	if gone && nc != nil {
		nc.SetDeadline(aLongTimeAgo)
	}
	return !gone
}

// watcher notices a client leaving while its request is held or the app
// takes its time: a goroutine blocks in a read of the client connection
// (into its buffer: a pipelined request that arrives meanwhile stays
// there). It is started only for a request that waits: a held one at once
// (now), one the app has not answered within watchDelay by the proxy's
// check of slow requests (soon, watchSlow); stop ends it before the
// connection is read again. (A timer per request cost more than the rest
// of the request's bookkeeping: each one set or stopped can wake the
// network poller.)
type watcher struct {
	c        *clientConn
	mu       sync.Mutex
	waiting  bool      // soon was called for the request under way
	since    time.Time // when
	watched  bool      // the check started a watch for it already
	running  bool      // the goroutine is reading, or about to
	wg       sync.WaitGroup
	stopping atomic.Bool
}

// soon has the request watched once it has waited watchDelay.
func (w *watcher) soon() {
	now := time.Now()
	w.mu.Lock()
	w.waiting, w.since, w.watched = true, now, false
	w.mu.Unlock()
	if p := w.c.p; !p.watching.Load() && p.watching.CompareAndSwap(false, true) {
		go p.watchSlow()
	}
}

// now starts watching at once.
func (w *watcher) now() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.startLocked()
}

func (w *watcher) startLocked() {
	if !w.running {
		w.running = true
		w.wg.Add(1)
		go w.run()
	}
}

// check starts watching if the request has waited watchDelay by now; it
// reports whether a request is waiting.
func (w *watcher) check(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiting && !w.watched && now.Sub(w.since) >= watchDelay {
		w.watched = true
		w.startLocked()
	}
	return w.waiting
}

// watchSlow checks the client connections every watchDelay and starts the
// watch of the requests that have waited that long. It runs while requests
// are being forwarded, and ends at the first check that finds none.
func (p *Proxy) watchSlow() {
	t := time.NewTimer(watchDelay)
	defer t.Stop()
	var conns []*clientConn
	check := func() (busy bool) {
		conns = conns[:0]
		p.connsMu.Lock()
		for c := range p.conns {
			conns = append(conns, c)
		}
		p.connsMu.Unlock()
		now := time.Now()
		for _, c := range conns {
			if c.w.check(now) {
				busy = true
			}
		}
		clear(conns)
		return busy
	}
	for {
		<-t.C
		if !check() {
			p.watching.Store(false)
			// A request that began meanwhile may have seen the check
			// still running: look once more.
			if !check() || !p.watching.CompareAndSwap(false, true) {
				return
			}
		}
		t.Reset(watchDelay)
	}
}

func (w *watcher) run() {
	defer w.wg.Done()
	_, err := w.c.br.Peek(1)
	if err != nil && !w.stopping.Load() && w.c.ownDeadlinePassed(err) {
		// The idle deadline left from before the request (readBy): not
		// the client leaving.
		w.c.setReadDeadline(time.Time{})
		if !w.stopping.Load() { // else stop set its deadline first
			_, err = w.c.br.Peek(1)
		}
	}
	if err != nil && !w.stopping.Load() {
		w.c.leave()
	}
	w.mu.Lock()
	w.running = false
	w.mu.Unlock()
}

// stop ends the watch; the connection may be read again when it returns.
func (w *watcher) stop() {
	w.mu.Lock()
	w.waiting = false
	busy := w.running
	w.mu.Unlock()
	if !busy {
		w.wg.Wait()
		return
	}
	w.stopping.Store(true)
	w.c.nc.SetReadDeadline(aLongTimeAgo)
	w.wg.Wait()
	w.stopping.Store(false)
	w.c.setReadDeadline(time.Time{})
}

// serve accepts client connections until ln is closed.
func (p *Proxy) serve(ln *connlimit.Listener) error {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors, say: wait, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				p.log.Debug().Err(err).Msg("accept")
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		c := &clientConn{
			p:      p,
			nc:     nc,
			remote: clientIP(nc.RemoteAddr().String()),
			gone:   make(chan struct{}),
			idle:   true, // until its first request begins
		}
		c.w.c = c
		if !p.track(c) {
			nc.Close()
			ln.ConnState(nc, http.StateClosed)
			continue
		}
		go c.serve()
	}
}

// track adds c to the open connections; false once shutting down.
func (p *Proxy) track(c *clientConn) bool {
	p.connsMu.Lock()
	defer p.connsMu.Unlock()
	if p.shutdown {
		return false
	}
	p.conns[c] = struct{}{}
	p.connsWG.Add(1)
	return true
}

func (p *Proxy) untrack(c *clientConn) {
	p.connsMu.Lock()
	if _, ok := p.conns[c]; ok {
		delete(p.conns, c)
		p.connsWG.Done()
	}
	p.connsMu.Unlock()
}

// closeConns stops the server's connections: idle ones now, busy ones
// after their response (which says Connection: close); with force, all now.
func (p *Proxy) closeConns(force bool) {
	p.connsMu.Lock()
	p.shutdown = true
	p.quit.Store(true)
	conns := make([]*clientConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.connsMu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		c.closing = true
		if c.idle || force {
			c.nc.Close()
		}
		c.mu.Unlock()
	}
}

// active marks c busy with a request; false if it must close (or, during
// an upgrade's freeze, be parked) instead.
func (c *clientConn) active() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing || c.p.freezing.Load() {
		return false
	}
	c.idle = false
	return true
}

// idleAgain marks c idle between requests; false if it must close instead.
func (c *clientConn) idleAgain() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.idle = true
	return true
}

func (c *clientConn) serve() {
	rw := newRawIO(unwrap(c.nc))
	c.br = clientReaders.Get().(*bufio.Reader)
	c.br.Reset(rw)
	c.bw = clientWriters.Get().(*bufio.Writer)
	c.bw.Reset(rw)
	c.loop(true)
}

// loop serves c's requests until it closes, or is parked for an upgrade
// (handover.go). first says no request came yet.
func (c *clientConn) loop(first bool) {
	p := c.p
	parked := false // by this loop; c.parked: by its tunnel
	// A loop that serves c again (Thaw) sets a deadline anew: one set
	// from elsewhere (Freeze) may have replaced readBy's.
	c.rdl = time.Time{}
	defer func() {
		c.w.stop()
		if parked || c.parked {
			return // its socket and buffers go to the next program
		}
		c.nc.Close()
		p.ln.ConnState(c.nc, http.StateClosed)
		p.untrack(c)
		c.br.Reset(nil)
		clientReaders.Put(c.br)
		c.bw.Reset(nil)
		clientWriters.Put(c.bw)
	}()
	for {
		if c.br.Buffered() == 0 {
			wait := p.cfg.IdleTimeout
			if first {
				wait = readHeaderTimeout
			}
			c.readBy(time.Now().Add(wait))
			// After the deadline is set: a freeze that began before sets
			// its own (past) one after this check (see Proxy.Freeze).
			if p.freezing.Load() {
				parked = c.park()
				return
			}
			if _, err := c.br.Peek(1); err != nil {
				if p.freezing.Load() {
					parked = c.park()
				}
				return
			}
		}
		if !c.active() {
			if p.freezing.Load() {
				parked = c.park()
			}
			return
		}
		p.ln.ConnState(c.nc, http.StateActive)
		first = false
		if !headBuffered(c.br) {
			c.setReadDeadline(time.Now().Add(readHeaderTimeout))
		}
		head, err := readHead(c.br, maxHeaderBytes)
		if err == nil {
			err = parseRequest(head, &c.rq)
		}
		if err != nil {
			var re *reqError
			if errors.As(err, &re) {
				p.log.Debug().Str("client", c.remote).Str("why", re.why).Msg("bad request")
				c.begin()
				c.closeNow = true
				p.reply(c, re.code)
				c.bw.Flush()
				lingerClose(c.nc)
			}
			return
		}
		if c.rq.hasBody() || c.rq.upgrade != "" {
			c.setReadDeadline(time.Time{}) // see readBy
		}
		c.begin()
		hijacked := c.handle()
		if hijacked {
			return
		}
		if err := c.bw.Flush(); err != nil || c.closeNow || c.bodyLeft {
			return
		}
		if !c.idleAgain() {
			return
		}
		p.ln.ConnState(c.nc, http.StateIdle)
	}
}

// begin resets the per-request state.
func (c *clientConn) begin() {
	c.wroteHead, c.bodyLeft = false, false
	c.closeNow = c.rq.close
}

// handle answers one request: the health path, or forwarding. It reports
// whether the connection was taken over by a tunnel.
func (c *clientConn) handle() (hijacked bool) {
	p := c.p
	rq := &c.rq
	if p.cfg.HealthPath != "" && pathOf(rq.target) == p.cfg.HealthPath {
		r := p.health()
		if rq.method != http.MethodGet && rq.method != http.MethodHead {
			r = canned.NotAllowed
		}
		c.writeReply(r)
		return false
	}
	p.requests.Add(1)
	if p.cfg.Observe == nil {
		_, hijacked = p.forward(c)
		return hijacked
	}
	start := p.clk.Now()
	code, hijacked := p.forward(c)
	p.cfg.Observe(code, p.clk.Now().Sub(start))
	return hijacked
}

// pathOf is the path of an origin-form target.
func pathOf(target string) string {
	for i := 0; i < len(target); i++ {
		if target[i] == '?' {
			return target[:i]
		}
	}
	return target
}

// proto is the version of the response's status line: the client's.
func (c *clientConn) proto() string {
	if c.rq.minor == 0 {
		return "HTTP/1.0"
	}
	return "HTTP/1.1"
}

// writeReply writes one of the proxy's own answers, with its body unless
// the request is a HEAD. A request body left unread closes the connection.
func (c *clientConn) writeReply(r *canned.Reply) {
	if c.rq.hasBody() {
		c.bodyLeft = true
	}
	r.WriteHead(c.bw, c.proto())
	c.closeField()
	c.bw.WriteString("\r\n")
	if c.rq.method != http.MethodHead {
		c.bw.Write(r.Body())
	}
	c.wroteHead = true
}

// closeField writes "Connection: close" when the connection ends after
// this response: the client asked, the server is shutting down, or the
// request body was not read.
func (c *clientConn) closeField() {
	if !c.closeNow && (c.bodyLeft || c.p.closing()) {
		c.closeNow = true
	}
	if c.closeNow && c.rq.minor == 1 {
		c.bw.WriteString("Connection: close\r\n")
	}
}

// closing reports whether the server is shutting down.
func (p *Proxy) closing() bool { return p.quit.Load() }

// lingerClose closes a connection after an error answer without resetting
// it: the client's unread bytes would make the kernel send a RST that can
// destroy the answer before it is read.
func lingerClose(nc net.Conn) {
	if tc, ok := nc.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
		nc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		var buf [512]byte
		for i := 0; i < 64; i++ {
			if _, err := nc.Read(buf[:]); err != nil {
				break
			}
		}
	}
}

// readBy makes a read of the client connection that waits past t fail,
// give or take: the deadline is set only when the one in place is not
// between t and t plus a slack (deadlineSlack), and then to t plus the
// slack, so that a busy connection sets it once in a while rather than on
// every request: each setting is a timer operation, which can wake the
// network poller. The idle wait thus ends between t and t plus the slack,
// never before t.
// The deadline stays in place while a request without a body is
// forwarded (nothing reads the client then but the watch, which knows it).
func (c *clientConn) readBy(t time.Time) {
	slack := deadlineSlack(time.Until(t))
	if !c.rdl.IsZero() && !c.rdl.Before(t) && !c.rdl.After(t.Add(slack)) {
		return
	}
	c.setReadDeadline(t.Add(slack))
}

// deadlineSlack is how much later than asked a deadline of d from now
// may be set: 1/64 of it, at most 250 ms.
func deadlineSlack(d time.Duration) time.Duration { return min(d/64, 250*time.Millisecond) }

// setReadDeadline sets the client connection's read deadline (zero: none)
// and remembers it.
func (c *clientConn) setReadDeadline(t time.Time) {
	c.rdl = t
	c.nc.SetReadDeadline(t)
}

// ownDeadlinePassed reports whether err is the deadline set by readBy
// passing (and not one set from elsewhere to stop the read).
func (c *clientConn) ownDeadlinePassed(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) && !c.rdl.IsZero() && !time.Now().Before(c.rdl)
}

// headBuffered reports whether a whole request head is in br's buffer
// already, so that reading it cannot wait.
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, []byte("\r\n\r\n"))
}
