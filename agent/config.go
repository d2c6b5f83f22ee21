package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultConfigPath is where `agent run` and `agentctl` look for the config
// when neither --config nor $AGENT_CONFIG names one.
const DefaultConfigPath = "/etc/agent/agent.toml"

// Config is the agent's configuration: one TOML file, decoded strictly,
// with defaults applied and every value validated and resolved at load.
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
	Log     LogConfig     `toml:"log"`
}

// AppConfig is [app]: what to run and how.
type AppConfig struct {
	Command []string          `toml:"command"` // argv, no shell
	Dir     string            `toml:"dir"`     // "" = the agent's working directory
	User    string            `toml:"user"`    // "" = the agent's user
	Env     map[string]string `toml:"env"`
	EnvFile string            `toml:"env_file"`

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

// LogConfig is [log]: the agent's own log.
type LogConfig struct {
	Level  string `toml:"level"`  // debug | info | warn | error
	Format string `toml:"format"` // json | console
}

// Default returns a config with every default applied and the command
// `node server.js`. Parse starts from the same defaults but requires
// app.command in the file.
func Default() *Config {
	return &Config{
		Name: "app",
		App:  AppConfig{Command: []string{"node", "server.js"}},
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
		Log:     LogConfig{Level: "info", Format: "json"},
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
// unknown keys, wrong types and malformed values in file order, then the
// checks that relate keys to each other or to the machine, in the order of
// the sections.
func Parse(path string, data []byte) (*Config, error) {
	p := &configParser{path: path, data: string(data)}
	return p.parse()
}

// configParser holds the state of one Parse.
type configParser struct {
	path string
	data string
	raw  map[string]any // the file decoded without a schema
}

func (p *configParser) parse() (*Config, error) {
	md, err := toml.Decode(p.data, &p.raw)
	if err != nil {
		return nil, p.syntaxError(err)
	}
	for _, key := range md.Keys() {
		if err := p.checkKey(key); err != nil {
			return nil, err
		}
	}
	c := Default()
	c.Path = p.path
	c.App.Command = nil
	if _, err := toml.Decode(p.data, c); err != nil {
		// checkKey accepted every key and value, so this is not expected.
		return nil, p.syntaxError(err)
	}
	if len(c.App.Env) == 0 {
		c.App.Env = nil // `env = {}` is no env
	}
	if err := p.validate(c); err != nil {
		return nil, err
	}
	return c, nil
}

// syntaxError turns an error of the TOML decoder into a *ConfigError.
func (p *configParser) syntaxError(err error) error {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		return &ConfigError{Path: p.path, Msg: strings.TrimPrefix(err.Error(), "toml: "), Err: err}
	}
	// The decoder's byte offset is exact; its line and column can be off
	// by one line at a line break.
	line, col := pe.Position.Line, pe.Position.Col
	if pe.Position.Start > 0 || line == 1 {
		if l, c, ok := lineCol(p.data, pe.Position.Start); ok {
			line, col = l, c
		}
	}
	return &ConfigError{Path: p.path, Line: line, Col: col, Msg: tidyMessage(pe.Message), Err: err}
}

// tidyMessage makes a message of the TOML decoder read like the others:
// lowercase first word, no final period.
func tidyMessage(m string) string {
	m = strings.TrimSuffix(m, ".")
	if len(m) > 1 && m[0] >= 'A' && m[0] <= 'Z' && m[1] >= 'a' && m[1] <= 'z' {
		m = string(m[0]+'a'-'A') + m[1:]
	}
	return m
}

// keyKind is the expected type of a config key.
type keyKind int

const (
	kindTable    keyKind = iota
	kindString           // a string
	kindInt              // an integer
	kindBool             // a boolean
	kindArgv             // an array of strings
	kindEnv              // a table of strings with variable names as keys
	kindDuration         // a Go duration string
	kindByteSize         // a size with an optional binary unit
	kindSignal           // a signal name
	kindHeap             // "auto" or a number of MB
)

// configSchema lists every key of the config file, in the contract's order.
var configSchema = []struct {
	key     string
	keyKind keyKind
}{
	{"name", kindString},
	{"app", kindTable},
	{"app.command", kindArgv},
	{"app.dir", kindString},
	{"app.user", kindString},
	{"app.env", kindEnv},
	{"app.env_file", kindString},
	{"node", kindTable},
	{"node.max_old_space_size", kindHeap},
	{"restart", kindTable},
	{"restart.policy", kindString},
	{"restart.delay", kindDuration},
	{"restart.max_delay", kindDuration},
	{"restart.reset_after", kindDuration},
	{"restart.max_restarts", kindInt},
	{"restart.window", kindDuration},
	{"restart.on_exhausted", kindString},
	{"stop", kindTable},
	{"stop.signal", kindSignal},
	{"stop.timeout", kindDuration},
	{"stop.drain", kindDuration},
	{"memory", kindTable},
	{"memory.max_rss", kindByteSize},
	{"memory.rss_grace", kindDuration},
	{"memory.watch_oom", kindBool},
	{"probe", kindTable},
	{"probe.http", kindString},
	{"probe.tcp", kindString},
	{"probe.interval", kindDuration},
	{"probe.timeout", kindDuration},
	{"probe.failure_threshold", kindInt},
	{"probe.startup_timeout", kindDuration},
	{"health", kindTable},
	{"health.listen", kindString},
	{"health.path", kindString},
	{"control", kindTable},
	{"control.socket", kindString},
	{"control.group", kindString},
	{"log", kindTable},
	{"log.level", kindString},
	{"log.format", kindString},
}

// schemaNode is one key of the configSchema tree.
type schemaNode struct {
	keyKind  keyKind
	children map[string]*schemaNode
}

var schemaRoot = buildSchema()

func buildSchema() *schemaNode {
	root := &schemaNode{keyKind: kindTable, children: map[string]*schemaNode{}}
	for _, s := range configSchema {
		n := root
		parts := strings.Split(s.key, ".")
		for _, part := range parts[:len(parts)-1] {
			n = n.children[part]
		}
		child := &schemaNode{keyKind: s.keyKind}
		if s.keyKind == kindTable {
			child.children = map[string]*schemaNode{}
		}
		n.children[parts[len(parts)-1]] = child
	}
	return root
}

// checkKey checks one key of the file (as listed by the decoder, parents
// before children) against the schema: that it exists, has the right
// type and, for the typed values, parses.
func (p *configParser) checkKey(key toml.Key) error {
	n := schemaRoot
	for i, part := range key {
		sub := key[:i+1]
		switch n.keyKind {
		case kindTable:
			child, ok := n.children[part]
			if !ok {
				return p.unknownKey(key[:i+1], key, n)
			}
			n = child
		case kindEnv:
			if !validEnvName(part) {
				e := &ConfigError{Path: p.path, Key: key[:i].String(),
					Msg: fmt.Sprintf("invalid variable name %q: use letters, digits and _, not starting with a digit", part)}
				p.position(e, sub, false)
				return e
			}
			if i != len(key)-1 {
				// A dotted key below a variable (env.A.B = ...): A is a table.
				return p.errWithin(sub, key, "expected a string, got table")
			}
			v, _ := p.value(sub)
			if _, ok := v.(string); !ok {
				return p.valueErr(sub, "expected a string, got "+describeValue(v))
			}
			return p.checkNoNUL(sub, v.(string))
		default:
			// A key below a value that is not a table (a dotted key such as
			// app.command.x = 1): the value has the wrong type.
			return p.errWithin(key[:i], key, "expected "+kindName(n.keyKind)+", got table")
		}
	}
	v, _ := p.value(key)
	return p.checkValue(key, n.keyKind, v)
}

// checkValue checks the type and the syntax of the value v of key.
func (p *configParser) checkValue(key toml.Key, k keyKind, v any) error {
	wrong := func() error { return p.valueErr(key, "expected "+kindName(k)+", got "+describeValue(v)) }
	var err error
	switch k {
	case kindTable, kindEnv:
		if _, ok := v.(map[string]any); !ok {
			return wrong()
		}
	case kindString:
		s, ok := v.(string)
		if !ok {
			return wrong()
		}
		return p.checkNoNUL(key, s)
	case kindInt:
		if _, ok := v.(int64); !ok {
			return wrong()
		}
	case kindBool:
		if _, ok := v.(bool); !ok {
			return wrong()
		}
	case kindArgv:
		arr, ok := v.([]any)
		if !ok {
			return wrong()
		}
		for i, e := range arr {
			s, ok := e.(string)
			if !ok {
				return p.valueErr(key, fmt.Sprintf("expected an array of strings, element %d is %s", i, describeValue(e)))
			}
			if err := p.checkNoNUL(key, s); err != nil {
				return err
			}
		}
	case kindDuration:
		s, ok := v.(string)
		if !ok {
			return p.valueErr(key, "expected a duration string such as \"10s\", got "+describeValue(v))
		}
		_, err = parseDuration(s)
	case kindSignal:
		s, ok := v.(string)
		if !ok {
			return p.valueErr(key, "expected a signal name such as \"SIGTERM\", got "+describeValue(v))
		}
		_, err = parseSignal(s)
	case kindByteSize:
		switch v := v.(type) {
		case string:
			_, err = parseByteSize(v)
		case int64:
			_, err = parseByteSize(strconv.FormatInt(v, 10))
		default:
			return p.valueErr(key, "expected a size such as \"700MB\", got "+describeValue(v))
		}
	case kindHeap:
		switch v := v.(type) {
		case string:
			_, err = parseHeap(v)
		case int64:
			_, err = parseHeap(strconv.FormatInt(v, 10))
		default:
			return p.valueErr(key, "expected \"auto\" or a number of MB, got "+describeValue(v))
		}
	}
	if err != nil {
		return p.valueErrWrap(key, err)
	}
	return nil
}

func (p *configParser) checkNoNUL(key toml.Key, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return p.valueErr(key, "must not contain a NUL character")
	}
	return nil
}

// unknownKey is the error for key, which is not among the keys of table;
// it is positioned at the key at, which is key or a dotted key below it.
func (p *configParser) unknownKey(key, at toml.Key, table *schemaNode) error {
	msg := "unknown key " + key.String()
	if s := suggestKey(key[len(key)-1], table); s != "" {
		msg += fmt.Sprintf(" (did you mean %s?)", append(key[:len(key)-1:len(key)-1], s).String())
	}
	e := &ConfigError{Path: p.path, Msg: msg}
	p.position(e, at, false)
	return e
}

// suggestKey returns the key of table closest to name when it is a likely
// typo, else "".
func suggestKey(name string, table *schemaNode) string {
	limit := 2 // edits allowed
	if len(name) <= 4 {
		limit = 1
	}
	best, bestDist := "", limit+1
	for k := range table.children {
		d := editDistance(strings.ToLower(name), k)
		if d < bestDist || (d == bestDist && k < best) {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the number of single-byte insertions, deletions,
// substitutions and swaps of neighbours that turn a into b.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// valueErr is an error about the value of key, positioned at the value.
func (p *configParser) valueErr(key toml.Key, msg string) error {
	e := &ConfigError{Path: p.path, Key: key.String(), Msg: msg}
	p.position(e, key, true)
	return e
}

// errWithin is an error about the table named, which exists only through
// the dotted key at; it is positioned at that key.
func (p *configParser) errWithin(named, at toml.Key, msg string) error {
	e := &ConfigError{Path: p.path, Key: named.String(), Msg: msg}
	p.position(e, at, false)
	return e
}

func (p *configParser) valueErrWrap(key toml.Key, err error) error {
	e := &ConfigError{Path: p.path, Key: key.String(), Msg: err.Error(), Err: err}
	p.position(e, key, true)
	return e
}

// errAt is an error about the key named by the dotted key: positioned at
// its value when the key is in the file, else without a position.
func (p *configParser) errAt(dotted, msg string, err error) error {
	key := toml.Key(strings.Split(dotted, "."))
	e := &ConfigError{Path: p.path, Key: dotted, Msg: msg, Err: err}
	if p.defined(key) {
		p.position(e, key, true)
	}
	return e
}

// defined reports whether key is in the file.
func (p *configParser) defined(key toml.Key) bool {
	_, ok := p.value(key)
	return ok
}

// value returns the decoded value of key.
func (p *configParser) value(key toml.Key) (any, bool) {
	var v any = p.raw
	for _, part := range key {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[part]; !ok {
			return nil, false
		}
	}
	return v, true
}

// position sets the line and column of e to those of key in the file: of
// its value when atValue, else of the key (or table header) itself.
func (p *configParser) position(e *ConfigError, key toml.Key, atValue bool) {
	off, ok := p.offset(key)
	if !ok {
		return
	}
	if atValue {
		off = valueStart(p.data, off)
	} else {
		off = keyStart(p.data, off)
	}
	e.Line, e.Col, _ = lineCol(p.data, off)
}

// offset returns the byte offset the decoder recorded for key: the start of
// the value for `key = value` lines, the key itself inside inline tables,
// and the opening bracket for table headers.
//
// The decoder keeps these offsets to itself but reports them in the errors
// of values that implement toml.Unmarshaler. So offset decodes the file
// again into a struct built for the purpose, whose only failing field is
// key; every other key on the way gets a field of its own that accepts
// anything, so the decoder's case-insensitive fallback never picks a
// sibling.
func (p *configParser) offset(key toml.Key) (int, bool) {
	t, ok := locatorType(p.raw, key)
	if !ok {
		return p.findQuoted(key[len(key)-1])
	}
	_, err := toml.Decode(p.data, reflect.New(t).Interface())
	var pe toml.ParseError
	if !errors.As(err, &pe) || pe.Message != errHere.Error() || pe.Position.Line < 1 {
		return 0, false
	}
	if pe.Position.Start < 0 || pe.Position.Start >= len(p.data) {
		return 0, false
	}
	return pe.Position.Start, true
}

// findQuoted returns the offset of the first quoted key name in the file
// (a quoted string followed by '=', '.' or ']'), for the names no struct
// tag can carry: "", "-" and those with a comma. The offset is the one the
// decoder would record: after the opening quote.
func (p *configParser) findQuoted(name string) (int, bool) {
	for _, q := range []string{tomlQuote(name), "'" + name + "'"} {
		for from := 0; ; {
			i := strings.Index(p.data[from:], q)
			if i < 0 {
				break
			}
			i += from
			rest := strings.TrimLeft(p.data[i+len(q):], " \t")
			if rest != "" && strings.IndexByte("=.]", rest[0]) >= 0 {
				return i + 1, true
			}
			from = i + 1
		}
	}
	return 0, false
}

// errHere is the error of locateHere; the decoder keeps only its message.
var errHere = errors.New("key located")

// locateHere fails, reporting where the decoder found it.
type locateHere struct{}

func (locateHere) UnmarshalTOML(any) error { return errHere }

// locateSkip accepts any value.
type locateSkip struct{}

func (locateSkip) UnmarshalTOML(any) error { return nil }

// locatorType builds the struct type that offset decodes into for key,
// given the decoded table m that holds key's first part.
func locatorType(m map[string]any, key toml.Key) (reflect.Type, bool) {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	fields := make([]reflect.StructField, 0, len(names))
	found := false
	for _, name := range names {
		if name == "" || strings.Contains(name, ",") || name == "-" {
			if name == key[0] {
				return nil, false
			}
			continue
		}
		t := reflect.TypeOf(locateSkip{})
		if name == key[0] {
			found = true
			t = reflect.TypeOf(locateHere{})
			if len(key) > 1 {
				sub, ok := m[name].(map[string]any)
				if !ok {
					return nil, false
				}
				if t, ok = locatorType(sub, key[1:]); !ok {
					return nil, false
				}
			}
		}
		fields = append(fields, reflect.StructField{
			Name: "F" + strconv.Itoa(len(fields)),
			Type: t,
			Tag:  reflect.StructTag("toml:" + strconv.Quote(name)),
		})
	}
	if !found {
		return nil, false
	}
	return reflect.StructOf(fields), true
}

// tokenStart returns where the token whose recorded offset is off starts,
// and whether it is a value (it follows an '='). The decoder records the
// offset of a string after its opening quotes and of an array after its
// '['.
func tokenStart(data string, off int) (start int, isValue bool) {
	i := off
	for k := 0; k < 3 && i > 0 && strings.IndexByte(`"'[`, data[i-1]) >= 0; k++ {
		i--
	}
	if afterEquals(data, i) {
		return i, true
	}
	if data[off] == '[' {
		return off, false // a table header
	}
	// A key inside an inline table, perhaps quoted.
	if off > 0 && (data[off-1] == '"' || data[off-1] == '\'') {
		return off - 1, false
	}
	return off, false
}

// keyStart returns the offset of the key whose recorded offset is off.
func keyStart(data string, off int) int {
	start, isValue := tokenStart(data, off)
	if !isValue {
		return start // a table header or a key inside an inline table
	}
	// A `key = value` line: the key is the line's first token.
	i := strings.LastIndexByte(data[:start], '\n') + 1
	for i < start && (data[i] == ' ' || data[i] == '\t') {
		i++
	}
	return i
}

// valueStart returns the offset of the value of the key whose recorded
// offset is off.
func valueStart(data string, off int) int {
	start, isValue := tokenStart(data, off)
	if isValue || data[start] == '[' {
		return start
	}
	// A key inside an inline table: skip it, the '=' and the blanks.
	i, quote := start, byte(0)
	for ; i < len(data) && data[i] != '\n'; i++ {
		c := data[i]
		switch {
		case quote != 0:
			if c == '\\' && quote == '"' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '=':
			i++
			for i < len(data) && (data[i] == ' ' || data[i] == '\t') {
				i++
			}
			if i < len(data) {
				return i
			}
			return start
		}
	}
	return start
}

// afterEquals reports whether the first non-blank byte before off is '='.
func afterEquals(data string, off int) bool {
	for i := off - 1; i >= 0; i-- {
		switch data[i] {
		case ' ', '\t':
			continue
		case '=':
			return true
		default:
			return false
		}
	}
	return false
}

// lineCol returns the 1-based line and byte column of offset off in data.
func lineCol(data string, off int) (line, col int, ok bool) {
	if off < 0 || off > len(data) {
		return 0, 0, false
	}
	start := strings.LastIndexByte(data[:off], '\n') + 1
	return strings.Count(data[:off], "\n") + 1, off - start + 1, true
}

// kindName names the expected type of a keyKind for error messages.
func kindName(k keyKind) string {
	switch k {
	case kindTable:
		return "a table"
	case kindString:
		return "a string"
	case kindInt:
		return "an integer"
	case kindBool:
		return "true or false"
	case kindArgv:
		return "an array of strings"
	case kindEnv:
		return "a table of strings"
	case kindDuration:
		return "a duration string such as \"10s\""
	case kindByteSize:
		return "a size such as \"700MB\""
	case kindSignal:
		return "a signal name such as \"SIGTERM\""
	case kindHeap:
		return "\"auto\" or a number of MB"
	}
	return "?"
}

// describeValue names the type (and, for scalars, the value) of a decoded TOML
// value for error messages.
func describeValue(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return "string " + strconv.Quote(v)
	case int64:
		return "integer " + strconv.FormatInt(v, 10)
	case float64:
		return "float " + strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return "boolean " + strconv.FormatBool(v)
	case []any:
		return "array"
	case map[string]any:
		return "table"
	case []map[string]any:
		return "array of tables"
	case nil:
		return "nothing"
	}
	return "date/time"
}

// validate checks the decoded config c, resolves what refers to the
// machine (user, directory, env file, group), in the order of the sections.
func (p *configParser) validate(c *Config) error {
	checks := []func(*Config) error{
		p.validateName,
		p.validateApp,
		p.validateRestart,
		p.validateStop,
		p.validateMemory,
		p.validateProbe,
		p.validateHealth,
		p.validateControl,
		p.validateLog,
	}
	for _, check := range checks {
		if err := check(c); err != nil {
			return err
		}
	}
	return nil
}

func (p *configParser) validateName(c *Config) error {
	if strings.TrimSpace(c.Name) == "" {
		return p.errAt("name", "must not be empty", nil)
	}
	if strings.ContainsAny(c.Name, "\n\r") {
		return p.errAt("name", "must be one line", nil)
	}
	return nil
}

func (p *configParser) validateApp(c *Config) error {
	a := &c.App
	switch {
	case !p.defined(toml.Key{"app", "command"}):
		return p.errAt("app.command", "is required, e.g. command = [\"node\", \"server.js\"]", nil)
	case len(a.Command) == 0:
		return p.errAt("app.command", "must not be empty", nil)
	case a.Command[0] == "":
		return p.errAt("app.command", "the program (first element) must not be empty", nil)
	}
	if a.Dir != "" {
		fi, err := os.Stat(a.Dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return p.errAt("app.dir", fmt.Sprintf("%q: no such directory", a.Dir), err)
		case err != nil:
			return p.errAt("app.dir", fmt.Sprintf("%q: %s", a.Dir, errCause(err)), err)
		case !fi.IsDir():
			return p.errAt("app.dir", fmt.Sprintf("%q: not a directory", a.Dir), nil)
		}
	}
	if a.User != "" {
		cred, err := lookupCredential(a.User)
		if err != nil {
			return p.errAt("app.user", err.Error(), err)
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
			return p.errAt("app.env_file", err.Error(), err)
		}
		a.EnvFileVars = vars
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

func (p *configParser) validateRestart(c *Config) error {
	r := &c.Restart
	switch r.Policy {
	case "always", "on-failure", "never":
	default:
		return p.errAt("restart.policy", fmt.Sprintf("%q is not one of always, on-failure, never", r.Policy), nil)
	}
	if r.MaxDelay < r.Delay {
		if p.defined(toml.Key{"restart", "max_delay"}) || !p.defined(toml.Key{"restart", "delay"}) {
			return p.errAt("restart.max_delay", fmt.Sprintf("%s is less than restart.delay (%s)", r.MaxDelay, r.Delay), nil)
		}
		return p.errAt("restart.delay", fmt.Sprintf("%s is more than restart.max_delay (%s)", r.Delay, r.MaxDelay), nil)
	}
	if r.MaxRestarts < 0 {
		return p.errAt("restart.max_restarts", fmt.Sprintf("%d is negative (0 = no limit)", r.MaxRestarts), nil)
	}
	if r.MaxRestarts > 0 && r.Window <= 0 {
		return p.errAt("restart.window", "must be more than 0s when restart.max_restarts is set", nil)
	}
	switch r.OnExhausted {
	case "unhealthy", "exit":
	default:
		return p.errAt("restart.on_exhausted", fmt.Sprintf("%q is not one of unhealthy, exit", r.OnExhausted), nil)
	}
	return nil
}

func (p *configParser) validateStop(c *Config) error {
	if c.Stop.Timeout <= 0 {
		return p.errAt("stop.timeout", "must be more than 0s", nil)
	}
	return nil
}

func (p *configParser) validateMemory(c *Config) error {
	if c.Memory.MaxRSS > 0 && c.Memory.RSSGrace <= 0 {
		return p.errAt("memory.rss_grace", "must be more than 0s when memory.max_rss is set", nil)
	}
	return nil
}

func (p *configParser) validateProbe(c *Config) error {
	pr := &c.Probe
	if pr.HTTP != "" && pr.TCP != "" {
		return p.errAt("probe.tcp", "set either probe.http or probe.tcp, not both", nil)
	}
	if pr.HTTP != "" {
		u, err := url.Parse(pr.HTTP)
		switch {
		case err != nil:
			return p.errAt("probe.http", fmt.Sprintf("invalid URL %q: %s", pr.HTTP, errCause(err)), err)
		case u.Scheme != "http":
			return p.errAt("probe.http", fmt.Sprintf("%q is not an http:// URL", pr.HTTP), nil)
		case u.Host == "" || u.Hostname() == "":
			return p.errAt("probe.http", fmt.Sprintf("%q has no host", pr.HTTP), nil)
		}
		if port := u.Port(); port != "" {
			if _, err := parsePort(port, false); err != nil {
				return p.errAt("probe.http", fmt.Sprintf("%q: %v", pr.HTTP, err), err)
			}
		}
	}
	if pr.TCP != "" {
		if err := checkHostPort(pr.TCP, false); err != nil {
			return p.errAt("probe.tcp", err.Error(), err)
		}
	}
	if pr.Interval <= 0 {
		return p.errAt("probe.interval", "must be more than 0s", nil)
	}
	if pr.Timeout <= 0 {
		return p.errAt("probe.timeout", "must be more than 0s", nil)
	}
	if pr.FailureThreshold < 1 {
		return p.errAt("probe.failure_threshold", fmt.Sprintf("%d is less than 1", pr.FailureThreshold), nil)
	}
	if pr.StartupTimeout <= 0 {
		return p.errAt("probe.startup_timeout", "must be more than 0s", nil)
	}
	return nil
}

// checkHostPort checks that s is host:port with a numeric port; the host
// may be empty (all addresses, or the local host when dialling). Port 0 is
// accepted only when zeroOK.
func checkHostPort(s string, zeroOK bool) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %s", s, errCause(err))
	}
	if _, err := parsePort(port, zeroOK); err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	return nil
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

func (p *configParser) validateHealth(c *Config) error {
	if err := checkHostPort(c.Health.Listen, true); err != nil {
		return p.errAt("health.listen", err.Error(), err)
	}
	if !strings.HasPrefix(c.Health.Path, "/") {
		return p.errAt("health.path", fmt.Sprintf("%q does not start with /", c.Health.Path), nil)
	}
	if strings.ContainsAny(c.Health.Path, " ?#") {
		return p.errAt("health.path", fmt.Sprintf("%q is not a plain path (no spaces, ? or #)", c.Health.Path), nil)
	}
	return nil
}

func (p *configParser) validateControl(c *Config) error {
	ct := &c.Control
	if !filepath.IsAbs(ct.Socket) {
		return p.errAt("control.socket", fmt.Sprintf("%q is not an absolute path", ct.Socket), nil)
	}
	ct.GID = -1
	if ct.Group != "" {
		g, err := user.LookupGroup(ct.Group)
		if err != nil {
			var unknown user.UnknownGroupError
			if errors.As(err, &unknown) {
				return p.errAt("control.group", fmt.Sprintf("unknown group %q", ct.Group), err)
			}
			return p.errAt("control.group", fmt.Sprintf("look up group %q: %v", ct.Group, err), err)
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return p.errAt("control.group", fmt.Sprintf("group %q: gid %q is not a number", ct.Group, g.Gid), err)
		}
		ct.GID = gid
	}
	return nil
}

func (p *configParser) validateLog(c *Config) error {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return p.errAt("log.level", fmt.Sprintf("%q is not one of debug, info, warn, error", c.Log.Level), nil)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		return p.errAt("log.format", fmt.Sprintf("%q is not one of json, console", c.Log.Format), nil)
	}
	return nil
}

// Duration is a non-negative duration written as a Go duration string:
// "1s", "10m", "1h30m", "0s".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d in the shortest exact form: "1s", "60s", "10m", "1500ms".
func (d Duration) String() string {
	td := time.Duration(d)
	switch {
	case td == 0:
		return "0s"
	case td%time.Hour == 0 && td/time.Hour > 1:
		return strconv.FormatInt(int64(td/time.Hour), 10) + "h"
	case td%time.Minute == 0 && td/time.Minute > 1:
		return strconv.FormatInt(int64(td/time.Minute), 10) + "m"
	case td%time.Second == 0:
		return strconv.FormatInt(int64(td/time.Second), 10) + "s"
	case td%time.Millisecond == 0:
		return strconv.FormatInt(int64(td/time.Millisecond), 10) + "ms"
	}
	return td.String()
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := parseDuration(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

func parseDuration(s string) (Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: %w", s, err)
	}
	if v < 0 {
		return 0, fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	return Duration(v), nil
}

// ByteSize is a number of bytes written as an integer with an optional
// unit: "0", "1048576", "512K", "700MB", "1GiB". K, KB and KiB (and M, G, T
// likewise) are all binary multiples of 1024, as in PM2's "700M".
type ByteSize uint64

var sizeUnits = []struct {
	names []string
	mult  uint64
}{
	{[]string{"", "b"}, 1},
	{[]string{"k", "kb", "kib"}, 1 << 10},
	{[]string{"m", "mb", "mib"}, 1 << 20},
	{[]string{"g", "gb", "gib"}, 1 << 30},
	{[]string{"t", "tb", "tib"}, 1 << 40},
}

// String formats b with the largest binary unit that divides it exactly:
// "0", "1000", "512KiB", "700MiB", "1GiB".
func (b ByteSize) String() string {
	if b == 0 {
		return "0"
	}
	for i := len(sizeUnits) - 1; i > 0; i-- {
		u := sizeUnits[i]
		if uint64(b)%u.mult == 0 {
			return strconv.FormatUint(uint64(b)/u.mult, 10) + strings.ToUpper(u.names[2][:1]) + "iB"
		}
	}
	return strconv.FormatUint(uint64(b), 10)
}

// MarshalText implements encoding.TextMarshaler.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := parseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

func parseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		if strings.HasPrefix(t, "-") {
			return 0, fmt.Errorf("invalid size %q: must not be negative", s)
		}
		return 0, fmt.Errorf("invalid size %q: want a whole number with an optional unit K, M or G, e.g. \"700MB\"", s)
	}
	n, err := strconv.ParseUint(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	unit := strings.ToLower(strings.TrimSpace(t[i:]))
	for _, u := range sizeUnits {
		for _, name := range u.names {
			if unit != name {
				continue
			}
			if n > math.MaxUint64/u.mult {
				return 0, fmt.Errorf("invalid size %q: too large", s)
			}
			return ByteSize(n * u.mult), nil
		}
	}
	return 0, fmt.Errorf("invalid size %q: unknown unit %q (use K, M or G; all are multiples of 1024)", s, strings.TrimSpace(t[i:]))
}

// Signal is a signal to stop the app with, written "SIGTERM" or "TERM" in
// any case. Only HUP, INT, QUIT, KILL, USR1, USR2 and TERM are accepted; an
// unknown name is an error, never a silent SIGTERM.
type Signal syscall.Signal

var signalNames = []struct {
	name string
	sig  syscall.Signal
}{
	{"HUP", syscall.SIGHUP},
	{"INT", syscall.SIGINT},
	{"QUIT", syscall.SIGQUIT},
	{"KILL", syscall.SIGKILL},
	{"USR1", syscall.SIGUSR1},
	{"USR2", syscall.SIGUSR2},
	{"TERM", syscall.SIGTERM},
}

// Sys returns s as a syscall.Signal.
func (s Signal) Sys() syscall.Signal { return syscall.Signal(s) }

// String returns the signal's name, e.g. "SIGTERM".
func (s Signal) String() string {
	for _, n := range signalNames {
		if n.sig == syscall.Signal(s) {
			return "SIG" + n.name
		}
	}
	return "signal " + strconv.Itoa(int(s))
}

// MarshalText implements encoding.TextMarshaler.
func (s Signal) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Signal) UnmarshalText(b []byte) error {
	v, err := parseSignal(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

func parseSignal(s string) (Signal, error) {
	name := strings.ToUpper(strings.TrimSpace(s))
	name = strings.TrimPrefix(name, "SIG")
	for _, n := range signalNames {
		if n.name == name {
			return Signal(n.sig), nil
		}
	}
	return 0, fmt.Errorf("unknown signal %q (use one of SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGUSR1, SIGUSR2, SIGTERM)", s)
}

// HeapSetting is node.max_old_space_size: "auto" (Auto), a number of MB
// (a TOML integer or a string of digits), or 0 to leave NODE_OPTIONS alone.
type HeapSetting struct {
	Auto bool
	MB   int // when !Auto; 0 = leave NODE_OPTIONS alone
}

// String returns "auto" or the number of MB.
func (h HeapSetting) String() string {
	if h.Auto {
		return "auto"
	}
	return strconv.Itoa(h.MB)
}

// MarshalText implements encoding.TextMarshaler.
func (h HeapSetting) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (h *HeapSetting) UnmarshalText(b []byte) error {
	v, err := parseHeap(string(b))
	if err != nil {
		return err
	}
	*h = v
	return nil
}

func parseHeap(s string) (HeapSetting, error) {
	t := strings.TrimSpace(s)
	if strings.EqualFold(t, "auto") {
		return HeapSetting{Auto: true}, nil
	}
	if strings.HasPrefix(t, "-") {
		if _, err := strconv.Atoi(t); err == nil {
			return HeapSetting{}, fmt.Errorf("%s is negative (0 = leave NODE_OPTIONS alone)", t)
		}
	}
	digits := t != ""
	for _, r := range t {
		if r < '0' || r > '9' {
			digits = false
		}
	}
	if !digits {
		return HeapSetting{}, fmt.Errorf("invalid value %q: want \"auto\", a number of MB, or 0", s)
	}
	n, err := strconv.ParseInt(t, 10, 32)
	if err != nil {
		return HeapSetting{}, fmt.Errorf("invalid value %q: too large", s)
	}
	return HeapSetting{MB: int(n)}, nil
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

// WriteEffective writes the effective config as TOML, every key in the
// contract's order, for `agent check`. heapCapMB is the resolved heap cap,
// written for max_old_space_size when it is "auto". Values read from
// env_file are never written (they may be secrets): only the file's path
// and the number of variables.
func (c *Config) WriteEffective(w io.Writer, heapCapMB int) error {
	var b bytes.Buffer
	line := func(key, value, comment string) {
		b.WriteString(key)
		b.WriteString(" = ")
		b.WriteString(value)
		if comment != "" {
			b.WriteString("  # ")
			b.WriteString(comment)
		}
		b.WriteByte('\n')
	}
	str := tomlQuote
	dur := func(d Duration) string { return tomlQuote(d.String()) }
	section := func(name string) { fmt.Fprintf(&b, "\n[%s]\n", name) }

	if c.Path != "" {
		fmt.Fprintf(&b, "# effective config of %s\n", commentSafe(c.Path))
	}
	line("name", str(c.Name), "")

	section("app")
	args := make([]string, len(c.App.Command))
	for i, a := range c.App.Command {
		args[i] = str(a)
	}
	line("command", "["+strings.Join(args, ", ")+"]", "")
	dirNote := ""
	if c.App.Dir == "" {
		dirNote = "the agent's working directory"
	}
	line("dir", str(c.App.Dir), dirNote)
	userNote := "the agent's user"
	if cr := c.App.Credential; cr != nil {
		groups := make([]string, len(cr.Groups))
		for i, g := range cr.Groups {
			groups[i] = strconv.FormatUint(uint64(g), 10)
		}
		userNote = fmt.Sprintf("uid %d, gid %d, groups %s", cr.Uid, cr.Gid, strings.Join(groups, ","))
	} else if c.App.User != "" {
		userNote = ""
	}
	line("user", str(c.App.User), userNote)
	names := make([]string, 0, len(c.App.Env))
	for k := range c.App.Env {
		names = append(names, k)
	}
	sort.Strings(names)
	pairs := make([]string, len(names))
	for i, k := range names {
		pairs[i] = tomlKey(k) + " = " + str(c.App.Env[k])
	}
	if len(pairs) == 0 {
		line("env", "{}", "")
	} else {
		line("env", "{ "+strings.Join(pairs, ", ")+" }", "")
	}
	envFileNote := ""
	if c.App.EnvFile != "" {
		envFileNote = fmt.Sprintf("%d variables (values not shown)", len(c.App.EnvFileVars))
	}
	line("env_file", str(c.App.EnvFile), envFileNote)

	section("node")
	if c.Node.MaxOldSpaceSize.Auto {
		line("max_old_space_size", strconv.Itoa(heapCapMB), "auto: half of the memory limit, in MB")
	} else if c.Node.MaxOldSpaceSize.MB == 0 {
		line("max_old_space_size", "0", "NODE_OPTIONS left alone")
	} else {
		line("max_old_space_size", strconv.Itoa(c.Node.MaxOldSpaceSize.MB), "MB")
	}

	r := c.Restart
	section("restart")
	line("policy", str(r.Policy), "")
	line("delay", dur(r.Delay), "")
	line("max_delay", dur(r.MaxDelay), "")
	line("reset_after", dur(r.ResetAfter), "")
	line("max_restarts", strconv.Itoa(r.MaxRestarts), "")
	line("window", dur(r.Window), "")
	line("on_exhausted", str(r.OnExhausted), "")

	section("stop")
	line("signal", str(c.Stop.Signal.String()), "")
	line("timeout", dur(c.Stop.Timeout), "")
	line("drain", dur(c.Stop.Drain), "")

	section("memory")
	rssNote := ""
	if c.Memory.MaxRSS == 0 {
		rssNote = "no limit"
	}
	line("max_rss", str(c.Memory.MaxRSS.String()), rssNote)
	line("rss_grace", dur(c.Memory.RSSGrace), "")
	line("watch_oom", strconv.FormatBool(c.Memory.WatchOOM), "")

	pr := c.Probe
	section("probe")
	probeNote := ""
	if !pr.Enabled() {
		probeNote = "no probe: ready once alive for 1s"
	}
	line("http", str(pr.HTTP), probeNote)
	line("tcp", str(pr.TCP), "")
	line("interval", dur(pr.Interval), "")
	line("timeout", dur(pr.Timeout), "")
	line("failure_threshold", strconv.Itoa(pr.FailureThreshold), "")
	line("startup_timeout", dur(pr.StartupTimeout), "")

	section("health")
	line("listen", str(c.Health.Listen), "")
	line("path", str(c.Health.Path), "")

	section("control")
	line("socket", str(c.Control.Socket), "")
	groupNote := "root only (0600)"
	if c.Control.Group != "" {
		groupNote = fmt.Sprintf("gid %d (0660)", c.Control.GID)
	}
	line("group", str(c.Control.Group), groupNote)

	section("log")
	line("level", str(c.Log.Level), "")
	line("format", str(c.Log.Format), "")

	_, err := w.Write(b.Bytes())
	return err
}

// tomlQuote returns s as a TOML basic string.
func tomlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

// tomlKey returns k as a TOML key: bare when it can be, else quoted.
func tomlKey(k string) string {
	for _, r := range k {
		if !(r == '_' || r == '-' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return tomlQuote(k)
		}
	}
	if k == "" {
		return `""`
	}
	return k
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

// commentSafe replaces line breaks so s fits in a comment.
func commentSafe(s string) string {
	return strings.NewReplacer("\n", `\n`, "\r", `\r`).Replace(s)
}
