package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"
)

// outcome is how one attempt to forward a request ended.
type outcome uint8

const (
	answered   outcome = iota // the client got a response (or the exchange is over)
	notSent                   // nothing reached the app: safe to send anywhere
	noResponse                // sent, but the connection failed before any response byte
)

// statusClientGone is the code given to Observe when the client left before
// it got an answer (nginx's 499).
const statusClientGone = 499

// aLongTimeAgo is a deadline in the past, to abort blocked I/O at once.
var aLongTimeAgo = time.Unix(1, 0)

// ServeHTTP answers the health path itself and forwards everything else.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.cfg.HealthPath != "" && r.URL.Path == p.cfg.HealthPath {
		p.serveHealth(w, r)
		return
	}
	p.requests.Add(1)
	if p.cfg.Observe == nil {
		p.forward(w, r)
		return
	}
	start := p.clk.Now()
	code := p.forward(w, r)
	p.cfg.Observe(code, p.clk.Now().Sub(start))
}

// forward sends r to a ready app process, holding it while there is none
// and replaying it once when that is safe. It returns the status the
// client got.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request) int {
	var (
		deadline  time.Time // end of the hold, set when first held
		failedBuf [4]*pool
		failed    = failedBuf[:0] // pools this request may not go to again
		again     *pool           // the next attempt: a new connection to this pool
		retried   bool            // sent again on a new connection to the same process
		replayed  bool            // sent again to another process
	)
	// Without a body, the request can be sent again as it is. (GET, HEAD
	// and OPTIONS come without one; one that has a body was consumed by
	// the first attempt.)
	replayable := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	want := -1
	if p.cfg.Affinity {
		want = affinitySlot(r.Header)
	}
	st := p.st.Load()
	for {
		if st.down {
			return p.fail(w, http.StatusServiceUnavailable)
		}
		pl, fresh := again, again != nil
		again = nil
		if pl == nil {
			pl = st.pick(want, failed)
		}
		if pl != nil {
			code, out, reused := p.attempt(w, r, pl, fresh, want)
			switch out {
			case answered:
				return code
			case notSent:
				// Refused, or the pool left the set: nothing reached the
				// app; any other process may take it.
				failed = append(failed, pl)
			case noResponse:
				switch {
				case !replayable:
					return p.fail(w, http.StatusBadGateway)
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
					return p.fail(w, http.StatusBadGateway)
				}
				p.replayed.Add(1)
			}
			st = p.st.Load()
			continue
		}
		var err error
		st, err = p.hold(r.Context(), &deadline, st, failed)
		if err != nil {
			return statusClientGone
		}
		if st == nil {
			return p.fail(w, http.StatusServiceUnavailable)
		}
	}
}

// hold waits until the proxy is down or has a ready pool not in failed,
// and returns that state; nil when the hold time ran out. The error is the
// client's context ending.
func (p *Proxy) hold(ctx context.Context, deadline *time.Time, st *state, failed []*pool) (*state, error) {
	now := p.clk.Now()
	if deadline.IsZero() {
		*deadline = now.Add(p.cfg.Hold)
	}
	d := deadline.Sub(now)
	if d <= 0 {
		return nil, nil
	}
	p.held.Add(1)
	defer p.held.Add(-1)
	t := p.clk.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-st.changed:
			st = p.st.Load()
			if st.down || st.routable(failed) {
				return st, nil
			}
		case <-t.C():
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// attempt makes one exchange with the app through pl. want is the slot
// the client's affinity cookie names (-1: none).
func (p *Proxy) attempt(w http.ResponseWriter, r *http.Request, pl *pool, fresh bool, want int) (code int, out outcome, reused bool) {
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
	// A client that goes away aborts the exchange with the app.
	nc := uc.nc
	stop := context.AfterFunc(r.Context(), func() { nc.SetDeadline(aLongTimeAgo) })
	keep := false
	defer func() {
		stop()
		if !keep {
			uc.close()
		}
	}()

	upgrade := upgradeType(r.Header)
	if err := p.writeRequest(uc, r, upgrade); err != nil {
		var be bodyReadError
		if errors.As(err, &be) {
			// The client's upload broke off or was malformed.
			p.log.Debug().Err(err).Msg("client request body")
			return p.reply(w, http.StatusBadRequest), answered, reused
		}
		p.log.Debug().Err(err).Str("upstream", pl.addr).Msg("send to upstream")
		return 0, noResponse, reused
	}

	if _, err := uc.br.Peek(1); err != nil {
		if r.Context().Err() != nil {
			return statusClientGone, answered, reused
		}
		p.log.Debug().Err(err).Str("upstream", pl.addr).Msg("no response from upstream")
		return 0, noResponse, reused
	}
	dst := w.Header()
	rs, err := readResponse(uc, r, dst)
	if err != nil {
		if r.Context().Err() != nil {
			return statusClientGone, answered, reused
		}
		p.log.Debug().Err(err).Str("upstream", pl.addr).Msg("bad response from upstream")
		return p.fail(w, http.StatusBadGateway), answered, reused
	}

	if rs.code == http.StatusSwitchingProtocols {
		if upgrade == "" || !strings.EqualFold(dstUpgrade(rs.head), upgrade) {
			p.log.Debug().Str("upstream", pl.addr).Msg("unrequested protocol switch from upstream")
			return p.fail(w, http.StatusBadGateway), answered, reused
		}
		stop()
		// An upgraded connection lives as long as its client and process
		// do; it does not hold up a drain.
		pl.end()
		counted = false
		keep = true
		p.tunnel(w, rs.head, uc)
		return rs.code, answered, reused
	}

	if p.cfg.Affinity && pl.slot != want {
		setAffinity(dst, pl)
	}
	w.WriteHeader(rs.code)
	if rs.body != nil {
		stream := rs.length < 0
		var rc *http.ResponseController
		if stream {
			rc = http.NewResponseController(w)
			rc.Flush() // headers now: an event stream may wait long for its first event
		}
		bp := bufPool.Get().(*[]byte)
		buf := *bp
		var rerr error
		for {
			n, err := rs.body.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					bufPool.Put(bp)
					return rs.code, answered, reused // the client went away
				}
				if stream {
					rc.Flush()
				}
			}
			if err != nil {
				if err != io.EOF {
					rerr = err
				} else if rs.limited && uc.lr.N > 0 {
					rerr = io.ErrUnexpectedEOF
				}
				break
			}
		}
		bufPool.Put(bp)
		if rerr == nil && rs.chunked && !readTrailer(uc.br, dst) {
			rerr = io.ErrUnexpectedEOF
		}
		if rerr != nil {
			// Cut after the first byte: nothing can save this response;
			// abort the client's connection so it does not take it as
			// complete. (The deferred calls close the app's connection.)
			p.log.Debug().Err(rerr).Str("upstream", pl.addr).Msg("response cut by upstream")
			panic(http.ErrAbortHandler)
		}
	}
	for k, vv := range rs.trailer {
		dst[http.TrailerPrefix+k] = vv
	}
	if !rs.close && stop() {
		keep = true
		pl.put(uc)
	}
	return rs.code, answered, reused
}

