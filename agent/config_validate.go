package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
)

// validate checks the decoded config c, resolves what refers to the
// machine (user, directory, env file, group, log file) and lists the
// warnings in c.Warnings, in the order of the sections.
func (d *decoder) validate(c *Config) error {
	checks := []func(*Config) error{
		d.validateName,
		d.validateApp,
		d.validateNode,
		d.validateRestart,
		d.validateStop,
		d.validateMemory,
		d.validateProbe,
		d.validateHealth,
		d.validateControl,
		d.validateProxy,
		d.validateInstances,
		d.validateLog,
		d.validateMetrics,
		d.validatePorts,
	}
	for _, check := range checks {
		if err := check(c); err != nil {
			return err
		}
	}
	return nil
}

// invalid is an error about the key named by dotted: positioned at its
// value when the key is in the file, else "PATH: key: message".
func (d *decoder) invalid(dotted, msg string, err error) error {
	key := toml.Key(strings.Split(dotted, "."))
	return d.errAt(key, key, msg, err)
}

// warn adds a warning about the key named by dotted to c, positioned at
// its value when the key is in the file.
func (d *decoder) warn(c *Config, dotted, msg string) {
	w := Warning{Path: d.path, Key: dotted, Msg: msg}
	w.Line, w.Col = d.position(toml.Key(strings.Split(dotted, ".")))
	c.Warnings = append(c.Warnings, w)
}

// defined reports whether the file sets the dotted key.
func (d *decoder) defined(dotted string) bool {
	return d.md.IsDefined(strings.Split(dotted, ".")...)
}

func (d *decoder) validateName(c *Config) error {
	if strings.TrimSpace(c.Name) == "" {
		return d.invalid("name", "must not be empty", nil)
	}
	if strings.ContainsAny(c.Name, "\n\r") {
		return d.invalid("name", "must be one line", nil)
	}
	return nil
}

func (d *decoder) validateApp(c *Config) error {
	a := &c.App
	switch {
	case !d.defined("app.command"):
		return d.invalid("app.command", "is required, e.g. command = [\"node\", \"server.js\"]", nil)
	case len(a.Command) == 0:
		return d.invalid("app.command", "must not be empty", nil)
	case a.Command[0] == "":
		return d.invalid("app.command", "the program (first element) must not be empty", nil)
	}
	names := make([]string, 0, len(a.Env))
	for name := range a.Env {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if !validEnvName(name) {
			e := &ConfigError{Path: d.path, Key: "app.env",
				Msg: fmt.Sprintf("invalid variable name %q: use letters, digits and _, not starting with a digit", name)}
			e.Line, e.Col = d.position(toml.Key{"app", "env", name})
			return e
		}
	}
	if a.Dir != "" {
		fi, err := os.Stat(a.Dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return d.invalid("app.dir", fmt.Sprintf("%q: no such directory", a.Dir), err)
		case err != nil:
			return d.invalid("app.dir", fmt.Sprintf("%q: %s", a.Dir, errCause(err)), err)
		case !fi.IsDir():
			return d.invalid("app.dir", fmt.Sprintf("%q: not a directory", a.Dir), nil)
		}
	}
	if a.User != "" {
		cred, err := lookupCredential(a.User)
		if err != nil {
			return d.invalid("app.user", err.Error(), err)
		}
		a.Credential = cred
	}
	if a.EnvFile != "" {
		vars, err := ReadEnvFile(a.EnvFile)
		if err != nil {
			var ce *ConfigError
			if errors.As(err, &ce) {
				return ce // an error in the file's contents, at its line
			}
			return d.invalid("app.env_file", err.Error(), err)
		}
		a.EnvFileVars = vars
	}
	switch a.NPM {
	case "direct", "npm":
	default:
		return d.invalid("app.npm", fmt.Sprintf("%q is not one of direct, npm", a.NPM), nil)
	}
	return nil
}

// validateNode warns when app.command sets the heap size itself while
// node.max_old_space_size sets it too.
func (d *decoder) validateNode(c *Config) error {
	if h := c.Node.MaxOldSpaceSize; !h.Auto && h.MB == 0 {
		return nil // NODE_OPTIONS left alone: nothing to override
	}
	for _, arg := range c.App.Command[1:] {
		if strings.HasPrefix(arg, "--max-old-space-size") || strings.HasPrefix(arg, "--max_old_space_size") {
			d.warn(c, "app.command", fmt.Sprintf("%q sets the heap size itself; it wins over node.max_old_space_size", arg))
			break
		}
	}
	return nil
}

