// Package deploy holds the tests of the deployment files: the user_data
// bootstrap, the Terraform example, and the end-to-end tests that boot a real
// systemd: one with the agent's .deb installed, one running user_data.sh.
package deploy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"agent/agent"
)

var placeholder = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// templateVars returns the sorted names of the Terraform placeholders in
// user_data.sh, and fails on any other template syntax: Terraform would read
// a shell ${x:-y} or %{ as its own and refuse the file.
func templateVars(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("user_data.sh")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	if n, m := strings.Count(s, "${"), len(placeholder.FindAllString(s, -1)); n != m {
		t.Errorf("user_data.sh has %d ${ but %d plain ${NAME} placeholders: shell expansions with braces clash with templatefile", n, m)
	}
	if strings.Contains(s, "%{") {
		t.Errorf("user_data.sh contains %%{, a Terraform template directive")
	}
	seen := map[string]bool{}
	var names []string
	for _, m := range placeholder.FindAllStringSubmatch(s, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			names = append(names, m[1])
		}
	}
	sort.Strings(names)
	return names
}

// render fills the placeholders as templatefile would.
func render(t *testing.T, values map[string]string) string {
	t.Helper()
	data, err := os.ReadFile("user_data.sh")
	if err != nil {
		t.Fatal(err)
	}
	return placeholder.ReplaceAllStringFunc(string(data), func(m string) string {
		name := placeholder.FindStringSubmatch(m)[1]
		v, ok := values[name]
		if !ok {
			t.Errorf("no value for %s", name)
		}
		return v
	})
}

func TestShellcheck(t *testing.T) {
	if _, err := exec.LookPath("shellcheck"); err != nil {
		t.Skip("shellcheck is not installed (apt-get install -y shellcheck)")
	}
	var scripts []string
	// The package's maintainer scripts too (POSIX sh, by their shebang).
	for _, pattern := range []string{"e2e/*.sh", "vm/*.sh", "../packaging/scripts/*.sh"} {
		found, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		scripts = append(scripts, found...)
	}
	scripts = append(scripts, "user_data.sh")
	out, err := exec.Command("shellcheck", append([]string{"--severity=style"}, scripts...)...).CombinedOutput()
	if err != nil {
		t.Errorf("shellcheck %s: %v\n%s", strings.Join(scripts, " "), err, out)
	}
}

func TestUserDataRendered(t *testing.T) {
	values := map[string]string{
		"APP_NAME":      "web",
		"APP_REPO":      "https://example.com/app.git",
		"APP_REF":       "main",
		"APP_DIR":       "/srv/app",
		"APP_USER":      "app",
		"APP_COMMAND":   "npm start",
		"APP_PORT":      "3000",
		"NODE_MAJOR":    "20",
		"MAX_RSS":       "700MB",
		"HEALTH_PORT":   "8081",
		"PROXY_PORT":    "80",
		"STOP_DRAIN":    "20s",
		"AGENT_PKG_URL": "https://example.com/agent_0.1.0_amd64.deb",
		"AGENT_BIN_URL": "",
		"AGENT_SHA256":  "",
	}
	script := render(t, values)
	path := filepath.Join(t.TempDir(), "user_data.sh")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-n", path).CombinedOutput(); err != nil {
		t.Errorf("bash -n on the rendered script: %v\n%s", err, out)
	}
	if _, err := exec.LookPath("shellcheck"); err == nil {
		if out, err := exec.Command("shellcheck", path).CombinedOutput(); err != nil {
			t.Errorf("shellcheck on the rendered script: %v\n%s", err, out)
		}
	}

	for _, want := range []string{
		"#!/bin/bash\n",
		"\nset -euo pipefail\n",
		"  systemctl enable --now agent\n",
		"retry 3 curl -fsSL --proto '=https,http'",
		"/etc/agent/agent.toml",
		"agent check --config /etc/agent/agent.toml",
		"dnf install",
		"apt-get install",
		"npm ci",
		"npm run build --if-present",
		`echo "bootstrap: failed in step $step (exit $rc) after $SECONDS s" >&2`,
		`readonly HEALTH_PORT="8081"`,
		`readonly PROXY_PORT="80"`,
	} {
		if !strings.Contains(script, want) {
			t.Errorf("rendered user_data.sh lacks %q", want)
		}
	}
	for _, bad := range []string{"sudo ", "su -", "| bash", "| sh\n", "| sh -"} {
		if strings.Contains(script, bad) {
			t.Errorf("user_data.sh contains %q", bad)
		}
	}
}

