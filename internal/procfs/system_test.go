package procfs

import (
	"errors"
	"testing"
	"time"
)

func TestParseStatm(t *testing.T) {
	vsize, rss, err := parseStatm([]byte("251987 3584 2048 1 0 28601 0\n"), 4096)
	if err != nil || vsize != 251987*4096 || rss != 3584*4096 {
		t.Errorf("parseStatm = %d, %d, %v", vsize, rss, err)
	}
	for _, s := range []string{"", "12", "x 1 2", "1 -2 3", "4503599627370496 1 0"} {
		if _, _, err := parseStatm([]byte(s), 4096); !errors.Is(err, ErrMalformed) {
			t.Errorf("parseStatm(%q): err = %v, want ErrMalformed", s, err)
		}
	}
}

func TestParseBootTime(t *testing.T) {
	stat := "cpu  2255 34 2290 22625563 6290 127 456 0 0 0\ncpu0 1132 34 1441 11311718 3675 127 438 0 0 0\nintr 114930548 113199788 3 0 5 263 0 4 [... 1 0 0]\nctxt 1990473\nbtime 1062191376\nprocesses 2915\n"
	bt, err := parseBootTime([]byte(stat))
	if err != nil || !bt.Equal(time.Unix(1062191376, 0)) {
		t.Errorf("parseBootTime = %v, %v", bt, err)
	}
	for _, s := range []string{"", "cpu 1 2 3\n", "btime x\n", "btime -1\n"} {
		if _, err := parseBootTime([]byte(s)); !errors.Is(err, ErrMalformed) {
			t.Errorf("parseBootTime(%q): err = %v, want ErrMalformed", s, err)
		}
	}
	p := Proc{Start: 123456} // clock ticks after boot: 1234.56 s
	if got, want := p.Started(time.Unix(1000, 0)), time.Unix(2234, 560e6); !got.Equal(want) {
		t.Errorf("Started = %v, want %v", got, want)
	}
}
