package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"agent/supervisor"
)

// DefaultSocket is where agentctl looks when nothing else says.
const DefaultSocket = "/run/agent/agent.sock"

// Client talks to a running agent over its control socket. The zero value
// uses DefaultSocket.
type Client struct {
	Socket string

	once sync.Once
	hc   *http.Client
}

// UnreachableError means the agent could not be reached at all.
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	if errors.Is(e.Err, syscall.EACCES) {
		return fmt.Sprintf("cannot reach the agent at %s: permission denied (run as root, or as a member of the config's control.group)", e.Socket)
	}
	return fmt.Sprintf("cannot reach the agent at %s: %v (is it running? try: systemctl status agent)", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// APIError is an error the agent answered with.
type APIError struct {
	Code int
	Msg  string
}

func (e *APIError) Error() string { return fmt.Sprintf("agent: %s", e.Msg) }

func (c *Client) socket() string {
	if c.Socket == "" {
		return DefaultSocket
	}
	return c.Socket
}

func (c *Client) client() *http.Client {
	c.once.Do(func() {
		sock := c.socket()
		c.hc = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				d := net.Dialer{Timeout: 5 * time.Second}
				return d.DialContext(ctx, "unix", sock)
			},
			// No header timeout here: each call bounds its own wait
			// (a reload answers only once the new process serves).
		}}
	})
	return c.hc
}

func (c *Client) do(ctx context.Context, method, path string) (*http.Response, error) {
	return c.doQuery(ctx, method, path, nil)
}

func (c *Client) doQuery(ctx context.Context, method, path string, q url.Values) (*http.Response, error) {
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.client().Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, &UnreachableError{Socket: c.socket(), Err: op.Err}
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e apiError
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = resp.Status
		}
		return nil, &APIError{Code: resp.StatusCode, Msg: e.Error}
	}
	return resp, nil
}

// How long a call waits for the agent's answer: actions answer once they
// took effect, a reload once the new process serves (probe.startup_timeout
// is 5 minutes by default).
const (
	actionWait = 2 * time.Minute
	reloadWait = 15 * time.Minute
)

func (c *Client) status(ctx context.Context, method, path string) (*Status, error) {
	return c.statusQuery(ctx, method, path, nil)
}

func (c *Client) statusQuery(ctx context.Context, method, path string, q url.Values) (*Status, error) {
	wait := actionWait
	if path == "/v1/reload" {
		wait = reloadWait
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	resp, err := c.doQuery(ctx, method, path, q)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var s Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("decode status: %w", err)
	}
	return &s, nil
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	return c.status(ctx, http.MethodGet, "/v1/status")
}

// Restart restarts the app.
func (c *Client) Restart(ctx context.Context) (*Status, error) {
	return c.status(ctx, http.MethodPost, "/v1/restart")
}

// Reload replaces the app's process for a deploy (zero downtime with the
// proxy); an error with code 409 says the new process failed and the old
// one kept serving.
func (c *Client) Reload(ctx context.Context) (*Status, error) {
	return c.status(ctx, http.MethodPost, "/v1/reload")
}

// Stop stops the app.
func (c *Client) Stop(ctx context.Context) (*Status, error) {
	return c.status(ctx, http.MethodPost, "/v1/stop")
}

// Start starts the app.
func (c *Client) Start(ctx context.Context) (*Status, error) {
	return c.status(ctx, http.MethodPost, "/v1/start")
}

// Scale makes the app run n processes; it answers once n serve.
func (c *Client) Scale(ctx context.Context, n int) (*Status, error) {
	return c.status(ctx, http.MethodPost, "/v1/scale?n="+strconv.Itoa(n))
}

// Upgrade replaces the agent's program in place with binary ("" = the
// path the agent was started as) and returns the new program's status. An
// APIError with code 404 means the agent predates upgrades.
func (c *Client) Upgrade(ctx context.Context, binary string) (*Status, error) {
	q := url.Values{}
	if binary != "" {
		q.Set("binary", binary)
	}
	return c.statusQuery(ctx, http.MethodPost, "/v1/upgrade", q)
}

// Logs calls fn for the last n lines of the app's output and, with follow,
// for each new line until ctx ends.
func (c *Client) Logs(ctx context.Context, n int, follow bool, fn func(supervisor.Line)) error {
	path := "/v1/logs?n=" + strconv.Itoa(n)
	if follow {
		path += "&follow=1"
	}
	resp, err := c.do(ctx, http.MethodGet, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var l supervisor.Line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("decode log line: %w", err)
		}
		fn(l)
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}
