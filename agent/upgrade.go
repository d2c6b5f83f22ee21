package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"agent/internal/handoff"
	"agent/proxy"
	"agent/supervisor"
)

// An upgrade in place (agentctl upgrade, POST /v1/upgrade) replaces the
// agent's program without a gap: the new program is checked, the agent
// stops accepting and lets the requests in flight finish, the supervisor
// freezes at rest, and the agent execs the new program in its own process
// (same PID: systemd's main PID, the app's parent), handing over its
// sockets, the app's processes and the supervision state (handover.go).
// The new program answers the agentctl that asked. Anything that fails
// before the exec changes nothing; a new program that cannot take over
// execs back into this one.

// ErrUpgrading is returned by actions asked for during an upgrade.
var ErrUpgrading = errors.New("an upgrade of the agent is under way; ask again once it is done")

// upgradeCheckTimeout bounds the run of the new program's upgrade-check.
const upgradeCheckTimeout = 30 * time.Second

// upgradeDrain bounds how long requests in flight may take to finish
// before the exec (stop.timeout if shorter); upgradeRestWait how long the
// app may take to come to rest (a start or stop under way).
// upgradeRestAgain how long it may take to come to rest again after the
// drain (an exit meanwhile).
const (
	upgradeDrain     = 5 * time.Second
	upgradeRestWait  = 15 * time.Second
	upgradeRestAgain = 3 * time.Second
)

// upgradePlan is a checked upgrade: the program to exec.
type upgradePlan struct {
	path string
}

// resolveExePath returns the path the agent was started as: argv0 made
// absolute (from the working directory, or looked up in PATH when it has
// no slash), symbolic links not resolved.
func resolveExePath(argv0 string) string {
	if argv0 == "" {
		return ""
	}
	if !strings.Contains(argv0, "/") {
		if p, err := exec.LookPath(argv0); err == nil {
			argv0 = p
		}
	}
	if abs, err := filepath.Abs(argv0); err == nil {
		return abs
	}
	return argv0
}

// checkBinary checks that path may be exec'd by an upgrade: a regular file
// (through symbolic links) owned by root and writable by no one else.
func checkBinary(path string) error {
	if path == "" {
		return errors.New("no program to upgrade to (give --binary)")
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%s: the program's path must be absolute", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("new program: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is %s, not a program", path, describeMode(fi.Mode()))
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid != 0 {
		return fmt.Errorf("%s is not owned by root", path)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is writable by others than root (mode %s)", path, fi.Mode().Perm())
	}
	if fi.Mode().Perm()&0o100 == 0 {
		return fmt.Errorf("%s is not executable", path)
	}
	return nil
}

// prepareUpgrade checks binary ("" = the path the agent was first started
// as) and runs its upgrade-check: it must accept the config file on disk
// and the running config, and read this hand-over version. Nothing changes.
func (a *Agent) prepareUpgrade(ctx context.Context, binary string) (*upgradePlan, error) {
	if binary == "" {
		binary = a.exePath
	}
	if err := checkBinary(binary); err != nil {
		return nil, err
	}
	cfg := a.cfg.Load()
	ctx, cancel := context.WithTimeout(ctx, upgradeCheckTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "upgrade-check", "--config", cfg.Path, "--handover-version", strconv.Itoa(HandoverVersion))
	cmd.Stdin = bytes.NewReader(cfg.Data)
	cmd.Env = cleanEnv(os.Environ())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 2000 {
			msg = msg[:2000]
		}
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("the new program %s refused: %s", binary, msg)
	}
	return &upgradePlan{path: binary}, nil
}

