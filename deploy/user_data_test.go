// Package deploy holds the tests of the deployment files: the user_data
// bootstrap, the Terraform example, and the end-to-end tests that boot a real
// systemd: one with the agent's .deb installed, one running user_data.sh.
package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
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
	scripts, err := filepath.Glob("e2e/*.sh")
	if err != nil {
		t.Fatal(err)
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
		"NODE_MAJOR": "20", "MAX_RSS": "700MB", "HEALTH_PORT": "9090",
		"AGENT_PKG_URL": "", "AGENT_BIN_URL": "", "AGENT_SHA256": "",
	})
	cfg, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
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