// lookupCredential resolves a user name (or numeric uid) to the uid, gid
// and supplementary groups to run the app with.
func lookupCredential(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if !errors.As(err, &unknown) {
			return nil, fmt.Errorf("look up user %q: %w", name, err)
		}
		if _, numErr := strconv.ParseUint(name, 10, 32); numErr != nil {
			return nil, fmt.Errorf("unknown user %q", name)
		}
		if u, err = user.LookupId(name); err != nil {
			return nil, fmt.Errorf("unknown user %q", name)
		}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: uid %q is not a number", name, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: gid %q is not a number", name, u.Gid)
	}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("user %q: list groups: %w", name, err)
	}
	groups := make([]uint32, 0, len(ids))
	for _, id := range ids {
		g, err := strconv.ParseUint(id, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %q: group id %q is not a number", name, id)
		}
		groups = append(groups, uint32(g))
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}, nil
}

func (d *decoder) validateRestart(c *Config) error {
	r := &c.Restart
	switch r.Policy {
	case "always", "on-failure", "never":
	default:
		return d.invalid("restart.policy", fmt.Sprintf("%q is not one of always, on-failure, never", r.Policy), nil)
	}
	if r.MaxDelay < r.Delay {
		if d.defined("restart.max_delay") || !d.defined("restart.delay") {
			return d.invalid("restart.max_delay", fmt.Sprintf("%s is less than restart.delay (%s)", r.MaxDelay, r.Delay), nil)
		}
		return d.invalid("restart.delay", fmt.Sprintf("%s is more than restart.max_delay (%s)", r.Delay, r.MaxDelay), nil)
	}
	if r.MaxRestarts < 0 {
		return d.invalid("restart.max_restarts", fmt.Sprintf("%d is negative (0 = no limit)", r.MaxRestarts), nil)
	}
	if r.MaxRestarts > 0 && r.Window <= 0 {
		return d.invalid("restart.window", "must be more than 0s when restart.max_restarts is set", nil)
	}
	switch r.OnExhausted {
	case "unhealthy", "exit":
	default:
		return d.invalid("restart.on_exhausted", fmt.Sprintf("%q is not one of unhealthy, exit", r.OnExhausted), nil)
	}
	return nil
}

func (d *decoder) validateStop(c *Config) error {
	if c.Stop.Timeout <= 0 {
		return d.invalid("stop.timeout", "must be more than 0s", nil)
	}
	return nil
}

func (d *decoder) validateMemory(c *Config) error {
	if c.Memory.MaxRSS > 0 && c.Memory.RSSGrace <= 0 {
		return d.invalid("memory.rss_grace", "must be more than 0s when memory.max_rss is set", nil)
	}
	return nil
}

func (d *decoder) validateProbe(c *Config) error {
	pr := &c.Probe
	if pr.HTTP != "" && pr.TCP != "" {
		return d.invalid("probe.tcp", "set either probe.http or probe.tcp, not both", nil)
	}
	if pr.HTTP != "" {
		u, err := url.Parse(pr.HTTP)
		switch {
		case err != nil:
			return d.invalid("probe.http", fmt.Sprintf("invalid URL %q: %s", pr.HTTP, errCause(err)), err)
		case u.Scheme != "http":
			return d.invalid("probe.http", fmt.Sprintf("%q is not an http:// URL", pr.HTTP), nil)
		case u.Host == "" || u.Hostname() == "":
			return d.invalid("probe.http", fmt.Sprintf("%q has no host", pr.HTTP), nil)
		}
		if port := u.Port(); port != "" {
			if _, err := parsePort(port, false); err != nil {
				return d.invalid("probe.http", fmt.Sprintf("%q: %v", pr.HTTP, err), err)
			}
		}
	}
	if pr.TCP != "" {
		if _, err := parseHostPort(pr.TCP, false); err != nil {
			return d.invalid("probe.tcp", err.Error(), err)
		}
	}
	if pr.Interval <= 0 {
		return d.invalid("probe.interval", "must be more than 0s", nil)
	}
	if pr.Timeout <= 0 {
		return d.invalid("probe.timeout", "must be more than 0s", nil)
	}
	if pr.FailureThreshold < 1 {
		return d.invalid("probe.failure_threshold", fmt.Sprintf("%d is less than 1", pr.FailureThreshold), nil)
	}
	if pr.StartupTimeout <= 0 {
		return d.invalid("probe.startup_timeout", "must be more than 0s", nil)
	}
	return nil
}