// upgrade execs the planned program in place, answering on conn from the
// new program. It returns only when the upgrade did not happen, with
// everything as it was before.
func (a *Agent) upgrade(ctx context.Context, plan *upgradePlan, conn net.Conn) error {
	// No restart, reload or scale meanwhile, and the app at rest before the
	// traffic pauses (a start or stop under way ends first): a freeze
	// thawed at once says so. The freeze after the drain is then at once.
	wait, cancel := context.WithTimeout(ctx, upgradeRestWait)
	defer cancel()
	release, err := a.rollout(wait)
	if err != nil {
		return fmt.Errorf("a restart, reload or scale is under way: %w", err)
	}
	defer release()
	_, thawNow, err := a.sup.Freeze(wait, encodeLaunch)
	if err != nil {
		return err
	}
	thawNow()

	// Stop accepting everywhere; new connections wait in the backlogs.
	for _, ln := range a.lns {
		ln.Pause()
	}
	// The client connections stop between requests and the tunnels stop
	// copying; the requests in flight finish first.
	var parked *proxy.Parked
	if a.proxy != nil {
		drain := min(upgradeDrain, a.cfg.Load().Stop.Timeout.D())
		a.log.Info().Dur("drain", drain).Msg("upgrade: not accepting; requests in flight finish, kept connections stop between requests")
		parked = a.proxy.Freeze(drain)
		if parked.Cut > 0 {
			a.log.Warn().Int("connections", parked.Cut).Dur("drain", drain).Msg("upgrade: requests still running after the drain were cut")
		}
	}
	resume := func() {
		if parked != nil {
			a.proxy.Thaw(parked)
		}
		for _, ln := range a.lns {
			ln.Resume()
		}
	}
	rest, cancelRest := context.WithTimeout(ctx, upgradeRestAgain)
	frozen, thaw, err := a.sup.Freeze(rest, encodeLaunch)
	cancelRest()
	if err != nil {
		resume()
		return err
	}
	h, err := a.handover(frozen, parked, conn)
	if err == nil {
		var memfd int
		if memfd, err = h.writeMemfd(); err == nil {
			a.log.Info().Str("program", plan.path).Int("upgrade", h.Upgrades).Msg("upgrade: handing over to the new program")
			env := append(cleanEnv(os.Environ()), HandoverEnv+"="+strconv.Itoa(memfd))
			a.flushLog()
			err = execInPlace(plan.path, h.Argv, env, append(h.fds(), memfd))
			unix.Close(memfd)
		}
		if h.Exe >= 0 {
			unix.Close(h.Exe)
		}
	}
	thaw()
	resume()
	return fmt.Errorf("exec %s: %w", plan.path, err)
}

// handover gathers what the next program takes over.
func (a *Agent) handover(frozen *supervisor.Frozen, parked *proxy.Parked, conn net.Conn) (*Handover, error) {
	cfg := a.cfg.Load()
	exe, err := unix.Open("/proc/self/exe", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		exe = -1 // no way back; the upgrade goes on
	}
	h := &Handover{
		Version:     HandoverVersion,
		From:        a.version,
		Argv:        a.argv,
		ExePath:     a.exePath,
		Exe:         exe,
		Started:     a.started,
		StartedMono: supervisor.MonoOf(a.clk, a.started),
		Upgrades:    a.upgrades + 1,
		ConfigPath:  cfg.Path,
		Config:      cfg.Data,
		EnvFileVars: cfg.App.EnvFileVars,
		Instances:   a.gen.Load().instances,
		Supervisor:  frozen,
		Output:      a.output.Last(-1),
		OOMKills:    a.oomKills.Load(),
		Metrics:     a.metrics.Counters(),
		Kmsg:        -1,
		Listeners:   map[string]int{},
		Answer:      -1,
		Reload:      a.pendingReload.Load(),
		Stop:        a.pendingStop.Load(),
	}
	if a.proxy != nil {
		h.Proxy = a.proxy.Stats()
		h.Conns, h.Tunnels = parked.Handover()
	}
	if a.oom != nil {
		h.Kmsg, h.Kills = a.oom.Handover()
	}
	for name, ln := range a.lns {
		fd := ln.FD()
		if fd < 0 {
			return nil, fmt.Errorf("the %s socket has no descriptor", name)
		}
		h.Listeners[name] = fd
	}
	if uc, ok := conn.(*net.UnixConn); ok {
		h.Answer = handoff.RawFD(uc)
	}
	return h, nil
}

