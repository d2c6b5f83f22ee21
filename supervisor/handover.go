package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"agent/internal/clock"
	"agent/internal/handoff"
	"agent/internal/procfs"
)

// An upgrade in place (agentctl upgrade) execs a new program in the
// agent's own process. The app's processes stay its children, with the
// same PIDs: the new program takes them on with their pidfds and output
// pipes, and the supervision state with them. For that the loop first
// comes to rest (no process starting a reload, stopping or being
// explained, no request waiting) and freezes: it stops acting, and no app
// process is reaped, so that an exit during the exec is reaped and
// classified by the new program. A freeze that is not followed by an exec
// (it failed) thaws, and everything goes on as before.

// Mono is a CLOCK_MONOTONIC reading in nanoseconds (0: none). Times handed
// over to the next program are monotonic, since time.Time's own monotonic
// reading counts from the start of the process and a wall clock can jump.
type Mono int64

// MonoOf returns t, a time of clk, as a monotonic reading.
func MonoOf(clk clock.Clock, t time.Time) Mono { return newMonoClock(clk).of(t) }

// Time returns m as a time of clk.
func (m Mono) Time(clk clock.Clock) time.Time { return newMonoClock(clk).time(m) }

// monoClock converts between the supervisor's clock and Mono, from one
// pair of readings taken together.
type monoClock struct {
	now  time.Time
	mono int64
}

func newMonoClock(clk clock.Clock) monoClock {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return monoClock{now: clk.Now(), mono: ts.Nano()}
}

func (m monoClock) of(t time.Time) Mono {
	if t.IsZero() {
		return 0
	}
	return Mono(m.mono - int64(m.now.Sub(t)))
}

func (m monoClock) time(v Mono) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return m.now.Add(-time.Duration(m.mono - int64(v)))
}

// Frozen is the supervisor's state at rest, as handed to the next program.
type Frozen struct {
	Gen        uint64            `json:"gen"`
	Restarts   int               `json:"restarts"`
	Exits      []FrozenExit      `json:"exits"`
	ExitCounts map[Reason]uint64 `json:"exit_counts"`
	Slots      []FrozenSlot      `json:"slots"`
}

// FrozenExit is an Exit with every field kept.
type FrozenExit struct {
	At     time.Time     `json:"at"` // a wall time: shown, never subtracted
	Reason Reason        `json:"reason"`
	Code   *int          `json:"code,omitempty"`
	Signal string        `json:"signal,omitempty"`
	Uptime time.Duration `json:"uptime_ns"`
	Detail string        `json:"detail,omitempty"`
	PID    int           `json:"pid"`
	Slot   int           `json:"slot"`
}

func frozenExit(e Exit) FrozenExit {
	return FrozenExit{At: e.At, Reason: e.Reason, Code: e.Code, Signal: e.Signal, Uptime: e.Uptime, Detail: e.Detail, PID: e.PID, Slot: e.Slot}
}

func (e FrozenExit) exit() Exit {
	return Exit{At: e.At, Reason: e.Reason, Code: e.Code, Signal: e.Signal, Uptime: e.Uptime, Detail: e.Detail, PID: e.PID, Slot: e.Slot}
}

// FrozenSlot is one slot at rest.
type FrozenSlot struct {
	State        State  `json:"state"`
	Message      string `json:"message,omitempty"`
	Started      Mono   `json:"started,omitempty"`
	Restarts     int    `json:"restarts"`
	Attempt      int    `json:"attempt"` // the restart policy's consecutive restarts
	RestartTimes []Mono `json:"restart_times,omitempty"`
	BackoffUntil Mono   `json:"backoff_until,omitempty"` // in backoff: when it starts again
	// Next is the launch of the slot's next start (its config's).
	Next json.RawMessage `json:"next"`
	Proc *FrozenProc     `json:"proc,omitempty"`
}

