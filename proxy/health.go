package proxy

import (
	"net/http"
	"strings"

	"agent/internal/canned"
	"agent/internal/lifecycle"
)

// unavailable adds the Retry-After every 503 of the proxy carries.
func unavailable(r *canned.Reply) *canned.Reply { return r.WithRetryAfter(retryAfter) }

var (
	// Errors the proxy gives: short, naming nothing internal.
	replies = map[int]*canned.Reply{
		http.StatusBadRequest:         canned.Text(http.StatusBadRequest, "bad request\n"),
		http.StatusBadGateway:         canned.Text(http.StatusBadGateway, "bad gateway\n"),
		http.StatusServiceUnavailable: unavailable(canned.Text(http.StatusServiceUnavailable, "service unavailable\n")),
	}

	// Health answers on the traffic port: a state word and nothing else.
	healthReady      = canned.Word(http.StatusOK, "ready")
	healthRestarting = canned.Word(http.StatusOK, "restarting")
	healthStale      = unavailable(canned.Word(http.StatusServiceUnavailable, "restarting"))
	healthStarting   = unavailable(canned.Down(lifecycle.Starting))
	healthDown       = unavailable(canned.Word(http.StatusServiceUnavailable, "down"))
	healthDraining   = unavailable(canned.Down(lifecycle.Draining))
)

// fail answers with an error of the proxy's own (counted in Stats.Failed
// for 5xx) and returns its code.
func (p *Proxy) fail(c *clientConn, code int) int {
	p.failed.Add(1)
	return p.reply(c, code)
}

// reply writes the precomputed answer for code.
func (p *Proxy) reply(c *clientConn, code int) int {
	r, ok := replies[code]
	if !ok {
		r = canned.Text(code, strings.ToLower(http.StatusText(code))+"\n")
	}
	c.writeReply(r)
	return code
}

// health is the answer of health.path on the traffic port: 200 while at
// least one slot is ready, and while a restart is under way for less than
// Hold since one last was (requests are held, not refused); 503 otherwise,
// and 503 "draining" from Drain on (the agent is shutting down: the load
// balancer stops sending while requests are still served).
func (p *Proxy) health() *canned.Reply {
	if p.draining.Load() {
		return healthDraining
	}
	st := p.st.Load()
	switch {
	case len(st.ready) > 0:
		return healthReady
	case st.down:
		return healthDown
	case !st.everReady:
		return healthStarting
	case p.clk.Now().Sub(st.unreadyAt) < p.cfg.Hold:
		return healthRestarting
	}
	return healthStale
}

// Drain makes the health page answer 503 "draining" from now on, while
// requests are still forwarded: on shutdown, for stop.drain, so that the
// load balancer takes the instance out before the app stops.
func (p *Proxy) Drain() { p.draining.Store(true) }
