package proxy

import (
	"context"
	"slices"
	"sync/atomic"
)

// The steering calls: the supervisor tells the proxy, slot by slot, which
// processes are ready. Each call edits a copy of the routing set under p.mu
// and publishes it; the pools that left the set are retired after that
// (idle connections closed at once, exchanges under way finish).

// change publishes the state that edit makes of a copy of the current one,
// and wakes everyone waiting on the current one. The caller holds p.mu.
func (p *Proxy) change(edit func(next *state)) {
	cur := p.st.Load()
	next := &state{
		down:      cur.down,
		slots:     slices.Clone(cur.slots),
		everReady: cur.everReady,
		unreadyAt: cur.unreadyAt,
		changed:   make(chan struct{}),
	}
	edit(next)
	for _, s := range next.slots {
		if s.pool != nil {
			next.ready = append(next.ready, s.pool)
		}
	}
	switch {
	case len(next.ready) > 0:
		next.everReady, next.down = true, false
	case len(cur.ready) > 0:
		next.unreadyAt = p.clk.Now()
	}
	p.st.Store(next)
	close(cur.changed)
}

// at returns slot i of next, adding the slots up to it.
func (next *state) at(i int) *slotState {
	for len(next.slots) <= i {
		next.slots = append(next.slots, slotState{load: new(atomic.Int64)})
	}
	return &next.slots[i]
}

// leave takes slot i out of next's routing set and returns the pool it had
// (nil if it was not ready), kept as the slot's last for a Gate.
func (next *state) leave(i int) *pool {
	if i >= len(next.slots) || next.slots[i].pool == nil {
		return nil
	}
	s := &next.slots[i]
	pl := s.pool
	s.pool, s.last = nil, pl
	return pl
}

// checkSlot panics on a slot index below 0: a caller's bug.
func checkSlot(slot int) {
	if slot < 0 {
		panic("proxy: negative slot")
	}
}

// Ready tells the proxy that slot's process is ready at upstream
// (host:port): it joins the routing set, and held requests go through.
// Each call means a new process: the slot's previous one, if any, leaves
// the set (its requests in flight finish, its idle connections close).
func (p *Proxy) Ready(slot int, upstream string) {
	checkSlot(slot)
	p.mu.Lock()
	var old *pool
	p.change(func(next *state) {
		s := next.at(slot)
		old = s.pool
		s.pool, s.last = newPool(p, slot, upstream, s.load), nil
	})
	p.mu.Unlock()
	p.log.Debug().Int("slot", slot).Str("upstream", upstream).Msg("upstream ready")
	if old != nil {
		old.retire()
	}
}

// NotReady tells the proxy that slot's process is (re)starting or backing
// off: the slot leaves the routing set. New requests go to the other ready
// slots; while none is ready they are held, up to Hold, until a Ready.
// After Down it means the app is starting again: requests are held, not
// refused.
func (p *Proxy) NotReady(slot int) {
	checkSlot(slot)
	p.mu.Lock()
	if cur := p.st.Load(); cur.slot(slot) == nil && !cur.down {
		p.mu.Unlock()
		return
	}
	var old *pool
	p.change(func(next *state) {
		old = next.leave(slot)
		next.down = false
	})
	p.mu.Unlock()
	if old != nil {
		old.retire()
	}
}

// Down tells the proxy the app is failed or stopped: every slot leaves the
// routing set and requests get 503 at once, the held ones too, until the
// next Ready or NotReady.
func (p *Proxy) Down() {
	p.mu.Lock()
	if p.st.Load().down {
		p.mu.Unlock()
		return
	}
	var old []*pool
	p.change(func(next *state) {
		for i := range next.slots {
			if pl := next.leave(i); pl != nil {
				old = append(old, pl)
			}
		}
		next.down = true
	})
	p.mu.Unlock()
	for _, pl := range old {
		pl.retire()
	}
}

// Gate prepares the stop of slot's process: the slot leaves the routing
// set (new requests go to the other ready slots, or are held while none
// is), its idle connections close, and its requests in flight may finish
// until ctx ends (the caller passes stop.timeout). It returns the number
// still in flight when it gave up (0 = drained). If NotReady(slot) or
// Down came first, the process the slot had then is the one drained.
// Upgraded (WebSocket) connections are not waited for: they end with the
// process.
func (p *Proxy) Gate(ctx context.Context, slot int) int {
	checkSlot(slot)
	p.mu.Lock()
	cur := p.st.Load()
	var pl *pool
	if slot < len(cur.slots) {
		pl = cur.slots[slot].pool
		if pl == nil {
			pl = cur.slots[slot].last
		}
	}
	if cur.slot(slot) != nil {
		p.change(func(next *state) { next.leave(slot) })
	}
	p.mu.Unlock()
	if pl == nil {
		return 0
	}
	pl.retire()
	return pl.drain(ctx)
}

// Route is a reload's swap of slot's process: a new pool at upstream takes
// the slot's place in the routing set at once, and the old one takes no
// new request. The returned drain waits (until its ctx ends) for the
// requests in flight to the old process to finish and returns the number
// still in flight when it gave up (0 = drained).
func (p *Proxy) Route(slot int, upstream string) (drain func(context.Context) int) {
	checkSlot(slot)
	p.mu.Lock()
	var old *pool
	p.change(func(next *state) {
		s := next.at(slot)
		old = s.pool
		if old == nil {
			old = s.last
		}
		s.pool, s.last = newPool(p, slot, upstream, s.load), nil
	})
	p.mu.Unlock()
	p.log.Debug().Int("slot", slot).Str("upstream", upstream).Msg("upstream switched")
	if old != nil {
		old.retire()
	}
	return func(ctx context.Context) int {
		if old == nil {
			return 0
		}
		return old.drain(ctx)
	}
}

// Switch is Route and its drain: new requests for slot go to upstream at
// once, then it waits (until ctx ends) for the old process's requests in
// flight and returns how many still were (0 = drained).
func (p *Proxy) Switch(ctx context.Context, slot int, upstream string) int {
	return p.Route(slot, upstream)(ctx)
}

// Stats returns the proxy-wide counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		InFlight: p.inFlight(),
		Held:     p.held.Load(),
		Requests: p.requests.Load(),
		Replayed: p.replayed.Load(),
		Failed:   p.failed.Load(),
	}
}

// SlotInFlight returns the requests in flight to slot's processes: the
// ready one and any still draining.
func (p *Proxy) SlotInFlight(slot int) int64 {
	st := p.st.Load()
	if slot < 0 || slot >= len(st.slots) {
		return 0
	}
	return st.slots[slot].load.Load()
}

// inFlight is the requests in flight to any process.
func (p *Proxy) inFlight() int64 {
	var n int64
	for _, s := range p.st.Load().slots {
		n += s.load.Load()
	}
	return n
}
