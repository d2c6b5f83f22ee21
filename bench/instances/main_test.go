package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStatFormat(t *testing.T) {
	for _, tt := range []struct {
		v    []float64
		want string
	}{
		{[]float64{3, 1, 2, math.NaN()}, "2.0 (1.0–3.0)"},
		{[]float64{4, 4}, "4.0"},
		{[]float64{math.NaN()}, "n/a"},
		{nil, "n/a"},
	} {
		if got := statOf(tt.v).format("%.1f"); got != tt.want {
			t.Errorf("statOf(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

// TestRatioWithinRounds checks that a ratio pairs the rounds and skips
// those in which either side was not measured.
func TestRatioWithinRounds(t *testing.T) {
	r := &results{by: map[string][]sample{
		"a": {{rps: 200}, {rps: 300}, {rps: math.NaN()}},
		"b": {{rps: 100}, {rps: 100}, {rps: 100}},
	}}
	s := r.ratio("a", "b", func(s sample) float64 { return s.rps })
	if s.n != 2 || s.med != 2.5 || s.min != 2 || s.max != 3 {
		t.Fatalf("ratio = %+v, want the median of 2 and 3", s)
	}
}

func TestRotate(t *testing.T) {
	s := []string{"a", "b", "c"}
	if got := strings.Join(rotate(s, 4), ""); got != "bca" {
		t.Fatalf("rotate by 4 = %q", got)
	}
	if strings.Join(s, "") != "abc" {
		t.Fatal("rotate changed its argument")
	}
}

func TestWriteReadme(t *testing.T) {
	path := filepath.Join(t.TempDir(), "README.md")
	os.WriteFile(path, []byte("# x\n\n"+beginMarker+"\nold\n"+endMarker+"\nafter\n"), 0o644)
	if err := writeReadme(path, "new\n"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if want := "# x\n\n" + beginMarker + "\n\nnew\n\n" + endMarker + "\nafter\n"; string(b) != want {
		t.Fatalf("got %q, want %q", b, want)
	}
	os.WriteFile(path, []byte("no markers\n"), 0o644)
	if err := writeReadme(path, "new\n"); err == nil {
		t.Fatal("no markers: want an error")
	}
}

func TestCommandLine(t *testing.T) {
	c := config{args: []string{"-quick", "-readme", "", "-sides", "agent1,agent2"}}
	if got, want := c.commandLine(), `go run ./bench/instances -quick -readme "" -sides agent1,agent2`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}
