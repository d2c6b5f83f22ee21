package proxy

import (
	"bufio"
	"math/rand/v2"
	"slices"
	"strings"
)

// Balancing. Each request goes to the ready pool with the fewest requests
// in flight, ties broken at random: a process that stalls (busy loop,
// SIGSTOP, GC storm) keeps the few requests it already has, its count
// rises, and the next ones go elsewhere. Upgraded (WebSocket) tunnels are
// not counted: they are long and mostly idle.
//
// A process that has just become ready gets no slow start. Least in flight
// is one already: the newcomer takes requests only until it has as many
// in flight as the others, so a burst sends it no more at once than each of
// the others is already carrying, and while it is slow to answer its first
// requests (cold code, empty caches) its count stays up and it gets fewer.
// A time-based ramp would instead keep load on the processes that were
// there before, which after a crash is one process fewer, and would read
// the clock on every request.

// pick returns the pool a request goes to: the ready pool of slot want
// (the client's affinity cookie; -1 for none), else the ready pool with
// the fewest requests in flight, ties broken at random; never one of
// failed (those that failed this request). nil: no pool qualifies.
func (st *state) pick(want int, failed []*pool) *pool {
	if pl := st.slot(want); pl != nil && !slices.Contains(failed, pl) {
		return pl
	}
	var best *pool
	var least int64
	ties := 0
	for _, pl := range st.ready {
		if len(failed) > 0 && slices.Contains(failed, pl) {
			continue
		}
		n := pl.inflight.Load()
		switch {
		case best == nil || n < least:
			best, least, ties = pl, n, 1
		case n == least:
			// Each of the pools tied so far is kept with chance 1/ties.
			ties++
			if rand.IntN(ties) == 0 {
				best = pl
			}
		}
	}
	return best
}

// routable reports whether a ready pool other than those in failed exists.
func (st *state) routable(failed []*pool) bool {
	for _, pl := range st.ready {
		if !slices.Contains(failed, pl) {
			return true
		}
	}
	return false
}

// affinityCookie is the name of the cookie that keeps a client on a slot
// (Config.Affinity); its value is the slot's index.
const affinityCookie = "agent_slot"

// maxSlotDigits bounds the cookie value the proxy reads.
const maxSlotDigits = 4

// affinitySlot returns the slot named by the affinity cookie in the
// request's Cookie fields, or -1 when there is none or it is not a slot
// index.
func affinitySlot(fields []field) int {
	for _, f := range fields {
		v := f.v
		if !strings.EqualFold(f.k, "Cookie") || !strings.Contains(v, affinityCookie) {
			continue
		}
		for v != "" {
			var pair string
			pair, v, _ = strings.Cut(v, ";")
			name, val, _ := strings.Cut(strings.TrimSpace(pair), "=")
			if name == affinityCookie {
				return parseSlot(val)
			}
		}
	}
	return -1
}

// parseSlot parses a slot index of up to maxSlotDigits decimal digits, or
// returns -1.
func parseSlot(s string) int {
	if s == "" || len(s) > maxSlotDigits {
		return -1
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return -1
		}
		n = n*10 + int(s[i]-'0')
	}
	return n
}

// writeCookieField writes a request's Cookie field to the app without the
// affinity cookie: the app sees the cookies the client sent minus the
// proxy's own. Nothing is written when no other cookie remains.
func writeCookieField(bw *bufio.Writer, v string) {
	if !strings.Contains(v, affinityCookie) {
		bw.WriteString("Cookie: ")
		bw.WriteString(v)
		bw.WriteString("\r\n")
		return
	}
	first := true
	for v != "" {
		var pair string
		pair, v, _ = strings.Cut(v, ";")
		pair = strings.TrimSpace(pair)
		if name, _, _ := strings.Cut(pair, "="); pair == "" || name == affinityCookie {
			continue
		}
		if first {
			bw.WriteString("Cookie: ")
			first = false
		} else {
			bw.WriteString("; ")
		}
		bw.WriteString(pair)
	}
	if !first {
		bw.WriteString("\r\n")
	}
}
