package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// head is a minimal valid start of a config: lines 1 and 2.
const head = "[app]\ncommand = [\"node\", \"server.js\"]\n"

func TestParseErrors(t *testing.T) {
	envFile := filepath.Join(t.TempDir(), "app.env")
	if err := os.WriteFile(envFile, []byte("A=1\nnot a variable\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	portFile := filepath.Join(t.TempDir(), "port.env")
	if err := os.WriteFile(portFile, []byte("PORT=3000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		toml   string
		prefix string // exact start of the error text; ENVFILE and PORTFILE are replaced
		frag   string // must appear after the prefix
	}{
		// Syntax.
		{"unterminated string", "name = \"web\n", "agent.toml:1:", "strings cannot contain newlines"},
		{"duplicate key", "name = \"a\"\nname = \"b\"\n", "agent.toml:2:1: ", "key 'name' has already been defined"},
		{"unclosed table header", "[app\n", "agent.toml:1:5: ", "to end table name"},

		// Unknown keys.
		{"unknown table", head + "[memroy]\n", "agent.toml:3:1: ", "unknown key memroy (did you mean memory?)"},
		{"unknown key", "[app]\ncomand = [\"node\"]\n", "agent.toml:2:11: ", "unknown key app.comand (did you mean app.command?)"},
		{"unknown key indented", head + "  usr = \"x\"\n", "agent.toml:3:10: ", "unknown key app.usr (did you mean app.user?)"},
		{"unknown key in inline table", "app = { command = [\"x\"], dri = \"/\" }\n", "agent.toml:1:26: ", "unknown key app.dri (did you mean app.dir?)"},
		{"unknown key no suggestion", head + "[log]\nverbosity = 3\n", "agent.toml:4:13: ", "unknown key log.verbosity"},
		{"keys are case-sensitive", "[App]\ncommand = [\"x\"]\n", "agent.toml:1:1: ", "unknown key App (did you mean app?)"},
		{"unknown dotted key at top", "restart.dealy = \"1s\"\n" + head, "agent.toml:1:18: ", "unknown key restart.dealy (did you mean restart.delay?)"},
		{"dotted key in the wrong table", head + "restart.delay = \"1s\"\n", "agent.toml:3:18: ", "unknown key app.restart"},

		// Wrong types.
		{"name not string", "name = 1\n" + head, "agent.toml:1:8: ", "name: expected a string, got integer 1"},
		{"bool as string", head + "[memory]\nwatch_oom = \"yes\"\n", "agent.toml:4:14: ", `memory.watch_oom: expected true or false, got string "yes"`},
		{"command as string", "[app]\ncommand = \"node server.js\"\n", "agent.toml:2:12: ", "app.command: expected an array of strings, got string"},
		{"command element not string", "[app]\ncommand = [\"node\", 3]\n", "agent.toml:2:12: ", "app.command: expected an array of strings, element 1 is integer 3"},
		{"int as string", head + "[restart]\nmax_restarts = \"10\"\n", "agent.toml:4:17: ", `restart.max_restarts: expected an integer, got string "10"`},
		{"int as float", head + "[probe]\nfailure_threshold = 2.5\n", "agent.toml:4:21: ", "probe.failure_threshold: expected an integer, got float 2.5"},
		{"duration as integer", head + "[restart]\nwindow = 600\n", "agent.toml:4:10: ", `restart.window: expected a duration string such as "10s", got integer 600`},
		{"table as value", "app = \"node\"\n", "agent.toml:1:8: ", "app: expected a table, got string"},
		{"array of tables", "[[app]]\ncommand = [\"x\"]\n", "agent.toml:1:1: ", "app: expected a table, got array of tables"},
		{"dotted key below a value", head + "dir.x = 1\n", "agent.toml:3:9: ", "app.dir: expected a string, got table"},
		{"env value not string", head + "[app.env]\nPORT = 3000\n", "agent.toml:4:8: ", "app.env.PORT: expected a string, got integer 3000"},
		{"env value not string inline", head + "env = { A = \"x\", B = true }\n", "agent.toml:3:18: ", "app.env.B: expected a string, got boolean true"},
		{"duration a table", head + "[restart]\ndelay.x = 1\n", "agent.toml:4:11: ", `restart.delay: expected a duration string such as "10s", got table`},
		{"env value a table", head + "env.A.B = \"x\"\n", "agent.toml:3:12: ", "app.env.A: expected a string, got table"},

		// Malformed values.
		{"bad duration", head + "[restart]\ndelay = \"1x\"\n", "agent.toml:4:10: ", `restart.delay: invalid duration "1x": time: unknown unit "x"`},
		{"negative duration", head + "[stop]\ntimeout = \"-1s\"\n", "agent.toml:4:12: ", `stop.timeout: invalid duration "-1s": must not be negative`},
		{"bad size", head + "[memory]\nmax_rss = \"700XB\"\n", "agent.toml:4:12: ", `memory.max_rss: invalid size "700XB": unknown unit "XB"`},
		{"negative size", head + "[memory]\nmax_rss = \"-1M\"\n", "agent.toml:4:12: ", "must not be negative"},
		{"unknown signal", head + "[stop]\nsignal = \"SIGFOO\"\n", "agent.toml:4:11: ", `stop.signal: unknown signal "SIGFOO"`},
		{"signal number", head + "[stop]\nsignal = 15\n", "agent.toml:4:10: ", "stop.signal: expected a signal name"},
		{"heap negative", head + "[node]\nmax_old_space_size = -1\n", "agent.toml:4:22: ", "node.max_old_space_size: -1 is negative"},
		{"heap bad string", head + "[node]\nmax_old_space_size = \"lots\"\n", "agent.toml:4:23: ", `node.max_old_space_size: invalid value "lots"`},
		{"heap float", head + "[node]\nmax_old_space_size = 512.5\n", "agent.toml:4:22: ", "expected \"auto\" or a number of MB, got float"},
		{"NUL in env value", head + "env = { A = \"a\\u0000b\" }\n", "agent.toml:3:9: ", "app.env.A: must not contain a NUL character"},
		{"env name invalid", head + "env = { \"1A\" = \"x\" }\n", "agent.toml:3:9: ", `app.env: invalid variable name "1A"`},
		{"env name with comma", head + "dir = \"a,b\"\nenv = { \"a,b\" = \"x\" }\n", "agent.toml:4:9: ", `app.env: invalid variable name "a,b"`},
		{"env name empty", head + "dir = \"\"\nenv = { \"\" = \"x\" }\n", "agent.toml: ", `app.env: invalid variable name ""`},
		{"unknown key with comma", head + "\"x,y\" = 1\n", "agent.toml:3:9: ", `unknown key app."x,y"`},

		// Validation.
		{"missing command", "name = \"web\"\n", "agent.toml: app.command: ", "is required"},
		{"empty command", "[app]\ncommand = []\n", "agent.toml:2:12: ", "app.command: must not be empty"},
		{"empty program", "[app]\ncommand = [\"\", \"server.js\"]\n", "agent.toml:2:12: ", "app.command: the program (first element) must not be empty"},
		{"empty name", "name = \"\"\n" + head, "agent.toml:1:9: ", "name: must not be empty"},
		{"dir missing", head + "dir = \"/nonexistent/dir\"\n", "agent.toml:3:8: ", `app.dir: "/nonexistent/dir": no such directory`},
		{"dir is a file", head + "dir = \"/etc/passwd\"\n", "agent.toml:3:8: ", `app.dir: "/etc/passwd": not a directory`},
		{"unknown user", head + "user = \"nosuch-user\"\n", "agent.toml:3:9: ", `app.user: unknown user "nosuch-user"`},
		{"unknown uid", head + "user = \"4000000\"\n", "agent.toml:3:9: ", `app.user: unknown user "4000000"`},
		{"env file missing", head + "env_file = \"/nonexistent.env\"\n", "agent.toml:3:13: ", "app.env_file: open /nonexistent.env: no such file or directory"},
		{"env file malformed", head + "env_file = \"ENVFILE\"\n", "ENVFILE:2: ", "expected KEY=VALUE"},
		{"policy", head + "[restart]\npolicy = \"sometimes\"\n", "agent.toml:4:11: ", `restart.policy: "sometimes" is not one of always, on-failure, never`},
		{"on_exhausted", head + "[restart]\non_exhausted = \"retry\"\n", "agent.toml:4:17: ", `restart.on_exhausted: "retry" is not one of unhealthy, exit`},
		{"max_delay below delay", head + "[restart]\ndelay = \"10s\"\nmax_delay = \"5s\"\n", "agent.toml:5:14: ", "restart.max_delay: 5s is less than restart.delay (10s)"},
		{"delay above default max_delay", head + "[restart]\ndelay = \"2m\"\n", "agent.toml:4:10: ", "restart.delay: 2m is more than restart.max_delay (60s)"},
		{"max_restarts negative", head + "[restart]\nmax_restarts = -1\n", "agent.toml:4:16: ", "restart.max_restarts: -1 is negative"},
		{"window zero", head + "[restart]\nwindow = \"0s\"\n", "agent.toml:4:11: ", "restart.window: must be more than 0s when restart.max_restarts is set"},
		{"stop timeout zero", head + "[stop]\ntimeout = \"0s\"\n", "agent.toml:4:12: ", "stop.timeout: must be more than 0s"},
		{"rss_grace zero", head + "[memory]\nmax_rss = \"700MB\"\nrss_grace = \"0s\"\n", "agent.toml:5:14: ", "memory.rss_grace: must be more than 0s when memory.max_rss is set"},
		{"both probes", head + "[probe]\nhttp = \"http://127.0.0.1:3000/\"\ntcp = \"127.0.0.1:3000\"\n", "agent.toml:5:8: ", "probe.tcp: set either probe.http or probe.tcp, not both"},
		{"probe https", head + "[probe]\nhttp = \"https://example.com/\"\n", "agent.toml:4:9: ", `probe.http: "https://example.com/" is not an http:// URL`},
		{"probe no host", head + "[probe]\nhttp = \"http:///health\"\n", "agent.toml:4:9: ", "has no host"},
		{"probe bad url", head + "[probe]\nhttp = \"http://[::1\"\n", "agent.toml:4:9: ", "probe.http: invalid URL"},
		{"probe tcp no port", head + "[probe]\ntcp = \"localhost\"\n", "agent.toml:4:8: ", `probe.tcp: "localhost" is not host:port: missing port in address`},
		{"probe tcp port 0", head + "[probe]\ntcp = \"127.0.0.1:0\"\n", "agent.toml:4:8: ", "port 0 is not allowed here"},
		{"probe interval", head + "[probe]\ninterval = \"0s\"\n", "agent.toml:4:13: ", "probe.interval: must be more than 0s"},
		{"probe timeout", head + "[probe]\ntimeout = \"0s\"\n", "agent.toml:4:12: ", "probe.timeout: must be more than 0s"},
		{"failure_threshold", head + "[probe]\nfailure_threshold = 0\n", "agent.toml:4:21: ", "probe.failure_threshold: 0 is less than 1"},
		{"startup_timeout", head + "[probe]\nstartup_timeout = \"0s\"\n", "agent.toml:4:20: ", "probe.startup_timeout: must be more than 0s"},
		{"health listen", head + "[health]\nlisten = \"8081\"\n", "agent.toml:4:11: ", `health.listen: "8081" is not host:port`},
		{"health port", head + "[health]\nlisten = \":http\"\n", "agent.toml:4:11: ", `port "http" is not a number`},
		{"health path", head + "[health]\npath = \"health.html\"\n", "agent.toml:4:9: ", `health.path: "health.html" does not start with /`},
		{"control socket relative", head + "[control]\nsocket = \"agent.sock\"\n", "agent.toml:4:11: ", `control.socket: "agent.sock" is not an absolute path`},
		{"control group unknown", head + "[control]\ngroup = \"nosuch-group\"\n", "agent.toml:4:10: ", `control.group: unknown group "nosuch-group"`},
		{"log level", head + "[log]\nlevel = \"verbose\"\n", "agent.toml:4:10: ", `log.level: "verbose" is not one of debug, info, warn, error`},
		{"log format", head + "[log]\nformat = \"text\"\n", "agent.toml:4:11: ", `log.format: "text" is not one of json, console`},

		// New keys: app.npm, [proxy], [log] file rotation, [metrics].
		{"npm", head + "npm = \"yarn\"\n", "agent.toml:3:8: ", `app.npm: "yarn" is not one of direct, npm`},
		{"npm not string", head + "npm = true\n", "agent.toml:3:7: ", "app.npm: expected a string, got boolean true"},
		{"proxy unknown key", head + "[proxy]\nupstrem = \"127.0.0.1:3000\"\n", "agent.toml:4:12: ", "unknown key proxy.upstrem (did you mean proxy.upstream?)"},
		{"proxy listen", head + "[proxy]\nlisten = \"80\"\n", "agent.toml:4:11: ", `proxy.listen: "80" is not host:port`},
		{"proxy upstream not loopback", head + "[proxy]\nupstream = \"10.0.0.5:3000\"\n", "agent.toml:4:13: ", `proxy.upstream: "10.0.0.5:3000" is not a loopback address`},
		{"proxy upstream all addresses", head + "[proxy]\nupstream = \":3000\"\n", "agent.toml:4:13: ", `proxy.upstream: ":3000" is not a loopback address`},
		{"proxy upstream no port", head + "[proxy]\nupstream = \"127.0.0.1\"\n", "agent.toml:4:13: ", `proxy.upstream: "127.0.0.1" is not host:port: missing port in address`},
		{"proxy upstream port 0", head + "[proxy]\nupstream = \"127.0.0.1:0\"\n", "agent.toml:4:13: ", "proxy.upstream: \"127.0.0.1:0\": port 0 is not allowed here"},
		{"proxy spare not loopback", head + "[proxy]\nspare_upstream = \"0.0.0.0:3001\"\n", "agent.toml:4:19: ", `proxy.spare_upstream: "0.0.0.0:3001" is not a loopback address`},
		{"proxy hold zero", head + "[proxy]\nhold = \"0s\"\n", "agent.toml:4:9: ", "proxy.hold: must be more than 0s"},
		{"proxy hold integer", head + "[proxy]\nhold = 30\n", "agent.toml:4:8: ", `proxy.hold: expected a duration string such as "10s", got integer 30`},
		{"proxy idle_timeout zero", head + "[proxy]\nidle_timeout = \"0s\"\n", "agent.toml:4:17: ", "proxy.idle_timeout: must be more than 0s"},
		{"proxy listen is health port", head + "[proxy]\nlisten = \":8081\"\n", "agent.toml:4:11: ", `proxy.listen: port 8081 is also health.listen (":8081")`},
		{"proxy listen on the app port", head + "[proxy]\nlisten = \":3000\"\n", "agent.toml: ", `proxy.upstream: port 3000 is also proxy.listen (":3000")`},
		{"proxy spare is upstream", head + "[proxy]\nlisten = \":80\"\nspare_upstream = \"localhost:3000\"\n", "agent.toml:5:19: ", `proxy.spare_upstream: port 3000 is also proxy.upstream ("127.0.0.1:3000")`},
		{"health on the app port", head + "[health]\nlisten = \"127.0.0.1:3000\"\n[proxy]\nlisten = \":80\"\n", "agent.toml: ", `proxy.upstream: port 3000 is also health.listen ("127.0.0.1:3000")`},
		{"metrics listen", head + "[metrics]\nlisten = \"localhost\"\n", "agent.toml:4:11: ", `metrics.listen: "localhost" is not host:port`},
		{"metrics not string", head + "[metrics]\nlisten = 9100\n", "agent.toml:4:10: ", "metrics.listen: expected a string, got integer 9100"},
		{"metrics is health port", head + "[metrics]\nlisten = \"127.0.0.1:8081\"\n", "agent.toml:4:11: ", `metrics.listen: port 8081 is also health.listen (":8081")`},
		{"metrics is proxy port", head + "[proxy]\nlisten = \"[::]:80\"\n[metrics]\nlisten = \"[::1]:80\"\n", "agent.toml:6:11: ", `metrics.listen: port 80 is also proxy.listen ("[::]:80")`},
		{"log file relative", head + "[log]\nfile = \"agent.log\"\n", "agent.toml:4:9: ", `log.file: "agent.log" is not an absolute path`},
		{"log file dir not creatable", head + "[log]\nfile = \"/etc/passwd/agent/web.log\"\n", "agent.toml:4:9: ", `log.file: create directory "/etc/passwd/agent": not a directory`},
		{"log file is a directory", head + "[log]\nfile = \"/tmp\"\n", "agent.toml:4:9: ", `log.file: "/tmp": cannot open for append: is a directory`},
		{"log max_size zero", head + "[log]\nmax_size = 0\n", "agent.toml:4:12: ", "log.max_size: must be more than 0"},
		{"log max_size bool", head + "[log]\nmax_size = true\n", "agent.toml:4:12: ", `log.max_size: expected a size such as "700MB", got boolean true`},
		{"log max_size bad", head + "[log]\nmax_size = \"1PB\"\n", "agent.toml:4:13: ", `log.max_size: invalid size "1PB": unknown unit "PB"`},
		{"log max_files zero", head + "[log]\nmax_files = 0\n", "agent.toml:4:13: ", "log.max_files: 0 is less than 1"},
		{"log max_files string", head + "[log]\nmax_files = \"5\"\n", "agent.toml:4:14: ", `log.max_files: expected an integer, got string "5"`},
		{"unknown section", head + "[metric]\nlisten = \"\"\n", "agent.toml:3:1: ", "unknown key metric (did you mean metrics?)"},

		// app.instances and proxy.affinity.
		{"instances zero", head + "instances = 0\n", "agent.toml:3:13: ", "app.instances: 0 is less than 1"},
		{"instances negative", head + "instances = -2\n", "agent.toml:3:13: ", "app.instances: -2 is less than 1"},
		{"instances too many", head + "instances = 65\n", "agent.toml:3:13: ", "app.instances: 65 is more than 64"},
		{"instances float", head + "instances = 2.5\n", "agent.toml:3:13: ", `app.instances: expected a number from 1 to 64 or "auto", got float 2.5`},
		{"instances string", head + "instances = \"2\"\n", "agent.toml:3:14: ", `app.instances: expected a number from 1 to 64 or "auto", got string "2"`},
		{"instances bool", head + "instances = true\n", "agent.toml:3:13: ", `app.instances: expected a number from 1 to 64 or "auto", got boolean true`},
		{"instances without proxy", head + "instances = 2\n", "agent.toml:3:13: ", "app.instances: 2 needs [proxy] to balance the processes: set proxy.listen"},
		{"instances auto without proxy", head + "instances = \"auto\"\n[proxy]\nupstream = \"127.0.0.1:4000\"\n", "agent.toml:3:14: ", `app.instances: "auto" needs [proxy] to balance the processes: set proxy.listen`},
		{"instances with PORT in env", head + "instances = 2\nenv = { PORT = \"3000\" }\n[proxy]\nlisten = \":80\"\n", "agent.toml:4:9: ", "app.env.PORT: the agent sets each process's PORT with app.instances = 2: remove it"},
		{"instances with PORT in env_file", head + "instances = \"auto\"\nenv_file = \"PORTFILE\"\n[proxy]\nlisten = \":80\"\n", "agent.toml:4:13: ", `app.env_file: sets PORT; the agent sets each process's PORT with app.instances = "auto": remove it`},
		{"instances past the last port", head + "instances = 2\n[proxy]\nlisten = \":80\"\nupstream = \"127.0.0.1:65535\"\n", "agent.toml:6:13: ", "proxy.upstream: 2 processes and the reload port after them need ports 65535 to 65537, past 65535"},
		{"instances past the last port with a spare", head + "instances = 3\n[proxy]\nlisten = \":80\"\nupstream = \"127.0.0.1:65534\"\nspare_upstream = \"127.0.0.1:3000\"\n", "agent.toml:6:13: ", "proxy.upstream: 3 processes need ports 65534 to 65536, past 65535"},
		{"spare among the instances", head + "instances = 3\n[proxy]\nlisten = \":80\"\nspare_upstream = \"127.0.0.1:3002\"\n", "agent.toml:6:19: ", "proxy.spare_upstream: port 3002 is process 2's: app.instances = 3 take ports 3000 to 3002"},
		{"spare among the instances by name", head + "instances = 2\n[proxy]\nlisten = \":80\"\nspare_upstream = \"localhost:3001\"\n", "agent.toml:6:19: ", "proxy.spare_upstream: port 3001 is process 1's"},
		{"instance port is the health port", head + "instances = 2\n[health]\nlisten = \"127.0.0.1:3001\"\n[proxy]\nlisten = \":80\"\n", "agent.toml: ", `proxy.upstream: port 3001 is also health.listen ("127.0.0.1:3001")`},
		{"reload port is the metrics port", head + "instances = 2\n[proxy]\nlisten = \":80\"\n[metrics]\nlisten = \"127.0.0.1:3002\"\n", "agent.toml: ", `proxy.upstream: port 3002 is also metrics.listen ("127.0.0.1:3002")`},
		{"affinity", head + "[proxy]\naffinity = \"sticky\"\n", "agent.toml:4:13: ", `proxy.affinity: "sticky" is not one of "" (balance every request), cookie`},
		{"affinity not string", head + "[proxy]\naffinity = true\n", "agent.toml:4:12: ", "proxy.affinity: expected a string, got boolean true"},

		// The first error in the file wins, whatever its keyKind.
		{"first of two value errors", head + "[restart]\ndelay = \"1x\"\n[stop]\nsignal = \"FOO\"\n", "agent.toml:4:10: ", "restart.delay"},
		{"type error before unknown key", head + "[stop]\nsignal = 15\n[bogus]\n", "agent.toml:4:10: ", "stop.signal"},
		{"unknown key before type error", head + "[bogus]\n[stop]\nsignal = 15\n", "agent.toml:3:1: ", "unknown key bogus"},
	}
	if len(tests) < 20 {
		t.Fatalf("only %d cases", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := strings.ReplaceAll(strings.ReplaceAll(tt.toml, "ENVFILE", envFile), "PORTFILE", portFile)
			prefix := strings.ReplaceAll(tt.prefix, "ENVFILE", envFile)
			c, err := Parse("agent.toml", []byte(data))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			if c != nil {
				t.Errorf("Parse returned a config with the error")
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not a *ConfigError: %v", err, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, prefix) {
				t.Fatalf("error %q\n does not start with %q", msg, prefix)
			}
			if !strings.Contains(msg[len(prefix):], tt.frag) {
				t.Fatalf("error %q\n does not contain %q", msg, tt.frag)
			}
			// The same input gives the same error every time.
			for range 3 {
				if _, err2 := Parse("agent.toml", []byte(data)); err2.Error() != msg {
					t.Fatalf("second Parse: %q, first %q", err2, msg)
				}
			}
		})
	}
}

func TestConfigErrorFields(t *testing.T) {
	_, err := Parse("/etc/agent/agent.toml", []byte(head+"\n[restart]\nmax_delay = \"1q\"\n"))
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("error %T: %v", err, err)
	}
	want := ConfigError{Path: "/etc/agent/agent.toml", Line: 5, Col: 14, Key: "restart.max_delay"}
	if ce.Path != want.Path || ce.Line != want.Line || ce.Col != want.Col || ce.Key != want.Key {
		t.Errorf("got %+v, want %+v", *ce, want)
	}

	_, err = Parse("a.toml", []byte(head+"dir = \"/nonexistent\"\n"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing dir: errors.Is(%v, fs.ErrNotExist) = false", err)
	}

	_, err = Load(filepath.Join(t.TempDir(), "none.toml"))
	if !errors.Is(err, fs.ErrNotExist) || !errors.As(err, &ce) || ce.Line != 0 {
		t.Errorf("Load of a missing file: %v", err)
	}
	if !strings.HasSuffix(err.Error(), "none.toml: read config: no such file or directory") {
		t.Errorf("Load of a missing file: %q", err)
	}

	for _, tt := range []struct {
		e    ConfigError
		want string
	}{
		{ConfigError{Path: "a.toml", Line: 3, Col: 1, Msg: "unknown key x"}, "a.toml:3:1: unknown key x"},
		{ConfigError{Path: "a.toml", Line: 3, Col: 9, Key: "app.dir", Msg: "m"}, "a.toml:3:9: app.dir: m"},
		{ConfigError{Path: "a.env", Line: 2, Msg: "m"}, "a.env:2: m"},
		{ConfigError{Path: "a.toml", Key: "app.command", Msg: "is required"}, "a.toml: app.command: is required"},
	} {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.e, got, tt.want)
		}
	}
}

