package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"syscall"
	"time"

	"agent/internal/handoff"
)

// An upgrade in place hands the traffic port's client connections to the
// next program: the listening socket is paused by the caller (new
// connections wait in its backlog), then Freeze parks every client
// connection at its next point between requests, with the bytes of a next
// request already read, and stops the WebSocket tunnels' copying, with both
// their sockets. Requests in flight finish first, up to a drain time.
// Parked connections and tunnels are handed over as descriptors; the next
// program's Adopt serves them on. If the upgrade does not happen, Thaw
// serves them on here.

// tunnel is a WebSocket (protocol switch) tunnel: the client's and the
// app's sockets and what their readers hold.
type tunnel struct {
	client net.Conn
	cbr    *bufio.Reader
	app    net.Conn
	abr    *bufio.Reader
}

// Parked is what Freeze stopped.
type Parked struct {
	conns   []*clientConn
	tunnels []*tunnel
	// Cut counts the connections whose request was still running when the
	// drain ran out: they were closed.
	Cut int
}

// HandedConn is a parked client connection as handed over: its socket's
// descriptor and the bytes already read of its next request.
type HandedConn struct {
	FD       int    `json:"fd"`
	Buffered []byte `json:"buffered,omitempty"`
}

// HandedTunnel is a parked tunnel as handed over.
type HandedTunnel struct {
	Client         int    `json:"client"`
	ClientBuffered []byte `json:"client_buffered,omitempty"`
	App            int    `json:"app"`
	AppBuffered    []byte `json:"app_buffered,omitempty"`
}

// Handover returns the parked connections and tunnels as descriptors (the
// sockets' own, valid while pk is neither thawed nor closed).
func (pk *Parked) Handover() (conns []HandedConn, tunnels []HandedTunnel) {
	for _, c := range pk.conns {
		conns = append(conns, HandedConn{FD: connFD(c.nc), Buffered: buffered(c.br)})
	}
	for _, t := range pk.tunnels {
		tunnels = append(tunnels, HandedTunnel{Client: connFD(t.client), ClientBuffered: buffered(t.cbr),
			App: connFD(t.app), AppBuffered: buffered(t.abr)})
	}
	return conns, tunnels
}

func buffered(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return bytes.Clone(b)
}

// connFD returns the descriptor of a socket, under connlimit's wrapper,
// without a dup; -1 if it has none.
func connFD(nc net.Conn) int {
	sc, ok := unwrap(nc).(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return -1
	}
	return handoff.RawFD(sc)
}

