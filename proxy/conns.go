package proxy

import (
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
)

// connLimiter is the traffic port's listener. It tracks the client
// connections and their net/http state; when more than max are open it
// closes the longest idle keep-alive connections first, then the oldest
// ones that have not yet sent a request, and only when every connection is
// busy refuses the newcomer. Accept never waits, so a flood of idle
// connections cannot keep a fresh client (or health check) out.
type connLimiter struct {
	net.Listener
	max int

	seq atomic.Uint64 // orders state changes: lower = earlier

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

// trackedConn is a client connection with its last net/http state.
type trackedConn struct {
	net.Conn
	state atomic.Int32  // http.ConnState
	since atomic.Uint64 // connLimiter.seq at the last state change
}

// CloseWrite lets net/http half-close the connection after an error reply,
// as it does on a bare *net.TCPConn.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func newConnLimiter(ln net.Listener, max int) *connLimiter {
	return &connLimiter{Listener: ln, max: max, conns: make(map[*trackedConn]struct{})}
}

// Accept returns the next connection, first making room for it.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c}
		tc.since.Store(l.seq.Add(1))
		l.mu.Lock()
		l.conns[tc] = struct{}{}
		over := len(l.conns) - l.max
		var victims []*trackedConn
		if over > 0 {
			victims = l.evictLocked(tc, over)
		}
		l.mu.Unlock()
		for _, v := range victims {
			v.Conn.Close()
		}
		if over > 0 && len(victims) < over {
			// Every other connection is busy with a request: refuse this one.
			l.mu.Lock()
			delete(l.conns, tc)
			l.mu.Unlock()
			c.Close()
			continue
		}
		return tc, nil
	}
}

// evictLocked picks up to n connections to close (plus a small batch, so a
// flood is not handled one accept at a time): idle ones first, longest idle
// first, then the oldest that never sent a request. It removes them from
// the set. l.mu is held.
func (l *connLimiter) evictLocked(newest *trackedConn, n int) []*trackedConn {
	// The order is taken once: the connections' states keep changing.
	type cand struct {
		c     *trackedConn
		since uint64
	}
	var idle, fresh []cand
	for c := range l.conns {
		if c == newest {
			continue
		}
		switch http.ConnState(c.state.Load()) {
		case http.StateIdle:
			idle = append(idle, cand{c, c.since.Load()})
		case http.StateNew:
			fresh = append(fresh, cand{c, c.since.Load()})
		}
	}
	oldestFirst := func(cs []cand) {
		sort.Slice(cs, func(i, j int) bool { return cs[i].since < cs[j].since })
	}
	oldestFirst(idle)
	want := min(n+l.max/64, len(idle))
	victims := make([]*trackedConn, 0, max(want, n))
	for _, c := range idle[:want] {
		victims = append(victims, c.c)
	}
	if len(victims) < n {
		oldestFirst(fresh)
		for _, c := range fresh[:min(n-len(victims), len(fresh))] {
			victims = append(victims, c.c)
		}
	}
	for _, v := range victims {
		delete(l.conns, v)
	}
	return victims
}

// connState is the http.Server's ConnState hook.
func (l *connLimiter) connState(c net.Conn, s http.ConnState) {
	tc, ok := c.(*trackedConn)
	if !ok {
		return
	}
	switch s {
	case http.StateClosed, http.StateHijacked:
		l.mu.Lock()
		delete(l.conns, tc)
		l.mu.Unlock()
	default:
		tc.state.Store(int32(s))
		if s == http.StateIdle {
			tc.since.Store(l.seq.Add(1))
		}
	}
}

// open reports how many client connections are tracked.
func (l *connLimiter) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}
