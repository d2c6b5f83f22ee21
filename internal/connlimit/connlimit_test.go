package connlimit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"agent/internal/testkit"
)

// waitLong bounds every wait on a real connection; the tests poll on
// conditions and only hit it when something is wrong.
const waitLong = 30 * time.Second

// rig is a Listener on a free loopback port and the client ends of the
// connections dialled to it.
type rig struct {
	t       *testing.T
	ln      *Listener
	clients []net.Conn
}

func newRig(t *testing.T, max int) *rig {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, ln: New(inner, max)}
	t.Cleanup(func() {
		r.ln.Close()
		for _, c := range r.clients {
			c.Close()
		}
	})
	return r
}

// dial opens a client connection to the listener.
func (r *rig) dial() net.Conn {
	r.t.Helper()
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		r.t.Fatal(err)
	}
	r.clients = append(r.clients, c)
	return c
}

// accept dials and accepts one connection, then moves it through states
// as a server would.
func (r *rig) accept(states ...http.ConnState) net.Conn {
	r.t.Helper()
	r.dial()
	c, err := r.ln.Accept()
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	for _, s := range states {
		r.ln.ConnState(c, s)
	}
	return c
}

// isClosed reports whether the listener closed the server side of c.
func isClosed(c net.Conn) bool {
	return errors.Is(c.SetReadDeadline(time.Time{}), net.ErrClosed)
}

// TestEvictionOrder checks the order in which connections are closed to
// make room: idle ones by how long they have been idle (not by when they
// were accepted), then ones without a request by age, never a busy one.
func TestEvictionOrder(t *testing.T) {
	r := newRig(t, 4)
	active, idle := http.StateActive, http.StateIdle
	a := r.accept(active, idle) // idle first...
	b := r.accept(active, idle)
	busy := r.accept(active)
	a2 := r.accept()
	r.ln.ConnState(a, active) // ...then a new request: idle again after b
	r.ln.ConnState(a, idle)
	r.ln.ConnState(a2, active) // a2 likewise: idle after a
	r.ln.ConnState(a2, idle)

	if n := r.ln.Open(); n != 4 {
		t.Fatalf("Open = %d, want 4", n)
	}
	steps := []struct {
		name   string
		closed net.Conn
	}{
		{"idle longest", b},
		{"idle next longest", a},
		{"idle last", a2},
	}
	var fresh []net.Conn
	for _, s := range steps {
		fresh = append(fresh, r.accept())
		if !isClosed(s.closed) {
			t.Fatalf("%s: not closed to make room", s.name)
		}
		if n := r.ln.Open(); n != 4 {
			t.Fatalf("after closing %s: Open = %d, want 4", s.name, n)
		}
	}
	// Only busy and request-less connections now: the oldest of the latter goes.
	r.accept()
	if !isClosed(fresh[0]) {
		t.Fatal("oldest connection without a request not closed")
	}
	for i, c := range fresh[1:] {
		if isClosed(c) {
			t.Fatalf("newer connection %d without a request closed", i+1)
		}
	}
	if isClosed(busy) {
		t.Fatal("busy connection closed")
	}
}

// TestWaitsWhenAllBusy shows the cap holding: with all slots held by
// connections busy with a request, a new connection waits until one ends;
// one that falls idle is closed to make room; a second Close of a
// connection frees no second slot; a waiting Accept returns on Close.
func TestWaitsWhenAllBusy(t *testing.T) {
	r := newRig(t, 2)
	a := r.accept(http.StateActive)
	b := r.accept(http.StateActive)
	r.dial() // two more clients, waiting in the backlog
	r.dial()

	accepted := make(chan net.Conn, 4)
	go func() {
		for range 2 {
			c, err := r.ln.Accept()
			if err != nil {
				t.Error(err)
				return
			}
			r.ln.ConnState(c, http.StateActive) // as a server does before its next Accept
			accepted <- c
		}
	}()
	select {
	case <-accepted:
		t.Fatal("a third connection was accepted while two busy connections held the slots")
	case <-time.After(100 * time.Millisecond):
	}
	a.Close()
	a.Close() // a second Close must not free a second slot
	var third net.Conn
	select {
	case third = <-accepted:
		defer third.Close()
	case <-time.After(waitLong):
		t.Fatal("third connection not accepted after a slot was freed")
	}
	select {
	case <-accepted:
		t.Fatal("a fourth connection was accepted: a double Close freed two slots")
	case <-time.After(100 * time.Millisecond):
	}

	// b falls idle between requests: it is closed to make room.
	r.ln.ConnState(b, http.StateIdle)
	select {
	case c := <-accepted:
		defer c.Close()
	case <-time.After(waitLong):
		t.Fatal("fourth connection not accepted after a connection fell idle")
	}
	if !isClosed(b) {
		t.Error("the idle connection was not closed")
	}
	if isClosed(third) {
		t.Error("a busy connection was closed")
	}
	if n := r.ln.Open(); n != 2 {
		t.Errorf("Open = %d, want 2", n)
	}

	// A waiting Accept returns when the listener closes.
	blocked := make(chan error, 1)
	go func() {
		_, err := r.ln.Accept()
		blocked <- err
	}()
	r.dial()
	select {
	case err := <-blocked:
		t.Fatalf("Accept returned %v while every slot was busy", err)
	case <-time.After(100 * time.Millisecond):
	}
	r.ln.Close()
	select {
	case err := <-blocked:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Accept did not return after Close")
	}
}

