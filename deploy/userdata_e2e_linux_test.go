package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"agent/internal/testkit"
)

// TestUserDataEndToEnd runs deploy/user_data.sh for real in a booted Debian 12
// container that shares this machine's network: the apt branch installs Node
// and git from Debian's mirrors, npm comes from the npm registry, the app is
// cloned from a git daemon on loopback and built, and the agent is downloaded
// from an HTTP server on loopback. The script runs as cloud-init runs it: as
// root, in a service of the booted systemd, with no terminal and no standard
// input.
//
// Two full runs, each on a fresh overlay of the cached tree: the .deb with a
// Next.js site (built by `npm run build`), and the bare binary with a plain
// Node app in proxy mode. Each checks the result, a reboot and a second run;
// the proxy-mode run then sends requests through the proxy during `agentctl
// restart`, `agentctl reload`, `systemctl restart agent` and a SIGKILL of the
// agent (see proxyTraffic). A third
// container takes the failure paths (unreachable repository, failing build,
// wrong sha256), each stopping at its step.
func TestUserDataEndToEnd(t *testing.T) {
	rootfs := e2eRootfs(t)
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("the user_data end-to-end test needs git (git daemon serves the app)")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	bin, deb := buildPackage(t, root, work, "0.0.0-userdata")
	nspawnRuntime(t)

	// The inputs, served on loopback (which the containers share).
	files := serveFiles(t, map[string]string{
		"agent.deb": deb,
		"agent":     filepath.Join(bin, "agent"),
	})
	// Without the npm registry the apps are plain Node apps without a
	// package.json (no npm needed); the test says so and goes on.
	registry := npmPing()
	if !registry {
		t.Log("the npm registry is unreachable: using plain Node apps without package.json (no Next.js build, no npm)")
	}
	base := filepath.Join(work, "git")
	serverJS := mustRead(t, filepath.Join(root, "deploy/demo/server.js"))
	plain := map[string]string{"server.js": serverJS}
	if registry {
		plain["package.json"] = plainPackageJSON
		plain["build.js"] = plainBuildJS
	}
	makeRepo(t, base, "plain.git", plain)
	makeRepo(t, base, "broken.git", map[string]string{"server.js": serverJS, "package.json": brokenPackageJSON})
	if registry {
		next := map[string]string{}
		for _, f := range []string{"package.json", "package-lock.json", "app/layout.js", "app/page.js"} {
			next[f] = mustRead(t, filepath.Join(root, "deploy/e2e/nextapp", f))
		}
		makeRepo(t, base, "next.git", next)
	}
	gitURL := gitDaemon(t, base)

	sum := func(path string) string {
		h := sha256.Sum256([]byte(mustRead(t, path)))
		return hex.EncodeToString(h[:])
	}

	t.Run("deb", func(t *testing.T) {
		r := fullRun{
			name: "deb", repo: gitURL + "/plain.git", command: "node server.js",
			pkgURL: files + "/agent.deb", sha: sum(deb), built: "built.txt", page: "hello from pid",
		}
		if registry {
			r.repo, r.command, r.built, r.page = gitURL+"/next.git", "npm start", ".next/BUILD_ID", "hello from next"
		} else {
			r.built = ""
		}
		r.run(t, rootfs)
	})
	t.Run("binary", func(t *testing.T) {
		// In proxy mode, with traffic through the proxy during restarts and a reload.
		r := fullRun{
			name: "bin", repo: gitURL + "/plain.git", command: "npm start",
			binURL: files + "/agent", sha: sum(filepath.Join(bin, "agent")), built: "built.txt", page: "hello from pid",
			proxy: true,
		}
		if !registry {
			r.command, r.built = "node server.js", ""
		}
		r.run(t, rootfs)
	})
	t.Run("failures", func(t *testing.T) {
		failures(t, rootfs, gitURL, files, sum(deb), registry)
	})
}

