package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"agent/internal/handoff"
	"agent/metrics"
	"agent/probe"
	"agent/proxy"
	"agent/supervisor"
)

// HandoverVersion is the version of the hand-over format this program
// writes. It reads every version from handoverOldest on:
//
//	1  the sockets, the app's processes and the supervision state
//	2  and the traffic port's kept client connections and WebSocket
//	   tunnels (Conns, Tunnels), which a program that reads only 1 would
//	   leave open unserved: it refuses 2 in its upgrade-check
const (
	HandoverVersion = 2
	handoverOldest  = 1
)

// HandoverEnv names the environment variable that tells a program exec'd
// by an upgrade where its hand-over is: the number of a descriptor (a
// memfd) holding it as JSON.
const HandoverEnv = "AGENT_HANDOVER"

// SupportsHandover reports whether this program can take over from a
// hand-over of version v.
func SupportsHandover(v int) bool { return v >= handoverOldest && v <= HandoverVersion }

// Handover is what an agent hands to the program it execs in its place
// (agentctl upgrade). Descriptors are numbers in the agent's process,
// open across the exec; -1 for none.
type Handover struct {
	Version int    `json:"version"`
	From    string `json:"from"` // the version of the program that wrote it

	Argv    []string `json:"argv"`     // the agent's own, as first started
	ExePath string   `json:"exe_path"` // the path it was first started as: upgrade's default
	Exe     int      `json:"exe"`      // the program that wrote it, to exec back into
	// Started is when the agent first started, as a wall time (shown) and
	// as a monotonic reading (its uptime).
	Started     time.Time       `json:"started"`
	StartedMono supervisor.Mono `json:"started_mono"`
	Upgrades    int             `json:"upgrades"` // this one included

	// The running config: the new program parses these bytes, not the
	// file, which may have changed since.
	ConfigPath  string   `json:"config_path"`
	Config      []byte   `json:"config"`
	EnvFileVars []string `json:"env_file_vars,omitempty"`
	Instances   int      `json:"instances"`

	Supervisor *supervisor.Frozen `json:"supervisor"`
	Output     []supervisor.Line  `json:"output,omitempty"`
	Proxy      proxy.Stats        `json:"proxy"`
	Metrics    metrics.Counters   `json:"metrics"`
	// The traffic port's client connections, parked between requests, and
	// its WebSocket tunnels.
	Conns    []proxy.HandedConn   `json:"conns,omitempty"`
	Tunnels  []proxy.HandedTunnel `json:"tunnels,omitempty"`
	OOMKills int64                `json:"oom_kills"`
	Kmsg     int                  `json:"kmsg"`
	Kills    []probe.Kill         `json:"kills,omitempty"`

	Listeners map[string]int `json:"listeners"` // control, health, proxy, metrics
	Answer    int            `json:"answer"`    // the control connection that asked
	Reload    bool           `json:"reload"`    // a SIGHUP came during the upgrade
	Stop      bool           `json:"stop"`      // a SIGTERM came during the upgrade
	// Failed is set when the program exec'd could not take over and exec'd
	// back into the one before: why.
	Failed string `json:"failed,omitempty"`

	fd   int      // the memfd it was read from
	file *os.File // fd's
}

// fds lists every descriptor h hands over.
func (h *Handover) fds() []int {
	fds := []int{h.Exe, h.Kmsg, h.Answer}
	for _, fd := range h.Listeners {
		fds = append(fds, fd)
	}
	if h.Supervisor != nil {
		fds = append(fds, h.Supervisor.FDs()...)
	}
	for _, c := range h.Conns {
		fds = append(fds, c.FD)
	}
	for _, t := range h.Tunnels {
		fds = append(fds, t.Client, t.App)
	}
	out := fds[:0]
	for _, fd := range fds {
		if fd >= 0 {
			out = append(out, fd)
		}
	}
	return out
}

// writeMemfd writes h as JSON to a new memfd (close-on-exec until the
// exec clears it) and returns its descriptor.
func (h *Handover) writeMemfd() (int, error) {
	b, err := json.Marshal(h)
	if err != nil {
		return -1, err
	}
	fd, err := unix.MemfdCreate("agent-handover", unix.MFD_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("memfd: %w", err)
	}
	for off := 0; off < len(b); {
		n, err := unix.Pwrite(fd, b[off:], int64(off))
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("write hand-over: %w", err)
		}
		off += n
	}
	return fd, nil
}

