package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"agent/supervisor"
)

// ErrSocketPathTaken is returned by Run when the control socket's path is
// taken by something other than a socket (a file, a directory, a symbolic
// link): the agent never removes it, so it cannot start until the path is
// freed or control.socket changed.
var ErrSocketPathTaken = errors.New("control socket path taken by something that is not a socket")

// maxSocketPath is the longest path a unix socket can be bound to
// (sizeof(sun_path) - 1).
const maxSocketPath = 107

// Limits of the control server. Its clients are agentctl on this host;
// a stuck or odd one must not hold the agent's resources.
const (
	controlReadHeaderTimeout = 5 * time.Second
	controlIdleTimeout       = 30 * time.Second
	controlMaxHeaderBytes    = 16 << 10
	// controlMaxBody bounds what is read of a request body; the API takes
	// none.
	controlMaxBody = 4 << 10
)

// listenControl creates the control socket at path: 0600, or 0660 owned by
// group gid when gid >= 0. A live socket of another agent is never
// removed; a stale one (nobody listening) is. Anything else at the path
// (a file, a directory, a symbolic link, even one to a socket) is left
// alone and is an error wrapping ErrSocketPathTaken.
func listenControl(path string, gid int) (net.Listener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("control socket: path %s is %d bytes long, a unix socket's can be at most %d", path, len(path), maxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%w: %s is %s; not removing it (remove it or set control.socket)", ErrSocketPathTaken, path, describeMode(fi.Mode()))
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%w: %s (is another agent running?)", ErrSocketInUse, path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("control socket: %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket: remove stale %s: %w", path, err)
		}
	}
	old := syscall.Umask(0o177) // born 0600: no window with a wider mode
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control socket: chown group: %w", err)
		}
		if err := os.Chmod(path, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control socket: %w", err)
		}
	}
	return ln, nil
}

// describeMode names the kind of file mode is, for an error message.
func describeMode(mode os.FileMode) string {
	switch {
	case mode.IsRegular():
		return "a regular file"
	case mode.IsDir():
		return "a directory"
	case mode&os.ModeSymlink != 0:
		return "a symbolic link"
	case mode&os.ModeNamedPipe != 0:
		return "a named pipe"
	case mode&os.ModeDevice != 0:
		return "a device"
	}
	return "not a socket"
}

// serveControl serves h on ln until ctx is cancelled. Malformed requests
// get net/http's 400 and the connection closed; a client that sends a
// header slowly, or not at all, is dropped after the header timeout; a
// body is never read past a few KiB.
func serveControl(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, controlMaxBody)
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: controlReadHeaderTimeout,
		IdleTimeout:       controlIdleTimeout,
		MaxHeaderBytes:    controlMaxHeaderBytes,
		// The handlers may ask who is on the other end (SO_PEERCRED).
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// connKey is the request context's key of the control connection.
type connKey struct{}

type apiError struct {
	Error string `json:"error"`
}

// controlHandler is the control API: HTTP/1.1 + JSON over the unix socket.
func (a *Agent) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Status())
	})
	// Each action answers once its transition is complete: the supervisor
	// replies from its loop then (restart and start: the new process ready;
	// stop: the tree gone; reload: the new process serving and the old one
	// gone), or with the error that stopped it.
	action := func(do func(context.Context) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if a.upgrading.Load() {
				writeJSON(w, http.StatusConflict, apiError{ErrUpgrading.Error()})
				return
			}
			err := do(r.Context())
			switch {
			case err == nil:
				writeJSON(w, http.StatusOK, a.Status())
			case errors.Is(err, supervisor.ErrStartFailed), errors.Is(err, supervisor.ErrStopped),
				errors.Is(err, ErrReloadFailed), errors.Is(err, ErrBadScale):
				writeJSON(w, http.StatusConflict, apiError{err.Error()})
			case errors.Is(err, supervisor.ErrShuttingDown):
				writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
			default:
				writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
			}
		}
	}
	mux.HandleFunc("POST /v1/restart", action(a.Restart))
	mux.HandleFunc("POST /v1/stop", action(a.sup.Stop))
	mux.HandleFunc("POST /v1/start", action(a.sup.Start))
	mux.HandleFunc("POST /v1/reload", action(a.Reload))
	// POST /v1/scale?n=N: answers once N processes serve.
	mux.HandleFunc("POST /v1/scale", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{"n must be a number of processes"})
			return
		}
		action(func(ctx context.Context) error { return a.Scale(ctx, n) })(w, r)
	})
	mux.HandleFunc("GET /v1/logs", a.serveLogs)
	mux.HandleFunc("POST /v1/upgrade", a.serveUpgrade)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A browser can be tricked into talking to a local socket through a
		// proxy; requests that carry browser headers are refused.
		if r.Header.Get("Origin") != "" || r.Header.Get("Referer") != "" {
			writeJSON(w, http.StatusForbidden, apiError{"requests with Origin or Referer are refused"})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// serveUpgrade is POST /v1/upgrade[?binary=PATH]: root only. A refused
// upgrade is answered 403 or 409 here; once the exec is under way the
// connection is handed over and the new program answers (200 with its
// status), or this one, should the upgrade fail after all (409).
func (a *Agent) serveUpgrade(w http.ResponseWriter, r *http.Request) {
	conn, _ := r.Context().Value(connKey{}).(net.Conn)
	if uid, err := peerUID(conn); err != nil || uid != 0 {
		writeJSON(w, http.StatusForbidden, apiError{"upgrade is for root only"})
		return
	}
	if !a.upgrading.CompareAndSwap(false, true) {
		writeJSON(w, http.StatusConflict, apiError{"an upgrade is already under way"})
		return
	}
	defer func() {
		// The upgrade did not happen: what was asked meanwhile is done here.
		a.upgrading.Store(false)
		if a.pendingReload.Swap(false) {
			select {
			case a.reloadAgain <- struct{}{}:
			default:
			}
		}
		if a.pendingStop.Swap(false) {
			select {
			case a.stopAgain <- struct{}{}:
			default:
			}
		}
	}()
	plan, err := a.prepareUpgrade(r.Context(), r.URL.Query().Get("binary"))
	if err != nil {
		a.log.Error().Err(err).Msg("upgrade refused")
		writeJSON(w, http.StatusConflict, apiError{"upgrade refused: " + err.Error()})
		return
	}
	hc, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
		return
	}
	err = a.upgrade(context.Background(), plan, hc)
	a.log.Error().Err(err).Msg("upgrade failed; the agent goes on unchanged")
	answerRaw(hc, http.StatusConflict, apiError{"upgrade failed, the agent goes on unchanged: " + err.Error()})
}

// serveLogs writes the app's recent output as JSON lines; with follow=1 it
// keeps writing new lines until the client goes away.
func (a *Agent) serveLogs(w http.ResponseWriter, r *http.Request) {
	n := 100
	if s := r.URL.Query().Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			writeJSON(w, http.StatusBadRequest, apiError{"n must be a non-negative number"})
			return
		}
		n = v
	}
	follow := r.URL.Query().Get("follow") == "1"
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	if !follow {
		for _, l := range a.output.Last(n) {
			enc.Encode(l)
		}
		return
	}
	last, lines, stop := a.output.Follow(n)
	defer stop()
	for _, l := range last {
		enc.Encode(l)
	}
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case l := <-lines:
			if err := enc.Encode(l); err != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
