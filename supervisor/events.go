package supervisor

import "context"

// EventKind says what an Event reports.
type EventKind uint8

const (
	// EventChanged: the status changed (state, message, an exit recorded).
	EventChanged EventKind = iota
	// EventStarted: Proc was spawned, as the app's process or, in a
	// reload, beside it.
	EventStarted
	// EventReady: Proc reported ready. The app's process serves from now;
	// a reload's new process serves from EventSwapped.
	EventReady
	// EventSwapped: in a reload, Proc took the place of Old, which is
	// stopped next (EventStopping, reason reload).
	EventSwapped
	// EventStopping: the supervisor stops Proc for Reason. When Gated, the
	// reader must answer with Gate: the stop signal waits for it.
	EventStopping
	// EventGone: Proc and its whole tree are gone and its exit recorded.
	EventGone
)

var kindNames = [...]string{"changed", "started", "ready", "swapped", "stopping", "gone"}

func (k EventKind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Event is one change, sent to Options.Events in the order the loop made
// them, each with the status right after it.
type Event[L any] struct {
	Kind   EventKind
	Slot   int       // the slot it is about
	Proc   *Child[L] // the process it is about; nil for EventChanged
	Old    *Child[L] // EventSwapped: the process replaced
	Reason Reason    // EventStopping: why; EventGone: its exit's reason
	Status Status[L]
	gate   chan func(context.Context) int
}

// Gated reports whether the event is a gated stop, which must be answered
// with Gate.
func (e Event[L]) Gated() bool { return e.gate != nil }

// Gate answers a gated EventStopping: drain, if not nil, runs before the
// stop signal is sent, with a context that ends after the stop timeout (the
// traffic front lets the process's requests in flight finish there), and
// returns how many were still in flight when it gave up. Only the first
// answer counts.
func (e Event[L]) Gate(drain func(context.Context) int) {
	if e.gate == nil {
		return
	}
	select {
	case e.gate <- drain:
	default:
	}
}