// TakeHandover reads the hand-over this program was exec'd with, if any
// ($AGENT_HANDOVER), and removes the variable from the environment: nil,
// nil when there is none.
func TakeHandover() (*Handover, error) {
	v := os.Getenv(HandoverEnv)
	if v == "" {
		return nil, nil
	}
	os.Unsetenv(HandoverEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 0 {
		return nil, fmt.Errorf("%s=%q is not a descriptor", HandoverEnv, v)
	}
	unix.CloseOnExec(fd)
	// Kept in h: a File left to the garbage collector closes its
	// descriptor whenever, and the number may be another's by then.
	f := os.NewFile(uintptr(fd), "handover")
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<30))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read hand-over: %w", err)
	}
	var probeV struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &probeV); err != nil {
		return nil, fmt.Errorf("read hand-over: %w", err)
	}
	if !SupportsHandover(probeV.Version) {
		return nil, fmt.Errorf("hand-over version %d not supported (this program reads %d to %d)", probeV.Version, handoverOldest, HandoverVersion)
	}
	h := &Handover{}
	if err := json.Unmarshal(b, h); err != nil {
		return nil, fmt.Errorf("read hand-over: %w", err)
	}
	h.fd, h.file = fd, f
	return h, nil
}

// Config parses the running config that h carries, as the program before
// had it (its env file's variables included).
func (h *Handover) LoadConfig() (*Config, error) {
	cfg, err := Parse(h.ConfigPath, h.Config)
	if err != nil {
		return nil, err
	}
	cfg.App.EnvFileVars = h.EnvFileVars
	return cfg, nil
}

// ErrNoWayBack is returned by ExecBack when there is no program to go back to.
var ErrNoWayBack = errors.New("no program to go back to")

// ExecBack is what a program that cannot take over from h does: it execs
// the program before it again, with the same hand-over and why it failed,
// and returns only if that is impossible (that program failed to take
// over already, or its descriptor is gone).
func ExecBack(h *Handover, why error) error {
	if h == nil || h.Exe < 0 || h.Failed != "" {
		return ErrNoWayBack
	}
	h.Failed = why.Error()
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err := unix.Ftruncate(h.fd, 0); err != nil {
		return err
	}
	if _, err := unix.Pwrite(h.fd, b, 0); err != nil {
		return err
	}
	path := "/proc/self/fd/" + strconv.Itoa(h.Exe)
	env := append(cleanEnv(os.Environ()), HandoverEnv+"="+strconv.Itoa(h.fd))
	return execInPlace(path, h.Argv, env, append(h.fds(), h.fd))
}

// handedConfigs returns the slots' configs of g with the ports of h's
// slots' next starts.
func (a *Agent) handedConfigs(g *generation, h *Handover) ([]appConfig, error) {
	if h.Supervisor == nil || len(h.Supervisor.Slots) == 0 {
		return nil, errors.New("hand-over without app processes' slots")
	}
	decode := a.decodeLaunch(g)
	var cfgs []appConfig
	for i, fs := range h.Supervisor.Slots {
		l, err := decode(i, fs.Next)
		if err != nil {
			return nil, err
		}
		cfgs = append(cfgs, g.supervisorConfig(i, l.upstream))
	}
	return cfgs, nil
}

// takeState takes on the state in h that lives outside the sockets: the
// supervisor's processes, the output ring, the counters, the kernel log.
func (a *Agent) takeState(g *generation, h *Handover) error {
	if err := a.sup.Adopt(h.Supervisor, a.decodeLaunch(g)); err != nil {
		return err
	}
	for _, l := range h.Output {
		a.output.Add(l)
	}
	a.oomKills.Store(h.OOMKills)
	if a.oom != nil {
		a.oom.TakeOver(h.Kmsg, h.Kills)
	} else if h.Kmsg >= 0 {
		unix.Close(h.Kmsg)
	}
	if a.proxy != nil {
		a.proxy.AddStats(h.Proxy)
	}
	a.metrics.AddCounters(h.Metrics)
	return nil
}

// listenControl returns the control socket: handed over, or made anew.
func (a *Agent) listenControl(cfg *Config) (net.Listener, error) {
	if ln, ok, err := a.inheritedListener("control"); ok {
		if err != nil {
			return nil, fmt.Errorf("control socket: %w", err)
		}
		return a.wrap("control", ln), nil
	}
	ln, err := listenControl(cfg.Control.Socket, cfg.Control.GID)
	if err != nil {
		return nil, err
	}
	return a.wrap("control", ln), nil
}

// listenTCP returns the listening socket called name for addr: handed over
// by an upgrade (and stored in systemd's store again), or from fdStore.
func (a *Agent) listenTCP(name, addr string) (net.Listener, error) {
	if ln, ok, err := a.inheritedListener(name); ok {
		if err != nil {
			return nil, err
		}
		a.fds.store(name, ln)
		return a.wrap(name, ln), nil
	}
	ln, err := a.fds.listen(name, addr)
	if err != nil {
		return nil, err
	}
	return a.wrap(name, ln), nil
}

