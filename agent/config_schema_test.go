package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSchemaDefaults(t *testing.T) {
	// Each Default is a config of its own.
	a, b := Default(), Default()
	a.App.Command[0] = "changed"
	if b.App.Command[0] != "node" || Default().App.Command[0] != "node" {
		t.Errorf("two defaults share app.command: %q", b.App.Command)
	}
	// Every default tag is read, also on a field that is no key.
	if n := len(configSchema.defaults); n < 30 {
		t.Errorf("only %d defaults read", n)
	}
	if d := Default(); d.Control.GID != -1 || d.Log.MaxSize != 100<<20 || d.Stop.Signal.String() != "SIGTERM" {
		t.Errorf("defaults: gid %d, max_size %v, signal %v", d.Control.GID, d.Log.MaxSize, d.Stop.Signal)
	}
	// A tag that cannot be read panics when the schema is read.
	for _, typ := range []reflect.Type{
		reflect.TypeFor[struct {
			D Duration `toml:"d" default:"1x"`
		}](),
		reflect.TypeFor[struct {
			N int `toml:"n" default:"ten"`
		}](),
		reflect.TypeFor[struct {
			N int `toml:"n" reload:"later"`
		}](),
		reflect.TypeFor[struct {
			F float64 `toml:"f" default:"1.5"`
		}](),
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%v: no panic", typ)
				}
			}()
			readSchema(typ)
		}()
	}
}

// TestRestartKeys pins the keys whose change needs an agent restart.
func TestRestartKeys(t *testing.T) {
	var got []string
	for _, k := range configSchema.keys {
		if k.restart && !k.section {
			got = append(got, k.name)
		}
	}
	want := []string{
		"memory.watch_oom",
		"health.listen", "health.path",
		"control.socket", "control.group",
		"proxy.listen", "proxy.upstream", "proxy.spare_upstream", "proxy.affinity", "proxy.hold", "proxy.idle_timeout",
		"log.level", "log.format", "log.file", "log.max_size", "log.max_files",
		"metrics.listen",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("restart keys:\n%q\nwant\n%q", got, want)
	}
}