// dstUpgrade is the Upgrade field of a raw response head.
func dstUpgrade(head string) string {
	for _, line := range strings.Split(head, "\r\n")[1:] {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(strings.TrimSpace(k), "Upgrade") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// bodyReadError is a failure to read the client's request body.
type bodyReadError struct{ err error }

func (e bodyReadError) Error() string { return "read request body: " + e.err.Error() }
func (e bodyReadError) Unwrap() error { return e.err }

// writeRequest writes r to the app: request line, end-to-end headers,
// X-Forwarded-*, then the body, streamed.
func (p *Proxy) writeRequest(uc *upConn, r *http.Request, upgrade string) error {
	bw := uc.bw
	uri := r.RequestURI
	if uri == "" || (uri[0] != '/' && uri != "*") {
		uri = r.URL.RequestURI()
	}
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\n")
	conn := r.Header["Connection"]
	for k, vv := range r.Header {
		if isHopHeader(k) || k == "X-Forwarded-For" || k == "Expect" || k == "Content-Length" {
			continue
		}
		if len(conn) > 0 && hasToken(conn, k) {
			continue
		}
		if k == "Cookie" && p.cfg.Affinity {
			for _, v := range vv {
				writeCookieField(bw, v)
			}
			continue
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("X-Forwarded-For: ")
	for _, v := range r.Header["X-Forwarded-For"] {
		bw.WriteString(v)
		bw.WriteString(", ")
	}
	bw.WriteString(clientIP(r.RemoteAddr))
	bw.WriteString("\r\n")
	if _, ok := r.Header["X-Forwarded-Proto"]; !ok {
		bw.WriteString("X-Forwarded-Proto: http\r\n")
	}
	if _, ok := r.Header["X-Forwarded-Port"]; !ok && p.port != "" {
		bw.WriteString("X-Forwarded-Port: ")
		bw.WriteString(p.port)
		bw.WriteString("\r\n")
	}
	if upgrade != "" {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
		bw.WriteString(upgrade)
		bw.WriteString("\r\n")
	}
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	switch {
	case !hasBody:
		if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
			bw.WriteString("Content-Length: 0\r\n")
		}
	case r.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(uc.scratch[:0], r.ContentLength, 10))
		bw.WriteString("\r\n")
	default:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	bw.WriteString("\r\n")
	if !hasBody {
		return bw.Flush()
	}
	var dst io.Writer = bw
	var cw io.WriteCloser
	if r.ContentLength < 0 {
		cw = httputil.NewChunkedWriter(bw)
		dst = cw
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
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
	if cw != nil {
		if err := cw.Close(); err != nil {
			return err
		}
		bw.WriteString("\r\n") // no trailers
	}
	return bw.Flush()
}

// tunnel completes a protocol switch (WebSocket): it hands the app's 101 to
// the client and copies bytes both ways until both sides are done.
func (p *Proxy) tunnel(w http.ResponseWriter, head string, uc *upConn) {
	defer uc.nc.Close()
	cc, crw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.log.Debug().Err(err).Msg("hijack client connection")
		return
	}
	defer cc.Close()
	crw.WriteString(head)
	if err := crw.Flush(); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyThenCloseWrite(uc.nc, crw.Reader) // client → app
	}()
	copyThenCloseWrite(cc, uc.br) // app → client
	<-done
}

// copyThenCloseWrite copies src to dst, then half-closes dst so the other
// side sees the end of this direction.
func copyThenCloseWrite(dst net.Conn, src *bufio.Reader) {
	bp := bufPool.Get().(*[]byte)
	io.CopyBuffer(dst, src, *bp)
	bufPool.Put(bp)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}

// upgradeType returns the protocol a request asks to switch to, or "".
func upgradeType(h http.Header) string {
	if !hasToken(h["Connection"], "upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// isHopHeader reports whether the canonical header name k is hop-by-hop
// (RFC 9110 section 7.6.1, and the obsolete ones proxies still see).
func isHopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// hasToken reports whether the comma-separated lists vv name token
// (case-insensitive).
func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// dropConnectionListed removes the headers named in Connection values.
func dropConnectionListed(h http.Header, conn []string) {
	for _, v := range conn {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if t = strings.TrimSpace(t); t != "" {
				h.Del(t)
			}
		}
	}
}

// clientIP is the host part of a RemoteAddr.
func clientIP(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}
