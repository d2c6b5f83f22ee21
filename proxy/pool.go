package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// errRetired is returned by pool.get when the pool has left the routing
// set; nothing was sent.
var errRetired = errors.New("upstream retired")

// Buffer sizes of a connection to the app.
const (
	upReadBuf  = 8 << 10
	upWriteBuf = 4 << 10
	copyBuf    = 16 << 10
)

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, upReadBuf) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, upWriteBuf) }}
	bufPool    = sync.Pool{New: func() any { b := make([]byte, copyBuf); return &b }}
)

// pool is the set of keep-alive connections to one app process, and the
// count of requests in flight to it. A pool lives from the Ready (or Route)
// that made its process part of the routing set until it left the set
// (retire) and its last exchange ended; a slot's next process gets a new
// pool.
type pool struct {
	p    *Proxy
	addr string
	slot int
	load *atomic.Int64 // the slot's in-flight count, shared by its pools
	// cookie is the Set-Cookie value that pins a client to the slot, with
	// Config.Affinity.
	cookie []string

	inflight atomic.Int64
	retired  atomic.Bool // left the routing set: takes no new request
	draining atomic.Bool
	drained  chan struct{} // gets a token when inflight reaches 0 while draining

	mu   sync.Mutex
	idle []*upConn // most recently used last
}

// upConn is one connection to the app.
type upConn struct {
	nc      net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	idleAt  time.Time
	lr      io.LimitedReader // the body reader of a response with a length
	scratch [24]byte
}

func newPool(p *Proxy, slot int, addr string, load *atomic.Int64) *pool {
	pl := &pool{p: p, addr: addr, slot: slot, load: load, drained: make(chan struct{}, 1)}
	if p.cfg.Affinity {
		pl.cookie = []string{affinityCookie + "=" + strconv.Itoa(slot) + "; Path=/; HttpOnly; SameSite=Lax"}
	}
	return pl
}

// get returns an idle connection (reused = true) unless fresh is set or
// none is young enough, else dials a new one.
func (pl *pool) get(fresh bool) (uc *upConn, reused bool, err error) {
	if !fresh {
		now := pl.p.clk.Now()
		var stale []*upConn
		pl.mu.Lock()
		if pl.retired.Load() {
			pl.mu.Unlock()
			return nil, false, errRetired
		}
		for n := len(pl.idle); n > 0; n = len(pl.idle) {
			c := pl.idle[n-1]
			pl.idle[n-1] = nil
			pl.idle = pl.idle[:n-1]
			if now.Sub(c.idleAt) < pl.p.cfg.UpstreamIdle {
				uc = c
				break
			}
			stale = append(stale, c)
		}
		pl.mu.Unlock()
		for _, c := range stale {
			c.close()
		}
		if uc != nil {
			return uc, true, nil
		}
	}
	nc, err := pl.p.dialer.Dial("tcp", pl.addr)
	if err != nil {
		return nil, false, err
	}
	rw := newRawIO(nc)
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(rw)
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(rw)
	return &upConn{nc: nc, br: br, bw: bw}, false, nil
}

// put returns a connection whose exchange ended cleanly.
func (pl *pool) put(uc *upConn) {
	uc.idleAt = pl.p.clk.Now()
	pl.mu.Lock()
	if pl.retired.Load() {
		pl.mu.Unlock()
		uc.close()
		return
	}
	pl.idle = append(pl.idle, uc)
	pl.mu.Unlock()
}

// reap closes the connections idle for UpstreamIdle or longer.
func (pl *pool) reap() {
	now := pl.p.clk.Now()
	var stale []*upConn
	pl.mu.Lock()
	keep := pl.idle[:0]
	for _, c := range pl.idle {
		if now.Sub(c.idleAt) >= pl.p.cfg.UpstreamIdle {
			stale = append(stale, c)
		} else {
			keep = append(keep, c)
		}
	}
	for i := len(keep); i < len(pl.idle); i++ {
		pl.idle[i] = nil
	}
	pl.idle = keep
	pl.mu.Unlock()
	for _, c := range stale {
		c.close()
	}
}

// retire is the pool leaving the routing set: it refuses new requests and
// closes its idle connections; exchanges under way finish and then close
// their connection. Calling it again is a no-op.
func (pl *pool) retire() {
	pl.retired.Store(true)
	pl.mu.Lock()
	idle := pl.idle
	pl.idle = nil
	pl.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}

// begin counts a request in flight to the pool.
func (pl *pool) begin() {
	pl.inflight.Add(1)
	pl.load.Add(1)
}

// end undoes begin.
func (pl *pool) end() {
	pl.load.Add(-1)
	if pl.inflight.Add(-1) == 0 && pl.draining.Load() {
		select {
		case pl.drained <- struct{}{}:
		default:
		}
	}
}

// drain waits until no request is in flight to the pool or ctx ends, and
// returns how many still are.
func (pl *pool) drain(ctx context.Context) int {
	pl.draining.Store(true)
	for {
		n := pl.inflight.Load()
		if n <= 0 {
			return 0
		}
		select {
		case <-ctx.Done():
			return int(pl.inflight.Load())
		case <-pl.drained:
		}
	}
}

// close closes the connection and gives its buffers back.
func (uc *upConn) close() {
	uc.nc.Close()
	uc.br.Reset(nil)
	readerPool.Put(uc.br)
	uc.bw.Reset(nil)
	writerPool.Put(uc.bw)
	uc.br, uc.bw = nil, nil
}