func (d *decoder) validateHealth(c *Config) error {
	if _, err := parseHostPort(c.Health.Listen, true); err != nil {
		return d.invalid("health.listen", err.Error(), err)
	}
	if !strings.HasPrefix(c.Health.Path, "/") {
		return d.invalid("health.path", fmt.Sprintf("%q does not start with /", c.Health.Path), nil)
	}
	if strings.ContainsAny(c.Health.Path, " ?#") {
		return d.invalid("health.path", fmt.Sprintf("%q is not a plain path (no spaces, ? or #)", c.Health.Path), nil)
	}
	return nil
}

func (d *decoder) validateControl(c *Config) error {
	ct := &c.Control
	if !filepath.IsAbs(ct.Socket) {
		return d.invalid("control.socket", fmt.Sprintf("%q is not an absolute path", ct.Socket), nil)
	}
	ct.GID = -1
	if ct.Group != "" {
		g, err := user.LookupGroup(ct.Group)
		if err != nil {
			var unknown user.UnknownGroupError
			if errors.As(err, &unknown) {
				return d.invalid("control.group", fmt.Sprintf("unknown group %q", ct.Group), err)
			}
			return d.invalid("control.group", fmt.Sprintf("look up group %q: %v", ct.Group, err), err)
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return d.invalid("control.group", fmt.Sprintf("group %q: gid %q is not a number", ct.Group, g.Gid), err)
		}
		ct.GID = gid
	}
	return nil
}

func (d *decoder) validateProxy(c *Config) error {
	p := &c.Proxy
	if p.Listen != "" {
		if _, err := parseHostPort(p.Listen, true); err != nil {
			return d.invalid("proxy.listen", err.Error(), err)
		}
	}
	if err := checkLoopback(p.Upstream); err != nil {
		return d.invalid("proxy.upstream", err.Error(), err)
	}
	if p.SpareUpstream != "" {
		if err := checkLoopback(p.SpareUpstream); err != nil {
			return d.invalid("proxy.spare_upstream", err.Error(), err)
		}
	}
	switch p.Affinity {
	case "", "cookie":
	default:
		return d.invalid("proxy.affinity", fmt.Sprintf("%q is not one of \"\" (balance every request), cookie", p.Affinity), nil)
	}
	if p.Hold <= 0 {
		return d.invalid("proxy.hold", "must be more than 0s", nil)
	}
	if p.IdleTimeout <= 0 {
		return d.invalid("proxy.idle_timeout", "must be more than 0s (keep it above the load balancer's idle timeout, 60s on an ALB)", nil)
	}
	if !c.ProxyEnabled() {
		return nil
	}
	if p.IdleTimeout < albIdleTimeout {
		d.warn(c, "proxy.idle_timeout", fmt.Sprintf("%s is below the ALB's 60s idle timeout: the ALB may reuse a connection the agent is closing (502)", p.IdleTimeout))
	}
	if key, port, ok := appPort(c); ok {
		up, _ := parseHostPort(p.Upstream, false) // checked above
		if n, err := strconv.Atoi(port); err != nil || n != up.port {
			msg := fmt.Sprintf("%q is another port than proxy.upstream's (%q): the proxy forwards to proxy.upstream, not to the app's PORT", port, p.Upstream)
			if key == "app.env_file" {
				msg = "PORT " + msg
			}
			d.warn(c, key, msg)
		}
	}
	return nil
}

