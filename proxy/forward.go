package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// outcome is how one attempt to forward a request ended.
type outcome uint8

const (
	answered   outcome = iota // the client got a response (or the exchange is over)
	tunneled                  // a protocol switch: the tunnel took the connection over
	notSent                   // nothing reached the app: safe to send anywhere
	noResponse                // sent, but the connection failed before any response byte
)

// statusClientGone is the code given to Observe when the client left before
// it got an answer (nginx's 499).
const statusClientGone = 499

// aLongTimeAgo is a deadline in the past, to abort blocked I/O at once.
var aLongTimeAgo = time.Unix(1, 0)

// forward sends the request to a ready app process, holding it while there
// is none and replaying it once when that is safe. It returns the status the
// client got, and whether a tunnel took the connection over.
func (p *Proxy) forward(c *clientConn) (int, bool) {
	var (
		deadline  time.Time // end of the hold, set when first held
		failedBuf [4]*pool
		failed    = failedBuf[:0] // pools this request may not go to again
		again     *pool           // the next attempt: a new connection to this pool
		retried   bool            // sent again on a new connection to the same process
		replayed  bool            // sent again to another process
	)
	defer c.w.stop()
	// Without a body, the request can be sent again as it is. (One that
	// has a body was consumed by the first attempt.)
	replayable := !c.rq.hasBody()
	want := -1
	if p.cfg.Affinity && c.rq.cookie {
		want = affinitySlot(c.rq.fields)
	}
	st := p.st.Load()
	for {
		if st.down {
			return p.fail(c, http.StatusServiceUnavailable), false
		}
		pl, fresh := again, again != nil
		again = nil
		if pl == nil {
			pl = st.pick(want, failed)
		}
		if pl != nil {
			code, out, reused := p.attempt(c, pl, fresh, want)
			switch out {
			case answered:
				return code, false
			case tunneled:
				return code, true
			case notSent:
				// Refused, or the pool left the set: nothing reached the
				// app; any other process may take it.
				failed = append(failed, pl)
			case noResponse:
				switch {
				case !replayable:
					return p.fail(c, http.StatusBadGateway), false
				case reused && !retried:
					// A kept connection the app had just closed, or a
					// process dying: try a new connection to the same
					// process; a refused dial then goes to another one,
					// and a failure there is replayed on another.
					retried, again = true, pl
				case !replayed:
					replayed = true
					failed = append(failed, pl)
				default:
					return p.fail(c, http.StatusBadGateway), false
				}
				p.replayed.Add(1)
			}
			st = p.st.Load()
			continue
		}
		var gone bool
		st, gone = p.hold(c, &deadline, st, failed)
		if gone {
			c.closeNow = true
			return statusClientGone, false
		}
		if st == nil {
			return p.fail(c, http.StatusServiceUnavailable), false
		}
	}
}

// hold waits until the proxy is down or has a ready pool not in failed,
// and returns that state; nil when the hold time ran out. gone reports
// that the client left meanwhile.
func (p *Proxy) hold(c *clientConn, deadline *time.Time, st *state, failed []*pool) (_ *state, gone bool) {
	now := p.clk.Now()
	if deadline.IsZero() {
		*deadline = now.Add(p.cfg.Hold)
	}
	d := deadline.Sub(now)
	if d <= 0 {
		return nil, false
	}
	p.held.Add(1)
	defer p.held.Add(-1)
	c.w.now()
	t := p.clk.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-st.changed:
			st = p.st.Load()
			if st.down || st.routable(failed) {
				return st, false
			}
		case <-t.C():
			return nil, false
		case <-c.gone:
			return nil, true
		}
	}
}

