// Package lbclient counts HTTP requests as a load balancer in front of the
// instance (an AWS ALB) would: over kept-alive connections, never retried.
//
// An ALB answers 502 for every request it could not get an answer to: the
// connection refused, reset or closed before a response byte, the response
// cut. It retries none of them. Go's http.Transport and tools built on it
// (hey) silently retry a GET whose kept connection the server closed before
// answering, so they hide exactly the failures a zero-502 test is about.
// A Client sends each request once, over an idle kept connection or a new
// dial, and names every failure by its kind; a Load sends many of them, at
// a fixed rate or back to back, and reports what it saw.
//
// Traffic goes only to the address given; every request has a timeout and
// every Load a bound (a duration or a count), so nothing runs on by itself.
package lbclient

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Failure kinds, as a load balancer in front would see them. Every one of
// them is a 502 at an ALB; a complete answer that is not 2xx is counted as
// its status instead (StatusKind).
const (
	KindRefused  = "connection refused"  // dial refused: nothing listens
	KindDial     = "connect error"       // dial failed otherwise
	KindReset    = "reset"               // ECONNRESET/EPIPE before any response byte
	KindClosed   = "closed, no response" // EOF before any response byte
	KindCut      = "response cut"        // the response began, then the connection failed
	KindTimeout  = "timeout"             // no complete response within the timeout
	KindBad      = "malformed response"  // bytes came that are not HTTP
	KindBody     = "unexpected body"     // a 2xx answer that failed the load's check
	KindCanceled = "canceled"            // the caller's context ended first
)

// StatusKind is the kind of a complete answer with a status that is not
// 2xx: "HTTP 503".
func StatusKind(code int) string { return "HTTP " + strconv.Itoa(code) }

// Kind names the outcome of Client.Do: "" for a 2xx answer, StatusKind for
// another answer, the failure's kind for an error.
func Kind(resp Response, err error) string {
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return e.Kind
		}
		return "error: " + err.Error()
	}
	if resp.Status < 200 || resp.Status > 299 {
		return StatusKind(resp.Status)
	}
	return ""
}

// Error is a request that got no complete answer.
type Error struct {
	Kind string // one of the Kind constants, or "error: ..." for another error
	Err  error  // what the connection or the parser said
}

func (e *Error) Error() string {
	if strings.HasPrefix(e.Kind, "error: ") {
		return e.Kind
	}
	return e.Kind + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Request is one request to send.
type Request struct {
	Method string      // "" means GET
	Path   string      // "" means "/"
	Host   string      // the Host header; "" means the client's Addr
	Header http.Header // more header fields, if any
	Body   []byte      // sent with its Content-Length; nil sends none
}

// Response is a complete answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte // its first Client.MaxBody bytes; the rest was read and dropped
	Reused bool   // whether it came over a kept connection
}

// Client sends requests to one address over a pool of kept-alive
// connections: a request takes the idle connection that has waited
// longest, or dials a new one when none is idle; a connection goes back to
// the pool after a complete answer that allows keep-alive. Nothing is ever
// retried. The zero value with Addr set is ready to use; Close closes the
// idle connections. A Client is safe for concurrent use.
type Client struct {
	Addr    string        // host:port, the only place traffic goes
	Timeout time.Duration // per request, from the dial to the last body byte; 0 means 10 s
	// Conns spreads the requests over that many kept connections: while
	// fewer are open, a request dials a new one instead of taking an idle
	// one, so that the pool holds Conns connections used in turn. 0 takes
	// an idle one whenever there is one.
	Conns     int
	MaxIdle   int    // idle connections kept; 0 means max(Conns, 64)
	MaxBody   int    // body bytes kept in Response.Body; 0 means 64 KiB
	UserAgent string // "" means "lbclient"

	dials atomic.Int64

	mu     sync.Mutex
	idle   []*conn // oldest first
	open   int     // connections open, idle or busy
	closed bool
}

// DefaultTimeout is a request's timeout when Client.Timeout is 0: far more
// than a hold through a restart needs, far less than an ALB's 60 s.
const DefaultTimeout = 10 * time.Second

type conn struct {
	nc  net.Conn
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

// Dials returns how many connections the client has opened.
func (c *Client) Dials() int { return int(c.dials.Load()) }

// Close closes the idle connections, and those that come back later.
func (c *Client) Close() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	c.open -= len(idle)
	c.closed = true
	c.mu.Unlock()
	for _, pc := range idle {
		pc.nc.Close()
	}
}

// Do sends r once and reads the whole answer. The error, if any, is an
// *Error naming the failure's kind; an answer of any status is a Response
// and no error. Do gives up at the client's timeout or when ctx ends,
// whichever comes first.
func (c *Client) Do(ctx context.Context, r Request) (Response, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	wire, err := c.encode(r)
	if err != nil {
		return Response{}, err
	}
	pc, reused, err := c.get(ctx, deadline)
	if err != nil {
		return Response{}, c.failure(ctx, err)
	}
	// Ending ctx ends the exchange: the deadline passes at once.
	stop := context.AfterFunc(ctx, func() { pc.nc.SetDeadline(time.Unix(1, 0)) })
	resp, keep, err := c.exchange(pc, r, wire, deadline)
	if !stop() {
		keep = false
	}
	if keep {
		c.put(pc)
	} else {
		c.drop(pc)
	}
	if err != nil {
		return Response{}, c.failure(ctx, err)
	}
	resp.Reused = reused
	return resp, nil
}

