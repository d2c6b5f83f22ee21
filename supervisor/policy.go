package supervisor

import (
	"math/rand/v2"
	"time"
)

// Restart policy modes.
const (
	Always    = "always"
	OnFailure = "on-failure"
	Never     = "never"
)

// Policy is the restart policy of [restart] in the config.
type Policy struct {
	Mode        string        // Always, OnFailure or Never
	Delay       time.Duration // first restart delay
	MaxDelay    time.Duration // backoff cap
	ResetAfter  time.Duration // this long up and ready resets the delay and the window
	MaxRestarts int           // restarts allowed within Window; 0 = no limit
	Window      time.Duration
}

// Decision is what to do after an exit.
type Decision struct {
	Restart   bool
	Delay     time.Duration
	Exhausted bool // the restart budget is spent: state failed
}

// Tracker tracks consecutive restarts and decides what follows an exit. It
// holds no clock: every decision takes the time, so it is a pure function of
// the exits and times it has seen. Jitter may be nil for none.
type Tracker struct {
	Policy Policy
	// Jitter returns a number in [0, 1); nil means rand.Float64.
	Jitter func() float64

	attempt  int         // consecutive restarts since the last reset
	restarts []time.Time // restart decisions within the window
}

// Reset forgets past restarts, as after `agentctl start` or `restart`.
func (b *Tracker) Reset() {
	b.attempt = 0
	b.restarts = b.restarts[:0]
}

// Decide returns what to do about e, which ended at now after the process
// had been ready for readyFor (0 if it never was ready).
func (b *Tracker) Decide(e Exit, readyFor time.Duration, now time.Time) Decision {
	if b.Policy.ResetAfter > 0 && readyFor >= b.Policy.ResetAfter {
		b.Reset()
	}
	if !b.wantRestart(e.Reason) {
		return Decision{}
	}
	if w := b.Policy.Window; w > 0 {
		keep := b.restarts[:0]
		for _, t := range b.restarts {
			if now.Sub(t) < w {
				keep = append(keep, t)
			}
		}
		b.restarts = keep
	}
	if b.Policy.MaxRestarts > 0 && len(b.restarts) >= b.Policy.MaxRestarts {
		return Decision{Exhausted: true}
	}
	d := b.delay()
	b.attempt++
	if b.Policy.MaxRestarts > 0 {
		b.restarts = append(b.restarts, now)
	}
	return Decision{Restart: true, Delay: d}
}

// wantRestart reports whether the policy restarts after an exit for r.
func (b *Tracker) wantRestart(r Reason) bool {
	switch r {
	case ReasonStop:
		return false
	case ReasonRestart:
		return true
	case ReasonExited:
		return b.Policy.Mode == Always
	}
	return b.Policy.Mode != Never
}

// delay is Delay doubled for each consecutive restart, capped at MaxDelay,
// with ±10% jitter (never above MaxDelay) so that a fleet of instances that
// crashed together does not restart in lockstep.
func (b *Tracker) delay() time.Duration {
	d := b.Policy.Delay
	for i := 0; i < b.attempt && d < b.Policy.MaxDelay; i++ {
		d *= 2
	}
	if d > b.Policy.MaxDelay {
		d = b.Policy.MaxDelay
	}
	jitter := b.Jitter
	if jitter == nil {
		jitter = rand.Float64
	}
	d = time.Duration(float64(d) * (0.9 + 0.2*jitter()))
	if d > b.Policy.MaxDelay {
		d = b.Policy.MaxDelay
	}
	return d
}