// idOf runs id(1) with args and returns its output as numbers.
func idOf(t *testing.T, args ...string) []uint32 {
	t.Helper()
	out, err := exec.Command("id", args...).Output()
	if err != nil {
		t.Fatalf("id %v: %v", args, err)
	}
	var ids []uint32
	for _, f := range strings.Fields(string(out)) {
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			t.Fatalf("id %v: %q", args, out)
		}
		ids = append(ids, uint32(n))
	}
	return ids
}

// gidOf returns the gid of a group as getent(1) reports it.
func gidOf(t *testing.T, group string) int {
	t.Helper()
	out, err := exec.Command("getent", "group", group).Output()
	if err != nil {
		t.Fatalf("getent group %s: %v", group, err)
	}
	f := strings.Split(strings.TrimSpace(string(out)), ":")
	gid, err := strconv.Atoi(f[2])
	if err != nil {
		t.Fatalf("getent group %s: %q", group, out)
	}
	return gid
}

func TestParseFull(t *testing.T) {
	dir := t.TempDir()
	logFile := filepath.Join(dir, "log", "web.log")
	envFile := filepath.Join(dir, "app.env")
	if err := os.WriteFile(envFile, []byte("# secrets\nDB_PASSWORD='hunter2'\nexport REGION=eu-west-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := `name = "web"

[app]
command = ["npm", "start", "--", "--port=3000"]
dir = "` + dir + `"
user = "nobody"
env = { NODE_ENV = "production", APP_MODE = "web" }
env_file = "` + envFile + `"
npm = "npm"
instances = 2

[node]
max_old_space_size = 384

[restart]
policy = "on-failure"
delay = "500ms"
max_delay = "30s"
reset_after = "2m"
max_restarts = 5
window = "1h"
on_exhausted = "exit"

[stop]
signal = "int"
timeout = "20s"
drain = "15s"

[memory]
max_rss = "700MB"
rss_grace = "10s"
watch_oom = false

[probe]
http = "http://127.0.0.1:3000/healthz"
interval = "1s"
timeout = "500ms"
failure_threshold = 5
startup_timeout = "90s"

[health]
listen = "0.0.0.0:9000"
path = "/lb"

[control]
socket = "/run/web/agent.sock"
group = "nogroup"

[proxy]
listen = ":80"
upstream = "127.0.0.1:3000"
spare_upstream = "[::1]:3002"
affinity = "cookie"
hold = "10s"
idle_timeout = "90s"

[log]
level = "debug"
format = "console"
file = "` + logFile + `"
max_size = "10MB"
max_files = 3

[metrics]
listen = "127.0.0.1:9100"
`
	c, err := Parse("web.toml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	ids := idOf(t, "-u", "nobody")
	gids := idOf(t, "-g", "nobody")
	groups := idOf(t, "-G", "nobody")
	want := &Config{
		Path: "web.toml",
		Name: "web",
		App: AppConfig{
			Command:     []string{"npm", "start", "--", "--port=3000"},
			Dir:         dir,
			User:        "nobody",
			Env:         map[string]string{"NODE_ENV": "production", "APP_MODE": "web"},
			EnvFile:     envFile,
			NPM:         "npm",
			Instances:   Instances{N: 2},
			Credential:  &syscall.Credential{Uid: ids[0], Gid: gids[0], Groups: groups},
			EnvFileVars: []string{"DB_PASSWORD=hunter2", "REGION=eu-west-1"},
		},
		Node: NodeConfig{MaxOldSpaceSize: HeapSetting{MB: 384}},
		Restart: RestartConfig{
			Policy:      "on-failure",
			Delay:       Duration(500 * time.Millisecond),
			MaxDelay:    Duration(30 * time.Second),
			ResetAfter:  Duration(2 * time.Minute),
			MaxRestarts: 5,
			Window:      Duration(time.Hour),
			OnExhausted: "exit",
		},
		Stop:   StopConfig{Signal: Signal(syscall.SIGINT), Timeout: Duration(20 * time.Second), Drain: Duration(15 * time.Second)},
		Memory: MemoryConfig{MaxRSS: 700 << 20, RSSGrace: Duration(10 * time.Second), WatchOOM: false},
		Probe: ProbeConfig{
			HTTP:             "http://127.0.0.1:3000/healthz",
			Interval:         Duration(time.Second),
			Timeout:          Duration(500 * time.Millisecond),
			FailureThreshold: 5,
			StartupTimeout:   Duration(90 * time.Second),
		},
		Health:  HealthConfig{Listen: "0.0.0.0:9000", Path: "/lb"},
		Control: ControlConfig{Socket: "/run/web/agent.sock", Group: "nogroup", GID: gidOf(t, "nogroup")},
		Proxy: ProxyConfig{
			Listen:        ":80",
			Upstream:      "127.0.0.1:3000",
			SpareUpstream: "[::1]:3002",
			Affinity:      "cookie",
			Hold:          Duration(10 * time.Second),
			IdleTimeout:   Duration(90 * time.Second),
		},
		Log: LogConfig{Level: "debug", Format: "console", File: logFile,
			MaxSize: 10 << 20, MaxFiles: 3},
		Metrics: MetricsConfig{Listen: "127.0.0.1:9100"},
	}
	if !sameConfig(c, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", c, want)
	}
	if !c.Probe.Enabled() {
		t.Error("Probe.Enabled() = false with probe.http set")
	}
	if !c.ProxyEnabled() {
		t.Error("ProxyEnabled() = false with proxy.listen set")
	}
	if c.Stop.Signal.Sys() != syscall.SIGINT || c.Restart.Delay.D() != 500*time.Millisecond {
		t.Errorf("Sys/D: %v %v", c.Stop.Signal.Sys(), c.Restart.Delay.D())
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse("min.toml", []byte(head))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Path = "min.toml"
	if !sameConfig(c, want) {
		t.Errorf("minimal config:\n got %+v\nwant %+v", c, want)
	}
	d := Default()
	if d.Probe.Enabled() {
		t.Error("default probe is enabled")
	}
	// The contract's defaults, spelled out once more.
	checks := []struct {
		name      string
		got, want any
	}{
		{"name", d.Name, "app"},
		{"app.command", d.App.Command, []string{"node", "server.js"}},
		{"app.credential", d.App.Credential, (*syscall.Credential)(nil)},
		{"node.max_old_space_size", d.Node.MaxOldSpaceSize, HeapSetting{Auto: true}},
		{"restart.policy", d.Restart.Policy, "always"},
		{"restart.delay", d.Restart.Delay.D(), time.Second},
		{"restart.max_delay", d.Restart.MaxDelay.D(), time.Minute},
		{"restart.reset_after", d.Restart.ResetAfter.D(), time.Minute},
		{"restart.max_restarts", d.Restart.MaxRestarts, 10},
		{"restart.window", d.Restart.Window.D(), 10 * time.Minute},
		{"restart.on_exhausted", d.Restart.OnExhausted, "unhealthy"},
		{"stop.signal", d.Stop.Signal.Sys(), syscall.SIGTERM},
		{"stop.timeout", d.Stop.Timeout.D(), 10 * time.Second},
		{"stop.drain", d.Stop.Drain.D(), time.Duration(0)},
		{"memory.max_rss", d.Memory.MaxRSS, ByteSize(0)},
		{"memory.rss_grace", d.Memory.RSSGrace.D(), 5 * time.Second},
		{"memory.watch_oom", d.Memory.WatchOOM, true},
		{"probe.interval", d.Probe.Interval.D(), 5 * time.Second},
		{"probe.timeout", d.Probe.Timeout.D(), 2 * time.Second},
		{"probe.failure_threshold", d.Probe.FailureThreshold, 3},
		{"probe.startup_timeout", d.Probe.StartupTimeout.D(), 5 * time.Minute},
		{"health.listen", d.Health.Listen, ":8081"},
		{"health.path", d.Health.Path, "/health.html"},
		{"control.socket", d.Control.Socket, "/run/agent/agent.sock"},
		{"control.gid", d.Control.GID, -1},
		{"log.level", d.Log.Level, "info"},
		{"log.format", d.Log.Format, "json"},
		{"app.npm", d.App.NPM, "direct"},
		{"app.instances", d.App.Instances, Instances{N: 1}},
		{"proxy.affinity", d.Proxy.Affinity, ""},
		{"proxy.listen", d.Proxy.Listen, ""},
		{"proxy.upstream", d.Proxy.Upstream, "127.0.0.1:3000"},
		{"proxy.spare_upstream", d.Proxy.SpareUpstream, ""},
		{"proxy.hold", d.Proxy.Hold.D(), 30 * time.Second},
		{"proxy.idle_timeout", d.Proxy.IdleTimeout.D(), 75 * time.Second},
		{"proxy enabled", d.ProxyEnabled(), false},
		{"log.file", d.Log.File, ""},
		{"log.max_size", d.Log.MaxSize, ByteSize(100 << 20)},
		{"log.max_files", d.Log.MaxFiles, 5},
		{"metrics.listen", d.Metrics.Listen, ""},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("default %s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

// configKeys lists every key of the config file, sections and their keys,
// in the order of the schema (the Config struct's fields, the contract's
// order).
func configKeys() []string {
	keys := make([]string, len(configSchema.keys))
	for i, k := range configSchema.keys {
		keys[i] = k.name
	}
	return keys
}

func TestConfigKeys(t *testing.T) {
	keys := configKeys()
	for _, want := range []string{"name", "app", "app.npm", "proxy.spare_upstream", "log.max_files", "metrics.listen"} {
		if !slices.Contains(keys, want) {
			t.Errorf("configKeys() lacks %s: %q", want, keys)
		}
	}
	if len(keys) < 50 {
		t.Errorf("only %d keys: %q", len(keys), keys)
	}
}

// exampleSetting matches a commented-out setting of agent.toml.example.
var exampleSetting = regexp.MustCompile(`^# ([a-z_]+) = (.*)$`)

func readExample(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("../agent.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestExample checks agent.toml.example against the schema: it parses to
// the defaults; every key is in it once, in the schema's order and in its
// section, commented out except app.command, with its default; and it has
// no key the schema lacks.
func TestExample(t *testing.T) {
	data := readExample(t)
	c, err := Parse("agent.toml.example", data)
	if err != nil {
		t.Fatalf("the example does not parse: %v", err)
	}
	want := Default()
	want.Path = "agent.toml.example"
	if !sameConfig(c, want) {
		t.Errorf("the example is not the defaults:\n got %+v\nwant %+v", c, want)
	}

	var seen []string
	section := ""
	var uncommented bytes.Buffer
	for i, line := range strings.Split(string(data), "\n") {
		at := fmt.Sprintf("agent.toml.example:%d", i+1)
		setting := ""
		switch {
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
			seen = append(seen, section)
			if k, ok := configSchema.key(section); !ok || !k.section {
				t.Errorf("%s: [%s] is not a section of the config", at, section)
			}
		case exampleSetting.MatchString(line):
			setting = strings.TrimPrefix(line, "# ")
		case strings.HasPrefix(line, "command = "):
			setting = line
		case line != "" && !strings.HasPrefix(line, "#"):
			t.Errorf("%s: unexpected setting %q", at, line)
		}
		if setting != "" {
			line = setting
			name, _, _ := strings.Cut(setting, " = ")
			if section != "" {
				name = section + "." + name
			}
			seen = append(seen, name)
			if k, ok := configSchema.key(name); !ok || k.section {
				t.Errorf("%s: %s is not a key of the config", at, name)
			} else {
				checkExampleDefault(t, at, k, section, setting)
			}
		}
		uncommented.WriteString(line + "\n")
	}
	if keys := configKeys(); !reflect.DeepEqual(seen, keys) {
		for _, k := range keys {
			if !slices.Contains(seen, k) {
				t.Errorf("the example lacks %s", k)
			}
		}
		t.Errorf("keys of the example:\n%q\nwant, in this order:\n%q", seen, keys)
	}

	// With every setting uncommented the example still gives the defaults.
	c, err = Parse("agent.toml.example", uncommented.Bytes())
	if err != nil {
		t.Fatalf("the uncommented example does not parse: %v\n%s", err, uncommented.Bytes())
	}
	if !sameConfig(c, want) {
		t.Errorf("the uncommented example is not the defaults:\n got %+v\nwant %+v", c, want)
	}
}

// checkExampleDefault checks that setting, the line of the key k in the
// example (in section), shows k's default.
func checkExampleDefault(t *testing.T, at string, k schemaKey, section, setting string) {
	t.Helper()
	var doc string
	switch {
	case k.name == "app.command":
		doc = "[app]\n" + setting + "\n"
	case section == "":
		doc = setting + "\n" + head
	case section == "app":
		doc = head + setting + "\n"
	default:
		doc = head + "[" + section + "]\n" + setting + "\n"
	}
	c, err := Parse("example", []byte(doc))
	if err != nil {
		t.Errorf("%s: %s: %v", at, setting, err)
		return
	}
	got := reflect.ValueOf(c).Elem().FieldByIndex(k.index).Interface()
	def := reflect.ValueOf(Default()).Elem().FieldByIndex(k.index).Interface()
	if !reflect.DeepEqual(got, def) {
		t.Errorf("%s: %s shows %v, but the default is %v", at, k.name, got, def)
	}
}

func TestWriteEffective(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, "app.env")
	secret := "s3cr3t-value"
	if err := os.WriteFile(envFile, []byte("TOKEN="+secret+"\nOTHER=\"x y\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := head + `user = "nobody"
env = { NODE_ENV = "production", QUOTE = "a \"b\" \\ c\td" }
env_file = "` + envFile + `"
[memory]
max_rss = "1536M"
[probe]
tcp = "127.0.0.1:3000"
[restart]
delay = "1500ms"
max_delay = "90s"
[control]
group = "nogroup"
[proxy]
listen = "0.0.0.0:80"
spare_upstream = "127.0.0.1:3001"
hold = "2500ms"
[log]
file = "` + filepath.Join(dir, "agent.log") + `"
max_size = "64M"
max_files = 2
[metrics]
listen = "127.0.0.1:9100"
`
	c, err := Parse("agent.toml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := c.WriteEffective(&out, 512); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if strings.Contains(text, secret) || strings.Contains(text, "x y") {
		t.Errorf("effective config shows env_file values:\n%s", text)
	}
	for _, want := range []string{
		`env_file = "` + envFile + `"  # 2 variables (values not shown)`,
		"max_old_space_size = 512  # auto",
		`max_rss = "1536MiB"`,
		`delay = "1500ms"`,
		`max_delay = "90s"`,
		`user = "nobody"  # uid 65534`,
		`group = "nogroup"  # gid `,
		`listen = "0.0.0.0:80"`,
		`spare_upstream = "127.0.0.1:3001"`,
		`hold = "2500ms"`,
		`idle_timeout = "75s"`,
		`max_size = "64MiB"`,
		`max_files = 2`,
		`listen = "127.0.0.1:9100"`,
		`npm = "direct"  # npm scripts run without npm`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("effective config lacks %q:\n%s", want, text)
		}
	}

	// It parses back to the same config, with the heap cap now a number.
	back, err := Parse("agent.toml", out.Bytes())
	if err != nil {
		t.Fatalf("effective config does not parse: %v\n%s", err, text)
	}
	want := *c
	want.Node.MaxOldSpaceSize = HeapSetting{MB: 512}
	if !sameConfig(back, &want) {
		t.Errorf("round trip:\n got %+v\nwant %+v\n%s", back, &want, text)
	}
	// Every key is written.
	md, err := toml.Decode(text, new(map[string]any))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range configKeys() {
		if !md.IsDefined(strings.Split(key, ".")...) {
			t.Errorf("effective config lacks %s", key)
		}
	}

	// Defaults round-trip too, and a fixed heap setting is kept.
	d := Default()
	d.Node.MaxOldSpaceSize = HeapSetting{MB: 0}
	out.Reset()
	if err := d.WriteEffective(&out, 999); err != nil {
		t.Fatal(err)
	}
	back, err = Parse("", out.Bytes())
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !sameConfig(back, d) {
		t.Errorf("defaults round trip:\n got %+v\nwant %+v\n%s", back, d, out.String())
	}
}

func TestUserResolution(t *testing.T) {
	want := &syscall.Credential{
		Uid:    idOf(t, "-u", "nobody")[0],
		Gid:    idOf(t, "-g", "nobody")[0],
		Groups: idOf(t, "-G", "nobody"),
	}
	for _, name := range []string{"nobody", strconv.Itoa(int(want.Uid))} {
		c, err := Parse("a.toml", []byte(head+"user = \""+name+"\"\n"))
		if err != nil {
			t.Fatalf("user %q: %v", name, err)
		}
		if !reflect.DeepEqual(c.App.Credential, want) {
			t.Errorf("user %q: credential %+v, want %+v", name, c.App.Credential, want)
		}
	}
	root, err := Parse("a.toml", []byte(head+"user = \"root\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cr := root.App.Credential; cr == nil || cr.Uid != 0 || cr.Gid != 0 || len(cr.Groups) == 0 {
		t.Errorf("root: %+v", root.App.Credential)
	}
	none, err := Parse("a.toml", []byte(head))
	if err != nil {
		t.Fatal(err)
	}
	if none.App.Credential != nil {
		t.Errorf("no user: credential %+v, want nil", none.App.Credential)
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(path, []byte(head+"[log]\nlevel = \"warn\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Path != path || c.Log.Level != "warn" {
		t.Errorf("Load: path %q level %q", c.Path, c.Log.Level)
	}
	if err := os.WriteFile(path, []byte(head+"[log]\nlevel = \"loud\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.HasPrefix(err.Error(), path+":4:10: log.level:") {
		t.Errorf("Load of a bad file: %v", err)
	}
}

func TestDuration(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		str  string
	}{
		{"0s", 0, "0s"},
		{"0", 0, "0s"},
		{"1s", time.Second, "1s"},
		{"60s", time.Minute, "60s"},
		{"1m", time.Minute, "60s"},
		{"10m", 10 * time.Minute, "10m"},
		{"1h", time.Hour, "60m"},
		{"2h", 2 * time.Hour, "2h"},
		{"1h30m", 90 * time.Minute, "90m"},
		{"1500ms", 1500 * time.Millisecond, "1500ms"},
		{"1.5us", 1500 * time.Nanosecond, "1.5µs"},
	} {
		var d Duration
		if err := d.UnmarshalText([]byte(tt.in)); err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if d.D() != tt.want || d.String() != tt.str {
			t.Errorf("%q: %v %q, want %v %q", tt.in, d.D(), d.String(), tt.want, tt.str)
		}
		var back Duration
		if err := back.UnmarshalText([]byte(d.String())); err != nil || back != d {
			t.Errorf("%q: round trip %v %v", tt.in, back, err)
		}
	}
	for _, in := range []string{"", "1", "1x", "-1s", "s", "1 s"} {
		var d Duration
		if err := d.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q: no error, got %v", in, d.D())
		}
	}
}

func TestByteSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want uint64
		str  string
	}{
		{"0", 0, "0"},
		{"1048576", 1 << 20, "1MiB"},
		{"1000", 1000, "1000"},
		{"512K", 512 << 10, "512KiB"},
		{"512kb", 512 << 10, "512KiB"},
		{"700M", 700 << 20, "700MiB"},
		{"700MB", 700 << 20, "700MiB"},
		{"700MiB", 700 << 20, "700MiB"},
		{"700 MB", 700 << 20, "700MiB"},
		{"1536M", 1536 << 20, "1536MiB"},
		{"1G", 1 << 30, "1GiB"},
		{"1GiB", 1 << 30, "1GiB"},
		{"2gb", 2 << 30, "2GiB"},
		{"1T", 1 << 40, "1TiB"},
		{"10B", 10, "10"},
	} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(tt.in)); err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if uint64(b) != tt.want || b.String() != tt.str {
			t.Errorf("%q: %d %q, want %d %q", tt.in, b, b.String(), tt.want, tt.str)
		}
		var back ByteSize
		if err := back.UnmarshalText([]byte(b.String())); err != nil || back != b {
			t.Errorf("%q: round trip %v %v", tt.in, back, err)
		}
	}
	for _, in := range []string{"", "M", "-1", "1.5G", "700XB", "1P", "99999999999999999999", "20000000T"} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q: no error, got %d", in, b)
		}
	}
}