// attempt makes one exchange with the app through pl. want is the slot
// the client's affinity cookie names (-1: none).
func (p *Proxy) attempt(c *clientConn, pl *pool, fresh bool, want int) (code int, out outcome, reused bool) {
	pl.begin()
	counted := true
	defer func() {
		if counted {
			pl.end()
		}
	}()
	if pl.retired.Load() {
		// Out of the set between the caller's pick and begin: the drain
		// may already have seen this pool empty.
		return 0, notSent, false
	}
	uc, reused, err := pl.get(fresh)
	if err != nil {
		if !errors.Is(err, errRetired) {
			p.log.Debug().Err(err).Str("upstream", pl.addr).Msg("dial upstream")
		}
		return 0, notSent, false
	}
	keep := false
	defer func() {
		if !keep {
			uc.close()
		}
	}()

	rq := &c.rq
	if err := p.writeRequest(c, uc); err != nil {
		var be bodyReadError
		if errors.As(err, &be) {
			// The client's upload broke off or was malformed.
			p.log.Debug().Err(err).Msg("client request body")
			// (A client that left does not read the answer.)
			c.bodyLeft = true
			return p.reply(c, http.StatusBadRequest), answered, reused
		}
		p.log.Debug().Err(err).Str("upstream", pl.addr).Msg("send to upstream")
		return 0, noResponse, reused
	}
	// The request is all read: a client that leaves from now on aborts
	// the exchange with the app.
	c.setUp(uc.nc)
	c.w.soon()
	defer c.setUp(nil)

	if _, err := uc.br.Peek(1); err != nil {
		if c.left() {
			c.closeNow = true
			return statusClientGone, answered, reused
		}
		p.log.Debug().Err(err).Str("upstream", pl.addr).Msg("no response from upstream")
		return 0, noResponse, reused
	}
	rs, err := readResponse(uc, rq, c.fields[:0])
	if err != nil {
		if c.left() {
			c.closeNow = true
			return statusClientGone, answered, reused
		}
		p.log.Debug().Err(err).Str("upstream", pl.addr).Msg("bad response from upstream")
		return p.fail(c, http.StatusBadGateway), answered, reused
	}
	c.fields = rs.fields[:0]

	if rs.code == http.StatusSwitchingProtocols {
		if rq.upgrade == "" || !strings.EqualFold(rs.upgrade, rq.upgrade) {
			p.log.Debug().Str("upstream", pl.addr).Msg("unrequested protocol switch from upstream")
			return p.fail(c, http.StatusBadGateway), answered, reused
		}
		c.setUp(nil)
		c.w.stop()
		// An upgraded connection lives as long as its client and process
		// do; it does not hold up a drain.
		pl.end()
		counted = false
		keep = true
		p.tunnel(c, rs.head, uc)
		return rs.code, tunneled, reused
	}

	var cookie string
	if p.cfg.Affinity && pl.slot != want {
		cookie = pl.cookie[0]
	}
	if !c.writeHead(&rs, cookie) {
		return rs.code, answered, reused
	}
	if rerr := c.copyBody(uc, &rs); rerr != nil {
		if c.left() || errors.Is(rerr, errClientWrite) {
			c.closeNow = true
			return rs.code, answered, reused
		}
		// Cut after the first byte: nothing can save this response;
		// abort the client's connection so it does not take it as
		// complete. (The deferred calls close the app's connection.)
		p.log.Debug().Err(rerr).Str("upstream", pl.addr).Msg("response cut by upstream")
		c.abort()
		return rs.code, answered, reused
	}
	if !rs.close && uc.br.Buffered() == 0 && c.setUp(nil) {
		keep = true
		pl.put(uc)
	}
	return rs.code, answered, reused
}

// bodyReadError is a failure to read the client's request body.
type bodyReadError struct{ err error }

func (e bodyReadError) Error() string { return "read request body: " + e.err.Error() }
func (e bodyReadError) Unwrap() error { return e.err }

