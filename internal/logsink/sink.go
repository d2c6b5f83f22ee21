// Package logsink keeps the agent's log output from ever blocking the agent
// or the app it supervises. A Sink queues each log line in a bounded buffer
// that its own goroutine drains into the real writer (stderr, the log file);
// lines that do not fit, or that the writer fails to take, are dropped and
// counted, and the writer gets one "dropped N log lines" line once it takes
// lines again. OpenFile opens the size-rotated, gzip-compressed log file.
package logsink

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/rs/zerolog"
)

const (
	// maxChunk bounds one Write to the underlying writer: lines queued
	// together are written in runs of at most this many bytes (a longer line
	// goes alone), so a rotating file never sees a write near its size limit.
	maxChunk = 64 << 10
	// closeTimeout is how long Close waits for the queue to drain.
	closeTimeout = 2 * time.Second
	// minBufCap is the buffer capacity a sink starts with and keeps when idle.
	minBufCap = 4 << 10
)

// ErrCloseTimeout is returned by Close when the writer did not take the
// queued lines in time; they are counted as dropped.
var ErrCloseTimeout = errors.New("log sink: queued lines not written in time")

// lineCost is what a queued line costs beside its bytes (its line
// record), counted in the buffer's budget so that many short lines cannot
// hold more memory than a few long ones.
const lineCost = int(unsafe.Sizeof(line{}))

// line is one queued log line: where it ends in the batch buffer, how many
// lines were dropped just before it (the notice to write first), and whether
// it looks like a JSON line (so the notice takes the same shape).
type line struct {
	end  int
	gap  uint64
	json bool
}

// Sink wraps a writer with a bounded buffer drained by its own goroutine.
// Write never blocks on the writer; see New.
type Sink struct {
	w   io.Writer
	max int
	now func() time.Time

	mu     sync.Mutex
	buf    []byte // queued lines, back to back
	lines  []line
	used   int    // bytes (and lineCost per line) queued and being written
	gap    uint64 // lines dropped since the last queued one
	last   bool   // whether the last queued line was JSON
	closed bool

	dropped atomic.Uint64

	wake chan struct{} // capacity 1: there is something to write
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the drain goroutine returns

	// Owned by the drain goroutine.
	spare   []byte
	spareL  []line
	failed  uint64 // lines the writer failed to take, not yet reported
	partial bool   // whether a failed write left part of a line behind
	notice  []byte
}

// New returns a Sink that queues up to maxBytes bytes of lines for w and
// starts the goroutine that writes them. Each Write is one log line (zerolog
// writes one event per call). Write never blocks: a line that does not fit
// in the buffer, or that w fails to take (EPIPE, ENOSPC), is dropped and
// counted; a stuck w only fills the buffer. When w takes lines again the
// sink first writes one line saying how many were dropped, a JSON line in
// zerolog's shape ({"level":"warn","time":...,"message":"dropped N log lines"})
// when the lines around it are JSON, a console-style line otherwise; its
// time comes from zerolog.TimestampFunc, as the lines' own do.
// maxBytes bounds the queue, line bytes plus a small record per line; a
// line longer than that is always dropped, so give room for the longest
// line (the supervisor cuts app lines at 64 KiB). A maxBytes below 64 KiB is
// raised to 64 KiB. The sink's buffers (the queue and the batch being
// written) never take more than 4 x maxBytes.
func New(w io.Writer, maxBytes int) *Sink {
	if maxBytes < maxChunk {
		maxBytes = maxChunk
	}
	s := &Sink{
		w:    w,
		max:  maxBytes,
		now:  func() time.Time { return zerolog.TimestampFunc() },
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
		last: true,
	}
	go s.drain()
	return s
}

// Write queues p, one log line, and returns at once. It always returns
// len(p), nil: a line that does not fit, or comes after Close, is dropped
// and counted in Dropped.
func (s *Sink) Write(p []byte) (int, error) {
	n := len(p)
	if n == 0 {
		return 0, nil
	}
	s.mu.Lock()
	if s.closed || s.used+n+lineCost > s.max {
		if !s.closed {
			s.gap++
		}
		s.mu.Unlock()
		s.dropped.Add(1)
		return n, nil
	}
	if len(s.buf)+n > cap(s.buf) {
		s.buf = grow(s.buf, n, s.max)
	}
	s.buf = append(s.buf, p...)
	if len(s.lines) == cap(s.lines) {
		s.lines = growLines(s.lines, s.max/lineCost)
	}
	js := p[0] == '{'
	s.lines = append(s.lines, line{end: len(s.buf), gap: s.gap, json: js})
	s.gap = 0
	s.last = js
	s.used += n + lineCost
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return n, nil
}

// grow returns b with room for n more bytes, its capacity at most limit
// (the caller has checked that len(b)+n <= limit).
func grow(b []byte, n, limit int) []byte {
	c := max(2*cap(b), len(b)+n, minBufCap)
	c = min(c, limit)
	nb := make([]byte, len(b), c)
	copy(nb, b)
	return nb
}

// growLines returns l with room for one more record, its capacity at most
// limit (the caller has checked that len(l) < limit).
func growLines(l []line, limit int) []line {
	c := min(max(2*cap(l), 64), limit)
	nl := make([]line, len(l), c)
	copy(nl, l)
	return nl
}