func TestSignal(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want syscall.Signal
	}{
		{"SIGTERM", syscall.SIGTERM},
		{"TERM", syscall.SIGTERM},
		{"sigterm", syscall.SIGTERM},
		{"term", syscall.SIGTERM},
		{"SIGINT", syscall.SIGINT},
		{"HUP", syscall.SIGHUP},
		{"QUIT", syscall.SIGQUIT},
		{"SIGKILL", syscall.SIGKILL},
		{"usr1", syscall.SIGUSR1},
		{"SIGUSR2", syscall.SIGUSR2},
	} {
		var s Signal
		if err := s.UnmarshalText([]byte(tt.in)); err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if s.Sys() != tt.want {
			t.Errorf("%q: %v, want %v", tt.in, s.Sys(), tt.want)
		}
		if !strings.HasPrefix(s.String(), "SIG") || !strings.EqualFold(strings.TrimPrefix(s.String(), "SIG"), strings.TrimPrefix(strings.ToUpper(tt.in), "SIG")) {
			t.Errorf("%q: String() = %q", tt.in, s.String())
		}
	}
	for _, in := range []string{"", "SIG", "SIGFOO", "15", "SIGSTOP", "SIGTERM2", "TERMINATE"} {
		s := Signal(syscall.SIGTERM)
		if err := s.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q: no error, got %v", in, s)
		}
	}
	if got := Signal(syscall.SIGTERM).String(); got != "SIGTERM" {
		t.Errorf("String() = %q", got)
	}
}

