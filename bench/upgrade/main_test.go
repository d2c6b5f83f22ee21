package main

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"agent/internal/lbclient"
)

func TestUnservedAndLongest(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ok := func(end int) lbclient.Outcome { return lbclient.Outcome{Start: at(end - 2), End: at(end)} }
	bad := func(end int) lbclient.Outcome {
		return lbclient.Outcome{Start: at(end - 1), End: at(end), Kind: lbclient.KindRefused}
	}
	// Served every 5 ms, then only failures from 20 to 300, a success
	// ending at 320 (it was held), another at 700 after a quiet stretch,
	// and one after the window that does not count. Out of order, as
	// concurrent requests may be.
	tl := []lbclient.Outcome{ok(5), ok(10), ok(15), ok(20), bad(40), bad(300), ok(320), ok(325), ok(700), ok(2000)}
	slices.Reverse(tl)
	ss := unserved(tl, at(0), at(1000))
	var got []string
	for _, s := range ss {
		got = append(got, s.from.Sub(t0).String()+"-"+s.to.Sub(t0).String())
	}
	want := "0s-5ms 5ms-10ms 10ms-15ms 15ms-20ms 20ms-320ms 320ms-325ms 325ms-700ms 700ms-1s"
	if strings.Join(got, " ") != want {
		t.Fatalf("stretches %v, want %s", got, want)
	}
	if l := longest(ss, time.Time{}, time.Time{}); l.len() != 375*time.Millisecond || !l.from.Equal(at(325)) {
		t.Fatalf("longest %v from %v, want 375ms from 325ms", l.len(), l.from.Sub(t0))
	}
	// Around an operation from 18 to 322 ms: the failures' stretch, which
	// began before the window.
	if l := longest(ss, at(18), at(322)); l.len() != 300*time.Millisecond || !l.from.Equal(at(20)) {
		t.Fatalf("longest around 18-322ms: %v from %v, want 300ms from 20ms", l.len(), l.from.Sub(t0))
	}
	// A window that only touches a stretch's end does not take it.
	if l := longest(ss, at(320), at(324)); l.len() != 5*time.Millisecond {
		t.Fatalf("longest in 320-324ms: %v, want the 5ms stretch in it", l.len())
	}
	// Over by 600 ms: the stretch under way then is left out.
	if l := longest(endedBy(ss, at(600)), time.Time{}, time.Time{}); l.len() != 300*time.Millisecond {
		t.Fatalf("longest over by 600ms: %v, want 300ms", l.len())
	}
	if n := len(endedBy(ss, at(4))); n != 0 {
		t.Fatalf("%d stretches over by 4ms, want none", n)
	}
	if f := firstServed(tl, at(1)); !f.Equal(at(5)) {
		t.Fatalf("first served at %v, want 5ms", f.Sub(t0))
	}
	if f := firstServed([]lbclient.Outcome{bad(3)}, at(1)); !f.Equal(at(1)) {
		t.Fatalf("first served with none served: %v, want the default", f.Sub(t0))
	}
	// Nothing served at all: the whole window.
	if ss := unserved([]lbclient.Outcome{bad(10)}, at(0), at(100)); len(ss) != 1 || longest(ss, time.Time{}, time.Time{}).len() != 100*time.Millisecond {
		t.Fatalf("nothing served: %v", ss)
	}
}

func TestRotateAndPick(t *testing.T) {
	s := []string{"a", "b", "c"}
	for k, want := range []string{"a b c", "b c a", "c a b", "a b c"} {
		if got := strings.Join(rotate(s, k), " "); got != want {
			t.Errorf("rotate %d: %s, want %s", k, got, want)
		}
	}
	if strings.Join(s, " ") != "a b c" {
		t.Errorf("rotate changed its argument: %v", s)
	}
	if got, err := pick(" pm2,upgrade,pm2", allSides); err != nil || strings.Join(got, " ") != "upgrade pm2" {
		t.Errorf("pick: %v %v", got, err)
	}
	for _, bad := range []string{"", "upgrade,nope"} {
		if _, err := pick(bad, allSides); err == nil {
			t.Errorf("pick %q: no error", bad)
		}
	}
}

func TestFormats(t *testing.T) {
	for _, c := range []struct {
		v    []float64
		want string
	}{
		{[]float64{42.4}, "42 ms"},
		{[]float64{3.21, 5, 4}, "4.0 ms (3.2 ms–5.0 ms)"},
		{[]float64{900, 1500, math.NaN()}, "1.20 s (900 ms–1.50 s)"},
		{[]float64{7, 7}, "7.0 ms"},
		{[]float64{math.NaN()}, "—"},
	} {
		if got := rangeMS(c.v); got != c.want {
			t.Errorf("rangeMS(%v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	runs := []roundRun{
		{load: lbclient.Report{Sent: 100, OK: 90, Failed: 10, Kinds: map[string]int{"reset": 10}, P99: 20 * time.Millisecond, Max: 30 * time.Millisecond},
			gap: 200 * time.Millisecond, perOp: []time.Duration{200 * time.Millisecond, 100 * time.Millisecond}},
		{load: lbclient.Report{Sent: 110, OK: 108, Failed: 2, Kinds: map[string]int{"reset": 1, "HTTP 503": 1}, P99: 10 * time.Millisecond, Max: 40 * time.Millisecond},
			gap: 100 * time.Millisecond, perOp: []time.Duration{50 * time.Millisecond, 100 * time.Millisecond}},
		{load: lbclient.Report{Sent: 105, Failed: 105, Kinds: map[string]int{"connection refused": 105}},
			gap: time.Second, perOp: []time.Duration{time.Second, time.Second}},
	}
	s := summarize(runs)
	if s.rounds != 3 || s.failed != 10 || s.sent != 105 || s.minFail != 2 || s.maxFail != 105 {
		t.Fatalf("summary %+v", s)
	}
	if lbclient.FormatKinds(s.kinds) != "connection refused 105, reset 11, HTTP 503 1" {
		t.Fatalf("kinds %v", s.kinds)
	}
	if rangeMS(s.gaps) != "200 ms (100 ms–1.00 s)" || rangeMS(s.ops) != "150 ms (50 ms–1.00 s)" || rangeMS(s.p99) != "15 ms (10 ms–20 ms)" {
		t.Fatalf("gaps %s, per operation %s, p99 %s (no request served: left out)", rangeMS(s.gaps), rangeMS(s.ops), rangeMS(s.p99))
	}
}