// validateInstances checks what more than one app process needs: the
// traffic front, PORT left to the agent, and the ports of the processes
// (proxy.upstream's and the next ones) within range and clear of
// spare_upstream.
func (d *decoder) validateInstances(c *Config) error {
	in := c.App.Instances
	if !in.Auto && in.N == 1 {
		return nil
	}
	if !c.ProxyEnabled() {
		return d.invalid("app.instances", fmt.Sprintf("%s needs [proxy] to balance the processes: set proxy.listen", in.tomlText()), nil)
	}
	if key, _, ok := appPort(c); ok {
		msg := fmt.Sprintf("the agent sets each process's PORT with app.instances = %s: remove it", in.tomlText())
		if key == "app.env_file" {
			msg = "sets PORT; " + msg
		}
		return d.invalid(key, msg, nil)
	}
	n := in.Count()
	first, last := upstreamPorts(c)
	if last > 65535 {
		what := fmt.Sprintf("%d processes", n)
		if c.Proxy.SpareUpstream == "" {
			what += " and the reload port after them"
		}
		return d.invalid("proxy.upstream", fmt.Sprintf("%s need ports %d to %d, past 65535", what, first, last), nil)
	}
	if c.Proxy.SpareUpstream != "" {
		up, _ := parseHostPort(c.Proxy.Upstream, false) // checked in validateProxy
		sp, _ := parseHostPort(c.Proxy.SpareUpstream, false)
		for i := range n {
			if sp.overlaps(hostPort{host: up.host, port: first + i}) {
				return d.invalid("proxy.spare_upstream", fmt.Sprintf("port %d is process %d's: app.instances = %s take ports %d to %d", sp.port, i, in.tomlText(), first, first+n-1), nil)
			}
		}
	}
	return nil
}

// upstreamPorts returns the range of loopback ports the app's processes
// take from proxy.upstream's on: one per process and, with more than one
// and spare_upstream unset, the reload port after them.
func upstreamPorts(c *Config) (first, last int) {
	up, _ := parseHostPort(c.Proxy.Upstream, false) // checked in validateProxy
	n := c.App.Instances.Count()
	last = up.port + n - 1
	if n > 1 && c.Proxy.SpareUpstream == "" {
		last++
	}
	return up.port, last
}

// albIdleTimeout is an AWS Application Load Balancer's default idle
// timeout: the proxy's own must be longer.
const albIdleTimeout = Duration(60 * time.Second)

// appPort returns the PORT that the app's environment gets from app.env
// (key "app.env.PORT") or else from app.env_file (key "app.env_file"), if
// either sets it.
func appPort(c *Config) (key, port string, ok bool) {
	if port, ok := c.App.Env["PORT"]; ok {
		return "app.env.PORT", port, true
	}
	for _, kv := range slices.Backward(c.App.EnvFileVars) {
		if port, ok := strings.CutPrefix(kv, "PORT="); ok {
			return "app.env_file", port, true
		}
	}
	return "", "", false
}

func (d *decoder) validateLog(c *Config) error {
	l := &c.Log
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		return d.invalid("log.level", fmt.Sprintf("%q is not one of debug, info, warn, error", l.Level), nil)
	}
	switch l.Format {
	case "json", "console":
	default:
		return d.invalid("log.format", fmt.Sprintf("%q is not one of json, console", l.Format), nil)
	}
	if l.File != "" {
		if msg, err := checkLogFile(l.File); msg != "" {
			return d.invalid("log.file", msg, err)
		}
	}
	if l.MaxSize == 0 {
		return d.invalid("log.max_size", "must be more than 0", nil)
	}
	if l.MaxFiles < 1 {
		return d.invalid("log.max_files", fmt.Sprintf("%d is less than 1", l.MaxFiles), nil)
	}
	return nil
}

// checkLogFile checks that the log file at path can be written: it creates
// its directory (0750) when missing and the file (0640), opened for append
// and closed again. It returns what went wrong, "" when nothing did.
func checkLogFile(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return fmt.Sprintf("%q is not an absolute path", path), nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Sprintf("create directory %q: %s", dir, errCause(err)), err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Sprintf("%q: cannot open for append: %s", path, errCause(err)), err
	}
	if err := f.Close(); err != nil {
		return fmt.Sprintf("%q: %s", path, errCause(err)), err
	}
	return "", nil
}

func (d *decoder) validateMetrics(c *Config) error {
	if c.Metrics.Listen != "" {
		if _, err := parseHostPort(c.Metrics.Listen, true); err != nil {
			return d.invalid("metrics.listen", err.Error(), err)
		}
	}
	return nil
}