// Dropped returns how many lines were dropped since New.
func (s *Sink) Dropped() uint64 {
	return s.dropped.Load()
}

// Flush waits until the lines queued so far are written, or timeout has
// passed (a stuck writer), and reports whether they were. The sink goes on.
func (s *Sink) Flush(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		empty := s.used == 0
		s.mu.Unlock()
		if empty {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// Close writes what is queued, waiting at most a short time (2 s) for the
// writer, and stops the sink; later Writes are dropped and counted. It does
// not close the underlying writer. If the writer did not take the queue in
// time, Close returns ErrCloseTimeout and the drain goroutine is left to
// finish the write it is blocked in.
func (s *Sink) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)

	t := time.NewTimer(closeTimeout)
	defer t.Stop()
	select {
	case <-s.done:
		return nil
	case <-t.C:
		return ErrCloseTimeout
	}
}

// drain is the sink's goroutine: it takes the queued lines in batches and
// writes them until Close, then writes what is left and returns.
func (s *Sink) drain() {
	defer close(s.done)
	stopping := false
	for {
		if !stopping {
			select {
			case <-s.wake:
			case <-s.stop:
				stopping = true
			}
		}

		s.mu.Lock()
		batch, lines := s.buf, s.lines
		s.buf, s.lines = s.spare[:0], s.spareL[:0]
		gap, last := uint64(0), s.last
		if stopping && len(lines) == 0 {
			gap, s.gap = s.gap, 0
		}
		s.mu.Unlock()

		if len(lines) == 0 {
			if stopping {
				// Drops after the last line: say so if the writer takes it.
				if n := s.failed + gap; n > 0 {
					_ = s.writeNotice(n, last)
				}
				return
			}
			s.spare, s.spareL = batch, lines
			continue
		}

		s.writeBatch(batch, lines)

		s.mu.Lock()
		s.used -= len(batch) + len(lines)*lineCost
		s.mu.Unlock()

		// Keep the emptied buffer for the next swap unless a flood made it
		// large and it is no longer needed, so an idle agent stays small.
		if cap(batch) > maxChunk && len(batch) < cap(batch)/4 {
			batch, lines = nil, nil
		}
		s.spare, s.spareL = batch[:0], lines[:0]
	}
}

// writeBatch writes the lines of one batch in runs of at most maxChunk
// bytes, preceded by a notice wherever lines were dropped before them.
func (s *Sink) writeBatch(batch []byte, lines []line) {
	start := 0
	for i := 0; i < len(lines); {
		pending := s.failed + lines[i].gap
		if pending > 0 {
			if err := s.writeNotice(pending, lines[i].json); err != nil {
				// The writer still fails: this line goes too, and the
				// next one tries the notice again.
				s.failed = pending + 1
				s.dropped.Add(1)
				start = lines[i].end
				i++
				continue
			}
			s.failed = 0
		}
		// A run: line i and the following lines with no gap before them,
		// up to maxChunk bytes (always at least line i).
		j := i + 1
		for j < len(lines) && lines[j].gap == 0 && lines[j].end-start <= maxChunk {
			j++
		}
		end := lines[j-1].end
		n, err := s.w.Write(batch[start:end])
		if err == nil && n < end-start {
			err = io.ErrShortWrite
		}
		if err != nil {
			// Lines written whole count as written; the rest are lost.
			k := i
			for k < j && lines[k].end <= start+n {
				k++
			}
			lineStart := start
			if k > i {
				lineStart = lines[k-1].end
			}
			s.partial = k < j && start+n > lineStart
			lost := uint64(j - k)
			s.failed += lost
			s.dropped.Add(lost)
		}
		start = end
		i = j
	}
}

// writeNotice writes the "dropped n log lines" line, as JSON in zerolog's
// shape when asJSON, else in the console format.
func (s *Sink) writeNotice(n uint64, asJSON bool) error {
	b := s.notice[:0]
	if s.partial {
		// End the cut line so the notice starts a line of its own.
		b = append(b, '\n')
	}
	t := s.now()
	if asJSON {
		b = append(b, `{"`...)
		b = append(b, zerolog.LevelFieldName...)
		b = append(b, `":"`...)
		b = append(b, zerolog.LevelWarnValue...)
		b = append(b, `","`...)
		b = append(b, zerolog.TimestampFieldName...)
		b = append(b, `":"`...)
		b = t.AppendFormat(b, time.RFC3339Nano)
		b = append(b, `","dropped":`...)
		b = strconv.AppendUint(b, n, 10)
		b = append(b, `,"`...)
		b = append(b, zerolog.MessageFieldName...)
		b = append(b, `":"dropped `...)
		b = strconv.AppendUint(b, n, 10)
		b = append(b, " log lines\"}\n"...)
	} else {
		b = t.AppendFormat(b, "15:04:05.000")
		b = append(b, " WRN dropped "...)
		b = strconv.AppendUint(b, n, 10)
		b = append(b, " log lines\n"...)
	}
	s.notice = b
	m, err := s.w.Write(b)
	if err == nil && m < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		if m > 0 {
			s.partial = true
		}
		return fmt.Errorf("write dropped-lines notice: %w", err)
	}
	s.partial = false
	return nil
}