// userDataConfig runs the script's config writer (the settings block and
// write_config, with /etc/agent moved into a temporary directory) on values and
// returns the path of the agent.toml it wrote.
func userDataConfig(t *testing.T, values map[string]string) string {
	t.Helper()
	script := render(t, values)
	start := strings.Index(script, "# Settings.")
	fn := strings.Index(script, "write_config() {")
	if start < 0 || fn < 0 {
		t.Fatal("user_data.sh: settings or write_config not found")
	}
	end := strings.Index(script[fn:], "\n}\n")
	stop := strings.Index(script[start:], "\nexec ")
	if end < 0 || stop < 0 {
		t.Fatal("user_data.sh: end of settings or write_config not found")
	}
	dir := t.TempDir()
	settings := script[start : start+stop]
	body := strings.ReplaceAll(script[fn:fn+end+3], "/etc/agent", dir)
	out, err := exec.Command("bash", "-c", "set -euo pipefail\n"+settings+"\n"+body+"\nwrite_config").CombinedOutput()
	if err != nil {
		t.Fatalf("write_config: %v\n%s", err, out)
	}
	return filepath.Join(dir, "agent.toml")
}

// TestUserDataConfig checks the TOML the script writes from its settings.
func TestUserDataConfig(t *testing.T) {
	path := userDataConfig(t, map[string]string{
		"APP_NAME": "shop", "APP_REPO": "r", "APP_REF": "main", "APP_DIR": "/srv/shop",
		"APP_USER": "shop", "APP_COMMAND": "node dist/server.js *", "APP_PORT": "4000",
		"NODE_MAJOR": "20", "MAX_RSS": "700MB", "HEALTH_PORT": "9090", "PROXY_PORT": "", "STOP_DRAIN": "",
		"AGENT_PKG_URL": "", "AGENT_BIN_URL": "", "AGENT_SHA256": "",
	})
	cfg, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if c := parseConfig(t, path); c.ProxyEnabled() {
		t.Errorf("the proxy is on with PROXY_PORT empty:\n%s", cfg)
	}
	if strings.Contains(string(cfg), "[proxy]") {
		t.Errorf("config has a [proxy] section with PROXY_PORT empty:\n%s", cfg)
	}
	if strings.Contains(string(cfg), "[stop]") {
		t.Errorf("config has a [stop] section with STOP_DRAIN empty:\n%s", cfg)
	}
	for _, want := range []string{
		`name = "shop"`,
		`command = ["node", "dist/server.js", "*"]`,
		`dir = "/srv/shop"`,
		`user = "shop"`,
		`PORT = "4000"`,
		`max_rss = "700MB"`,
		`http = "http://127.0.0.1:4000/"`,
		`listen = ":9090"`,
		`path = "/health.html"`,
	} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("config lacks %s:\n%s", want, cfg)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("config mode: %v %v, want 0640", fi.Mode(), err)
	}
}

// parseConfig parses path with the agent's own config parser (as `agent check`
// does) and fails the test on any error. The app's directory and user, which
// the parser looks up, become a temporary directory and this test's user.
func parseConfig(t *testing.T, path string) *agent.Config {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "dir = "):
			line = fmt.Sprintf("dir = %q", t.TempDir())
		case strings.HasPrefix(line, "user = "):
			continue
		}
		lines = append(lines, line)
	}
	c, err := agent.Parse(path, []byte(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatalf("the agent refuses the config user_data writes: %v", err)
	}
	return c
}