// writeRequest writes the request to the app: request line, end-to-end
// fields, X-Forwarded-*, then the body, streamed.
func (p *Proxy) writeRequest(c *clientConn, uc *upConn) error {
	rq := &c.rq
	bw := uc.bw
	bw.WriteString(rq.method)
	bw.WriteByte(' ')
	bw.WriteString(rq.target)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(rq.host)
	bw.WriteString("\r\n")
	var xff []string
	var xffBuf [2]string
	haveProto, havePort := false, false
	for _, f := range rq.fields {
		k := f.k
		if skipRequestField(k) {
			continue
		}
		if rq.conn != "" && hasTokenIn(rq.conn, k) {
			continue
		}
		switch {
		case len(k) == 15 && strings.EqualFold(k, "X-Forwarded-For"):
			if xff == nil {
				xff = xffBuf[:0]
			}
			xff = append(xff, f.v)
			continue
		case len(k) == 17 && strings.EqualFold(k, "X-Forwarded-Proto"):
			haveProto = true
		case len(k) == 16 && strings.EqualFold(k, "X-Forwarded-Port"):
			havePort = true
		case len(k) == 6 && p.cfg.Affinity && strings.EqualFold(k, "Cookie"):
			writeCookieField(bw, f.v)
			continue
		}
		bw.WriteString(k)
		bw.WriteString(": ")
		bw.WriteString(f.v)
		bw.WriteString("\r\n")
	}
	bw.WriteString("X-Forwarded-For: ")
	for _, v := range xff {
		bw.WriteString(v)
		bw.WriteString(", ")
	}
	bw.WriteString(c.remote)
	bw.WriteString("\r\n")
	if !haveProto {
		bw.WriteString("X-Forwarded-Proto: http\r\n")
	}
	if !havePort && p.port != "" {
		bw.WriteString("X-Forwarded-Port: ")
		bw.WriteString(p.port)
		bw.WriteString("\r\n")
	}
	if rq.upgrade != "" {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
		bw.WriteString(rq.upgrade)
		bw.WriteString("\r\n")
	}
	switch {
	case !rq.hasBody():
		if rq.method == http.MethodPost || rq.method == http.MethodPut || rq.method == http.MethodPatch {
			bw.WriteString("Content-Length: 0\r\n")
		}
	case rq.chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	default:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(uc.scratch[:0], rq.length, 10))
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	if !rq.hasBody() {
		return bw.Flush()
	}
	if rq.expect {
		// The client waits for this before it sends the body.
		c.bw.WriteString(c.proto())
		c.bw.WriteString(" 100 Continue\r\n\r\n")
		if err := c.bw.Flush(); err != nil {
			return bodyReadError{err}
		}
	}
	c.bodyLeft = true
	if rq.chunked {
		cb := chunkedBody{br: c.br}
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		buf := *bp
		for {
			n, err := cb.Read(buf)
			if n > 0 {
				bw.Write(strconv.AppendInt(uc.scratch[:0], int64(n), 16))
				bw.WriteString("\r\n")
				bw.Write(buf[:n])
				if _, werr := bw.WriteString("\r\n"); werr != nil {
					return werr
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return bodyReadError{err}
			}
		}
		bw.WriteString("0\r\n\r\n") // no trailers
	} else {
		left := rq.length
		for left > 0 {
			b, err := c.br.Peek(min(int(min(left, int64(c.br.Size()))), max(c.br.Buffered(), 1)))
			if len(b) > 0 {
				if _, werr := bw.Write(b); werr != nil {
					return werr
				}
				c.br.Discard(len(b))
				left -= int64(len(b))
			}
			if err != nil && left > 0 {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return bodyReadError{err}
			}
		}
	}
	c.bodyLeft = false
	return bw.Flush()
}

// skipRequestField reports whether a request field is not passed on as
// it is: hop-by-hop fields, the framing, Host and Expect (written by the
// proxy itself).
func skipRequestField(k string) bool {
	switch len(k) {
	case 2:
		return strings.EqualFold(k, "TE")
	case 4:
		return strings.EqualFold(k, "Host")
	case 6:
		return strings.EqualFold(k, "Expect")
	case 7:
		return strings.EqualFold(k, "Upgrade") || strings.EqualFold(k, "Trailer")
	case 10:
		return strings.EqualFold(k, "Connection") || strings.EqualFold(k, "Keep-Alive")
	case 14:
		return strings.EqualFold(k, "Content-Length")
	case 16:
		return strings.EqualFold(k, "Proxy-Connection")
	case 17:
		return strings.EqualFold(k, "Transfer-Encoding")
	case 18:
		return strings.EqualFold(k, "Proxy-Authenticate")
	case 19:
		return strings.EqualFold(k, "Proxy-Authorization")
	}
	return false
}

// tunnel completes a protocol switch (WebSocket): it hands the app's 101 to
// the client and copies bytes both ways until both sides are done.
func (p *Proxy) tunnel(c *clientConn, head string, uc *upConn) {
	p.ln.ConnState(c.nc, http.StateHijacked)
	p.untrack(c)
	c.bw.WriteString(head)
	if err := c.bw.Flush(); err != nil {
		uc.nc.Close()
		return
	}
	t := &tunnel{client: c.nc, cbr: c.br, app: uc.nc, abr: uc.br}
	if p.runTunnel(t) {
		c.parked = true // the tunnel, its buffers included, goes to the next program
	}
}

// runTunnel copies bytes both ways until both sides are done, then closes
// the app's side, and reports false; or, when an upgrade freezes the
// tunnel (handover.go), stops copying, keeps both sides open, and reports
// true.
func (p *Proxy) runTunnel(t *tunnel) (parked bool) {
	if !p.trackTunnel(t) {
		// Frozen already: straight to the next program.
		p.parkTunnel(t)
		return true
	}
	done := make(chan bool, 1)
	go func() { done <- p.copyThenCloseWrite(t.app, t.cbr) }() // client → app
	frozen := p.copyThenCloseWrite(t.client, t.abr)            // app → client
	frozen = <-done || frozen
	if frozen && p.freezing.Load() {
		p.parkTunnel(t)
		return true
	}
	p.untrackTunnel(t)
	t.app.Close()
	return false
}

// copyThenCloseWrite copies src to dst, then half-closes dst so the other
// side sees the end of this direction. An upgrade's freeze stops it
// without the half-close: it reports true then.
func (p *Proxy) copyThenCloseWrite(dst net.Conn, src *bufio.Reader) (frozen bool) {
	bp := bufPool.Get().(*[]byte)
	_, err := io.CopyBuffer(dst, src, *bp)
	bufPool.Put(bp)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && p.freezing.Load() {
		return true
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
	return false
}

// isHopHeader reports whether the field name k is hop-by-hop (RFC 9110
// section 7.6.1, and the obsolete ones proxies still see), in any case.
func isHopHeader(k string) bool {
	switch len(k) {
	case 2:
		return strings.EqualFold(k, "TE")
	case 7:
		return strings.EqualFold(k, "Upgrade") || strings.EqualFold(k, "Trailer")
	case 10:
		return strings.EqualFold(k, "Connection") || strings.EqualFold(k, "Keep-Alive")
	case 16:
		return strings.EqualFold(k, "Proxy-Connection")
	case 17:
		return strings.EqualFold(k, "Transfer-Encoding")
	case 18:
		return strings.EqualFold(k, "Proxy-Authenticate")
	case 19:
		return strings.EqualFold(k, "Proxy-Authorization")
	}
	return false
}

// clientIP is the host part of a RemoteAddr.
func clientIP(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}