func TestHeapSetting(t *testing.T) {
	for _, tt := range []struct {
		toml string
		want HeapSetting
	}{
		{`"auto"`, HeapSetting{Auto: true}},
		{`"AUTO"`, HeapSetting{Auto: true}},
		{`512`, HeapSetting{MB: 512}},
		{`"512"`, HeapSetting{MB: 512}},
		{`0`, HeapSetting{}},
		{`"0"`, HeapSetting{}},
	} {
		c, err := Parse("a.toml", []byte(head+"[node]\nmax_old_space_size = "+tt.toml+"\n"))
		if err != nil {
			t.Errorf("%s: %v", tt.toml, err)
			continue
		}
		if c.Node.MaxOldSpaceSize != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.toml, c.Node.MaxOldSpaceSize, tt.want)
		}
	}
	for _, in := range []string{"", "-1", "512MB", "auto2", "1e3", "99999999999"} {
		var h HeapSetting
		if err := h.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q: no error, got %+v", in, h)
		}
	}
}

func TestProbeEnabled(t *testing.T) {
	for _, tt := range []struct {
		toml string
		want bool
	}{
		{"", false},
		{"[probe]\ninterval = \"1s\"\n", false},
		{"[probe]\nhttp = \"http://127.0.0.1:3000/\"\n", true},
		{"[probe]\ntcp = \"127.0.0.1:3000\"\n", true},
		{"[probe]\ntcp = \":3000\"\n", true},
		{"[probe]\nhttp = \"http://[::1]:3000/ready?x=1\"\n", true},
	} {
		c, err := Parse("a.toml", []byte(head+tt.toml))
		if err != nil {
			t.Errorf("%q: %v", tt.toml, err)
			continue
		}
		if c.Probe.Enabled() != tt.want {
			t.Errorf("%q: Enabled() = %v", tt.toml, !tt.want)
		}
	}
}

