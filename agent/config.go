package agent

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"syscall"
)

// The config file, read top-down:
//
//   - config.go: the keys (the Config structs, whose tags give each key's
//     name, default and reload rule), ConfigError, Load and Parse;
//   - config_schema.go: reading those tags, once: the list of keys, the
//     defaults, RestartNeeded;
//   - config_decode.go: decoding the file into a Config, key by key in file
//     order, with the positions the TOML decoder recorded;
//   - config_validate.go: the checks that relate keys to each other and to
//     the machine (users, groups, directories, ports), and the warnings;
//   - units.go: the value types Duration, ByteSize, Signal, HeapSetting
//     and Instances;
//   - config_print.go: the effective config that `agent check` prints.

// DefaultConfigPath is where `agent run` and `agentctl` look for the config
// when neither --config nor $AGENT_CONFIG names one.
const DefaultConfigPath = "/etc/agent/agent.toml"

// Config is the agent's configuration: one TOML file, decoded strictly,
// with defaults applied and every value validated and resolved at load.
//
// The struct is the schema of the file (see config_schema.go): a key is a
// field with a toml tag, and its other tags give its default, whether a
// change needs an agent restart, and what its zero value means. The order
// of the fields is the order of the contract and of the example file.
type Config struct {
	Path    string        `toml:"-"` // file it was loaded from
	Data    []byte        `toml:"-"` // what it was parsed from (an upgrade hands it over)
	Name    string        `toml:"name" default:"app"`
	App     AppConfig     `toml:"app"`
	Node    NodeConfig    `toml:"node"`
	Restart RestartConfig `toml:"restart"`
	Stop    StopConfig    `toml:"stop"`
	Memory  MemoryConfig  `toml:"memory"`
	Probe   ProbeConfig   `toml:"probe"` // always present with defaults; see ProbeConfig.Enabled
	Health  HealthConfig  `toml:"health" reload:"restart"`
	Control ControlConfig `toml:"control"`
	Proxy   ProxyConfig   `toml:"proxy" reload:"restart"` // always present with defaults; see Config.ProxyEnabled
	Log     LogConfig     `toml:"log" reload:"restart"`
	Metrics MetricsConfig `toml:"metrics" reload:"restart"`

	// Warnings lists the settings that are valid but probably not what was
	// meant, in the order of the sections; Load fills it.
	Warnings []Warning `toml:"-"`
}

// AppConfig is [app]: what to run and how.
type AppConfig struct {
	// Command is required in the file; its default is for Default's callers.
	Command []string          `toml:"command" default:"node server.js"` // argv, no shell
	Dir     string            `toml:"dir" zero:"the agent's working directory"`
	User    string            `toml:"user" zero:"the agent's user"`
	Env     map[string]string `toml:"env"`
	EnvFile string            `toml:"env_file"`
	// NPM says how ["npm", "start"] and ["npm", "run", NAME] are run:
	// "direct" runs the package.json script without npm, "npm" runs npm.
	NPM string `toml:"npm" default:"direct"`
	// Instances is how many processes of the app run behind [proxy].
	Instances Instances `toml:"instances" default:"1"`

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
	MaxOldSpaceSize HeapSetting `toml:"max_old_space_size" default:"auto"`
}

// RestartConfig is [restart]: when and how fast the app is restarted.
type RestartConfig struct {
	Policy      string   `toml:"policy" default:"always"` // always | on-failure | never
	Delay       Duration `toml:"delay" default:"1s"`
	MaxDelay    Duration `toml:"max_delay" default:"60s"`
	ResetAfter  Duration `toml:"reset_after" default:"60s"`
	MaxRestarts int      `toml:"max_restarts" default:"10"` // within Window; 0 = no limit
	Window      Duration `toml:"window" default:"10m"`
	OnExhausted string   `toml:"on_exhausted" default:"unhealthy"` // unhealthy | exit
}

// StopConfig is [stop]: how the app is stopped.
type StopConfig struct {
	Signal  Signal   `toml:"signal" default:"SIGTERM"`
	Timeout Duration `toml:"timeout" default:"10s"` // then SIGKILL to the whole process tree
	Drain   Duration `toml:"drain"`                 // health 503 this long before stopping on shutdown
}

// MemoryConfig is [memory].
type MemoryConfig struct {
	MaxRSS   ByteSize `toml:"max_rss" zero:"no limit"`
	RSSGrace Duration `toml:"rss_grace" default:"5s"`
	WatchOOM bool     `toml:"watch_oom" default:"true" reload:"restart"`
}