// TestUserDataConfigProxy checks proxy mode: the agent owns PROXY_PORT, the app
// gets its PORT from the agent (app.env does not pin it, or reload could not
// overlap) and binds loopback, the spare port is APP_PORT+1, the health port is
// on loopback.
func TestUserDataConfigProxy(t *testing.T) {
	path := userDataConfig(t, map[string]string{
		"APP_NAME": "shop", "APP_REPO": "r", "APP_REF": "main", "APP_DIR": "/srv/shop",
		"APP_USER": "shop", "APP_COMMAND": "npm start", "APP_PORT": "4000",
		"NODE_MAJOR": "20", "MAX_RSS": "0", "HEALTH_PORT": "9090", "PROXY_PORT": "80", "STOP_DRAIN": "20s",
		"AGENT_PKG_URL": "", "AGENT_BIN_URL": "", "AGENT_SHA256": "",
	})
	cfg, _ := os.ReadFile(path)
	c := parseConfig(t, path)
	if !c.ProxyEnabled() {
		t.Fatalf("the proxy is off with PROXY_PORT=80:\n%s", cfg)
	}
	for _, f := range []struct{ name, got, want string }{
		{"proxy.listen", c.Proxy.Listen, ":80"},
		{"proxy.upstream", c.Proxy.Upstream, "127.0.0.1:4000"},
		{"proxy.spare_upstream", c.Proxy.SpareUpstream, "127.0.0.1:4001"},
		{"proxy.hold", c.Proxy.Hold.String(), "30s"},
		{"proxy.idle_timeout", c.Proxy.IdleTimeout.String(), "75s"},
		{"health.listen", c.Health.Listen, "127.0.0.1:9090"},
		{"health.path", c.Health.Path, "/health.html"},
		{"probe.http", c.Probe.HTTP, "http://127.0.0.1:4000/"},
		{"app.env HOST", c.App.Env["HOST"], "127.0.0.1"},
		{"app.env NODE_ENV", c.App.Env["NODE_ENV"], "production"},
		{"stop.drain", c.Stop.Drain.String(), "20s"},
	} {
		if f.got != f.want {
			t.Errorf("%s = %q, want %q:\n%s", f.name, f.got, f.want, cfg)
		}
	}
	if p, ok := c.App.Env["PORT"]; ok {
		t.Errorf("app.env pins PORT = %q: the agent must give the app its port (reload runs it on the spare)", p)
	}
}

// TestUserDataBadPorts: a port that is not a number stops the script before
// it installs anything, naming the setting.
func TestUserDataBadPorts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the script checks its settings after checking it runs as root")
	}
	for _, tc := range []struct{ name, app, proxy, want string }{
		{"proxy port", "3000", "http", "PROXY_PORT is not a port number: http"},
		{"app port", "30 00", "", "APP_PORT is not a port number: 30 00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := render(t, map[string]string{
				"APP_NAME": "web", "APP_REPO": "r", "APP_REF": "main", "APP_DIR": "/nonexistent/app",
				"APP_USER": "app", "APP_COMMAND": "npm start", "APP_PORT": tc.app,
				"NODE_MAJOR": "20", "MAX_RSS": "0", "HEALTH_PORT": "8081", "PROXY_PORT": tc.proxy, "STOP_DRAIN": "",
				"AGENT_PKG_URL": "", "AGENT_BIN_URL": "http://127.0.0.1:1/agent", "AGENT_SHA256": "",
			})
			// Up to the first step: the checks, nothing that changes the machine.
			cut := strings.Index(script, "\ntmp=$(mktemp -d)")
			if cut < 0 {
				t.Fatal("user_data.sh: tmp=$(mktemp -d) not found")
			}
			head := strings.Replace(script[:cut], "/var/log/agent-bootstrap.log", filepath.Join(t.TempDir(), "bootstrap.log"), 1)
			out, err := exec.Command("bash", "-c", head+"\nexit 0").CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("the script's checks: %v, want exit 1:\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, out)
			}
		})
	}
}