const (
	plainPackageJSON = `{
  "name": "plain",
  "version": "1.0.0",
  "private": true,
  "scripts": { "build": "node build.js", "start": "node server.js" }
}
`
	plainBuildJS = `require('fs').writeFileSync('built.txt', 'built at ' + new Date().toISOString() + '\n');
`
	brokenPackageJSON = `{
  "name": "broken",
  "version": "1.0.0",
  "private": true,
  "scripts": { "build": "node -e \"console.error('build: syntax error in app/page.js'); process.exit(3)\"" }
}
`
)

// fullRun is one complete bootstrap of a fresh container.
type fullRun struct {
	name    string // short, for the machine name and the log
	repo    string // git URL of the app
	command string // APP_COMMAND
	pkgURL  string // AGENT_PKG_URL, or
	binURL  string // AGENT_BIN_URL
	sha     string // AGENT_SHA256
	built   string // a file the build leaves in the app directory ("" = none)
	page    string // what the app's page says
	proxy   bool   // proxy mode (PROXY_PORT set)
}

func (r fullRun) run(t *testing.T, rootfs string) {
	start := time.Now()
	tree := overlay(t, rootfs)
	t.Logf("overlay of the cached tree mounted in %v", time.Since(start).Round(time.Millisecond))
	// The app's port and the next one (the spare for reloads), the health
	// port, the proxy's.
	ports := testkit.Ports(t, 4)
	opts := bootOptions{hostNetwork: true, appPort: strconv.Itoa(ports[0]), healthPort: strconv.Itoa(ports[2])}
	if r.proxy {
		opts.proxyPort = strconv.Itoa(ports[3])
	}
	c := bootTimed(t, tree, r.name, opts)

	// The cached tree has Node (the other end-to-end test needs it): take it
	// away so that the script must install it, as on a fresh instance.
	c.must("apt-get", "purge", "-y", "-q", "nodejs")
	for _, tool := range []string{"node", "git", "npm"} {
		if out, err := c.run("sh", "-c", "command -v "+tool); err == nil {
			t.Fatalf("%s is in the container before the script ran: %s", tool, out)
		}
	}

	values := scriptValues(r.repo, "/srv/app", r.command, opts, r.pkgURL, r.binURL, r.sha)
	res := runUserData(t, c, values)
	t.Logf("%s: boot %v, script %v, first health 200 after %v", r.name, c.bootTime.Round(time.Millisecond),
		res.took.Round(time.Millisecond), res.first200.Round(time.Millisecond))
	if res.err != nil {
		t.Fatalf("user_data.sh failed: %v\n%s", res.err, tailString(res.log, 40))
	}
	t.Logf("%s: the script's steps: %s", r.name, steps(res.log))
	if res.first200 < 0 {
		t.Errorf("the health page never answered 200 after the script")
	}

	// Node and git came from this run of the script.
	var installed []string
	history := mustRead(t, filepath.Join(tree, "var/log/apt/history.log"))
	for _, line := range strings.Split(history, "\n") {
		if l, ok := strings.CutPrefix(line, "Install: "); ok {
			installed = append(installed, l)
		}
	}
	for _, p := range []string{"nodejs:amd64", "git:amd64"} {
		if !strings.Contains(strings.Join(installed, ", "), p+" (") {
			t.Errorf("apt history has no install of %s:\n%s", p, tailString(history, 20))
		}
	}
	// The agent as this run installs it.
	if r.pkgURL != "" {
		c.must("dpkg", "-s", "agent")
	} else if _, err := os.Stat(filepath.Join(tree, "etc/systemd/system/agent.service")); err != nil {
		t.Errorf("agent install wrote no unit: %v", err)
	}
	if strings.Contains(r.command, "npm") || r.built != "" {
		if _, err := c.run("sh", "-c", "command -v npm"); err != nil {
			t.Errorf("npm is not installed: %v", err)
		}
	}
	c.must("id", "-u", "app")
	if _, err := os.Stat(filepath.Join(tree, "srv/app/.git/shallow")); err != nil {
		t.Errorf("the app was not cloned (shallow): %v", err)
	}
	if r.built != "" {
		if fi, err := os.Stat(filepath.Join(tree, "srv/app", r.built)); err != nil {
			t.Errorf("the app was not built: %v", err)
		} else if uid := fi.Sys().(*syscall.Stat_t).Uid; strconv.Itoa(int(uid)) != strings.TrimSpace(c.must("id", "-u", "app")) {
			t.Errorf("%s is owned by uid %d, not by the app user", r.built, uid)
		}
	}
	// systemctl enable --now (or agent install) returned only once the app
	// served: the script's first health check, right after it, passed.
	if !strings.Contains(res.log, "bootstrap: step health") {
		t.Errorf("the script never reached its health step")
	}
	if strings.Contains(res.log, "retrying (1/6): curl") {
		t.Errorf("the first health check after the agent's start failed: the start returned before the app served")
	}
	r.check(t, c, "after the script")

	// A reboot brings everything back by itself.
	since := time.Now()
	_, _ = c.run("systemctl", "reboot")
	select {
	case <-c.done:
	case <-time.After(bootTimeout):
		t.Fatalf("the container did not go down within %v after systemctl reboot", bootTimeout)
	}
	c = bootTimed(t, tree, r.name, opts)
	st := c.serving(t, bootTimeout, "the agent to serve after the reboot")
	t.Logf("%s: reboot to serving in %v", r.name, time.Since(since).Round(time.Millisecond))
	if st.Restarts != 0 {
		t.Errorf("restarts = %d after the reboot, want 0", st.Restarts)
	}
	r.check(t, c, "after a reboot")

	// A second run changes nothing that matters and ends serving again.
	passwd := mustRead(t, filepath.Join(tree, "etc/passwd"))
	config := withoutComments(mustRead(t, filepath.Join(tree, "etc/agent/agent.toml")))
	procs := appProcesses(c)
	res = runUserData(t, c, values)
	t.Logf("%s: second run of the script %v", r.name, res.took.Round(time.Millisecond))
	if res.err != nil {
		t.Fatalf("second run of user_data.sh failed: %v\n%s", res.err, tailString(res.log, 40))
	}
	if after := mustRead(t, filepath.Join(tree, "etc/passwd")); after != passwd {
		t.Errorf("/etc/passwd changed on the second run")
	}
	if after := withoutComments(mustRead(t, filepath.Join(tree, "etc/agent/agent.toml"))); after != config {
		t.Errorf("the config changed on the second run:\n%s\nwas:\n%s", after, config)
	}
	r.check(t, c, "after a second run")
	if n := appProcesses(c); n != procs {
		t.Errorf("%d processes of the app user after the second run, %d before", n, procs)
	}
	if r.proxy {
		proxyTraffic(t, c, r.page)
	}
}