func TestHealthListenAccepted(t *testing.T) {
	for _, listen := range []string{":8081", "0.0.0.0:80", "127.0.0.1:0", "[::]:8081", "localhost:8081"} {
		if _, err := Parse("a.toml", []byte(head+"[health]\nlisten = \""+listen+"\"\n")); err != nil {
			t.Errorf("%q: %v", listen, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(readExampleForFuzz())
	f.Add([]byte(head))
	f.Add([]byte(head + "env = { A = \"x\", \"1B\" = 2 }\n[[x]]\n"))
	f.Add([]byte("app = { command = [\"x\"], dri = \"/\" }\n[restart]\ndelay = \"1x\"\n"))
	f.Add([]byte(head + "env.A.B = \"x\"\n\"a,b\" = 1\n[memory]\nmax_rss = 5\n"))
	f.Add([]byte(head + "user = \"\"\"\nnobody\"\"\"\n[node]\nmax_old_space_size = \"auto\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.toml", data)
		if err != nil {
			if c != nil {
				t.Fatal("config returned with an error")
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T: %v", err, err)
			}
			if ce.Line < 0 || ce.Col < 0 || ce.Line > bytes.Count(data, []byte("\n"))+1 {
				t.Fatalf("position %d:%d out of the file: %v", ce.Line, ce.Col, err)
			}
			return
		}
		if len(c.App.Command) == 0 || c.App.Command[0] == "" || c.Stop.Timeout <= 0 || c.Probe.FailureThreshold < 1 {
			t.Fatalf("invalid config accepted: %+v", c)
		}
		var out bytes.Buffer
		if err := c.WriteEffective(&out, 256); err != nil {
			t.Fatal(err)
		}
	})
}

func readExampleForFuzz() []byte {
	data, _ := os.ReadFile("../agent.toml.example")
	return data
}

func TestProxyAccepted(t *testing.T) {
	for _, tt := range []struct {
		name, toml string
		enabled    bool
	}{
		{"off by default", "", false},
		{"upstream set, proxy off", "[proxy]\nupstream = \"127.0.0.1:8081\"\n", false},
		{"on", "[proxy]\nlisten = \":80\"\n", true},
		{"all keys", "[proxy]\nlisten = \":80\"\nupstream = \"[::1]:3000\"\nspare_upstream = \"localhost:3001\"\nhold = \"5s\"\nidle_timeout = \"120s\"\n", true},
		{"upstream in 127/8", "[proxy]\nlisten = \":80\"\nupstream = \"127.0.0.2:3000\"\nspare_upstream = \"127.0.0.3:3000\"\n", true},
		{"same port, other addresses", "[health]\nlisten = \"10.0.0.1:8081\"\n[proxy]\nlisten = \"10.0.0.2:8081\"\n[metrics]\nlisten = \"127.0.0.1:8081\"\n", true},
		{"ephemeral ports", "[health]\nlisten = \"127.0.0.1:0\"\n[proxy]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n", true},
		{"metrics on", "[metrics]\nlisten = \"127.0.0.1:9100\"\n", false},
		{"short idle timeout is allowed", "[proxy]\nlisten = \":80\"\nidle_timeout = \"5s\"\n", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("a.toml", []byte(head+tt.toml))
			if err != nil {
				t.Fatal(err)
			}
			if c.ProxyEnabled() != tt.enabled {
				t.Errorf("ProxyEnabled() = %v", !tt.enabled)
			}
		})
	}
}

func TestLogFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "log", "agent")
	path := filepath.Join(dir, "web.log")
	conf := []byte(head + "[log]\nfile = \"" + path + "\"\n")
	if _, err := Parse("a.toml", conf); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o750&^fs.FileMode(umask()) {
		t.Errorf("directory mode %v, want 0750", fi.Mode().Perm())
	}
	fi, err = os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640&^fs.FileMode(umask()) || fi.Size() != 0 {
		t.Errorf("file mode %v size %d, want 0640 and empty", fi.Mode().Perm(), fi.Size())
	}
	// An existing file is kept as it is, never truncated.
	if err := os.WriteFile(path, []byte("old line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse("a.toml", conf); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(path); err != nil || string(data) != "old line\n" {
		t.Errorf("existing file: %q %v", data, err)
	}
	// A path that cannot be opened for append: see TestParseErrors.
}