func TestRestartNeeded(t *testing.T) {
	for _, tt := range []struct {
		name   string
		change func(c *Config)
		want   []string
	}{
		{"nothing", func(*Config) {}, nil},
		{"applied by a reload", func(c *Config) {
			c.Restart.Delay = Duration(5 * time.Second)
			c.App.Env = map[string]string{"A": "1"}
			c.Probe.HTTP = "http://127.0.0.1:3000/"
			c.Memory.MaxRSS = 1 << 30
			c.Path = "other.toml"
		}, nil},
		{"proxy.listen", func(c *Config) { c.Proxy.Listen = ":80" }, []string{"proxy.listen"}},
		{"several, sorted", func(c *Config) {
			c.Metrics.Listen = "127.0.0.1:9100"
			c.Log.Level = "debug"
			c.Memory.WatchOOM = false
			c.Health.Path = "/lb"
			c.Control.Group = "adm"
			c.Control.GID = 4
			c.Proxy.IdleTimeout = Duration(90 * time.Second)
		}, []string{"control.group", "health.path", "log.level", "memory.watch_oom", "metrics.listen", "proxy.idle_timeout"}},
		{"resolved only", func(c *Config) { c.Control.GID = 7 }, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			old, cur := Default(), Default()
			tt.change(cur)
			if got := RestartNeeded(old, cur); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("RestartNeeded = %q, want %q", got, tt.want)
			}
			if got := RestartNeeded(cur, old); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("RestartNeeded back = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, "app.env")
	if err := os.WriteFile(envFile, []byte("PORT=3000\nPORT=4000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const proxyOn = "[proxy]\nlisten = \":80\"\n"
	for _, tt := range []struct {
		name, toml string
		want       []string // ENVFILE is replaced
	}{
		{"none", head, nil},
		{"heap flag", "[app]\ncommand = [\"node\", \"--max-old-space-size=512\", \"server.js\"]\n",
			[]string{`agent.toml:2:12: app.command: "--max-old-space-size=512" sets the heap size itself; it wins over node.max_old_space_size`}},
		{"heap flag with underscores", "[app]\ncommand = [\"node\", \"--max_old_space_size\", \"512\", \"s.js\"]\n[node]\nmax_old_space_size = 256\n",
			[]string{`agent.toml:2:12: app.command: "--max_old_space_size" sets the heap size itself; it wins over node.max_old_space_size`}},
		{"heap flag, NODE_OPTIONS left alone", "[app]\ncommand = [\"node\", \"--max-old-space-size=512\", \"server.js\"]\n[node]\nmax_old_space_size = 0\n", nil},
		{"heap flag as the program", "[app]\ncommand = [\"--max-old-space-size\"]\n", nil},
		{"PORT in env", head + "env = { PORT = \"3001\" }\n" + proxyOn,
			[]string{`agent.toml:3:9: app.env.PORT: "3001" is another port than proxy.upstream's ("127.0.0.1:3000"): the proxy forwards to proxy.upstream, not to the app's PORT`}},
		{"PORT in env, not a number", head + "[app.env]\nPORT = \"http\"\n" + proxyOn,
			[]string{`agent.toml:4:9: app.env.PORT: "http" is another port than proxy.upstream's ("127.0.0.1:3000"): the proxy forwards to proxy.upstream, not to the app's PORT`}},
		{"PORT in env, the upstream's", head + "env = { PORT = \"3001\" }\n" + proxyOn + "upstream = \"[::1]:3001\"\n", nil},
		{"PORT in env, proxy off", head + "env = { PORT = \"3001\" }\n", nil},
		{"PORT in env_file", head + "env_file = \"ENVFILE\"\n" + proxyOn,
			[]string{`agent.toml:3:13: app.env_file: PORT "4000" is another port than proxy.upstream's ("127.0.0.1:3000"): the proxy forwards to proxy.upstream, not to the app's PORT`}},
		{"PORT in env wins over env_file", head + "env_file = \"ENVFILE\"\nenv = { PORT = \"3000\" }\n" + proxyOn, nil},
		{"short idle timeout", head + proxyOn + "idle_timeout = \"30s\"\n",
			[]string{`agent.toml:5:17: proxy.idle_timeout: 30s is below the ALB's 60s idle timeout: the ALB may reuse a connection the agent is closing (502)`}},
		{"short idle timeout, proxy off", head + "[proxy]\nidle_timeout = \"30s\"\n", nil},
		{"in the order of the sections", "[proxy]\nidle_timeout = \"59s\"\nlisten = \":80\"\n[app]\ncommand = [\"node\", \"--max-old-space-size=1\"]\nenv.PORT = \"1\"\n",
			[]string{
				`agent.toml:5:12: app.command: "--max-old-space-size=1" sets the heap size itself; it wins over node.max_old_space_size`,
				`agent.toml:2:17: proxy.idle_timeout: 59s is below the ALB's 60s idle timeout: the ALB may reuse a connection the agent is closing (502)`,
				`agent.toml:6:13: app.env.PORT: "1" is another port than proxy.upstream's ("127.0.0.1:3000"): the proxy forwards to proxy.upstream, not to the app's PORT`,
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("agent.toml", []byte(strings.ReplaceAll(tt.toml, "ENVFILE", envFile)))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range c.Warnings {
				got = append(got, w.String())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("warnings:\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func TestNewWarnings(t *testing.T) {
	parse := func(data string) *Config {
		t.Helper()
		c, err := Parse("agent.toml", []byte(data))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	short := "[proxy]\nlisten = \":80\"\nidle_timeout = \"30s\"\n"
	old := parse(head + short)
	// The same warning, two lines further down, and a new one.
	cur := parse(head + "\n\n" + short + "[app.env]\nPORT = \"3001\"\n")
	if len(old.Warnings) != 1 || len(cur.Warnings) != 2 {
		t.Fatalf("warnings: old %v, cur %v", old.Warnings, cur.Warnings)
	}
	got := NewWarnings(old, cur)
	if len(got) != 1 || got[0].Key != "app.env.PORT" || got[0].Line != 9 {
		t.Errorf("NewWarnings = %v, want the PORT one", got)
	}
	if got := NewWarnings(cur, old); got != nil {
		t.Errorf("NewWarnings back = %v, want none", got)
	}
	if got := NewWarnings(nil, cur); !slices.Equal(got, cur.Warnings) {
		t.Errorf("NewWarnings(nil) = %v, want all of %v", got, cur.Warnings)
	}
}

func TestInstancesAccepted(t *testing.T) {
	const proxyOn = "[proxy]\nlisten = \":80\"\n"
	for _, tt := range []struct {
		name, toml string
		want       Instances
	}{
		{"default", "", Instances{N: 1}},
		{"one without proxy", "instances = 1\n", Instances{N: 1}},
		{"two", "instances = 2\n" + proxyOn, Instances{N: 2}},
		{"auto", "instances = \"auto\"\n" + proxyOn, Instances{Auto: true}},
		{"AUTO", "instances = \"AUTO\"\n" + proxyOn, Instances{Auto: true}},
		{"the most", "instances = 64\n" + proxyOn, Instances{N: 64}},
		{"up to the last port", "instances = 2\n" + proxyOn + "upstream = \"127.0.0.1:65533\"\n", Instances{N: 2}},
		{"spare after the instances", "instances = 2\n" + proxyOn + "spare_upstream = \"127.0.0.1:3002\"\n", Instances{N: 2}},
		{"spare below the instances", "instances = 2\n" + proxyOn + "upstream = \"127.0.0.1:3001\"\nspare_upstream = \"127.0.0.1:3000\"\n", Instances{N: 2}},
		{"spare on another loopback address", "instances = 2\n" + proxyOn + "spare_upstream = \"127.0.0.2:3001\"\n", Instances{N: 2}},
		{"PORT with one instance", "env = { PORT = \"3000\" }\n" + proxyOn, Instances{N: 1}},
		{"affinity", "instances = 2\n" + proxyOn + "affinity = \"cookie\"\n", Instances{N: 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("a.toml", []byte(head+tt.toml))
			if err != nil {
				t.Fatal(err)
			}
			if c.App.Instances != tt.want {
				t.Errorf("instances %+v, want %+v", c.App.Instances, tt.want)
			}
			if n := c.App.Instances.Count(); n < 1 || n > MaxInstances || !tt.want.Auto && n != tt.want.N {
				t.Errorf("Count() = %d", n)
			}
		})
	}
	var in Instances
	for _, text := range []string{"0", "65", "-1", "two", "1.5", ""} {
		if err := in.UnmarshalText([]byte(text)); err == nil {
			t.Errorf("%q: no error, got %+v", text, in)
		}
	}
}

func TestWriteEffectiveInstances(t *testing.T) {
	for _, tt := range []struct {
		toml string
		want []string
	}{
		{"instances = 3\n[proxy]\nlisten = \":80\"\naffinity = \"cookie\"\n", []string{
			"instances = 3  # ports 3000, 3001, 3002\n",
			`spare_upstream = ""  # the port after the last process: 3003` + "\n",
			`affinity = "cookie"` + "\n",
		}},
		{"instances = \"auto\"\n[proxy]\nlisten = \":80\"\nspare_upstream = \"127.0.0.1:4000\"\n", []string{
			`instances = "auto"  # ` + strconv.Itoa(Instances{Auto: true}.Count()) + ": the CPUs the agent may use; ports 3000",
			`spare_upstream = "127.0.0.1:4000"` + "\n",
			`affinity = ""  # balance every request` + "\n",
		}},
		{"", []string{"instances = 1\n", `spare_upstream = ""  # reload without overlap` + "\n"}},
	} {
		c, err := Parse("a.toml", []byte(head+tt.toml))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := c.WriteEffective(&out, 256); err != nil {
			t.Fatal(err)
		}
		for _, want := range tt.want {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%q: effective config lacks %q:\n%s", tt.toml, want, out.String())
			}
		}
		back, err := Parse("a.toml", out.Bytes())
		if err != nil {
			t.Fatalf("%q: the effective config does not parse: %v", tt.toml, err)
		}
		if back.App.Instances != c.App.Instances || back.Proxy != c.Proxy {
			t.Errorf("%q: round trip: %+v %+v", tt.toml, back.App.Instances, back.Proxy)
		}
	}
}
