// Package connlimit caps the connections an http.Server holds open, for the
// health page and the traffic port alike, so that a flood of clients bounds
// the agent's memory without locking out a fresh request.
//
// A Listener counts the connections it accepted until they close and learns
// their net/http state from the server's ConnState hook. At the cap it makes
// room for the newcomer instead of waiting: it closes the connection that has
// waited longest for a request, first the keep-alive connections idle
// between requests (the one idle longest first), then the connections that
// have not yet finished their first request header (the oldest first). It
// never closes a connection busy with a request. Only when every connection
// is busy does Accept wait, until one ends or falls idle; a busy connection
// ends by itself (the server's timeouts, the response being done), and a
// client waiting in the kernel's backlog is served then rather than reset.
//
// Where the health page's and the traffic port's former limiters differed:
//
//   - Room is made at the cap only, one connection per newcomer, not from
//     seven eighths of the cap on. Every idle connection closed costs its
//     client a reconnect, and on the traffic port it is a load balancer's
//     keep-alive connection: a request sent on it as it closes is the 502
//     the proxy's idle timeout (above the load balancer's) exists to avoid.
//     Closing ahead of need gained nothing once the choice takes constant
//     time.
//   - The order is exact at each choice, not taken once for a batch. The
//     idle and the not-yet-requested connections sit in two queues kept in
//     the order they entered their state, so the choice is the head of one
//     queue, and it is made and the connection closed under the same lock
//     that ConnState takes: a connection that became busy is not in a queue
//     and cannot be picked. A sorted snapshot, by contrast, could close a
//     connection whose next request had arrived since.
//   - A hijacked connection (a WebSocket tunnel on the traffic port) leaves
//     the count: it is no longer the server's, and counting long-lived
//     tunnels would turn the cap into a limit on the app's users.
package connlimit

import (
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
)

// Listener is a net.Listener that holds at most a fixed number of
// connections open at once. Pass its ConnState to the http.Server that
// serves it, or it cannot tell idle connections from busy ones.
type Listener struct {
	net.Listener
	max       int
	done      chan struct{}
	closeOnce sync.Once
	wake      chan struct{} // a slot freed or a connection fell idle; capacity 1

	mu    sync.Mutex
	open  int   // connections counted
	idle  queue // idle between requests, idle longest first
	fresh queue // no request yet, oldest first
}

// Listen binds a TCP listener on addr capped at n connections. Its error
// is the bare cause ("address already in use"), still comparable with
// errors.Is: the caller names the address once, not the package's
// "listen tcp ADDR: bind:" twice over.
func Listen(addr string, n int) (*Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		var se *os.SyscallError
		var op *net.OpError
		if errors.As(err, &se) {
			err = se.Err
		} else if errors.As(err, &op) && op.Err != nil {
			err = op.Err
		}
		return nil, err
	}
	return New(ln, n), nil
}

// New returns a Listener that accepts from ln and holds at most n
// connections open at once. An n below 1 is taken as 1.
func New(ln net.Listener, n int) *Listener {
	return &Listener{
		Listener: ln,
		max:      max(n, 1),
		done:     make(chan struct{}),
		wake:     make(chan struct{}, 1),
	}
}

// Accept returns the next connection. At the cap it first closes the
// connection that has waited longest for a request; when every connection
// is busy, it waits for one to end or fall idle, or for Close.
func (l *Listener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	// Room is made once a connection is there to take it, never ahead.
	for {
		l.mu.Lock()
		if l.open < l.max || l.evictLocked() {
			c := &conn{Conn: nc, l: l, counted: true}
			l.open++
			l.fresh.push(c)
			l.mu.Unlock()
			return c, nil
		}
		l.mu.Unlock()
		select {
		case <-l.wake:
		case <-l.done:
			nc.Close()
			return nil, net.ErrClosed
		}
	}
}

// Adopt counts nc, a connection accepted before (by the program this one
// took over from), as idle, and returns it as one of l's. It may take l
// past its cap for a while: nothing is closed to make room.
func (l *Listener) Adopt(nc net.Conn) net.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := &conn{Conn: nc, l: l, counted: true}
	l.open++
	l.idle.push(c)
	return c
}

// evictLocked closes the connection that has waited longest for a request
// and reports whether there was one. l.mu is held, so no connection it may
// pick can turn busy meanwhile.
func (l *Listener) evictLocked() bool {
	v := l.idle.head
	if v == nil {
		v = l.fresh.head
	}
	if v == nil {
		return false
	}
	l.releaseLocked(v)
	v.Conn.Close()
	return true
}

// releaseLocked frees c's slot and reports whether it held one. l.mu is
// held.
func (l *Listener) releaseLocked(c *conn) bool {
	if !c.counted {
		return false
	}
	c.counted = false
	l.open--
	if c.q != nil {
		c.q.remove(c)
	}
	return true
}

// ConnState is the http.Server's ConnState hook: it follows each
// connection between the queues by its state.
func (l *Listener) ConnState(nc net.Conn, s http.ConnState) {
	c, ok := nc.(*conn)
	if !ok || c.l != l {
		return
	}
	l.mu.Lock()
	wake := false
	if c.counted {
		switch s {
		case http.StateActive:
			if c.q != nil {
				c.q.remove(c)
			}
		case http.StateIdle:
			if c.q != nil {
				c.q.remove(c)
			}
			l.idle.push(c)
			wake = true
		case http.StateHijacked, http.StateClosed:
			wake = l.releaseLocked(c)
		}
	}
	l.mu.Unlock()
	if wake {
		l.signal()
	}
}

// signal wakes a waiting Accept, if any.
func (l *Listener) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Open returns the number of connections counted now.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// Close closes the listener; an Accept waiting for a slot returns
// net.ErrClosed. Connections already accepted stay open.
func (l *Listener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

// conn is one accepted connection. counted, q, prev and next are guarded
// by l.mu.
type conn struct {
	net.Conn
	l       *Listener
	counted bool   // holds a slot
	q       *queue // the queue it is in, or nil while busy
	prev    *conn
	next    *conn
}

// NetConn returns the connection this one wraps.
func (c *conn) NetConn() net.Conn { return c.Conn }

// CloseWrite lets net/http half-close the connection after an error reply,
// as it does on a bare *net.TCPConn.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close closes the connection and frees its slot; a second Close frees
// nothing more.
func (c *conn) Close() error {
	c.l.mu.Lock()
	freed := c.l.releaseLocked(c)
	c.l.mu.Unlock()
	if freed {
		c.l.signal()
	}
	return c.Conn.Close()
}

// queue is a list of connections in the order they joined it, linked
// through the connections themselves so that joining and leaving allocate
// nothing and take constant time.
type queue struct {
	head, tail *conn
}

func (q *queue) push(c *conn) {
	c.q, c.prev, c.next = q, q.tail, nil
	if q.tail != nil {
		q.tail.next = c
	} else {
		q.head = c
	}
	q.tail = c
}

func (q *queue) remove(c *conn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		q.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		q.tail = c.prev
	}
	c.q, c.prev, c.next = nil, nil, nil
}