// FrozenProc is a slot's process. The descriptors are numbers in the
// agent's process, valid across the exec.
type FrozenProc struct {
	PID        int             `json:"pid"`
	Gen        uint64          `json:"gen"`
	Started    Mono            `json:"started"`
	Ready      bool            `json:"ready"`
	ReadySince Mono            `json:"ready_since,omitempty"`
	PidFD      int             `json:"pidfd"`
	Stdout     int             `json:"stdout"`
	Stderr     int             `json:"stderr"`
	HeapOOM    string          `json:"heap_oom,omitempty"`
	Launch     json.RawMessage `json:"launch"`
	// Exit is set when the process was reaped and its exit not yet seen:
	// the next program records it.
	Exit *FrozenExit `json:"exit,omitempty"`
}

// FDs lists the descriptors f refers to.
func (f *Frozen) FDs() []int {
	var fds []int
	for _, s := range f.Slots {
		if p := s.Proc; p != nil {
			fds = append(fds, p.PidFD, p.Stdout, p.Stderr)
		}
	}
	return fds
}

// ErrCannotHandOver is wrapped by Freeze's error when the app's processes
// cannot be handed over at all.
var ErrCannotHandOver = errors.New("the app's processes cannot be handed over")

type freezeReq[L any] struct {
	encode func(L) json.RawMessage
	reply  chan freezeAnswer // buffered
	thaw   chan struct{}     // closed by the thaw, or when the asker gives up
	why    string            // while waiting: what the loop waits for
}

type freezeAnswer struct {
	f   *Frozen
	err error
}

func (r *freezeReq[L]) cancelled() bool {
	select {
	case <-r.thaw:
		return true
	default:
		return false
	}
}