// execInPlace execs path with argv and env in this process, with the
// descriptors fds kept open across the exec. It returns only on failure,
// with the descriptors close-on-exec again.
//
// No child may be forked meanwhile (it would inherit the descriptors): the
// CLOEXEC flags are cleared under syscall.ForkLock. SIGHUP, SIGINT and
// SIGTERM are ignored across the exec: a Go program unblocks them when its
// runtime starts, before it installs its handlers, so a blocked signal
// would meet its default action there (the end of the agent); an ignored
// one is discarded, and the new program's runtime keeps SIGHUP and SIGINT
// ignored until it asks for them.
func execInPlace(path string, argv, env []string, fds []int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	sigs := []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM}
	var old [3]sigaction
	for i, sig := range sigs {
		ign := sigaction{handler: 1} // SIG_IGN
		if err := rtSigaction(sig, &ign, &old[i]); err != nil {
			for j := range i {
				rtSigaction(sigs[j], &old[j], nil)
			}
			return err
		}
	}
	for _, fd := range fds {
		unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
	}
	err := syscall.Exec(path, argv, env)
	for _, fd := range fds {
		syscall.CloseOnExec(fd)
	}
	for i, sig := range sigs {
		rtSigaction(sig, &old[i], nil)
	}
	return err
}

// sigaction is the kernel's struct sigaction on the 64-bit Linux ports
// (handler first; the rest is carried back unchanged).
type sigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

func rtSigaction(sig syscall.Signal, act, old *sigaction) error {
	_, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(act)), uintptr(unsafe.Pointer(old)), 8, 0, 0)
	if e != 0 {
		return fmt.Errorf("sigaction %v: %w", sig, e)
	}
	return nil
}

// cleanEnv returns env without what must not reach the next program or
// the upgrade check: systemd's socket-activation variables (the same PID
// would match LISTEN_PID) and an old hand-over.
func cleanEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "LISTEN_") || k == HandoverEnv || k == FaultTakeOverEnv {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// launchState is a launch as handed over.
type launchState struct {
	Slot       int    `json:"slot"`
	Upstream   string `json:"upstream,omitempty"`
	HeapMB     int    `json:"heap_mb"`
	OOMAtStart int64  `json:"oom_at_start"`
}

func encodeLaunch(l *launch) json.RawMessage {
	if l == nil {
		return json.RawMessage("null")
	}
	st := launchState{Slot: l.slot, Upstream: l.upstream, HeapMB: l.gen.heapMB, OOMAtStart: -1}
	if l.obs != nil {
		st.OOMAtStart = l.obs.oomAtStart
	}
	b, _ := json.Marshal(st)
	return b
}

// decodeLaunch turns a handed-over launch into one of generation g (the
// running config; a process keeps its own heap cap).
func (a *Agent) decodeLaunch(g *generation) func(int, json.RawMessage) (*launch, error) {
	return func(slot int, raw json.RawMessage) (*launch, error) {
		var st launchState
		if err := json.Unmarshal(raw, &st); err != nil {
			return nil, fmt.Errorf("launch of slot %d: %w", slot, err)
		}
		lg := g
		if st.HeapMB != g.heapMB {
			c := *g
			c.heapMB = st.HeapMB
			lg = &c
		}
		return &launch{gen: lg, slot: st.Slot, upstream: st.Upstream, obs: &observed{oomAtStart: st.OOMAtStart}}, nil
	}
}

// peerUID returns the uid of the process on the other end of a unix
// socket connection (SO_PEERCRED).
func peerUID(c net.Conn) (uint32, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, errors.New("not a unix socket connection")
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return cred.Uid, nil
}

// answerRaw writes one HTTP response with v as JSON on c, taken from the
// control server (or handed over), and closes c.
func answerRaw(c net.Conn, code int, v any) {
	body, _ := json.MarshalIndent(v, "", "  ")
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
		code, http.StatusText(code), len(body)+1, body)
	c.Close()
}
