package proxy

import (
	"context"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/clock"
	"agent/internal/connlimit"
)

// This package's own defaults for the fields of Config left zero (as tests
// and benchmarks do). Hold and IdleTimeout are not the agent's: the agent
// passes proxy.hold and proxy.idle_timeout from its config, whose defaults
// are the tags of agent.Config.
const (
	DefaultHold         = 30 * time.Second
	DefaultIdleTimeout  = 75 * time.Second
	DefaultUpstreamIdle = 4 * time.Second
	DefaultMaxConns     = 2048
)

// Fixed limits of the traffic port.
const (
	readHeaderTimeout = 10 * time.Second
	maxHeaderBytes    = 64 << 10
	shutdownGrace     = 5 * time.Second
	dialTimeout       = 5 * time.Second
	// retryAfter is the Retry-After of a 503, in seconds.
	retryAfter = 5
)

// Config is what the proxy needs from the agent's configuration. Zero
// fields take the defaults above.
type Config struct {
	Listen       string        // proxy.listen, e.g. ":80"
	HealthPath   string        // health.path, answered on the traffic port too; "" = not answered
	Hold         time.Duration // a request waits this long for a (re)starting app, then 503 + Retry-After
	IdleTimeout  time.Duration // client keep-alive; keep it above the ALB's 60s
	UpstreamIdle time.Duration // idle conns to the app closed after this; must be < Node's 5s (default 4s)
	// MaxConns caps the client connections; when it is reached the longest
	// idle keep-alive connections are closed first (default 2048).
	MaxConns int
	// Affinity (proxy.affinity = "cookie") keeps a client on one slot
	// while that slot is ready: the proxy sets a cookie naming the slot
	// that answered (agent_slot=N; Path=/; HttpOnly; SameSite=Lax) when
	// the client's names another slot or none, and removes it from the
	// Cookie field the app gets. A client whose slot is not ready is
	// balanced and moved. (A protocol switch's 101 carries no cookie: the
	// tunnel stays on its process anyway.)
	Affinity bool
	// Observe, if set, is called once per forwarded request with the status
	// code the client got (499 when the client left first) and the time taken.
	Observe func(code int, d time.Duration)
}

// state is one immutable snapshot of where requests go: the routing set.
// A change publishes a new snapshot and closes the old one's changed
// channel, which wakes the held requests.
type state struct {
	down  bool        // failed or stopped: 503 at once
	slots []slotState // by slot index
	// ready is the pools of the ready slots, in slot order: the ones a
	// request may go to. Empty: requests are held (unless down).
	ready     []*pool
	everReady bool
	unreadyAt time.Time // when the last ready slot left the set
	changed   chan struct{}
}

// slotState is one slot of the routing set.
type slotState struct {
	pool *pool // the slot's ready process; nil while it is not ready
	// last is, while the slot is not ready, the pool it had when it left
	// the set, for a Gate that comes right after to drain.
	last *pool
	load *atomic.Int64 // requests in flight to the slot's processes, old ones included
}

// slot returns the ready pool of slot i, or nil.
func (st *state) slot(i int) *pool {
	if i < 0 || i >= len(st.slots) {
		return nil
	}
	return st.slots[i].pool
}

// Stats are the proxy's counters. Failed counts the responses the proxy
// gave itself instead of the app's (502, 503).
type Stats struct {
	InFlight, Held             int64
	Requests, Replayed, Failed uint64
}

// Proxy is the traffic front. Create it with New, bind with Listen, serve
// with Run, and steer it with Ready, NotReady, Down, Gate and Route from
// any goroutine.
type Proxy struct {
	draining atomic.Bool // the health page says draining (shutdown)
	cfg      Config
	log      zerolog.Logger
	clk      clock.Clock

	st atomic.Pointer[state]
	mu sync.Mutex // serialises state changes

	lnMu sync.Mutex
	ln   *connlimit.Listener
	port string // the bound port, for X-Forwarded-Port

	held     atomic.Int64
	requests atomic.Uint64
	replayed atomic.Uint64
	failed   atomic.Uint64

	dialer net.Dialer

	// The client connections (serve.go).
	connsMu  sync.Mutex
	conns    map[*clientConn]struct{}
	connsWG  sync.WaitGroup
	shutdown bool        // no new connection is taken
	quit     atomic.Bool // shutdown, read without the lock
	// watching: the check of slow requests runs (serve.go, watchSlow).
	watching atomic.Bool

	// An upgrade's freeze (handover.go), under connsMu.
	freezing      atomic.Bool
	tunnels       map[*tunnel]struct{}
	parkedConns   []*clientConn
	parkedTunnels []*tunnel
}