// ProbeConfig is [probe]: the app's readiness and liveness check. At most
// one of HTTP and TCP is set; with neither, the app is ready once it has
// been alive for a second.
type ProbeConfig struct {
	HTTP             string   `toml:"http"` // an http:// URL
	TCP              string   `toml:"tcp"`  // host:port
	Interval         Duration `toml:"interval" default:"5s"`
	Timeout          Duration `toml:"timeout" default:"2s"`
	FailureThreshold int      `toml:"failure_threshold" default:"3"`
	StartupTimeout   Duration `toml:"startup_timeout" default:"5m"`
}

// Enabled reports whether a probe (http or tcp) is configured.
func (p ProbeConfig) Enabled() bool { return p.HTTP != "" || p.TCP != "" }

// HealthConfig is [health]: the load balancer's health page.
type HealthConfig struct {
	Listen string `toml:"listen" default:":8081"` // host:port, ":8081" = all addresses
	Path   string `toml:"path" default:"/health.html"`
}

// ControlConfig is [control]: the agentctl socket.
type ControlConfig struct {
	Socket string `toml:"socket" default:"/run/agent/agent.sock" reload:"restart"`
	Group  string `toml:"group" zero:"root only (0600)" reload:"restart"`
	// GID is resolved from Group at load; -1 when Group is "".
	GID int `toml:"-" default:"-1"`
}

// ProxyConfig is [proxy]: the traffic front on the app's public port.
type ProxyConfig struct {
	Listen        string   `toml:"listen" zero:"off"`                            // host:port the load balancer targets
	Upstream      string   `toml:"upstream" default:"127.0.0.1:3000"`            // loopback host:port the app listens on
	SpareUpstream string   `toml:"spare_upstream" zero:"reload without overlap"` // second loopback port for reload
	Affinity      string   `toml:"affinity" zero:"balance every request"`        // "" | cookie: keep a client on its process
	Hold          Duration `toml:"hold" default:"30s"`                           // a request waits this long for a (re)starting app
	IdleTimeout   Duration `toml:"idle_timeout" default:"75s"`                   // client keep-alive; keep it above the ALB's 60s
}

// ProxyEnabled reports whether the traffic front is on (proxy.listen set).
func (c *Config) ProxyEnabled() bool { return c.Proxy.Listen != "" }

// LogConfig is [log]: the agent's own log.
type LogConfig struct {
	Level    string   `toml:"level" default:"info"`     // debug | info | warn | error
	Format   string   `toml:"format" default:"json"`    // json | console
	File     string   `toml:"file" zero:"stderr only"`  // else every line goes to this file too
	MaxSize  ByteSize `toml:"max_size" default:"100MB"` // rotate File at this size
	MaxFiles int      `toml:"max_files" default:"5"`    // keep this many rotated files
}

// MetricsConfig is [metrics]: the Prometheus endpoint.
type MetricsConfig struct {
	Listen string `toml:"listen" zero:"off"` // host:port serving /metrics
}

// Default returns a config with every default applied and the command
// `node server.js`. Parse starts from the same defaults but requires
// app.command in the file.
func Default() *Config {
	c := new(Config)
	configSchema.setDefaults(reflect.ValueOf(c).Elem())
	return c
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

// Warning is a setting that is valid but probably not what was meant: Load
// accepts the config and lists it in Config.Warnings. Its text has the form
// of a ConfigError's.
type Warning struct {
	Path string
	Line int    // 1-based; 0 when the setting has no position
	Col  int    // 1-based byte column; 0 when unknown
	Key  string // dotted key the warning is about, e.g. "proxy.idle_timeout"
	Msg  string
}

func (w Warning) String() string {
	return (&ConfigError{Path: w.Path, Line: w.Line, Col: w.Col, Key: w.Key, Msg: w.Msg}).Error()
}

// NewWarnings returns the warnings of cur that old does not have, whatever
// their positions in the file: on a reload, what is new to log. old may be
// nil.
func NewWarnings(old, cur *Config) []Warning {
	var news []Warning
	for _, w := range cur.Warnings {
		if old == nil || !slices.ContainsFunc(old.Warnings, func(o Warning) bool { return o.Key == w.Key && o.Msg == w.Msg }) {
			news = append(news, w)
		}
	}
	return news
}

// Load reads the config file at path and parses it with Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{Path: path, Msg: "read config: " + errCause(err), Err: err}
	}
	return Parse(path, data)
}

// Parse decodes data (the contents of the file at path) strictly, applies
// the defaults, validates every value, resolves the user, the control
// group and the env file, and lists the warnings in Config.Warnings. It
// returns the first error as a *ConfigError:
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
	c.Data = data
	c.App.Command = nil // required: the default is for Default's callers only
	if err := d.decode(c); err != nil {
		return nil, err
	}
	if err := d.validate(c); err != nil {
		return nil, err
	}
	return c, nil
}
