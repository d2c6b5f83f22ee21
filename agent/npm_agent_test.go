package agent

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"agent/internal/procfs"
	"agent/internal/testapp"
	"agent/internal/testkit"
)

// treeComms returns the command names of the agent's descendants: the app's
// whole process tree.
func treeComms(t *testing.T) []string {
	t.Helper()
	procs, err := procfs.Descendants(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var comms []string
	for _, p := range procs {
		if !p.Zombie() {
			comms = append(comms, p.Comm)
		}
	}
	return comms
}

func environOf(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

func hasEnv(env []string, prefix string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, prefix) {
			return true
		}
	}
	return false
}

func TestNpmStartRunsWithoutNpm(t *testing.T) {
	node := needNode(t)
	dir := t.TempDir()
	port := freePort(t)
	pkg := `{"name": "shop", "version": "1.2.3", "scripts": {
  "prestart": "node -e \"require('fs').writeFileSync('pre-ran', process.env.npm_lifecycle_event)\"",
  "start": "node server.js"}}`
	os.WriteFile(filepath.Join(dir, "package.json"), []byte(pkg), 0o644)
	os.WriteFile(filepath.Join(dir, "server.js"), []byte(`require('http').createServer((q, s) => s.end('ok')).listen(process.env.PORT, '127.0.0.1', () => console.log('listening', process.argv.slice(2).join(' ')));`), 0o644)
	r := startAgent(t, fmt.Sprintf(`
[app]
command = ["npm", "start", "--", "--flag", "two words"]
dir = %q
env = { PORT = "%d", PATH = "%s:/usr/bin:/bin" }
[node]
max_old_space_size = 300
[memory]
watch_oom = false
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
[probe]
tcp = "127.0.0.1:%d"
`, dir, port, filepath.Dir(node), port))
	s := r.waitState("running")

	if b, err := os.ReadFile(filepath.Join(dir, "pre-ran")); err != nil || string(b) != "prestart" {
		t.Errorf("prestart did not run first as npm runs it: %q, %v", b, err)
	}
	comms := treeComms(t)
	for _, c := range comms {
		if c == "npm" || c == "sh" || strings.HasPrefix(c, "npm ") {
			t.Errorf("the app's tree %v holds %q: npm start must run without npm or a shell", comms, c)
		}
	}
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", *s.PID))
	if filepath.Base(exe) != "node" {
		t.Errorf("status pid %d runs %s, want node itself", *s.PID, exe)
	}
	env := environOf(t, *s.PID)
	for _, want := range []string{"npm_lifecycle_event=start", "npm_package_name=shop", "npm_package_version=1.2.3", "NODE_OPTIONS=--max-old-space-size=300"} {
		if !hasEnv(env, want) {
			t.Errorf("the app's environment lacks %s", want)
		}
	}
	logs := r.a.output.Last(50)
	found := false
	for _, l := range logs {
		found = found || strings.Contains(l.Text, "listening --flag two words")
	}
	if !found {
		t.Errorf("arguments after -- did not reach the app as npm passes them: %+v", logs)
	}
}