// New returns a proxy that holds requests until the first Ready.
func New(cfg Config, log zerolog.Logger, clk clock.Clock) *Proxy {
	if cfg.Hold <= 0 {
		cfg.Hold = DefaultHold
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.UpstreamIdle <= 0 {
		cfg.UpstreamIdle = DefaultUpstreamIdle
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	p := &Proxy{
		cfg:     cfg,
		log:     log.With().Str("component", "proxy").Logger(),
		clk:     clk,
		dialer:  net.Dialer{Timeout: dialTimeout},
		conns:   make(map[*clientConn]struct{}),
		tunnels: make(map[*tunnel]struct{}),
	}
	p.st.Store(&state{changed: make(chan struct{})})
	return p
}

// Listen binds the traffic port now, so that a bad or busy port is a
// start-up error rather than a failure in Run. Calling it again is a no-op.
func (p *Proxy) Listen() error {
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	if p.ln != nil {
		return nil
	}
	ln, err := connlimit.Listen(p.cfg.Listen, p.cfg.MaxConns)
	if err != nil {
		return fmt.Errorf("proxy: listen %s: %w", p.cfg.Listen, err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); ok {
		p.port = fmt.Sprint(ta.Port)
	}
	p.ln = ln
	return nil
}

// UseListener makes the proxy serve ln (a socket bound before, kept by
// systemd across restarts) instead of binding one in Listen.
func (p *Proxy) UseListener(ln net.Listener) {
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	if p.ln != nil {
		return
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); ok {
		p.port = fmt.Sprint(ta.Port)
	}
	p.ln = connlimit.New(ln, p.cfg.MaxConns)
}

// Close closes the socket bound by Listen, for a start that fails before
// Run; Run closes it itself.
func (p *Proxy) Close() error {
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	if p.ln == nil {
		return nil
	}
	return p.ln.Close()
}

// Addr returns the bound address, or nil before Listen.
func (p *Proxy) Addr() net.Addr {
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	if p.ln == nil {
		return nil
	}
	return p.ln.Addr()
}

// Run serves until ctx ends, then answers 503 to held requests, lets the
// requests in flight finish for a short grace and closes. It calls Listen
// if that was not done. A cancelled context is a clean stop: nil.
func (p *Proxy) Run(ctx context.Context) error {
	if err := p.Listen(); err != nil {
		return err
	}
	p.lnMu.Lock()
	ln := p.ln
	p.lnMu.Unlock()

	p.log.Info().Str("addr", ln.Addr().String()).Msg("proxy listening")

	errc := make(chan error, 1)
	go func() { errc <- p.serve(ln) }()

	reapCtx, stopReap := context.WithCancel(ctx)
	reapDone := make(chan struct{})
	go func() {
		defer close(reapDone)
		p.reapLoop(reapCtx)
	}()
	defer func() {
		stopReap()
		<-reapDone
	}()

	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("proxy: serve: %w", err)
		}
		// Handed over: the connections that are left finish.
		<-ctx.Done()
		errc <- nil
	case <-ctx.Done():
	}
	p.Down()
	p.stop(ln)
	<-errc
	return nil
}

// Handover ends this proxy's part for the next agent, which takes its
// listening socket from systemd's store: the proxy stops accepting (the
// socket stays open in the store; new connections wait in its backlog),
// and each client connection ends after its next response, which says
// Connection: close. Connections still idle after grace are closed (a
// client sending on one that very moment sees it closed: the one request
// a restart can still cost). It returns once no client connection is left
// but the busy ones, or grace ran out. Requests go on being served
// meanwhile.
func (p *Proxy) Handover(grace time.Duration) {
	p.lnMu.Lock()
	ln := p.ln
	p.lnMu.Unlock()
	if ln == nil {
		return
	}
	ln.Close()
	p.connsMu.Lock()
	p.shutdown = true
	p.quit.Store(true)
	p.connsMu.Unlock()
	t := time.NewTimer(grace)
	defer t.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for p.idleConns() > 0 {
		select {
		case <-t.C:
			p.closeConns(false)
			return
		case <-tick.C:
		}
	}
	p.closeConns(false)
}

// openConns counts the client connections.
func (p *Proxy) openConns() int {
	p.connsMu.Lock()
	defer p.connsMu.Unlock()
	return len(p.conns)
}

// AddStats adds s's counters to the proxy's: those of the program before
// this one, after an upgrade.
func (p *Proxy) AddStats(s Stats) {
	p.requests.Add(s.Requests)
	p.replayed.Add(s.Replayed)
	p.failed.Add(s.Failed)
}

// idleConns counts the client connections idle between requests.
func (p *Proxy) idleConns() int {
	p.connsMu.Lock()
	defer p.connsMu.Unlock()
	n := 0
	for c := range p.conns {
		c.mu.Lock()
		if c.idle {
			n++
		}
		c.mu.Unlock()
	}
	return n
}

// stop closes the listener and the idle connections, lets the requests in
// flight finish for shutdownGrace (each response says Connection: close),
// then closes what is left.
func (p *Proxy) stop(ln net.Listener) {
	ln.Close()
	p.closeConns(false)
	done := make(chan struct{})
	go func() {
		p.connsWG.Wait()
		close(done)
	}()
	t := time.NewTimer(shutdownGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		p.closeConns(true)
		<-done
	}
}

// reapLoop closes the idle connections to the app that have been idle for
// UpstreamIdle, so none lingers half-closed after Node drops it. Once
// traffic has stopped and those connections are gone, it gives the memory
// the burst used back to the system: the agent is meant to cost a few MB
// while the app is quiet, and an idle Go heap would otherwise keep it until
// the next collection, minutes later.
func (p *Proxy) reapLoop(ctx context.Context) {
	every := p.cfg.UpstreamIdle / 4
	if every < 10*time.Millisecond {
		every = 10 * time.Millisecond
	}
	t := p.clk.NewTicker(every)
	defer t.Stop()
	var (
		lastRequests uint64
		quietSince   = p.clk.Now()
		released     = true
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			for _, pl := range p.st.Load().ready {
				pl.reap()
			}
			now := p.clk.Now()
			if n := p.requests.Load(); n != lastRequests {
				lastRequests, quietSince, released = n, now, false
				continue
			}
			if !released && p.inFlight() == 0 && now.Sub(quietSince) > p.cfg.UpstreamIdle+every {
				debug.FreeOSMemory()
				released = true
			}
		}
	}
}
