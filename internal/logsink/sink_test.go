package logsink

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/testkit"
)

// logLine is what the tests decode from a log line: the agent's own lines
// carry seq, the sink's notice carries dropped.
type logLine struct {
	Level   string  `json:"level"`
	Time    string  `json:"time"`
	Message string  `json:"message"`
	Seq     *int    `json:"seq"`
	Dropped *uint64 `json:"dropped"`
}

func newLogger(w io.Writer) zerolog.Logger {
	return zerolog.New(w).With().Timestamp().Logger()
}

// padding makes each test line about 200 bytes, like an app's output line.
var padding = strings.Repeat("x", 150)

// callWithin runs f in a goroutine and fails the test if it does not return
// within d: the proof that writes into a sink do not block.
func callWithin(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v: a write blocked", what, d)
	}
}

func TestSinkFloodIntoRotatedFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "log", "agent")
	path := filepath.Join(dir, "web.log")
	const maxFiles = 3
	f, err := OpenFile(path, 1<<20, maxFiles)
	if err != nil {
		t.Fatal(err)
	}
	s := New(f, 256<<10)
	log := newLogger(s)

	// 50 MB of lines, as zerolog writes them.
	const total = 50 << 20
	var lines int
	callWithin(t, 2*time.Minute, "the flood", func() {
		for written := 0; written < total; written += 200 {
			log.Info().Int("seq", lines).Str("app", "web").Str("pad", padding).Msg("line")
			lines++
		}
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d lines, %d dropped", lines, s.Dropped())

	for _, d := range []string{dir, filepath.Dir(dir)} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o750 {
			t.Errorf("%s: mode %o, want 750", d, got)
		}
	}

	// Rotated files are compressed in the background: wait until every
	// rotated file is a .gz.
	var names []string
	testkit.Eventually(t, 30*time.Second, "rotated files compressed", func() bool {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		names = names[:0]
		for _, e := range ents {
			names = append(names, e.Name())
			if e.Name() != "web.log" && !strings.HasSuffix(e.Name(), ".gz") {
				return false
			}
		}
		return true
	})
	if len(names) > 1+maxFiles {
		t.Errorf("%d files, want at most %d: %v", len(names), 1+maxFiles, names)
	}
	gz := 0
	var size int64
	for _, name := range names {
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		size += fi.Size()
		if got := fi.Mode().Perm(); got != 0o640 {
			t.Errorf("%s: mode %o, want 640", name, got)
		}
		if name == "web.log" {
			if fi.Size() > 1<<20 {
				t.Errorf("live file %d bytes, above max size 1 MiB", fi.Size())
			}
			checkJSONLines(t, name, readFile(t, p))
			continue
		}
		gz++
		zr, err := gzip.NewReader(bytes.NewReader(readFile(t, p)))
		if err != nil {
			t.Fatalf("%s: not gzip: %v", name, err)
		}
		plain, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(plain) > 1<<20 {
			t.Errorf("%s: %d bytes uncompressed, above max size 1 MiB", name, len(plain))
		}
		checkJSONLines(t, name, plain)
	}
	if gz == 0 {
		t.Errorf("no rotated .gz file after 50 MB with max size 1 MiB: %v", names)
	}
	if size > (1+maxFiles)<<20 {
		t.Errorf("log files take %d bytes, want at most %d", size, (1+maxFiles)<<20)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkJSONLines checks that every line of b is a JSON object and that the
// agent's lines come in order, with gaps only where a notice says so.
func checkJSONLines(t *testing.T, name string, b []byte) {
	t.Helper()
	n := 0
	prev := -1
	var gap uint64
	for l := range bytes.Lines(b) {
		var ll logLine
		if err := json.Unmarshal(l, &ll); err != nil {
			t.Fatalf("%s: line %d is not JSON: %v: %q", name, n+1, err, l)
		}
		n++
		switch {
		case ll.Dropped != nil:
			gap += *ll.Dropped
		case ll.Seq != nil:
			if prev >= 0 && uint64(*ll.Seq-prev-1) != gap {
				t.Fatalf("%s: line %d: seq %d after %d with %d dropped in between", name, n, *ll.Seq, prev, gap)
			}
			prev, gap = *ll.Seq, 0
		}
	}
	if n == 0 {
		t.Errorf("%s: no lines", name)
	}
}

func TestSinkBlockedReader(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	const budget = 64 << 10
	s := New(w, budget)
	t.Cleanup(func() { s.Close() })
	log := newLogger(s)

	// Nobody reads the pipe: 50 MB of lines must still go by at once, with
	// the sink's memory bounded.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	seq := 0
	callWithin(t, time.Minute, "50 MB of writes into a stuck pipe", func() {
		for written := 0; written < 50<<20; written += 200 {
			log.Info().Int("seq", seq).Str("pad", padding).Msg("line")
			seq++
		}
	})
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d lines, %d dropped, heap grew %d bytes", seq, s.Dropped(), grown)
	if s.Dropped() == 0 {
		t.Fatal("no line dropped with the reader stuck")
	}
	if grown > 8<<20 {
		t.Errorf("heap grew by %d bytes for a %d-byte buffer", grown, budget)
	}
	s.mu.Lock()
	if c := cap(s.buf); c > budget {
		t.Errorf("queue capacity %d above the %d budget", c, budget)
	}
	if c := cap(s.lines) * lineCost; c > budget {
		t.Errorf("line records take %d bytes, above the %d budget", c, budget)
	}
	s.mu.Unlock()

	// The reader starts: the lines written before the stall come first,
	// then the notice, then the lines after it, with the gap it names.
	type result struct {
		before, after int
		dropped       uint64
		err           error
	}
	res := make(chan result, 1)
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		last := -1
		for sc.Scan() {
			var ll logLine
			if err := json.Unmarshal(sc.Bytes(), &ll); err != nil {
				res <- result{err: fmt.Errorf("not JSON: %w: %q", err, sc.Bytes())}
				return
			}
			if ll.Dropped != nil {
				if ll.Level != "warn" || ll.Message != fmt.Sprintf("dropped %d log lines", *ll.Dropped) {
					res <- result{err: fmt.Errorf("notice %+v", ll)}
					return
				}
				if _, err := time.Parse(time.RFC3339Nano, ll.Time); err != nil {
					res <- result{err: fmt.Errorf("notice time: %w", err)}
					return
				}
				for sc.Scan() {
					var next logLine
					if err := json.Unmarshal(sc.Bytes(), &next); err != nil || next.Seq == nil {
						res <- result{err: fmt.Errorf("after the notice: %q", sc.Bytes())}
						return
					}
					res <- result{before: last, after: *next.Seq, dropped: *ll.Dropped}
					return
				}
				break
			}
			if ll.Seq == nil || *ll.Seq != last+1 {
				res <- result{err: fmt.Errorf("line %q after seq %d", sc.Bytes(), last)}
				return
			}
			last = *ll.Seq
		}
		res <- result{err: fmt.Errorf("pipe ended before a notice and a line after it: %v", sc.Err())}
	}()

	// Keep logging until the reader has seen the notice and a line after it.
	deadline := time.After(time.Minute)
	for {
		log.Info().Int("seq", seq).Str("pad", padding).Msg("line")
		seq++
		select {
		case got := <-res:
			if got.err != nil {
				t.Fatal(got.err)
			}
			if got.before < 0 {
				t.Errorf("no line before the notice")
			}
			if got.dropped == 0 || uint64(got.after-got.before-1) != got.dropped {
				t.Errorf("notice says %d dropped between seq %d and %d", got.dropped, got.before, got.after)
			}
			if got.dropped > s.Dropped() {
				t.Errorf("notice says %d dropped, the sink counted %d", got.dropped, s.Dropped())
			}
			return
		case <-deadline:
			t.Fatal("no notice within a minute of the reader starting")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestSinkReaderGone(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close() // writes now fail with EPIPE
	t.Cleanup(func() { w.Close() })
	s := New(w, 64<<10)
	log := newLogger(s)
	const n = 1000
	callWithin(t, 10*time.Second, "writes into a closed pipe", func() {
		for i := range n {
			log.Info().Int("seq", i).Msg("line")
		}
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := s.Dropped(); got != n {
		t.Errorf("dropped %d, want all %d", got, n)
	}
}

// failingWriter fails with err while fail is set, and records what it takes.
type failingWriter struct {
	mu   sync.Mutex
	fail bool
	err  error
	buf  bytes.Buffer
}

func (w *failingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fail {
		return 0, w.err
	}
	return w.buf.Write(p)
}

func (w *failingWriter) set(fail bool) {
	w.mu.Lock()
	w.fail = fail
	w.mu.Unlock()
}

func (w *failingWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestSinkWriterFailsThenRecovers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		json   bool
		notice string
	}{
		{"json", true, `{"level":"warn","time":"2026-11-22T10:00:00.5Z","dropped":5,"message":"dropped 5 log lines"}`},
		{"console", false, `10:00:00.500 WRN dropped 5 log lines`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &failingWriter{err: syscall.ENOSPC}
			s := New(w, 64<<10)
			s.now = func() time.Time { return time.Date(2026, 11, 22, 10, 0, 0, 5e8, time.UTC) }
			line := func(i int) string {
				if tc.json {
					return fmt.Sprintf(`{"level":"info","seq":%d}`+"\n", i)
				}
				return fmt.Sprintf("10:00:00.000 INF line seq=%d\n", i)
			}
			write := func(i int) {
				if n, err := s.Write([]byte(line(i))); n != len(line(i)) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			write(0)
			testkit.Eventually(t, 10*time.Second, "line 0 written", func() bool { return w.String() == line(0) })
			w.set(true)
			for i := 1; i <= 5; i++ {
				write(i)
			}
			testkit.Eventually(t, 10*time.Second, "5 lines dropped", func() bool { return s.Dropped() == 5 })
			w.set(false)
			write(6)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			want := line(0) + tc.notice + "\n" + line(6)
			if got := w.String(); got != want {
				t.Errorf("writer got\n%s\nwant\n%s", got, want)
			}
		})
	}
}

func TestSinkDropsWhenFull(t *testing.T) {
	// A writer that blocks until released: the queue fills, then lines
	// are dropped; the notice comes before the first line after the gap.
	release := make(chan struct{})
	var mu sync.Mutex
	var got bytes.Buffer
	w := writerFunc(func(p []byte) (int, error) {
		<-release
		mu.Lock()
		defer mu.Unlock()
		return got.Write(p)
	})
	s := New(w, 64<<10)
	s.now = func() time.Time { return time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC) }
	line := bytes.Repeat([]byte("y"), 1023)
	line = append(line, '\n')
	for range 100 {
		s.Write(line)
	}
	if s.Dropped() == 0 {
		t.Fatal("nothing dropped with 100 KiB into a 64 KiB queue")
	}
	dropped := s.Dropped()
	close(release)
	testkit.Eventually(t, 10*time.Second, "the queue written out", func() bool { return queued(s) == 0 })
	s.Write([]byte("after\n"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	out := got.String()
	mu.Unlock()
	wantTail := fmt.Sprintf("10:00:00.000 WRN dropped %d log lines\nafter\n", dropped)
	if !strings.HasSuffix(out, wantTail) {
		t.Errorf("output ends %q, want %q", out[max(0, len(out)-100):], wantTail)
	}
	if kept := strings.Count(out, string(line)); uint64(kept)+dropped != 100 {
		t.Errorf("%d lines kept + %d dropped != 100", kept, dropped)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestSinkCloseTimesOut(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	s := New(w, 256<<10)
	big := bytes.Repeat([]byte("z"), 100<<10) // more than the pipe holds
	s.Write(big)
	start := time.Now()
	if err := s.Close(); !errors.Is(err, ErrCloseTimeout) {
		t.Errorf("Close = %v, want ErrCloseTimeout", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Close took %v", d)
	}
	if n, err := s.Write([]byte("late\n")); n != 5 || err != nil {
		t.Errorf("Write after Close = %d, %v", n, err)
	}
	if s.Dropped() != 1 {
		t.Errorf("dropped %d, want 1 (the write after Close)", s.Dropped())
	}
}

func TestSinkDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := t.TempDir()
	if out, err := command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := command("umount", mnt); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	path := filepath.Join(mnt, "agent", "web.log")
	f, err := OpenFile(path, 100<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := New(f, 256<<10)
	log := newLogger(s)

	// 4 MB into a 1 MB file system.
	seq := 0
	for written := 0; written < 4<<20; written += 200 {
		log.Info().Int("seq", seq).Str("pad", padding).Msg("line")
		seq++
	}
	testkit.Eventually(t, 30*time.Second, "the queue written out", func() bool { return queued(s) == 0 })
	if s.Dropped() == 0 {
		t.Fatal("no line dropped with 4 MB written to a 1 MB file system")
	}

	// Space comes back: the next line is preceded by the notice.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	log.Info().Int("seq", seq).Msg("after")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b := readFile(t, path)
	b = bytes.TrimLeft(b, "\n") // the end of a line cut by the full disk
	var lines []logLine
	for l := range bytes.Lines(b) {
		var ll logLine
		if err := json.Unmarshal(l, &ll); err != nil {
			t.Fatalf("not JSON: %v: %q", err, l)
		}
		lines = append(lines, ll)
	}
	if len(lines) != 2 || lines[0].Dropped == nil || lines[1].Seq == nil || *lines[1].Seq != seq {
		t.Fatalf("after recovery the file has %q, want the notice then seq %d", b, seq)
	}
	t.Logf("%d lines, notice says %d dropped, sink counted %d", seq+1, *lines[0].Dropped, s.Dropped())
	if *lines[0].Dropped == 0 || *lines[0].Dropped > s.Dropped() {
		t.Errorf("notice says %d dropped, sink counted %d", *lines[0].Dropped, s.Dropped())
	}
}

func command(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// queued returns the bytes the sink holds: queued and being written.
func queued(s *Sink) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}
