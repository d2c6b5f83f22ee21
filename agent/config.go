package agent

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// The config file, read top-down:
//
//   - config.go: the keys (the Config structs and their toml tags), the
//     defaults, ConfigError, Load and Parse;
//   - config_decode.go: decoding the file into a Config, key by key in file
//     order, with the positions the TOML decoder recorded;
//   - config_validate.go: the checks that relate keys to each other and to
//     the machine (users, groups, directories, ports);
//   - units.go: the value types Duration, ByteSize, Signal and HeapSetting;
//   - config_print.go: the effective config that `agent check` prints.

// DefaultConfigPath is where `agent run` and `agentctl` look for the config
// when neither --config nor $AGENT_CONFIG names one.
const DefaultConfigPath = "/etc/agent/agent.toml"

// Config is the agent's configuration: one TOML file, decoded strictly,
// with defaults applied and every value validated and resolved at load.
// The toml tags are the schema: a key without a field is unknown, and the
// order of the fields is the order of the contract and of the example file.
type Config struct {
	Path    string        `toml:"-"` // file it was loaded from
	Name    string        `toml:"name"`
	App     AppConfig     `toml:"app"`
	Node    NodeConfig    `toml:"node"`
	Restart RestartConfig `toml:"restart"`
	Stop    StopConfig    `toml:"stop"`
	Memory  MemoryConfig  `toml:"memory"`
	Probe   ProbeConfig   `toml:"probe"` // always present with defaults; see ProbeConfig.Enabled
	Health  HealthConfig  `toml:"health"`
	Control ControlConfig `toml:"control"`
	Proxy   ProxyConfig   `toml:"proxy"` // always present with defaults; see Config.ProxyEnabled
	Log     LogConfig     `toml:"log"`
	Metrics MetricsConfig `toml:"metrics"`
}

// AppConfig is [app]: what to run and how.
type AppConfig struct {
	Command []string          `toml:"command"` // argv, no shell
	Dir     string            `toml:"dir"`     // "" = the agent's working directory
	User    string            `toml:"user"`    // "" = the agent's user
	Env     map[string]string `toml:"env"`
	EnvFile string            `toml:"env_file"`
	// NPM says how ["npm", "start"] and ["npm", "run", NAME] are run:
	// "direct" runs the package.json script without npm, "npm" runs npm.
	NPM string `toml:"npm"`

	// Credential is resolved from User at load: nil when User is "" (the app
	// runs as the agent's user), else the user's uid, primary gid and
	// supplementary groups.
	Credential *syscall.Credential `toml:"-"`
	// EnvFileVars holds the KEY=VALUE pairs read from EnvFile at load, in
	// file order. Its values may be secrets: never log them.
	EnvFileVars []string `toml:"-"`
}

// NodeConfig is [node].
type NodeConfig struct {
	MaxOldSpaceSize HeapSetting `toml:"max_old_space_size"`
}

// RestartConfig is [restart]: when and how fast the app is restarted.
type RestartConfig struct {
	Policy      string   `toml:"policy"` // always | on-failure | never
	Delay       Duration `toml:"delay"`
	MaxDelay    Duration `toml:"max_delay"`
	ResetAfter  Duration `toml:"reset_after"`
	MaxRestarts int      `toml:"max_restarts"` // within Window; 0 = no limit
	Window      Duration `toml:"window"`
	OnExhausted string   `toml:"on_exhausted"` // unhealthy | exit
}

// StopConfig is [stop]: how the app is stopped.
type StopConfig struct {
	Signal  Signal   `toml:"signal"`
	Timeout Duration `toml:"timeout"` // then SIGKILL to the whole process tree
	Drain   Duration `toml:"drain"`   // health 503 this long before stopping on shutdown
}

// MemoryConfig is [memory].
type MemoryConfig struct {
	MaxRSS   ByteSize `toml:"max_rss"` // 0 = no limit
	RSSGrace Duration `toml:"rss_grace"`
	WatchOOM bool     `toml:"watch_oom"`
}

// ProbeConfig is [probe]: the app's readiness and liveness check. At most
// one of HTTP and TCP is set; with neither, the app is ready once it has
// been alive for a second.
type ProbeConfig struct {
	HTTP             string   `toml:"http"` // an http:// URL
	TCP              string   `toml:"tcp"`  // host:port
	Interval         Duration `toml:"interval"`
	Timeout          Duration `toml:"timeout"`
	FailureThreshold int      `toml:"failure_threshold"`
	StartupTimeout   Duration `toml:"startup_timeout"`
}

// Enabled reports whether a probe (http or tcp) is configured.
func (p ProbeConfig) Enabled() bool { return p.HTTP != "" || p.TCP != "" }

// HealthConfig is [health]: the load balancer's health page.
type HealthConfig struct {
	Listen string `toml:"listen"` // host:port, ":8081" = all addresses
	Path   string `toml:"path"`
}

