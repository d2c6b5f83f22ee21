package supervisor

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestReadLinesCutsLongLines(t *testing.T) {
	long := strings.Repeat("x", MaxLine*3+5)
	in := "first\r\n" + long + "\nafter\nno newline at end"
	type got struct {
		text string
		cut  bool
	}
	var lines []got
	if err := readLines(strings.NewReader(in), func(b []byte, cut bool) { lines = append(lines, got{string(b), cut}) }); err != nil {
		t.Fatal(err)
	}
	want := []got{{"first", false}, {long[:MaxLine], true}, {"after", false}, {"no newline at end", false}}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d", len(lines), len(want))
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d: got %.20q (len %d, cut %v), want %.20q (len %d, cut %v)", i, lines[i].text, len(lines[i].text), lines[i].cut, want[i].text, len(want[i].text), want[i].cut)
		}
	}
}

func TestRingBounds(t *testing.T) {
	r := NewRing(3, 1<<20)
	for i := 0; i < 5; i++ {
		r.Add(Line{Text: fmt.Sprint(i)})
	}
	if got := texts(r.Last(10)); got != "2 3 4" {
		t.Fatalf("Last(10) = %q, want 2 3 4", got)
	}
	if got := texts(r.Last(2)); got != "3 4" {
		t.Fatalf("Last(2) = %q, want 3 4", got)
	}
	// The byte budget evicts old lines too.
	r = NewRing(100, 10)
	r.Add(Line{Text: "aaaaaa"})
	r.Add(Line{Text: "bbbbbb"})
	if got := texts(r.Last(10)); got != "bbbbbb" {
		t.Fatalf("byte-bounded ring kept %q", got)
	}
	// A line larger than the budget is still kept alone.
	r.Add(Line{Text: string(bytes.Repeat([]byte("c"), 20))})
	if got := r.Last(10); len(got) != 1 || len(got[0].Text) != 20 {
		t.Fatalf("oversized line: %v", got)
	}
}

func TestRingFollow(t *testing.T) {
	r := NewRing(10, 1<<20)
	r.Add(Line{Text: "old"})
	last, c, stop := r.Follow(5)
	defer stop()
	if texts(last) != "old" {
		t.Fatalf("last = %q", texts(last))
	}
	r.Add(Line{Text: "new"})
	select {
	case l := <-c:
		if l.Text != "new" {
			t.Fatalf("followed %q, want new", l.Text)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follower got nothing")
	}
	stop()
	r.Add(Line{Text: "after stop"})
	select {
	case l := <-c:
		t.Fatalf("got %q after stop", l.Text)
	default:
	}
}

func texts(ls []Line) string {
	var s []string
	for _, l := range ls {
		s = append(s, l.Text)
	}
	return strings.Join(s, " ")
}