// inheritedListener returns the listening socket called name that the
// program before handed over, if it did. Its descriptor stays open (for a
// way back) until Run has taken everything on.
func (a *Agent) inheritedListener(name string) (ln net.Listener, ok bool, err error) {
	h := a.inherit
	if h == nil {
		return nil, false, nil
	}
	fd, ok := h.Listeners[name]
	if !ok {
		return nil, false, nil
	}
	f := a.keep(fd, name)
	if ln, err = net.FileListener(f); err != nil {
		return nil, true, fmt.Errorf("the %s socket handed over: %w", name, err)
	}
	return ln, true, nil
}

// keep takes fd, handed over, as a file kept until takeOver closes it (a
// way back needs it open until then), never closed by a finalizer before.
func (a *Agent) keep(fd int, name string) *os.File {
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), name)
	a.keptFiles = append(a.keptFiles, f)
	return f
}

func (a *Agent) wrap(name string, ln net.Listener) net.Listener {
	w := handoff.Wrap(ln)
	a.lns[name] = w
	return w
}

// takeOver completes the take-over once Run serves the sockets and the
// supervisor runs: the descriptors kept for a way back are closed. It
// returns the answer to the agentctl upgrade that asked, for after the
// first event (nil when there is none).
func (a *Agent) takeOver() (answer func()) {
	h := a.inherit
	if h == nil {
		return nil
	}
	a.adoptConns()
	a.inherit = nil
	a.tookOver.Store(true)
	for _, f := range a.keptFiles {
		f.Close()
	}
	a.keptFiles = nil
	if ln, ok := a.lns["control"].Listener.(*net.UnixListener); ok {
		ln.SetUnlinkOnClose(true)
	}
	if h.Exe >= 0 {
		unix.Close(h.Exe)
	}
	h.file.Close()
	if h.Failed != "" {
		a.log.Error().Str("why", h.Failed).Msg("upgrade failed: the new program could not take over; this one goes on")
	} else {
		a.log.Info().Str("from", h.From).Str("version", a.version).Int("upgrades", a.upgrades).Msg("upgraded in place: took over from the program before")
	}
	if h.Reload {
		a.reloadAgain <- struct{}{}
	}
	if h.Stop {
		a.stopAgain <- struct{}{}
	}
	var conn net.Conn
	if h.Answer >= 0 {
		unix.CloseOnExec(h.Answer)
		f := os.NewFile(uintptr(h.Answer), "control connection")
		c, err := net.FileConn(f)
		f.Close()
		if err == nil {
			conn = c
		}
	}
	return func() {
		if conn == nil {
			return
		}
		if h.Failed != "" {
			answerRaw(conn, http.StatusConflict, apiError{"upgrade failed, the agent goes on unchanged: the new program could not take over: " + h.Failed})
			return
		}
		answerRaw(conn, http.StatusOK, a.Status())
	}
}

// adoptConns serves on the traffic port's connections and tunnels handed
// over; a descriptor that is not a socket any more is dropped.
func (a *Agent) adoptConns() {
	h := a.inherit
	if h == nil || a.proxy == nil {
		return
	}
	conn := func(fd int) net.Conn {
		if fd < 0 {
			return nil
		}
		f := a.keep(fd, "client connection")
		c, err := net.FileConn(f)
		if err != nil {
			a.log.Warn().Err(err).Msg("a connection handed over is not a socket; dropped")
			return nil
		}
		return c
	}
	var conns []proxy.AdoptedConn
	for _, hc := range h.Conns {
		if c := conn(hc.FD); c != nil {
			conns = append(conns, proxy.AdoptedConn{Conn: c, Buffered: hc.Buffered})
		}
	}
	var tunnels []proxy.AdoptedTunnel
	for _, ht := range h.Tunnels {
		client, app := conn(ht.Client), conn(ht.App)
		if client == nil || app == nil {
			for _, c := range []net.Conn{client, app} {
				if c != nil {
					c.Close()
				}
			}
			continue
		}
		tunnels = append(tunnels, proxy.AdoptedTunnel{Client: client, ClientBuffered: ht.ClientBuffered, App: app, AppBuffered: ht.AppBuffered})
	}
	a.proxy.Adopt(conns, tunnels)
	a.log.Info().Int("connections", len(conns)).Int("tunnels", len(tunnels)).Msg("client connections taken over")
}