// steps returns the "step NAME (at N s)" parts of a bootstrap log, joined.
func steps(log string) string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if st, ok := strings.CutPrefix(line, "bootstrap: step "); ok {
			out = append(out, st)
		}
	}
	return strings.Join(out, ", ")
}

// appProcesses counts the processes of the app user (the app's tree).
func appProcesses(c *container) int {
	out, _ := c.run("pgrep", "-u", "app")
	return len(strings.Fields(out))
}

// check verifies a serving, enabled agent and the app's page.
func (r fullRun) check(t *testing.T, c *container, when string) {
	t.Helper()
	c.serving(t, stepTimeout, "the agent to serve "+when)
	if e := c.show("UnitFileState"); e != "enabled" {
		t.Errorf("%s: UnitFileState = %s, want enabled", when, e)
	}
	// From this machine: the container shares its network.
	code, body := httpGet("http://127.0.0.1:" + c.opts.healthPort + "/health.html")
	if code != http.StatusOK {
		t.Errorf("%s: health page answered %d, want 200", when, code)
	}
	code, body = httpGet("http://127.0.0.1:" + c.opts.appPort + "/")
	if code != http.StatusOK || !strings.Contains(body, r.page) {
		t.Errorf("%s: the app answered %d %q, want 200 with %q", when, code, body, r.page)
	}
	if !r.proxy {
		return
	}
	// What the load balancer sees: the health page and the app through the proxy.
	if code, body := httpGet("http://127.0.0.1:" + c.opts.proxyPort + "/health.html"); code != http.StatusOK {
		t.Errorf("%s: health page on the proxy port answered %d %q, want 200", when, code, body)
	}
	if code, body := httpGet("http://127.0.0.1:" + c.opts.proxyPort + "/"); code != http.StatusOK || !strings.Contains(body, r.page) {
		t.Errorf("%s: the app through the proxy answered %d %q, want 200 with %q", when, code, body, r.page)
	}
	// Only the proxy listens beyond loopback.
	for _, port := range []string{c.opts.appPort, c.opts.healthPort} {
		if addrs := listeners(c, port); !slices.Equal(addrs, []string{"127.0.0.1:" + port}) {
			t.Errorf("%s: port %s is bound on %q, want 127.0.0.1 only", when, port, addrs)
		}
	}
}

