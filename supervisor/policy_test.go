package supervisor

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

func half() float64 { return 0.5 } // no jitter: factor 0.9 + 0.2*0.5 = 1

func crash() Exit { code := 1; return Exit{Reason: ReasonCrashed, Code: &code} }

func TestBackoffDelays(t *testing.T) {
	b := &Tracker{Policy: Policy{Mode: Always, Delay: time.Second, MaxDelay: 10 * time.Second}, Jitter: half}
	want := []time.Duration{1, 2, 4, 8, 10, 10, 10}
	now := t0
	for i, w := range want {
		d := b.Decide(crash(), 0, now)
		if !d.Restart || d.Exhausted {
			t.Fatalf("exit %d: %+v, want a restart", i, d)
		}
		if d.Delay != w*time.Second {
			t.Fatalf("exit %d: delay %v, want %v", i, d.Delay, w*time.Second)
		}
		now = now.Add(d.Delay)
	}
}

func TestBackoffJitterBounds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		jitter float64
		want   time.Duration
	}{
		{"low", 0, 1800 * time.Millisecond},
		{"high", 0.999999, 2199999600 * time.Nanosecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &Tracker{Policy: Policy{Mode: Always, Delay: time.Second, MaxDelay: time.Minute}, Jitter: func() float64 { return tc.jitter }}
			b.Decide(crash(), 0, t0) // first: 1s base
			d := b.Decide(crash(), 0, t0.Add(time.Second))
			if diff := d.Delay - tc.want; diff < -time.Microsecond || diff > time.Microsecond {
				t.Fatalf("delay %v, want %v", d.Delay, tc.want)
			}
		})
	}
	// Jitter never pushes a delay above the cap.
	b := &Tracker{Policy: Policy{Mode: Always, Delay: time.Minute, MaxDelay: time.Minute}, Jitter: func() float64 { return 0.99 }}
	if d := b.Decide(crash(), 0, t0); d.Delay != time.Minute {
		t.Fatalf("delay %v above cap %v", d.Delay, time.Minute)
	}
}

func TestBackoffZeroDelay(t *testing.T) {
	b := &Tracker{Policy: Policy{Mode: Always}}
	for i := 0; i < 5; i++ {
		if d := b.Decide(crash(), 0, t0); !d.Restart || d.Delay != 0 {
			t.Fatalf("exit %d: %+v, want immediate restart", i, d)
		}
	}
}

func TestBackoffResetAfterStableUptime(t *testing.T) {
	b := &Tracker{Policy: Policy{Mode: Always, Delay: time.Second, MaxDelay: time.Minute, ResetAfter: time.Minute, MaxRestarts: 3, Window: time.Hour}, Jitter: half}
	now := t0
	for i := 0; i < 3; i++ {
		b.Decide(crash(), 0, now)
	}
	// Ready for 59 s is not enough: budget spent.
	if d := b.Decide(crash(), 59*time.Second, now); !d.Exhausted {
		t.Fatalf("%+v, want exhausted", d)
	}
	// Ready for a minute resets both delay and count.
	d := b.Decide(crash(), time.Minute, now)
	if !d.Restart || d.Delay != time.Second {
		t.Fatalf("%+v, want restart after 1s", d)
	}
}

func TestBackoffWindow(t *testing.T) {
	b := &Tracker{Policy: Policy{Mode: Always, Delay: 0, MaxDelay: 0, MaxRestarts: 3, Window: 10 * time.Minute}}
	for i := 0; i < 3; i++ {
		if d := b.Decide(crash(), 0, t0.Add(time.Duration(i)*time.Minute)); !d.Restart {
			t.Fatalf("restart %d refused", i+1)
		}
	}
	if d := b.Decide(crash(), 0, t0.Add(3*time.Minute)); !d.Exhausted {
		t.Fatalf("4th exit within window: %+v, want exhausted", d)
	}
	// Once the first restart leaves the window, there is room again.
	if d := b.Decide(crash(), 0, t0.Add(10*time.Minute)); !d.Restart {
		t.Fatalf("after the window slid: %+v, want restart", d)
	}
}

func TestBackoffUnlimited(t *testing.T) {
	b := &Tracker{Policy: Policy{Mode: Always, MaxRestarts: 0}}
	for i := 0; i < 1000; i++ {
		if d := b.Decide(crash(), 0, t0); !d.Restart {
			t.Fatalf("exit %d: %+v, want restart with no limit", i, d)
		}
	}
}

func TestPolicyModes(t *testing.T) {
	code0 := 0
	exits := map[Reason]Exit{
		ReasonExited:   {Reason: ReasonExited, Code: &code0},
		ReasonCrashed:  crash(),
		ReasonSignaled: {Reason: ReasonSignaled, Signal: "SIGSEGV"},
		ReasonOOMKill:  {Reason: ReasonOOMKill, Signal: "SIGKILL"},
		ReasonHeapOOM:  {Reason: ReasonHeapOOM, Signal: "SIGABRT"},
		ReasonRSSLimit: {Reason: ReasonRSSLimit},
		ReasonLiveness: {Reason: ReasonLiveness},
		ReasonStop:     {Reason: ReasonStop},
		ReasonRestart:  {Reason: ReasonRestart},
	}
	want := map[string]map[Reason]bool{
		Always:    {ReasonExited: true, ReasonCrashed: true, ReasonSignaled: true, ReasonOOMKill: true, ReasonHeapOOM: true, ReasonRSSLimit: true, ReasonLiveness: true, ReasonStop: false, ReasonRestart: true},
		OnFailure: {ReasonExited: false, ReasonCrashed: true, ReasonSignaled: true, ReasonOOMKill: true, ReasonHeapOOM: true, ReasonRSSLimit: true, ReasonLiveness: true, ReasonStop: false, ReasonRestart: true},
		Never:     {ReasonExited: false, ReasonCrashed: false, ReasonSignaled: false, ReasonOOMKill: false, ReasonHeapOOM: false, ReasonRSSLimit: false, ReasonLiveness: false, ReasonStop: false, ReasonRestart: true},
	}
	for mode, reasons := range want {
		for r, restart := range reasons {
			t.Run(mode+"/"+string(r), func(t *testing.T) {
				b := &Tracker{Policy: Policy{Mode: mode}}
				if got := b.Decide(exits[r], 0, t0).Restart; got != restart {
					t.Fatalf("restart = %v, want %v", got, restart)
				}
			})
		}
	}
}