// Freeze parks the traffic port's client connections and tunnels for an
// upgrade, once the caller has paused the listening socket: an idle
// connection at once, a busy one once its response is out, each with what
// was read of its next request; the requests still running after drain
// are cut (their connections closed). Requests that arrive meanwhile on a
// parked connection wait in its socket. Answers go on being proxied while
// it waits.
func (p *Proxy) Freeze(drain time.Duration) *Parked {
	p.connsMu.Lock()
	p.freezing.Store(true)
	conns := make([]*clientConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	tunnels := make([]*tunnel, 0, len(p.tunnels))
	for t := range p.tunnels {
		tunnels = append(tunnels, t)
	}
	p.connsMu.Unlock()
	// An idle connection waits in a read for its next request: a deadline
	// in the past ends it (see loop). A busy one parks by itself.
	for _, c := range conns {
		c.mu.Lock()
		if c.idle {
			c.nc.SetReadDeadline(aLongTimeAgo)
		}
		c.mu.Unlock()
	}
	for _, t := range tunnels {
		t.client.SetReadDeadline(aLongTimeAgo)
		t.app.SetReadDeadline(aLongTimeAgo)
	}
	deadline := time.Now().Add(drain)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for p.unparked() > 0 && time.Now().Before(deadline) {
		<-tick.C
	}
	pk := &Parked{}
	p.connsMu.Lock()
	for c := range p.conns {
		pk.Cut++
		c.nc.Close() // its loop ends and untracks it
	}
	pk.conns, p.parkedConns = p.parkedConns, nil
	pk.tunnels, p.parkedTunnels = p.parkedTunnels, nil
	p.connsMu.Unlock()
	return pk
}

// unparked counts the client connections and tunnels not parked yet.
func (p *Proxy) unparked() int {
	p.connsMu.Lock()
	defer p.connsMu.Unlock()
	return len(p.conns) + len(p.tunnels)
}

// Thaw serves the connections and tunnels of pk on: the upgrade did not
// happen.
func (p *Proxy) Thaw(pk *Parked) {
	p.freezing.Store(false)
	for _, c := range pk.conns {
		if !p.track(c) {
			c.nc.Close()
			continue
		}
		go c.loop(false)
	}
	for _, t := range pk.tunnels {
		t.client.SetReadDeadline(time.Time{})
		t.app.SetReadDeadline(time.Time{})
		p.goTunnel(t)
	}
}

// goTunnel runs a tunnel taken over or thawed until it ends (or is parked
// again), then closes its client's side too.
func (p *Proxy) goTunnel(t *tunnel) {
	go func() {
		if !p.runTunnel(t) {
			t.client.Close()
		}
	}()
}

// AdoptedConn is a client connection handed over by the program before
// this one, as a socket again.
type AdoptedConn struct {
	Conn     net.Conn
	Buffered []byte
}

// AdoptedTunnel is a tunnel handed over, as sockets again.
type AdoptedTunnel struct {
	Client         net.Conn
	ClientBuffered []byte
	App            net.Conn
	AppBuffered    []byte
}

// Adopt serves the client connections and tunnels that the program before
// this one handed over. Call it once the listening socket is set
// (UseListener or Listen).
func (p *Proxy) Adopt(conns []AdoptedConn, tunnels []AdoptedTunnel) {
	p.lnMu.Lock()
	ln := p.ln
	p.lnMu.Unlock()
	for _, a := range conns {
		nc := ln.Adopt(a.Conn)
		c := &clientConn{
			p:      p,
			nc:     nc,
			remote: clientIP(nc.RemoteAddr().String()),
			gone:   make(chan struct{}),
			idle:   true,
		}
		c.w.c = c
		if !p.track(c) {
			nc.Close()
			continue
		}
		rw := newRawIO(unwrap(nc))
		c.br = clientReaders.Get().(*bufio.Reader)
		c.br.Reset(prefixed(a.Buffered, rw))
		c.bw = clientWriters.Get().(*bufio.Writer)
		c.bw.Reset(rw)
		go c.loop(false)
	}
	for _, a := range tunnels {
		p.goTunnel(&tunnel{
			client: a.Client, cbr: bufio.NewReaderSize(prefixed(a.ClientBuffered, a.Client), clientReadBuf),
			app: a.App, abr: bufio.NewReaderSize(prefixed(a.AppBuffered, a.App), clientReadBuf),
		})
	}
}

// prefixed reads b, then r.
func prefixed(b []byte, r io.Reader) io.Reader {
	if len(b) == 0 {
		return r
	}
	return io.MultiReader(bytes.NewReader(b), r)
}

// park hands c over to the next program: its loop returns without
// closing it. It reports true.
func (c *clientConn) park() bool {
	p := c.p
	p.connsMu.Lock()
	if _, ok := p.conns[c]; ok {
		delete(p.conns, c)
		p.connsWG.Done()
	}
	p.parkedConns = append(p.parkedConns, c)
	p.connsMu.Unlock()
	return true
}

// trackTunnel adds t to the open tunnels; false once frozen.
func (p *Proxy) trackTunnel(t *tunnel) bool {
	p.connsMu.Lock()
	defer p.connsMu.Unlock()
	if p.freezing.Load() {
		return false
	}
	p.tunnels[t] = struct{}{}
	return true
}

func (p *Proxy) untrackTunnel(t *tunnel) {
	p.connsMu.Lock()
	delete(p.tunnels, t)
	p.connsMu.Unlock()
}

func (p *Proxy) parkTunnel(t *tunnel) {
	p.connsMu.Lock()
	delete(p.tunnels, t)
	p.parkedTunnels = append(p.parkedTunnels, t)
	p.connsMu.Unlock()
}