// listeners returns the local addresses the container's TCP listeners on
// port are bound to.
func listeners(c *container, port string) []string {
	out, _ := c.run("ss", "-Htln", "sport = :"+port)
	var addrs []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 4 {
			addrs = append(addrs, f[3])
		}
	}
	slices.Sort(addrs)
	return addrs
}

// failures runs the script once per failure a user meets, in one container
// (the first run installs the packages the others reuse). Each must end
// non-zero, name its step in /var/log/agent-bootstrap.log and leave no agent
// installed or enabled.
func failures(t *testing.T, rootfs, gitURL, files, debSHA string, registry bool) {
	tree := overlay(t, rootfs)
	ports := testkit.Ports(t, 3)
	opts := bootOptions{hostNetwork: true, appPort: strconv.Itoa(ports[0]), healthPort: strconv.Itoa(ports[1])}
	c := bootTimed(t, tree, "fail", opts)
	closed := strconv.Itoa(ports[2]) // nothing listens there

	cases := []struct {
		name, repo, dir, sha string
		step, detail         string
	}{
		{"unreachable repository", "git://127.0.0.1:" + closed + "/app.git", "/srv/norepo", debSHA,
			"clone", "unable to connect"},
		{"wrong sha256", gitURL + "/plain.git", "/srv/badsum", strings.Repeat("0", 64),
			"download", "checksum mismatch for " + files + "/agent.deb"},
	}
	if registry {
		cases = append(cases, struct {
			name, repo, dir, sha string
			step, detail         string
		}{"failing build", gitURL + "/broken.git", "/srv/broken", debSHA, "build", "build: syntax error in app/page.js"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			values := scriptValues(tc.repo, tc.dir, "node server.js", opts, files+"/agent.deb", "", tc.sha)
			res := runUserData(t, c, values)
			t.Logf("%s: the script ended after %v; its last lines:\n%s", tc.name,
				res.took.Round(time.Millisecond), tailString(res.log, 3))
			if res.err == nil {
				t.Fatalf("user_data.sh succeeded, want a failure:\n%s", tailString(res.log, 20))
			}
			if want := "bootstrap: failed in step " + tc.step + " "; !strings.Contains(res.log, want) {
				t.Errorf("the log lacks %q:\n%s", want, tailString(res.log, 20))
			}
			if !strings.Contains(res.log, tc.detail) {
				t.Errorf("the log lacks %q:\n%s", tc.detail, tailString(res.log, 20))
			}
			if a := c.show("ActiveState"); a == "active" || a == "activating" {
				t.Errorf("agent.service is %s after a failed bootstrap", a)
			}
			if e := c.show("UnitFileState"); e == "enabled" {
				t.Errorf("agent.service is enabled after a failed bootstrap")
			}
			if _, err := os.Stat(filepath.Join(tree, "usr/bin/agent")); err == nil {
				t.Errorf("/usr/bin/agent is installed after a failed bootstrap")
			}
		})
	}
}