// TestHijackedAndClosedLeaveCount: a hijacked connection no longer holds
// a slot and is never closed to make room; StateClosed frees a slot even
// before the connection's own Close, and only once.
func TestHijackedAndClosedLeaveCount(t *testing.T) {
	r := newRig(t, 1)
	h := r.accept(http.StateActive, http.StateHijacked)
	if n := r.ln.Open(); n != 0 {
		t.Fatalf("Open = %d after a hijack, want 0", n)
	}
	c := r.accept()
	if isClosed(h) {
		t.Fatal("hijacked connection closed to make room")
	}
	h.Close() // the hijacker's Close frees nothing more
	r.ln.ConnState(c, http.StateIdle)
	r.ln.ConnState(c, http.StateClosed)
	if n := r.ln.Open(); n != 0 {
		t.Fatalf("Open = %d after StateClosed, want 0", n)
	}
	c.Close()
	r.ln.ConnState(c, http.StateClosed)
	d := r.accept()
	if n := r.ln.Open(); n != 1 {
		t.Fatalf("Open = %d, want 1", n)
	}
	// d holds the only slot and has no request: the next one replaces it.
	r.accept()
	if !isClosed(d) {
		t.Fatal("connection without a request not closed at the cap")
	}
}

// TestOddInput: a cap below one is one; a connection the listener did not
// accept is ignored by ConnState.
func TestOddInput(t *testing.T) {
	r := newRig(t, 0)
	c := r.accept()
	if n := r.ln.Open(); n != 1 {
		t.Fatalf("Open = %d, want 1", n)
	}
	r.accept()
	if !isClosed(c) {
		t.Fatal("cap 0 held more than one connection")
	}
	other := newRig(t, 1).accept()
	r.ln.ConnState(other, http.StateClosed)
	r.ln.ConnState(nil, http.StateIdle)
	if n := r.ln.Open(); n != 1 {
		t.Fatalf("Open = %d after foreign connections, want 1", n)
	}
}

// TestServerUnderFlood runs a real http.Server on the Listener: slots taken
// by busy requests, idle keep-alive connections and silent connections,
// far more than the cap. Every fresh request is answered, and every busy
// request completes: none of them was closed to make room.
func TestServerUnderFlood(t *testing.T) {
	const max = 16
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := New(inner, max)
	release := make(chan struct{})
	var started sync.WaitGroup
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.URL.Path == "/busy" {
				started.Done()
				<-release
			}
			io.WriteString(w, "ok")
		}),
		ConnState: ln.ConnState,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		<-served
	}()
	addr := ln.Addr().String()

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(waitLong))
		return c
	}
	ask := func(c net.Conn, path string) (string, error) {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	// Busy requests first, so they are the oldest connections of all.
	const busy = 4
	started.Add(busy)
	busyDone := make(chan error, busy)
	for range busy {
		c := dial()
		go func() {
			body, err := ask(c, "/busy")
			if err == nil && body != "ok" {
				err = fmt.Errorf("body %q", body)
			}
			busyDone <- err
		}()
	}
	started.Wait()
	// Then idle keep-alive clients and silent ones, several times the cap.
	for i := range 5 * max {
		c := dial()
		switch i % 3 {
		case 0:
			if _, err := ask(c, "/"); err != nil {
				t.Fatalf("keep-alive client %d: %v", i, err)
			}
		case 1:
			io.WriteString(c, "GET / HTTP/1.1\r\nX-Slow: ")
		}
	}
	testkit.Eventually(t, waitLong, "the cap to be reached", func() bool { return ln.Open() == max })

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 3 * max {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatalf("fresh request %d: %v", i, err)
		}
		resp.Body.Close()
	}
	if n := ln.Open(); n > max {
		t.Fatalf("Open = %d, above the cap %d", n, max)
	}
	close(release)
	for range busy {
		if err := <-busyDone; err != nil {
			t.Errorf("busy request cut: %v", err)
		}
	}
}

// BenchmarkAcceptAtCap measures one accepted connection while the cap is
// full of idle keep-alive connections, so that each Accept first closes
// the one idle longest. The client's dial is not part of the figure.
func BenchmarkAcceptAtCap(b *testing.B) {
	for _, max := range []int{64, 1024} {
		b.Run(fmt.Sprint(max), func(b *testing.B) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			ln := New(inner, max)
			defer ln.Close()
			addr := ln.Addr().String()
			var clients, servers []net.Conn
			defer func() {
				for _, c := range append(clients, servers...) {
					c.Close()
				}
			}()
			var pending net.Conn
			dial := func() {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				pending = c
			}
			step := func() {
				s, err := ln.Accept()
				if err != nil {
					b.Fatal(err)
				}
				ln.ConnState(s, http.StateActive)
				ln.ConnState(s, http.StateIdle)
				clients, servers = append(clients, pending), append(servers, s)
			}
			for range max {
				dial()
				step()
			}
			b.ResetTimer()
			for i := range b.N {
				// Only Accept and the state changes are timed, not the
				// client's dial nor the closing of what was closed already.
				b.StopTimer()
				clients[i].Close()
				servers[i].Close()
				dial()
				b.StartTimer()
				step()
			}
		})
	}
}
