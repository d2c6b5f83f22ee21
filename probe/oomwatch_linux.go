package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"agent/internal/clock"
	"agent/internal/handoff"
)

const (
	// kmsgReadSize holds the longest record /dev/kmsg gives in one read
	// (CONSOLE_EXT_LOG_MAX, 8 KiB, with its continuation lines); a smaller
	// buffer makes the read fail with EINVAL.
	kmsgReadSize = 16 << 10
	// oomRingSize is how many kills the watcher remembers. The agent asks
	// about kills within seconds of an exit, so a few are plenty; a memory
	// cgroup with memory.oom.group can kill a whole tree at once.
	oomRingSize = 32
)

// OOMWatcher reads the kernel log and remembers the OOM killer's recent
// kills, so that an exit by SIGKILL can be told apart as an OOM kill.
type OOMWatcher struct {
	log    zerolog.Logger
	path   string
	onKill func(OOMKill)
	open   func(path string) (io.ReadCloser, error)
	clk    clock.Clock

	mu      sync.Mutex
	src     io.ReadCloser // the kernel log while Run reads it
	status  string
	reading bool
	ring    [oomRingSize]receivedKill
	next    int           // ring index the next kill goes to
	count   int           // kills in the ring
	arrived chan struct{} // closed and replaced on every kill and when reading stops
}

type receivedKill struct {
	kill OOMKill
	at   time.Time
}

// NewOOMWatcher returns a watcher of the kernel log at path (/dev/kmsg) that
// calls onKill, if not nil, for every OOM kill it reads. Nothing is read
// until Run.
func NewOOMWatcher(log zerolog.Logger, path string, onKill func(OOMKill)) *OOMWatcher {
	return newOOMWatcher(log, path, onKill, openKmsg, clock.Real{})
}

// newOOMWatcher is NewOOMWatcher with the kernel log and the clock
// replaceable. open must return a reader that yields one record per Read,
// positioned after the records already logged, and whose Close makes a
// pending Read return.
func newOOMWatcher(log zerolog.Logger, path string, onKill func(OOMKill), open func(string) (io.ReadCloser, error), clk clock.Clock) *OOMWatcher {
	return &OOMWatcher{
		log:     log,
		path:    path,
		onKill:  onKill,
		open:    open,
		clk:     clk,
		status:  "unavailable: not started",
		arrived: make(chan struct{}),
	}
}

// openKmsg opens the kernel log for reading and skips the records already
// in it: kills from before the agent started are not its business.
func openKmsg(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	// Close must interrupt a pending Read, which only holds for files the
	// runtime's poller waits on; /dev/kmsg is one.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: cannot wait for records: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Run reads the kernel log until ctx is cancelled. It never fails the
// agent: when the log cannot be opened or read, Status says why and Run
// returns nil; everything else keeps working without OOM attribution.
func (w *OOMWatcher) Run(ctx context.Context) error {
	src, err := w.open(w.path)
	if err != nil {
		w.setStatus("unavailable: "+err.Error(), false)
		w.log.Warn().Err(err).Msg("kernel OOM kills will not be recognised")
		return nil
	}
	w.setStatus("ok", true)
	w.mu.Lock()
	w.src = src
	w.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { src.Close() })
	defer func() {
		if stop() {
			src.Close()
		}
	}()

	buf := make([]byte, kmsgReadSize)
	var asm oomAssembler
	for {
		n, err := src.Read(buf)
		switch {
		case ctx.Err() != nil:
			w.setStatus("unavailable: stopped", false)
			return nil
		case errors.Is(err, syscall.EPIPE):
			// The kernel overwrote records before they were read.
			w.log.Debug().Msg("kernel log records lost, reading on")
			continue
		case err != nil:
			w.setStatus("unavailable: "+err.Error(), false)
			w.log.Warn().Err(err).Msg("kernel log unreadable, OOM kills will not be recognised")
			return nil
		}
		rec, ok := ParseKmsgRecord(buf[:n])
		if !ok {
			w.log.Debug().Bytes("record", buf[:n]).Msg("kernel log record not understood")
			continue
		}
		if rec.Facility() != 0 {
			continue // written from user space, not the kernel's word
		}
		if k, ok := asm.add(rec.Msg); ok {
			w.record(k)
		}
	}
}

func (w *OOMWatcher) record(k OOMKill) {
	w.mu.Lock()
	w.ring[w.next] = receivedKill{kill: k, at: w.clk.Now()}
	w.next = (w.next + 1) % len(w.ring)
	w.count = min(w.count+1, len(w.ring))
	close(w.arrived)
	w.arrived = make(chan struct{})
	w.mu.Unlock()

	w.log.Warn().Int("pid", k.PID).Str("comm", k.Comm).Bool("memcg", k.Memcg).
		Str("task_memcg", k.TaskMemcg).Str("kernel", k.Line).Msg("kernel OOM kill")
	if w.onKill != nil {
		w.onKill(k)
	}
}