func TestFailingPrestartIsTheStartsFailure(t *testing.T) {
	node := needNode(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"scripts": {"prestart": "echo building; exit 3", "start": "node server.js"}}`), 0o644)
	os.WriteFile(filepath.Join(dir, "server.js"), []byte(`setInterval(() => {}, 1000)`), 0o644)
	r := startAgent(t, fmt.Sprintf(`
[app]
command = ["npm", "start"]
dir = %q
env = { PATH = "%s:/usr/bin:/bin" }
[restart]
delay = "0s"
max_restarts = 1
[memory]
watch_oom = false
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
`, dir, filepath.Dir(node)))
	s := r.waitState("failed")
	if s.LastExit == nil || s.LastExit.Reason != "crashed" || s.LastExit.Code == nil || *s.LastExit.Code != 3 {
		t.Fatalf("last exit %+v, want crashed (code 3)", s.LastExit)
	}
	found := false
	for _, l := range r.a.output.Last(20) {
		found = found || l.Text == "building"
	}
	if !found {
		t.Error("prestart's output is not in the app's log")
	}
}

// TestNextStartBehindTheProxy runs the real Next.js app (`next` from npm)
// as `npm start` behind the proxy: next-server is the app's process, with
// the heap cap, and gated restarts and reloads under load lose nothing.
func TestNextStartBehindTheProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Next.js app")
	}
	node := needNode(t)
	dir := testapp.NextApp(t)
	app := fmt.Sprintf("command = [\"npm\", \"start\"]\ndir = %q\nenv = { PATH = \"%s:/usr/bin:/bin\", NEXT_TELEMETRY_DISABLED = \"1\" }", dir, filepath.Dir(node))
	text, addr := proxyConfig(t, app, "[node]\nmax_old_space_size = 256\n")
	r := startAgent(t, text)
	base := "http://" + addr
	waitServed(t, r, base)

	s := r.ctlStatus()
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", *s.PID)); !strings.HasPrefix(string(comm), "next-server") {
		t.Errorf("status pid %d is %q, want next-server", *s.PID, comm)
	}
	for _, c := range treeComms(t) {
		if c == "npm" || c == "sh" || strings.HasPrefix(c, "npm ") {
			t.Errorf("npm start left %q in the tree", c)
		}
	}
	if !hasEnv(environOf(t, *s.PID), "NODE_OPTIONS=--max-old-space-size=256") {
		t.Error("next-server lacks the heap cap")
	}

	l := startLoadPath(base, 4, "/")
	r.ask("restart", r.client().Restart)
	r.waitState("running")
	r.ask("reload", r.client().Reload)
	l.finish(t)
}

// TestNextStartInstancesBehindTheProxy: two processes of a real Next.js app
// under npm start (PM2's cluster mode cannot run it): both serve, and a
// rolling reload under load loses nothing.
func TestNextStartInstancesBehindTheProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Next.js app")
	}
	node := needNode(t)
	dir := testapp.NextApp(t)
	ports := testkit.Ports(t, 4) // the proxy, two processes, the spare
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	r := startAgent(t, fmt.Sprintf(`
name = "web"
[app]
command = ["npm", "start"]
dir = %q
env = { PATH = "%s:/usr/bin:/bin", NEXT_TELEMETRY_DISABLED = "1" }
instances = 2
[node]
max_old_space_size = 256
[stop]
timeout = "5s"
[memory]
watch_oom = false
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
[proxy]
listen = %q
upstream = "127.0.0.1:%d"
`, dir, filepath.Dir(node), addr, ports[1]))
	s := r.allReady(2)
	for _, in := range s.Instances {
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", *in.PID)); !strings.HasPrefix(string(comm), "next-server") {
			t.Errorf("instance %d: pid %d is %q, want next-server", in.Index, *in.PID, comm)
		}
	}
	base := "http://" + addr
	got := map[int]bool{}
	for range 40 {
		resp, err := http.Get(base + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET /: %d", resp.StatusCode)
		}
	}
	for _, in := range r.ctlStatus().Instances {
		got[in.Index] = in.Ready
	}
	if !got[0] || !got[1] {
		t.Errorf("instances ready after serving: %v", got)
	}
	l := startLoadPath(base, 4, "/")
	s = *r.ask("reload", r.client().Reload)
	l.finish(t)
	for i, in := range s.Instances {
		if old := *r.a.Status().Instances[i].PID; !in.Ready || old == 0 {
			t.Errorf("after reload: %+v", s.Instances)
		}
	}
	if len(s.Exits) != 2 || s.Exits[0].Reason != "reload" || s.Exits[1].Reason != "reload" {
		t.Errorf("exits after the rolling reload: %+v", s.Exits)
	}
}
