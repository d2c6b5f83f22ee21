package probe

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/canned"
	"agent/internal/connlimit"
	"agent/internal/lifecycle"
)

// Limits of the health server. The load balancer's checks are tiny requests
// on a handful of connections that it keeps open up to 60 s, so the idle
// timeout is a little above that and everything else is small.
const (
	healthReadHeaderTimeout = 2 * time.Second
	healthReadTimeout       = 5 * time.Second
	healthWriteTimeout      = 5 * time.Second
	healthIdleTimeout       = 65 * time.Second
	healthMaxHeaderBytes    = 4 << 10
	healthShutdownGrace     = time.Second
	// healthMaxConns bounds the open connections, and with them the memory a
	// flood of clients can make the agent hold. Far above what a load
	// balancer needs. At the cap, the connection idle or stalled longest is
	// closed to make room (see connlimit); a client that holds a slot
	// without sending a request loses it after healthReadHeaderTimeout anyway.
	healthMaxConns = 1024
)

// HealthServer answers the load balancer's health check from the state the
// agent already holds: 200 and a tiny page while the app is running and
// ready, 503 and the state word otherwise. It never waits on the app.
type HealthServer struct {
	listen string
	path   string
	log    zerolog.Logger

	cur atomic.Pointer[canned.Reply]

	// maxConns and readHeaderTimeout are healthMaxConns and
	// healthReadHeaderTimeout; tests make them smaller or larger.
	maxConns          int
	readHeaderTimeout time.Duration

	mu sync.Mutex // guards ln
	ln *connlimit.Listener
}

// NewHealthServer returns a health server for listen (host:port) and path.
// It answers 503 "starting" until the first Set.
func NewHealthServer(listen, path string, log zerolog.Logger) *HealthServer {
	h := &HealthServer{
		listen: listen,
		path:   path,
		log:    log.With().Str("component", "health").Logger(),

		maxConns:          healthMaxConns,
		readHeaderTimeout: healthReadHeaderTimeout,
	}
	h.cur.Store(canned.Down(lifecycle.Starting))
	return h
}

// Set publishes the app's state. serving is true only when the app is
// running and ready; the page then answers 200, otherwise 503 with state.
// It is safe to call from any goroutine.
func (h *HealthServer) Set(state lifecycle.State, serving bool) {
	if serving {
		h.cur.Store(canned.OK)
		return
	}
	h.cur.Store(canned.Down(state))
}

// Listen binds the listening socket now, so that a busy port is a start-up
// error rather than a failure later in Run. Calling it again is a no-op.
func (h *HealthServer) Listen() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ln != nil {
		return nil
	}
	ln, err := connlimit.Listen(h.listen, h.maxConns)
	if err != nil {
		return fmt.Errorf("health: listen %s: %w", h.listen, err)
	}
	h.ln = ln
	return nil
}

// UseListener makes the server serve ln (a socket bound before, kept by
// systemd across restarts) instead of binding one in Listen.
func (h *HealthServer) UseListener(ln net.Listener) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ln == nil {
		h.ln = connlimit.New(ln, h.maxConns)
	}
}

// Close closes the socket bound by Listen, for a start that fails before
// Run; Run closes it itself.
func (h *HealthServer) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ln == nil {
		return nil
	}
	return h.ln.Close()
}

// Addr returns the bound address, or nil before Listen.
func (h *HealthServer) Addr() net.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ln == nil {
		return nil
	}
	return h.ln.Addr()
}

// openConns returns the number of open connections, 0 before Listen.
func (h *HealthServer) openConns() int {
	h.mu.Lock()
	ln := h.ln
	h.mu.Unlock()
	if ln == nil {
		return 0
	}
	return ln.Open()
}

// Run serves until ctx is cancelled, then shuts down with a short grace for
// requests in flight. It calls Listen if that was not done. A cancelled
// context is a clean stop and returns nil.
func (h *HealthServer) Run(ctx context.Context) error {
	if err := h.Listen(); err != nil {
		return err
	}
	h.mu.Lock()
	ln := h.ln
	h.mu.Unlock()

	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: h.readHeaderTimeout,
		ReadTimeout:       healthReadTimeout,
		WriteTimeout:      healthWriteTimeout,
		IdleTimeout:       healthIdleTimeout,
		MaxHeaderBytes:    healthMaxHeaderBytes,
		ErrorLog:          log.New(healthErrorLog{h.log}, "", 0),
		ConnState:         ln.ConnState,
	}
	h.log.Info().Str("addr", ln.Addr().String()).Str("path", h.path).Msg("health page listening")

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		return fmt.Errorf("health: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), healthShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close() // grace spent: drop what is left
	}
	<-errc // http.ErrServerClosed
	return nil
}

// ServeHTTP answers one request with precomputed bytes; it takes no lock
// and allocates nothing of its own.
func (h *HealthServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	canned.Serve(w, r, h.path, h.cur.Load())
}

// healthErrorLog sends net/http's own error lines (accept errors, bad
// requests from odd clients) to the log at debug level.
type healthErrorLog struct{ log zerolog.Logger }

func (d healthErrorLog) Write(p []byte) (int, error) {
	d.log.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