// ControlConfig is [control]: the agentctl socket.
type ControlConfig struct {
	Socket string `toml:"socket"`
	Group  string `toml:"group"` // "" = root only (0600)
	// GID is resolved from Group at load; -1 when Group is "".
	GID int `toml:"-"`
}

// ProxyConfig is [proxy]: the traffic front on the app's public port.
type ProxyConfig struct {
	Listen        string   `toml:"listen"`         // host:port the load balancer targets; "" = no proxy
	Upstream      string   `toml:"upstream"`       // loopback host:port the app listens on
	SpareUpstream string   `toml:"spare_upstream"` // second loopback port for reload; "" = reload without overlap
	Hold          Duration `toml:"hold"`           // a request waits this long for a (re)starting app
	IdleTimeout   Duration `toml:"idle_timeout"`   // client keep-alive; keep it above the ALB's 60s
}

// ProxyEnabled reports whether the traffic front is on (proxy.listen set).
func (c *Config) ProxyEnabled() bool { return c.Proxy.Listen != "" }

// LogConfig is [log]: the agent's own log.
type LogConfig struct {
	Level    string   `toml:"level"`     // debug | info | warn | error
	Format   string   `toml:"format"`    // json | console
	File     string   `toml:"file"`      // "" = stderr only; else every line goes to this file too
	MaxSize  ByteSize `toml:"max_size"`  // rotate File at this size
	MaxFiles int      `toml:"max_files"` // keep this many rotated files
}

// MetricsConfig is [metrics]: the Prometheus endpoint.
type MetricsConfig struct {
	Listen string `toml:"listen"` // host:port serving /metrics; "" = off
}

// Default returns a config with every default applied and the command
// `node server.js`. Parse starts from the same defaults but requires
// app.command in the file.
func Default() *Config {
	return &Config{
		Name: "app",
		App:  AppConfig{Command: []string{"node", "server.js"}, NPM: "direct"},
		Node: NodeConfig{MaxOldSpaceSize: HeapSetting{Auto: true}},
		Restart: RestartConfig{
			Policy:      "always",
			Delay:       Duration(time.Second),
			MaxDelay:    Duration(60 * time.Second),
			ResetAfter:  Duration(60 * time.Second),
			MaxRestarts: 10,
			Window:      Duration(10 * time.Minute),
			OnExhausted: "unhealthy",
		},
		Stop: StopConfig{
			Signal:  Signal(syscall.SIGTERM),
			Timeout: Duration(10 * time.Second),
		},
		Memory: MemoryConfig{
			RSSGrace: Duration(5 * time.Second),
			WatchOOM: true,
		},
		Probe: ProbeConfig{
			Interval:         Duration(5 * time.Second),
			Timeout:          Duration(2 * time.Second),
			FailureThreshold: 3,
			StartupTimeout:   Duration(5 * time.Minute),
		},
		Health:  HealthConfig{Listen: ":8081", Path: "/health.html"},
		Control: ControlConfig{Socket: "/run/agent/agent.sock", GID: -1},
		Proxy: ProxyConfig{
			Upstream:    "127.0.0.1:3000",
			Hold:        Duration(30 * time.Second),
			IdleTimeout: Duration(75 * time.Second),
		},
		Log: LogConfig{Level: "info", Format: "json", MaxSize: 100 << 20, MaxFiles: 5},
	}
}

// ConfigError is the error of Load, Parse and ReadEnvFile. Its text is
// "PATH:LINE:COL: message" when the position is known ("PATH:LINE: message"
// for env files, which have no columns) and "PATH: message" otherwise.
// Message is "key: text" when Key is set.
type ConfigError struct {
	Path string
	Line int    // 1-based; 0 when the error has no position (e.g. a missing key)
	Col  int    // 1-based byte column; 0 when unknown
	Key  string // dotted key the error is about, e.g. "restart.delay"; "" when Msg names it or there is none
	Msg  string
	Err  error // underlying error, if any
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Col > 0 {
			fmt.Fprintf(&b, ":%d", e.Col)
		}
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

func (e *ConfigError) Unwrap() error { return e.Err }

// Load reads the config file at path and parses it with Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{Path: path, Msg: "read config: " + errCause(err), Err: err}
	}
	return Parse(path, data)
}

// Parse decodes data (the contents of the file at path) strictly, applies
// the defaults, validates every value and resolves the user, the control
// group and the env file. It returns the first error as a *ConfigError:
// syntax errors, unknown keys, wrong types and malformed values in file
// order, then the checks that relate keys to each other or to the machine,
// in the order of the sections.
func Parse(path string, data []byte) (*Config, error) {
	d, err := newDecoder(path, string(data))
	if err != nil {
		return nil, err
	}
	c := Default()
	c.Path = path
	c.App.Command = nil // required: the default is for Default's callers only
	if err := d.decode(c); err != nil {
		return nil, err
	}
	if err := d.validate(c); err != nil {
		return nil, err
	}
	return c, nil
}