// Freeze waits until the app is at rest, then returns its state with the
// supervisor frozen: from then on no process is started, stopped or
// reaped, and the loop only keeps the watchdog fed, until thaw is called
// (after a successful exec nothing calls it). ctx bounds the wait for
// rest; encode turns a launch into what the next program's Adopt gets.
func (s *Supervisor[L]) Freeze(ctx context.Context, encode func(L) json.RawMessage) (f *Frozen, thaw func(), err error) {
	r := &freezeReq[L]{encode: encode, reply: make(chan freezeAnswer, 1), thaw: make(chan struct{})}
	var once sync.Once
	thaw = func() { once.Do(func() { close(r.thaw) }) }
	select {
	case s.reqs <- request[L]{kind: reqFreeze, freeze: r}:
	case <-s.done:
		return nil, nil, ErrShuttingDown
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	select {
	case a := <-r.reply:
		if a.err != nil {
			return nil, nil, a.err
		}
		return a.f, thaw, nil
	case <-ctx.Done():
		thaw() // dropped by the loop, or thawed at once if it froze meanwhile
		return nil, nil, fmt.Errorf("the app did not come to rest (%s): %w", s.freezeWhy.Load(), ctx.Err())
	case <-s.done:
		return nil, nil, ErrShuttingDown
	}
}

// freezeRequest takes a freeze request; it is answered from tryFreeze.
func (l *loop[L]) freezeRequest(r *freezeReq[L]) {
	switch {
	case l.shutdown:
		r.reply <- freezeAnswer{err: ErrShuttingDown}
	case l.freeze != nil && !l.freeze.cancelled():
		r.reply <- freezeAnswer{err: errors.New("another upgrade is under way")}
	default:
		l.freeze = r
		l.tryFreeze()
	}
}

// tryFreeze freezes the loop for the pending request once the app is at
// rest. It is called after everything the loop does.
func (l *loop[L]) tryFreeze() {
	r := l.freeze
	if r == nil {
		return
	}
	if r.cancelled() || l.shutdown {
		l.freeze = nil
		r.reply <- freezeAnswer{err: ErrShuttingDown}
		return
	}
	why, err := l.unrest()
	if err != nil {
		l.freeze = nil
		r.reply <- freezeAnswer{err: err}
		return
	}
	if why != "" {
		l.s.freezeWhy.Store(why)
		return
	}
	l.freeze = nil
	l.holdFrozen(r)
}

// unrest says what keeps the app from being at rest ("" when it is), or
// why its processes can never be handed over.
func (l *loop[L]) unrest() (string, error) {
	if l.explaining > 0 {
		return "an exit is being explained", nil
	}
	for _, sl := range l.slots {
		switch c := sl.cur; {
		case sl.reload != nil || len(sl.side) > 0:
			return fmt.Sprintf("process %d is being reloaded", sl.index), nil
		case sl.removing:
			return fmt.Sprintf("process %d is being scaled down", sl.index), nil
		case len(sl.waits) > 0:
			return fmt.Sprintf("a start or restart of process %d is under way", sl.index), nil
		case c != nil && (c.stopping || c.exited):
			return fmt.Sprintf("process %d is stopping", sl.index), nil
		case c != nil && (c.leader == nil || c.stdout == nil || c.stderr == nil):
			return "", fmt.Errorf("%w: process %d has no pidfd (Linux 5.3 or later is needed)", ErrCannotHandOver, c.PID)
		}
	}
	return "", nil
}

// holdFrozen answers r with the state and holds the loop frozen until r's
// thaw. The reaper lock is held all the while: an app process that exits
// meanwhile stays a zombie for whoever thaws (or for the next program).
func (l *loop[L]) holdFrozen(r *freezeReq[L]) {
	s := l.s
	s.reapMu.Lock()
	defer s.reapMu.Unlock()
	r.reply <- freezeAnswer{f: l.frozen(r.encode)}
	s.log.Info().Msg("supervisor frozen for an upgrade")
	for {
		select {
		case <-l.tick:
			s.opts.OnTick()
		case <-r.thaw:
			s.log.Info().Msg("supervisor thawed: the upgrade did not happen")
			return
		case <-l.ctx.Done():
			// Shut down while frozen: the exec did not happen.
			return
		}
	}
}

// frozen is the loop's state, for the next program.
func (l *loop[L]) frozen(encode func(L) json.RawMessage) *Frozen {
	s := l.s
	mc := newMonoClock(s.clk)
	f := &Frozen{Gen: s.gen.Load(), Restarts: l.restarts, ExitCounts: maps.Clone(l.exitCounts)}
	for _, e := range l.exits {
		f.Exits = append(f.Exits, frozenExit(e))
	}
	for _, sl := range l.slots {
		fs := FrozenSlot{State: sl.state, Message: sl.msg, Started: mc.of(sl.started), Restarts: sl.restarts,
			Attempt: sl.track.attempt, Next: encode(s.Config(sl.index).Launch)}
		for _, t := range sl.track.restarts {
			fs.RestartTimes = append(fs.RestartTimes, mc.of(t))
		}
		if sl.backoff != nil {
			fs.BackoffUntil = mc.of(sl.backoff.at)
		}
		if c := sl.cur; c != nil {
			fp := &FrozenProc{PID: c.PID, Gen: c.Gen, Started: mc.of(c.Started), Ready: c.ready, ReadySince: mc.of(c.readySince),
				PidFD: c.leader.Fd(), Stdout: handoff.RawFD(c.stdout), Stderr: handoff.RawFD(c.stderr), Launch: encode(c.Launch)}
			if line := c.heapOOM.Load(); line != nil {
				fp.HeapOOM = *line
			}
			if ex := c.reaped.Load(); ex != nil {
				fe := frozenExit(*ex)
				fp.Exit = &fe
			}
			fs.Proc = fp
		}
		f.Slots = append(f.Slots, fs)
	}
	return f
}

// adoption is what Run takes on instead of starting the app.
type adoption[L any] struct {
	f     *Frozen
	procs []*Child[L] // by slot; nil where none ran
	next  []L
}

// Adopt makes Run take on the state and processes in f, which the program
// before this one handed over, instead of starting the app. launch turns
// a handed-over launch back into one. Call it before Run, on a supervisor
// made with one config per slot of f. It checks every descriptor first: an
// error means nothing was taken.
func (s *Supervisor[L]) Adopt(f *Frozen, launch func(slot int, raw json.RawMessage) (L, error)) error {
	if len(f.Slots) != s.Slots() {
		return fmt.Errorf("adopt: %d slots handed over, %d configured", len(f.Slots), s.Slots())
	}
	a := &adoption[L]{f: f, procs: make([]*Child[L], len(f.Slots))}
	mc := newMonoClock(s.clk)
	for i, fs := range f.Slots {
		next, err := launch(i, fs.Next)
		if err != nil {
			return fmt.Errorf("adopt slot %d: %w", i, err)
		}
		a.next = append(a.next, next)
		fp := fs.Proc
		if fp == nil {
			continue
		}
		if err := checkPidFD(fp.PidFD, fp.PID); err != nil {
			return fmt.Errorf("adopt process %d: %w", fp.PID, err)
		}
		for _, fd := range []int{fp.Stdout, fp.Stderr} {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
				return fmt.Errorf("adopt process %d: descriptor %d is not its output pipe", fp.PID, fd)
			}
		}
		l, err := launch(i, fp.Launch)
		if err != nil {
			return fmt.Errorf("adopt process %d: %w", fp.PID, err)
		}
		c := &Child[L]{PID: fp.PID, Slot: i, Gen: fp.Gen, Started: mc.time(fp.Started), Launch: l, s: s, spawned: true}
		c.ready, c.readySince = fp.Ready, mc.time(fp.ReadySince)
		if fp.HeapOOM != "" {
			line := fp.HeapOOM
			c.heapOOM.Store(&line)
		}
		if fp.Exit != nil {
			ex := fp.Exit.exit()
			c.reaped.Store(&ex)
		}
		a.procs[i] = c
	}
	// Only now that all is checked: the descriptors become the children's.
	for i, c := range a.procs {
		if c == nil {
			continue
		}
		fp := f.Slots[i].Proc
		for _, fd := range []int{fp.PidFD, fp.Stdout, fp.Stderr} {
			syscall.CloseOnExec(fd)
		}
		c.leader = procfs.NewHandle(fp.PID, fp.PidFD)
		c.stdout = os.NewFile(uintptr(fp.Stdout), "app stdout")
		c.stderr = os.NewFile(uintptr(fp.Stderr), "app stderr")
	}
	s.adopted = a
	return nil
}

