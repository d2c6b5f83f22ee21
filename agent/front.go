package agent

import (
	"context"
	"time"

	"agent/supervisor"
)

// The front is what the app's state means to the outside: where the proxy
// sends requests, what the health pages say, and what systemd is told. It
// is owned by one goroutine, the agent's Run, which applies the
// supervisor's events in the order the supervisor made them. Nothing else
// steers the proxy's routing, sets the health pages or sends READY=1 and
// STATUS=.
//
// Where a request goes (with [proxy]):
//   - to the app's process once it is ready (EventReady: proxy.Ready);
//   - held while none is ready (starting, backoff, stopping: NotReady), and
//     refused with 503 when the app is failed or stopped (Down);
//   - in a reload, to the new process from EventSwapped on (proxy.Route);
//     the old one's requests in flight drain when its gated stop comes;
//   - before a stop the agent asks for (restart, stop, rss-limit,
//     liveness, start-timeout, shutdown), the gated EventStopping holds new
//     requests and lets the process's in-flight ones finish (proxy.Gate).
type front struct {
	a *Agent
	// routed is, by slot, the PID of the process the proxy sends that
	// slot's requests to (absent: none); drains holds, by PID, the drain of
	// each process a reload routed away from, until its gated stop takes it.
	routed map[int]int
	drains map[int]func(context.Context) int

	draining  bool // on shutdown, for stop.drain: the health page says draining
	readySent bool // READY=1 was sent
	lastLine  string
	last      appStatus
}

// view is what the front shows to other goroutines: replaced, never
// changed, on every event; changed is closed when the next one is out.
type view struct {
	draining bool
	changed  chan struct{}
}

func newFront(a *Agent) *front {
	f := &front{a: a, routed: map[int]int{}, drains: map[int]func(context.Context) int{}}
	// The first view stays until the first publish replaces it (closing its
	// changed channel): a WaitFor that began before Run must be woken.
	a.view.CompareAndSwap(nil, &view{changed: make(chan struct{})})
	return f
}

// handle applies one event of the supervisor.
func (f *front) handle(ev appEvent) {
	st := ev.Status
	f.last = st
	if f.a.proxy != nil {
		f.route(ev)
	} else if ev.Gated() {
		ev.Gate(nil)
	}
	serving := serving(st)
	if !f.draining {
		f.a.health.Set(st.State, serving)
	}
	f.sendStatus()
	// READY=1 once: when the app is first ready, or when its start is over
	// without that (failed, stopped, or not ready within startup_timeout),
	// with the reason in STATUS=, so that `systemctl start` never hangs.
	startOver := st.State == supervisor.Failed || st.State == supervisor.Stopped ||
		(st.State == supervisor.Backoff && len(st.Exits) > 0 && st.Exits[0].Reason == supervisor.ReasonStartTimeout)
	if (serving || startOver) && !f.readySent {
		f.readySent = true
		f.a.notify.Ready()
	}
	f.publish()
}

// route steers the proxy after ev; see the type's comment. Each slot is
// routed on its own: a slot's process joins the routing set when it is
// ready and leaves it when it is not; requests are held only while no slot
// is ready, and refused while the app as a whole is failed or stopped.
func (f *front) route(ev appEvent) {
	p := f.a.proxy
	switch ev.Kind {
	case supervisor.EventSwapped:
		f.drains[ev.Old.PID] = p.Route(ev.Slot, ev.Proc.Launch.upstream)
		f.routed[ev.Slot] = ev.Proc.PID
		return
	case supervisor.EventStopping:
		if ev.Gated() {
			switch pid := ev.Proc.PID; {
			case f.routed[ev.Slot] == pid:
				delete(f.routed, ev.Slot)
				slot := ev.Slot
				ev.Gate(func(ctx context.Context) int { return p.Gate(ctx, slot) })
			case f.drains[pid] != nil:
				ev.Gate(f.drains[pid])
				delete(f.drains, pid)
			default:
				ev.Gate(nil) // never routed to: a reload's new process that failed
			}
		}
	case supervisor.EventGone:
		delete(f.drains, ev.Proc.PID)
	}
	st := ev.Status
	if st.State == supervisor.Failed || st.State == supervisor.Stopped {
		clear(f.routed)
		p.Down()
		return
	}
	for slot := range f.routed {
		if slot >= len(st.Slots) { // scaled down
			delete(f.routed, slot)
			p.NotReady(slot)
		}
	}
	for _, ss := range st.Slots {
		switch {
		case ss.State == supervisor.Running && ss.Ready:
			if f.routed[ss.Index] != ss.PID {
				// Once per process: the proxy takes Ready as "a new process".
				f.routed[ss.Index] = ss.PID
				p.Ready(ss.Index, ss.Launch.upstream)
			}
		default:
			// Not serving: out of the routing set (after Down: held again,
			// not refused); a no-op when it is out already.
			delete(f.routed, ss.Index)
			p.NotReady(ss.Index)
		}
	}
}

// drain begins the shutdown's drain: the health pages say draining while
// requests are still served.
func (f *front) drain() {
	f.draining = true
	f.a.health.Set(supervisor.Draining, false)
	if f.a.proxy != nil {
		f.a.proxy.Drain()
	}
	f.publish()
}

// sendStatus sends STATUS= when the line changed: on every state change,
// and (called every statusRefresh) when the RSS figure moved.
func (f *front) sendStatus() {
	line := f.a.statusLine(f.last)
	if line == f.lastLine {
		return
	}
	f.lastLine = line
	f.a.notify.Status(line)
}

// statusRefresh is how often STATUS= is refreshed with a new RSS figure.
const statusRefresh = 10 * time.Second

func (f *front) publish() {
	next := &view{draining: f.draining, changed: make(chan struct{})}
	prev := f.a.view.Swap(next)
	close(prev.changed)
}
