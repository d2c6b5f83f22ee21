package proxy

import (
	"net/http"
	"strconv"
)

// reply is one precomputed answer the proxy gives itself.
type reply struct {
	code          int
	body          []byte
	contentLength []string
	retryAfter    []string // 503 only
	allow         []string // 405 only
}

func newReply(code int, body string) *reply {
	r := &reply{code: code, body: []byte(body), contentLength: []string{strconv.Itoa(len(body))}}
	if code == http.StatusServiceUnavailable {
		r.retryAfter = []string{retryAfter}
	}
	return r
}

var (
	hdrTextPlain = []string{"text/plain; charset=utf-8"}
	hdrNoStore   = []string{"no-store"}
	hdrNoSniff   = []string{"nosniff"}

	// Errors the proxy gives: short, naming nothing internal.
	replies = map[int]*reply{
		http.StatusBadRequest:         newReply(http.StatusBadRequest, "bad request\n"),
		http.StatusBadGateway:         newReply(http.StatusBadGateway, "bad gateway\n"),
		http.StatusServiceUnavailable: newReply(http.StatusServiceUnavailable, "service unavailable\n"),
	}

	// Health answers on the traffic port: a state word and nothing else.
	healthReady      = newReply(http.StatusOK, "ready\n")
	healthRestarting = newReply(http.StatusOK, "restarting\n")
	healthStale      = newReply(http.StatusServiceUnavailable, "restarting\n")
	healthStarting   = newReply(http.StatusServiceUnavailable, "starting\n")
	healthDown       = newReply(http.StatusServiceUnavailable, "down\n")
	healthDraining   = newReply(http.StatusServiceUnavailable, "draining\n")
	healthNotAllowed = func() *reply {
		r := newReply(http.StatusMethodNotAllowed, "method not allowed\n")
		r.allow = []string{"GET, HEAD"}
		return r
	}()
)

// fail answers with an error of the proxy's own (counted in Stats.Failed
// for 5xx) and returns its code.
func (p *Proxy) fail(w http.ResponseWriter, code int) int {
	p.failed.Add(1)
	return p.reply(w, code)
}

// reply writes the precomputed answer for code.
func (p *Proxy) reply(w http.ResponseWriter, code int) int {
	writeReply(w, replies[code], true)
	return code
}

func writeReply(w http.ResponseWriter, r *reply, body bool) {
	h := w.Header()
	clear(h)
	h["Content-Type"] = hdrTextPlain
	h["Content-Length"] = r.contentLength
	h["Cache-Control"] = hdrNoStore
	h["X-Content-Type-Options"] = hdrNoSniff
	if r.retryAfter != nil {
		h["Retry-After"] = r.retryAfter
	}
	if r.allow != nil {
		h["Allow"] = r.allow
	}
	w.WriteHeader(r.code)
	if body {
		w.Write(r.body)
	}
}

// serveHealth answers health.path on the traffic port: 200 while the app
// is ready, and while a restart is under way for less than Hold since the
// app was last ready (requests are held, not refused); 503 otherwise, and
// 503 "draining" from Drain on (the agent is shutting down: the load
// balancer stops sending while requests are still served).
func (p *Proxy) serveHealth(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeReply(w, healthNotAllowed, true)
		return
	}
	writeReply(w, p.health(), r.Method != http.MethodHead)
}

func (p *Proxy) health() *reply {
	if p.draining.Load() {
		return healthDraining
	}
	st := p.st.Load()
	switch st.mode {
	case modeReady:
		return healthReady
	case modeDown:
		return healthDown
	}
	if !st.everReady {
		return healthStarting
	}
	if p.clk.Now().Sub(st.unreadyAt) < p.cfg.Hold {
		return healthRestarting
	}
	return healthStale
}

// Drain makes the health page answer 503 "draining" from now on, while
// requests are still forwarded: on shutdown, for stop.drain, so that the
// load balancer takes the instance out before the app stops.
func (p *Proxy) Drain() { p.draining.Store(true) }
