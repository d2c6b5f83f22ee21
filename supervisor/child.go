package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"agent/internal/pathsearch"
	"agent/internal/procfs"
)

// Child is one process of the app, as observers see it. Its lifecycle
// (spawned, ready, stopping, gone) is kept by the loop.
type Child[L any] struct {
	PID     int
	Gen     uint64
	Started time.Time
	Launch  L // Config.Launch of the config it was started with

	s       *Supervisor[L]
	spawned bool           // a process runs (or ran): not a start that failed to spawn
	leader  *procfs.Handle // pidfd of the process, which leads its group; nil if the kernel gave none
	stdout  *os.File       // the read ends of its output pipes, handed over by an upgrade
	stderr  *os.File
	reaped  atomic.Pointer[Exit]           // its exit, once reaped (see waitExit)
	heapOOM atomic.Pointer[string]         // the V8 fatal line, once seen
	output  sync.WaitGroup                 // the stdout and stderr readers
	gate    chan func(context.Context) int // a gated stop waits for its drain here
	Slot    int                            // the index of its slot

	reqMu      sync.Mutex
	stopReason Reason // set when the agent stops it
	stopDetail string

	// Owned by the loop.
	ready      bool
	readySince time.Time
	stopping   bool
	exitedAt   time.Time
	exited     bool
	treeGone   bool
	final      *Exit
	cancel     context.CancelFunc
}

// Ready reports that the process serves. Safe from any goroutine; a
// report about a process that is gone is ignored.
func (c *Child[L]) Ready() { c.s.send(event[L]{kind: evReady, child: c}) }

// Restart asks for a restart of this process with reason r (rss-limit,
// liveness, start-timeout). Only the first request per process counts.
func (c *Child[L]) Restart(r Reason, detail string) {
	c.s.send(event[L]{kind: evRestart, child: c, reason: r, detail: detail})
}

// setRequested records why the agent stops c; the first reason stays.
func (c *Child[L]) setRequested(r Reason, detail string) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	if c.stopReason == "" {
		c.stopReason, c.stopDetail = r, detail
	}
}

// requested returns why the agent stopped c, "" if it did not.
func (c *Child[L]) requested() (Reason, string) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	return c.stopReason, c.stopDetail
}

// spawn starts the process with its pipes, in its own process group.
func (s *Supervisor[L]) spawn(slot int, cfg Config[L]) (*Child[L], error) {
	if s.opts.Prepare != nil {
		var err error
		if cfg, err = s.opts.Prepare(cfg); err != nil {
			return nil, fmt.Errorf("start app: %w", err)
		}
	}
	if len(cfg.Command) == 0 {
		return nil, errors.New("start app: empty command")
	}
	path := cfg.Path
	if path == "" {
		var err error
		if path, err = pathsearch.Look(cfg.Command[0], pathsearch.Env(cfg.Env), cfg.Dir); err != nil {
			return nil, fmt.Errorf("start app: %w", err)
		}
	}
	cmd := &exec.Cmd{Path: path, Args: cfg.Command, Dir: cfg.Dir, Env: cfg.Env}
	pidfd := -1
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cfg.Credential, PidFD: &pidfd}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start app: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("start app: %w", err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW // stdin: /dev/null
	// Started under liveMu and known as live before a scan of another
	// process's tree can see it (scanTree holds liveMu while it reads).
	err = s.table.start(cmd)
	outW.Close() // the app holds the write ends now
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start app: %w", err)
	}
	c := &Child[L]{PID: cmd.Process.Pid, Slot: slot, Gen: s.gen.Add(1), Started: s.clk.Now(), Launch: cfg.Launch, s: s, spawned: true}
	c.stdout, c.stderr = outR, errR
	if pidfd >= 0 {
		c.leader = procfs.NewHandle(c.PID, pidfd)
	}
	if err := resetOOMScore(c.PID); err != nil {
		s.log.Debug().Err(err).Msg("reset oom_score_adj of app")
	}
	s.log.Info().Int("pid", c.PID).Strs("command", cfg.Command).Msg("app started")
	s.goCapture(c)
	if c.leader == nil {
		// No pidfd (a kernel before 5.3): cmd.Wait reaps, and this
		// process cannot be handed over to a new program.
		go func() {
			err := cmd.Wait()
			s.table.disown(c.PID)
			s.send(event[L]{kind: evExited, child: c, exit: exitOf(cmd.ProcessState, err, s.clk.Now(), c.Started, c.PID)})
		}()
		return c, nil
	}
	// The pidfd waits; os.Process keeps no handle of its own.
	cmd.Process.Release()
	s.goWaitExit(c)
	return c, nil
}