// scriptValues are the template settings of user_data.sh for one run.
func scriptValues(repo, dir, command string, opts bootOptions, pkgURL, binURL, sha string) map[string]string {
	return map[string]string{
		"APP_NAME": "web", "APP_REPO": repo, "APP_REF": "main", "APP_DIR": dir,
		"APP_USER": "app", "APP_COMMAND": command, "APP_PORT": opts.appPort,
		"NODE_MAJOR": "20", "MAX_RSS": "0", "HEALTH_PORT": opts.healthPort, "PROXY_PORT": opts.proxyPort, "STOP_DRAIN": "",
		"AGENT_PKG_URL": pkgURL, "AGENT_BIN_URL": binURL, "AGENT_SHA256": sha,
	}
}

// bootTimed boots tree with a container named after the run, stopped at
// cleanup, and records how long the boot took.
func bootTimed(t *testing.T, tree, name string, opts bootOptions) *container {
	t.Helper()
	start := time.Now()
	console := filepath.Join(filepath.Dir(tree), "console.log")
	c := boot(t, tree, fmt.Sprintf("agent-ud-%s-%d", name, os.Getpid()), console, opts)
	c.bootTime = time.Since(start)
	t.Cleanup(c.stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("container console (last lines):\n%s", tail(console, 40))
			if !c.exited() {
				out, _ := c.run("journalctl", "-u", "agent.service", "--no-pager", "-n", "60")
				t.Logf("journal of agent.service:\n%s", out)
			}
		}
	})
	return c
}

// userDataResult is what one run of the script gave.
type userDataResult struct {
	err      error
	took     time.Duration
	first200 time.Duration // since the script started; -1 if never seen
	log      string        // what this run appended to /var/log/agent-bootstrap.log
}

// runUserData renders user_data.sh with values, puts it where cloud-init keeps
// it and runs it as cloud-init does: as root, in a service of the container's
// systemd, standard input /dev/null, output to the journal and the console.
// Meanwhile it polls the health port from this machine for the first 200.
func runUserData(t *testing.T, c *container, values map[string]string) userDataResult {
	t.Helper()
	const scriptTimeout = 10 * time.Minute
	script := render(t, values)
	rel := "var/lib/cloud/instance/scripts/part-001"
	if err := os.MkdirAll(filepath.Join(c.dir, filepath.Dir(rel)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, rel), []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(c.dir, "var/log/agent-bootstrap.log")
	var offset int64
	if fi, err := os.Stat(logPath); err == nil {
		offset = fi.Size()
	}

	trustLocalCAs(t, c)
	c.runs++
	unit := fmt.Sprintf("user-data-%d", c.runs)
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	argv := append([]string{"-t", strconv.Itoa(c.init), "-a", "--", "/usr/bin/env", "-i"}, containerEnv...)
	argv = append(argv, "systemd-run", "--unit="+unit, "--wait", "--collect", "--quiet",
		"--property=StandardInput=null", "--property=StandardOutput=journal+console",
		"--property=TimeoutStartSec=infinity")
	if c.localCAs {
		// Node reads its own CA list, not the system's.
		argv = append(argv, "--setenv=NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt")
	}
	argv = append(argv, "/bin/bash", "/"+rel)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)

	// The health port is polled from this machine until it answers 200, up to
	// 30 s past a successful script: the script ends a moment after the agent
	// serves, so its end is no bound.
	res := userDataResult{first200: -1}
	polls, lastPoll := 0, ""
	healthURL := "http://127.0.0.1:" + values["HEALTH_PORT"] + "/health.html"
	start := time.Now()
	giveUp := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			code, body := httpGet(healthURL)
			if code == http.StatusOK {
				res.first200 = time.Since(start)
				return
			}
			polls++
			lastPoll = fmt.Sprintf("%d %s", code, body)
			select {
			case <-giveUp:
				return
			case <-tick.C:
			}
		}
	}()
	out, err := cmd.CombinedOutput()
	res.took = time.Since(start)
	if err != nil {
		res.err = fmt.Errorf("systemd-run %s: %w: %s", unit, err, strings.TrimSpace(string(out)))
		close(giveUp)
	} else {
		defer time.AfterFunc(30*time.Second, func() { close(giveUp) }).Stop()
	}
	wg.Wait()
	if res.first200 < 0 && res.err == nil {
		t.Logf("%s: no 200 from %s in %d polls; last: %s", unit, healthURL, polls, lastPoll)
	}
	if data, err := os.ReadFile(logPath); err == nil && int64(len(data)) >= offset {
		res.log = string(data[offset:])
	}
	return res
}