// validatePorts checks that no two of the agent's addresses share a port on
// overlapping addresses: the health, proxy and metrics listeners, and with
// the proxy on, the app's upstream ports (see upstreamPorts) and spare
// upstream. Each is compared
// with those before it in this order; the error names the later one.
func (d *decoder) validatePorts(c *Config) error {
	type addr struct {
		key, value string
	}
	addrs := []addr{{"health.listen", c.Health.Listen}}
	if c.ProxyEnabled() {
		addrs = append(addrs, addr{"proxy.listen", c.Proxy.Listen})
	}
	if c.Metrics.Listen != "" {
		addrs = append(addrs, addr{"metrics.listen", c.Metrics.Listen})
	}
	if c.ProxyEnabled() {
		addrs = append(addrs, addr{"proxy.upstream", c.Proxy.Upstream})
		up, _ := parseHostPort(c.Proxy.Upstream, false)
		first, last := upstreamPorts(c)
		for port := first + 1; port <= last; port++ {
			// The ports of the other processes (app.instances).
			addrs = append(addrs, addr{"proxy.upstream", net.JoinHostPort(up.host, strconv.Itoa(port))})
		}
		if c.Proxy.SpareUpstream != "" {
			addrs = append(addrs, addr{"proxy.spare_upstream", c.Proxy.SpareUpstream})
		}
	}
	for i, a := range addrs {
		ha, _ := parseHostPort(a.value, true) // each was checked above
		for _, b := range addrs[:i] {
			hb, _ := parseHostPort(b.value, true)
			if ha.overlaps(hb) {
				return d.invalid(a.key, fmt.Sprintf("port %d is also %s (%q)", ha.port, b.key, b.value), nil)
			}
		}
	}
	return nil
}

// hostPort is a parsed host:port.
type hostPort struct {
	host string // as written; "" = all addresses
	port int
}

// parseHostPort parses s as host:port with a numeric port; the host may be
// empty (all addresses, or the local host when dialling). Port 0 is
// accepted only when zeroOK.
func parseHostPort(s string, zeroOK bool) (hostPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return hostPort{}, fmt.Errorf("%q is not host:port: %s", s, errCause(err))
	}
	n, err := parsePort(port, zeroOK)
	if err != nil {
		return hostPort{}, fmt.Errorf("%q: %w", s, err)
	}
	return hostPort{host: host, port: n}, nil
}

func parsePort(s string, zeroOK bool) (int, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	if n == 0 && !zeroOK {
		return 0, errors.New("port 0 is not allowed here")
	}
	return int(n), nil
}

// checkLoopback checks that s is host:port with a loopback host
// (127.0.0.0/8, ::1 or localhost) and a port other than 0: the app listens
// there, behind the proxy.
func checkLoopback(s string) error {
	hp, err := parseHostPort(s, false)
	if err != nil {
		return err
	}
	if !hp.loopback() {
		return fmt.Errorf("%q is not a loopback address (127.0.0.1, ::1 or localhost)", s)
	}
	return nil
}

// localhost reports whether the host is the name localhost.
func (h hostPort) localhost() bool { return strings.EqualFold(h.host, "localhost") }

// loopback reports whether the host is a loopback address or localhost.
func (h hostPort) loopback() bool {
	if h.localhost() {
		return true
	}
	ip, err := netip.ParseAddr(h.host)
	return err == nil && ip.IsLoopback()
}

// wildcard reports whether the host means all addresses.
func (h hostPort) wildcard() bool {
	if h.host == "" {
		return true
	}
	ip, err := netip.ParseAddr(h.host)
	return err == nil && ip.IsUnspecified()
}

// overlaps reports whether listening on h and on o would take the same
// port on a common address. Port 0 (any free port) overlaps nothing.
func (h hostPort) overlaps(o hostPort) bool {
	if h.port != o.port || h.port == 0 {
		return false
	}
	if h.wildcard() || o.wildcard() || h.localhost() && o.loopback() || o.localhost() && h.loopback() {
		return true
	}
	a, errA := netip.ParseAddr(h.host)
	b, errB := netip.ParseAddr(o.host)
	if errA == nil && errB == nil {
		return a.Unmap() == b.Unmap()
	}
	return strings.EqualFold(h.host, o.host)
}

// validEnvName reports whether s is a valid environment variable name:
// letters, digits and underscores, not starting with a digit.
func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// errCause returns the innermost message of err, without the operation and
// path that the caller already names.
func errCause(err error) string {
	var pe *fs.PathError
	var ue *url.Error
	var ae *net.AddrError
	switch {
	case errors.As(err, &pe):
		return pe.Err.Error()
	case errors.As(err, &ue):
		return ue.Err.Error()
	case errors.As(err, &ae):
		return ae.Err
	}
	return err.Error()
}
