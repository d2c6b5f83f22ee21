package supervisor

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"sync"
	"time"
)

// MaxLine is the longest output line kept; the rest of a longer line is
// dropped and the kept part marked as cut.
const MaxLine = 64 << 10

// Line is one line of the app's output.
type Line struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"` // "stdout" or "stderr"
	PID    int       `json:"pid"`
	Text   string    `json:"text"`
	Cut    bool      `json:"cut,omitempty"` // longer than MaxLine
}

// readLines reads r line by line until EOF or error, calling emit for each
// line without its newline. A line longer than MaxLine is emitted cut to
// MaxLine and the rest of it skipped, so memory stays bounded whatever the
// app writes and the app never blocks on a full pipe while we are reading.
func readLines(r io.Reader, emit func(text []byte, cut bool)) error {
	br := bufio.NewReaderSize(r, MaxLine)
	skipping := false
	for {
		b, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			if !skipping {
				emit(bytes.TrimSuffix(b[:len(b)-1], []byte{'\r'}), false)
			}
			skipping = false
		case errors.Is(err, bufio.ErrBufferFull):
			if !skipping {
				emit(b, true)
			}
			skipping = true
		default:
			if len(b) > 0 && !skipping {
				emit(b, false)
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// Ring keeps the most recent lines of output for `agentctl logs`, bounded by
// count and by bytes, and fans new lines out to followers.
type Ring struct {
	mu        sync.Mutex
	lines     []Line // circular
	start     int
	n         int
	bytes     int
	maxBytes  int
	followers map[chan Line]struct{}
}

// NewRing returns a ring that keeps at most maxLines lines and maxBytes bytes
// of text.
func NewRing(maxLines, maxBytes int) *Ring {
	return &Ring{lines: make([]Line, maxLines), maxBytes: maxBytes, followers: make(map[chan Line]struct{})}
}

// Add appends l, evicting the oldest lines as needed.
func (r *Ring) Add(l Line) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.n > 0 && (r.n == len(r.lines) || r.bytes+len(l.Text) > r.maxBytes) {
		r.bytes -= len(r.lines[r.start].Text)
		r.lines[r.start] = Line{}
		r.start = (r.start + 1) % len(r.lines)
		r.n--
	}
	r.lines[(r.start+r.n)%len(r.lines)] = l
	r.n++
	r.bytes += len(l.Text)
	for c := range r.followers {
		select {
		case c <- l:
		default: // a slow follower misses lines rather than slowing the app
		}
	}
}

// Last returns up to n of the most recent lines, oldest first.
func (r *Ring) Last(n int) []Line {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastLocked(n)
}

func (r *Ring) lastLocked(n int) []Line {
	if n > r.n || n < 0 {
		n = r.n
	}
	out := make([]Line, 0, n)
	for i := r.n - n; i < r.n; i++ {
		out = append(out, r.lines[(r.start+i)%len(r.lines)])
	}
	return out
}

// Follow returns the last n lines and a channel of the lines added after
// them; stop ends the subscription.
func (r *Ring) Follow(n int) (last []Line, lines <-chan Line, stop func()) {
	c := make(chan Line, 256)
	r.mu.Lock()
	last = r.lastLocked(n)
	r.followers[c] = struct{}{}
	r.mu.Unlock()
	var once sync.Once
	return last, c, func() {
		once.Do(func() {
			r.mu.Lock()
			delete(r.followers, c)
			r.mu.Unlock()
		})
	}
}