// goCapture starts the readers of c's output pipes.
func (s *Supervisor[L]) goCapture(c *Child[L]) {
	c.output.Add(2)
	go s.capture(c, c.stdout, "stdout")
	go s.capture(c, c.stderr, "stderr")
}

// goWaitExit waits for c's main process to exit, reaps it and tells the
// loop: the one place an app process with a pidfd is reaped. While the
// supervisor is frozen for an upgrade the exit is left unreaped (the new
// program reaps it) until it thaws.
func (s *Supervisor[L]) goWaitExit(c *Child[L]) {
	fd, err := unix.FcntlInt(uintptr(c.leader.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		// Out of descriptors: poll the leader's own (it outlives the wait).
		fd = -1
	}
	go func() {
		h := c.leader
		if fd >= 0 {
			h = procfs.NewHandle(c.PID, fd)
			defer h.Close()
		}
		procfs.Wait(context.Background(), h)
		s.reapMu.RLock() // waits while a freeze holds it
		var ws unix.WaitStatus
		_, err := unix.Wait4(c.PID, &ws, 0, nil)
		ex := exitOfStatus(ws, err, s.clk.Now(), c.Started, c.PID)
		c.reaped.Store(&ex)
		s.reapMu.RUnlock()
		s.table.disown(c.PID)
		s.send(event[L]{kind: evExited, child: c, exit: ex})
	}()
}

// capture reads one of the app's output streams into the log and the ring.
// The pipe is closed once the process is finished (slot.finish), not here:
// a freeze for an upgrade must find it open to hand it over.
func (s *Supervisor[L]) capture(c *Child[L], r *os.File, stream string) {
	defer c.output.Done()
	name := s.Config(c.Slot).Name
	_ = readLines(r, func(b []byte, cut bool) {
		text := string(b)
		if stream == "stderr" && c.heapOOM.Load() == nil && isHeapOOM(text) {
			c.heapOOM.Store(&text)
		}
		// The app's output is logged whatever the agent's own log level.
		ev := s.log.Log().Str("level", "info").Str("app", name).Str("stream", stream).Int("pid", c.PID)
		if cut {
			ev = ev.Bool("cut", true)
		}
		ev.Msg(text)
		if s.opts.Output != nil {
			s.opts.Output.Add(Line{Time: time.Now(), Stream: stream, PID: c.PID, Text: text, Cut: cut})
		}
	})
}

// closeOutput closes the read ends of c's output pipes once its readers
// are done (the tree is gone, so they see the end; a reader held up longer
// by a descendant that kept the pipe is cut off).
func (c *Child[L]) closeOutput() {
	waitTimeout(&c.output, time.Second)
	for _, f := range []*os.File{c.stdout, c.stderr} {
		if f != nil {
			f.Close()
		}
	}
}

// isHeapOOM reports whether line is V8's report of heap exhaustion.
func isHeapOOM(line string) bool {
	return strings.Contains(line, "JavaScript heap out of memory") ||
		strings.Contains(line, "Ineffective mark-compacts near heap limit") ||
		strings.Contains(line, "CALL_AND_RETRY_LAST")
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}