// trustLocalCAs gives the container the certificate authorities this machine
// added to its own (/usr/local/share/ca-certificates), as an image built for a
// network behind a TLS-inspecting proxy has them: without them nothing in the
// container could reach the npm registry from such a network.
func trustLocalCAs(t *testing.T, c *container) {
	t.Helper()
	if c.localCAs {
		return
	}
	crts, _ := filepath.Glob("/usr/local/share/ca-certificates/*.crt")
	if len(crts) == 0 {
		return
	}
	for _, crt := range crts {
		copyInto(t, crt, filepath.Join(c.dir, "usr/local/share/ca-certificates", filepath.Base(crt)), 0o644)
	}
	// Before the script installs ca-certificates, whose set-up takes them in.
	if _, err := os.Stat(filepath.Join(c.dir, "usr/sbin/update-ca-certificates")); err == nil {
		c.must("update-ca-certificates")
	}
	c.localCAs = true
	t.Logf("the container trusts this machine's local certificate authorities: %d", len(crts))
}

// serveFiles serves the named files over HTTP on loopback until cleanup and
// returns the base URL.
func serveFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path, ok := files[strings.TrimPrefix(r.URL.Path, "/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeFile(w, r, path)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// makeRepo makes a bare git repository base/name whose branch main holds files.
func makeRepo(t *testing.T, base, name string, files map[string]string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	for f, content := range files {
		p := filepath.Join(src, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gitEnv := append(os.Environ(), "GIT_AUTHOR_NAME=e2e", "GIT_AUTHOR_EMAIL=e2e@localhost",
		"GIT_COMMITTER_NAME=e2e", "GIT_COMMITTER_EMAIL=e2e@localhost", "GIT_CONFIG_NOSYSTEM=1", "HOME="+src)
	for _, args := range [][]string{
		{"-C", src, "init", "-q", "-b", "main"},
		{"-C", src, "add", "-A"},
		{"-C", src, "commit", "-q", "-m", "app"},
		{"clone", "-q", "--bare", src, filepath.Join(base, name)},
	} {
		cmd := exec.Command("git", args...)
		cmd.Env = gitEnv
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// gitDaemon serves the repositories under base on loopback until cleanup and
// returns the base URL (git://127.0.0.1:PORT).
func gitDaemon(t *testing.T, base string) string {
	t.Helper()
	port := strconv.Itoa(testkit.Port(t))
	cmd := exec.Command("git", "daemon", "--export-all", "--reuseaddr", "--base-path="+base,
		"--listen=127.0.0.1", "--port="+port, base)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("git daemon: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		// The daemon and the children it forks per connection.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	testkit.EventuallyEvery(t, 30*time.Second, pollInterval, "git daemon to listen", func() (bool, string) {
		select {
		case <-done:
			t.Fatalf("git daemon exited: %s", stderr.String())
		default:
		}
		conn, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	})
	return "git://127.0.0.1:" + port
}

// reachable reports whether a GET of url answers at all within 15 seconds.
// npmPing reports whether npm's configured registry answers (`npm ping`).
func npmPing() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "npm", "ping").Run() == nil
}

// httpGet returns the status code and body of a GET of url (0 when nothing
// answers within 5 seconds).
func httpGet(url string) (int, string) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(body)
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// withoutComments drops the comment lines of a config (the writer stamps one
// with the time).
func withoutComments(s string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