// umask returns the process's umask.
func umask() int {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return m
}

// bigConfig returns a valid config of about size bytes, nearly all of it
// an [app.env] table, with inline tables and dotted keys as well.
func bigConfig(size int) (data string, vars int) {
	var b strings.Builder
	b.WriteString(head + "[restart]\ndelay = \"2s\"\n[app.env]\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "VAR_%d = \"value number %d, with \\\"escapes\\\" and \\u00e9\"\n", i, i)
		vars++
	}
	return b.String(), vars
}

// TestParseLarge parses a 4 MiB config: it works, and every variable is
// there.
func TestParseLarge(t *testing.T) {
	data, n := bigConfig(4 << 20)
	c, err := Parse("big.toml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.App.Env) != n || c.Restart.Delay.D() != 2*time.Second {
		t.Fatalf("%d variables, want %d; delay %v", len(c.App.Env), n, c.Restart.Delay)
	}
	if got, want := c.App.Env["VAR_7"], "value number 7, with \"escapes\" and é"; got != want {
		t.Errorf("VAR_7 = %q, want %q", got, want)
	}
	// An error at the end of a large file is found and positioned.
	bad := data + "[stop]\nsignal = \"SIGFOO\"\n"
	_, err = Parse("big.toml", []byte(bad))
	line := strings.Count(bad, "\n")
	if want := fmt.Sprintf("big.toml:%d:11: stop.signal: unknown signal", line); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %v, want %q...", err, want)
	}
}

func BenchmarkParseConfig4MiB(b *testing.B) {
	data, _ := bigConfig(4 << 20)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("big.toml", []byte(data)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseExample(b *testing.B) {
	data := readExampleForFuzz()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("agent.toml.example", data); err != nil {
			b.Fatal(err)
		}
	}
}

// sameConfig reports whether a and b say the same, whatever text each was
// parsed from (Config.Data).
func sameConfig(a, b *Config) bool {
	x, y := *a, *b
	x.Data, y.Data = nil, nil
	return reflect.DeepEqual(&x, &y)
}