// Next returns, after Adopt, the launch of each slot's next start.
func (s *Supervisor[L]) Next() []L {
	if s.adopted == nil {
		return nil
	}
	return s.adopted.next
}

// checkPidFD checks that fd is a pidfd of process pid (its fdinfo says so).
func checkPidFD(fd, pid int) error {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Errorf("pidfd %d: %w", fd, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			got, _ := strconv.Atoi(strings.TrimSpace(v))
			if got != pid {
				return fmt.Errorf("descriptor %d is the pidfd of %d, not of %d", fd, got, pid)
			}
			return nil
		}
	}
	return fmt.Errorf("descriptor %d is not a pidfd", fd)
}

// restore sets the loop up from the adopted state, in place of starting
// the app: each process handed over is watched again, and one that was
// reaped during the exec has its exit recorded now.
func (l *loop[L]) restore(a *adoption[L]) {
	s := l.s
	f := a.f
	mc := newMonoClock(s.clk)
	s.gen.Store(f.Gen)
	l.restarts = f.Restarts
	for _, e := range f.Exits {
		l.exits = append(l.exits, e.exit())
	}
	maps.Copy(l.exitCounts, f.ExitCounts)
	for i, fs := range f.Slots {
		sl := l.slots[i]
		sl.state, sl.msg, sl.started, sl.restarts = fs.State, fs.Message, mc.time(fs.Started), fs.Restarts
		sl.track.attempt = fs.Attempt
		for _, t := range fs.RestartTimes {
			sl.track.restarts = append(sl.track.restarts, mc.time(t))
		}
		if c := a.procs[i]; c != nil {
			sl.cur = c
			s.table.adopt(c.PID, c.reaped.Load() == nil)
			s.goCapture(c)
			if ex := c.reaped.Load(); ex != nil {
				go s.send(event[L]{kind: evExited, child: c, exit: *ex})
			} else {
				s.goWaitExit(c)
			}
			l.watch(c)
			continue
		}
		if fs.BackoffUntil != 0 {
			d := max(mc.time(fs.BackoffUntil).Sub(s.clk.Now()), 0)
			sl.backoff = l.newTimer(d, func() {
				sl.backoff = nil
				sl.start()
			})
		}
	}
	s.log.Info().Int("slots", len(f.Slots)).Msg("supervision taken over from the previous program")
	for _, sl := range l.slots {
		l.emit(Event[L]{Kind: EventChanged, Slot: sl.index})
	}
}