// failure relabels an error that ctx caused.
func (c *Client) failure(ctx context.Context, err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		e.Kind = KindCanceled
	} else if ctx.Err() != nil {
		e.Kind = KindTimeout
	}
	return e
}

// get takes an idle connection, or dials one; reused reports which.
func (c *Client) get(ctx context.Context, deadline time.Time) (pc *conn, reused bool, err error) {
	c.mu.Lock()
	if len(c.idle) > 0 && c.open >= c.Conns {
		pc = c.idle[0]
		c.idle = c.idle[1:]
		c.mu.Unlock()
		return pc, true, nil
	}
	c.open++ // counted from the dial on, so that Conns is not overshot
	c.mu.Unlock()
	d := net.Dialer{Deadline: deadline}
	nc, err := d.DialContext(ctx, "tcp", c.Addr)
	if err != nil {
		c.mu.Lock()
		c.open--
		c.mu.Unlock()
		kind := KindDial
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			kind = KindRefused
		case isTimeout(err):
			kind = KindTimeout
		}
		return nil, false, &Error{Kind: kind, Err: err}
	}
	c.dials.Add(1)
	rec := &readRecorder{r: nc}
	return &conn{nc: nc, rec: rec, br: bufio.NewReader(rec)}, false, nil
}

// put returns pc to the pool, or closes it when the pool is full.
func (c *Client) put(pc *conn) {
	maxIdle := c.MaxIdle
	if maxIdle <= 0 {
		maxIdle = max(c.Conns, 64)
	}
	c.mu.Lock()
	if !c.closed && len(c.idle) < maxIdle {
		c.idle = append(c.idle, pc)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.drop(pc)
}

// drop closes pc.
func (c *Client) drop(pc *conn) {
	pc.nc.Close()
	c.mu.Lock()
	c.open--
	c.mu.Unlock()
}

// encode writes r's head and body as they go on the wire.
func (c *Client) encode(r Request) ([]byte, error) {
	method, path, host, ua := r.Method, r.Path, r.Host, c.UserAgent
	if method == "" {
		method = http.MethodGet
	}
	if path == "" {
		path = "/"
	}
	if host == "" {
		host = c.Addr
	}
	if ua == "" {
		ua = "lbclient"
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n", method, path, host, ua)
	if r.Body != nil {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(r.Body))
	}
	if err := r.Header.Write(&b); err != nil {
		return nil, fmt.Errorf("request header: %w", err)
	}
	b.WriteString("\r\n")
	b.Write(r.Body)
	return b.Bytes(), nil
}

// exchange runs one request on pc: it returns the answer and whether the
// connection can carry another request.
func (c *Client) exchange(pc *conn, r Request, wire []byte, deadline time.Time) (resp Response, keep bool, err error) {
	pc.nc.SetDeadline(deadline)
	if _, err := pc.nc.Write(wire); err != nil {
		return resp, false, classify(err, false)
	}
	// Whether any response byte came decides between "no response" and
	// "cut".
	if _, err := pc.br.Peek(1); err != nil {
		return resp, false, classify(err, false)
	}
	req := &http.Request{Method: r.Method}
	if req.Method == "" {
		req.Method = http.MethodGet
	}
	var hr *http.Response
	for {
		hr, err = http.ReadResponse(pc.br, req)
		if err != nil {
			if pc.rec.err != nil {
				return resp, false, classify(pc.rec.err, true)
			}
			return resp, false, &Error{Kind: KindBad, Err: err}
		}
		// An interim answer (100 Continue, 103 Early Hints) comes before
		// the real one.
		if hr.StatusCode >= 200 || hr.StatusCode == http.StatusSwitchingProtocols {
			break
		}
	}
	resp = Response{Status: hr.StatusCode, Header: hr.Header}
	if hr.StatusCode == http.StatusSwitchingProtocols {
		return resp, false, nil
	}
	maxBody := c.MaxBody
	if maxBody <= 0 {
		maxBody = 64 << 10
	}
	resp.Body, err = io.ReadAll(io.LimitReader(hr.Body, int64(maxBody)))
	if err == nil {
		_, err = io.Copy(io.Discard, hr.Body)
	}
	hr.Body.Close()
	if err != nil {
		return Response{}, false, classify(err, true)
	}
	return resp, !hr.Close && !hasToken(r.Header, "Connection", "close"), nil
}

// hasToken reports whether h's field key lists token.
func hasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// classify names a connection error; began reports whether a response byte
// had already arrived.
func classify(err error, began bool) *Error {
	kind := "error: " + err.Error()
	switch {
	case isTimeout(err):
		kind = KindTimeout
	case began:
		kind = KindCut
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		kind = KindReset
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		kind = KindClosed
	}
	return &Error{Kind: kind, Err: err}
}

// isTimeout reports whether err is a deadline that passed.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