// Kill is one kill the watcher received, with when.
type Kill struct {
	Kill OOMKill   `json:"kill"`
	At   time.Time `json:"at"`
}

// Handover returns what an upgrade hands to the next program: the open
// kernel log's descriptor (-1 when not reading), positioned after the last
// record read, so that a kill logged during the exec is still read, and the
// recent kills.
func (w *OOMWatcher) Handover() (fd int, kills []Kill) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fd = -1
	if f, ok := w.src.(*os.File); ok && w.reading {
		fd = handoff.RawFD(f)
	}
	for i := w.count; i >= 1; i-- {
		r := w.ring[(w.next-i+len(w.ring))%len(w.ring)]
		kills = append(kills, Kill{Kill: r.kill, At: r.at})
	}
	return fd, kills
}

// TakeOver makes the watcher go on where the program before this one left
// off: Run reads the kernel log open at fd (from Handover) instead of
// opening it, and kills holds the recent kills. Call it before Run.
func (w *OOMWatcher) TakeOver(fd int, kills []Kill) {
	if fd >= 0 {
		w.open = func(string) (io.ReadCloser, error) {
			syscall.CloseOnExec(fd)
			f := os.NewFile(uintptr(fd), w.path)
			if err := f.SetReadDeadline(time.Time{}); err != nil {
				f.Close()
				return openKmsg(w.path)
			}
			return f, nil
		}
	}
	for _, k := range kills {
		w.ring[w.next] = receivedKill{kill: k.Kill, at: k.At}
		w.next = (w.next + 1) % len(w.ring)
		w.count = min(w.count+1, len(w.ring))
	}
}

func (w *OOMWatcher) setStatus(s string, reading bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.status = s
	if w.reading && !reading {
		// Nothing more will arrive: let waiters give up now.
		close(w.arrived)
		w.arrived = make(chan struct{})
	}
	w.reading = reading
}

// Status reports the watcher's state for status output: "ok" while it
// reads the kernel log, else "unavailable: <why>".
func (w *OOMWatcher) Status() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status
}

// Recent returns the newest kill received at or after since whose PID
// satisfies pids (any PID when pids is nil), and reports whether there is one.
func (w *OOMWatcher) Recent(pids func(pid int) bool, since time.Time) (OOMKill, bool) {
	return w.RecentKill(byPID(pids), since)
}

// RecentKill returns the newest kill received at or after since that match
// accepts (any kill when match is nil), and reports whether there is one.
// With OOMKillIsOurs, a kill is matched by the victim's memory cgroup as
// well as its PID.
func (w *OOMWatcher) RecentKill(match func(OOMKill) bool, since time.Time) (OOMKill, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.recentLocked(match, since)
}

// byPID turns a PID predicate into a kill predicate; nil stays nil.
func byPID(pids func(pid int) bool) func(OOMKill) bool {
	if pids == nil {
		return nil
	}
	return func(k OOMKill) bool { return pids(k.PID) }
}

func (w *OOMWatcher) recentLocked(match func(OOMKill) bool, since time.Time) (OOMKill, bool) {
	for i := 1; i <= w.count; i++ {
		r := w.ring[(w.next-i+len(w.ring))%len(w.ring)]
		if r.at.Before(since) {
			break // older ones are older still
		}
		if match == nil || match(r.kill) {
			return r.kill, true
		}
	}
	return OOMKill{}, false
}

// Wait is Recent, but when no kill matches yet it waits up to timeout for
// one to be read: the kernel's record can arrive after the victim's exit
// has been seen. It returns at once when the watcher is not reading, and
// with nothing when ctx is done.
func (w *OOMWatcher) Wait(ctx context.Context, pids func(pid int) bool, since time.Time, timeout time.Duration) (OOMKill, bool) {
	return w.WaitKill(ctx, byPID(pids), since, timeout)
}

// WaitKill is Wait with a predicate on the whole kill, as RecentKill.
func (w *OOMWatcher) WaitKill(ctx context.Context, match func(OOMKill) bool, since time.Time, timeout time.Duration) (OOMKill, bool) {
	var timer clock.Timer
	for {
		w.mu.Lock()
		k, ok := w.recentLocked(match, since)
		arrived, reading := w.arrived, w.reading
		w.mu.Unlock()
		if ok || !reading || timeout <= 0 {
			return k, ok
		}
		if timer == nil {
			timer = w.clk.NewTimer(timeout)
			defer timer.Stop()
		}
		select {
		case <-arrived:
		case <-timer.C():
			return w.RecentKill(match, since)
		case <-ctx.Done():
			return OOMKill{}, false
		}
	}
}
