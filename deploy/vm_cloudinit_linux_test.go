package deploy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"agent/internal/testkit"
)

// TestVMCloudInitReboot boots a fresh VM whose NoCloud seed carries
// deploy/user_data.sh with its settings filled in, as Terraform's templatefile
// fills them: cloud-init runs it at first boot, as on EC2, and the instance
// must end serving through the agent's proxy, reachable from this machine
// through a forwarded port. Then `systemctl reboot`: it must come back serving
// by itself, the agent counting no restart, the boot before recording the app's
// stop, and cloud-init not running the script again.
//
// The guest reaches this machine at 10.0.2.2 (qemu's user network): the agent's
// .deb comes from an HTTP server on loopback and the app from a git daemon on
// loopback; Debian's mirrors through this machine's network, as the nspawn
// user_data test reaches them.
func TestVMCloudInitReboot(t *testing.T) {
	img := findVMImage(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	_, deb := buildPackage(t, root, work, "0.0.0-vm")
	files := serveFiles(t, map[string]string{"agent.deb": deb})
	base := filepath.Join(work, "git")
	makeRepo(t, base, "plain.git", map[string]string{"server.js": mustRead(t, filepath.Join(root, "deploy/demo/server.js"))})
	gitURL := gitDaemon(t, base)
	guest := func(url string) string { return strings.Replace(url, "127.0.0.1", "10.0.2.2", 1) }
	h := sha256.Sum256([]byte(mustRead(t, deb)))

	// Ports inside the guest are its own; only the proxy's is forwarded.
	opts := bootOptions{appPort: "3000", healthPort: "8081", proxyPort: "8080"}
	values := scriptValues(guest(gitURL)+"/plain.git", "/srv/app", "node server.js", opts,
		guest(files)+"/agent.deb", "", hex.EncodeToString(h[:]))
	values["STOP_DRAIN"] = "5s" // as Terraform passes it; 5 s keeps the reboot short
	userData := render(t, values)
	if !strings.HasPrefix(userData, "#!/bin/bash\n") {
		t.Fatalf("the rendered user_data does not start with #!/bin/bash: cloud-init would not run it as a script")
	}
	hostPort := testkit.Port(t)
	proxy := fmt.Sprintf("http://127.0.0.1:%d", hostPort)

	start := time.Now()
	v := startVM(t, img, vmOptions{
		seed: map[string][]byte{
			"user-data": []byte(userData),
			"meta-data": []byte("instance-id: agent-vm-1\nlocal-hostname: agent-vm\n"),
		},
		forward: map[int]int{hostPort: 8080},
		network: true,
	})
	t.Cleanup(func() {
		if t.Failed() && !v.exited() {
			for _, cmd := range [][]string{
				{"tail", "-n", "40", "/var/log/agent-bootstrap.log"},
				{"tail", "-n", "30", "/var/log/cloud-init-output.log"},
				{"journalctl", "-u", "agent.service", "--no-pager", "-n", "40"},
			} {
				out, _ := v.run(cmd...)
				t.Logf("%s:\n%s", strings.Join(cmd, " "), out)
			}
		}
	})
	bootID := v.bootID()

	// The first 200 from this machine, through the forwarded proxy port.
	first200 := time.Duration(-1)
	v.eventually(12*time.Minute, "cloud-init to finish the first boot", func() (bool, string) {
		if first200 < 0 {
			if code, _ := httpGet(proxy + "/health.html"); code == http.StatusOK {
				first200 = time.Since(start)
			}
		}
		if _, err := v.run("test", "-f", "/run/cloud-init/result.json"); err != nil {
			out, _ := v.run("tail", "-n", "1", "/var/log/agent-bootstrap.log")
			return false, "no /run/cloud-init/result.json yet; bootstrap log: " + strings.TrimSpace(out)
		}
		return true, ""
	})
	t.Logf("first boot: cloud-init done after %v, first health 200 through the proxy after %v",
		time.Since(start).Round(time.Second), first200.Round(time.Second))

	t.Run("cloud-init ran user_data", func(t *testing.T) {
		status, err := v.run("cloud-init", "status", "--long")
		if err != nil || !strings.Contains(status, "status: done") {
			t.Errorf("cloud-init status: %v\n%s", err, status)
		}
		var result struct {
			V1 struct {
				Datasource string   `json:"datasource"`
				Errors     []string `json:"errors"`
			} `json:"v1"`
		}
		if err := json.Unmarshal([]byte(v.must("cat", "/run/cloud-init/result.json")), &result); err != nil {
			t.Fatalf("result.json: %v", err)
		}
		if len(result.V1.Errors) != 0 || !strings.Contains(result.V1.Datasource, "NoCloud") {
			t.Errorf("cloud-init result: datasource %q, errors %q; want NoCloud and none", result.V1.Datasource, result.V1.Errors)
		}
		log := v.must("cat", "/var/log/agent-bootstrap.log")
		t.Logf("the script's steps: %s", steps(log))
		for _, want := range []string{"bootstrap: step packages", "bootstrap: step clone", "bootstrap: step install",
			"bootstrap: step start", "bootstrap: step health", "bootstrap: done in"} {
			if !strings.Contains(log, want) {
				t.Errorf("/var/log/agent-bootstrap.log lacks %q:\n%s", want, tailString(log, 30))
			}
		}
		if strings.Contains(log, "bootstrap: failed") {
			t.Errorf("the bootstrap failed:\n%s", tailString(log, 30))
		}
		if strings.Contains(log, "retrying (1/6): curl") {
			t.Errorf("the first health check after the start failed: the start returned before the app served")
		}
		v.must("dpkg", "-s", "agent")
	})

	t.Run("serving after the first boot", func(t *testing.T) {
		st := v.serving(2*time.Minute, "the agent to serve", "http://127.0.0.1:8081/health.html")
		checkThroughProxy(t, proxy, "after the first boot")
		if st.Restarts != 0 || st.Proxy == nil {
			t.Errorf("restarts = %d, proxy in status %v; want 0 and the proxy on", st.Restarts, st.Proxy != nil)
		}
		if e := v.show("UnitFileState"); e != "enabled" {
			t.Errorf("UnitFileState = %s, want enabled", e)
		}
		if first200 < 0 {
			t.Errorf("this machine never saw health 200 through the forwarded port during the first boot")
		}
	})

	t.Run("reboot", func(t *testing.T) {
		began := time.Now()
		before, err := v.status()
		if err != nil {
			t.Fatal(err)
		}
		_, _ = v.run("systemctl", "--no-block", "reboot")
		v.eventually(5*time.Minute, "the VM to boot again", func() (bool, string) {
			id := v.bootID()
			return id != "" && id != bootID, "boot id " + id
		})
		after := v.serving(5*time.Minute, "the agent to serve after the reboot", "http://127.0.0.1:8081/health.html")
		checkThroughProxy(t, proxy, "after the reboot")
		t.Logf("systemctl reboot to serving again: %v", time.Since(began).Round(time.Second))
		if after.Restarts != 0 {
			t.Errorf("restarts = %d after the reboot, want 0", after.Restarts)
		}
		if n := v.show("NRestarts"); n != "0" {
			t.Errorf("NRestarts = %s after the reboot, want 0", n)
		}
		if after.PID == before.PID && after.Agent.PID == before.Agent.PID {
			t.Errorf("same app and agent PIDs after the reboot (%d, %d): did it reboot?", after.PID, after.Agent.PID)
		}
		// The boot before: the agent recorded the app's exit as a stop.
		prev := v.must("journalctl", "-b", "-1", "-u", "agent.service", "--no-pager", "-o", "cat")
		stopLine := ""
		for _, line := range strings.Split(prev, "\n") {
			if strings.Contains(line, `"reason":"stop"`) && strings.Contains(line, fmt.Sprintf(`"pid":%d`, before.PID)) {
				stopLine = line
			}
		}
		if stopLine == "" {
			t.Errorf("the journal of the boot before has no exit of app %d with reason stop:\n%s", before.PID, tailString(prev, 20))
		} else {
			t.Logf("the boot before: %s", stopLine)
		}
		log := v.must("cat", "/var/log/agent-bootstrap.log")
		if n := strings.Count(log, "bootstrap: done in"); n != 1 {
			t.Errorf("user_data ran %d times, want once (cloud-init runs it per instance)", n)
		}
		// cloud-init runs at every boot (its per-instance modules, user_data among
		// them, only once): its status must come back to done.
		v.eventually(3*time.Minute, "cloud-init to finish the second boot", func() (bool, string) {
			out, err := v.run("cloud-init", "status")
			return err == nil && strings.Contains(out, "status: done"), fmt.Sprintf("cloud-init status: %v: %q", err, out)
		})
	})

	v.poweroff(2 * time.Minute)
	t.Logf("whole VM run: %v", time.Since(start).Round(time.Second))
}

// checkThroughProxy checks what a load balancer would see from this machine.
func checkThroughProxy(t *testing.T, proxy, when string) {
	t.Helper()
	if code, body := httpGet(proxy + "/health.html"); code != http.StatusOK {
		t.Errorf("%s: health through the proxy answered %d %q, want 200", when, code, body)
	}
	if code, body := httpGet(proxy + "/"); code != http.StatusOK || !strings.Contains(body, "hello from pid") {
		t.Errorf("%s: the app through the proxy answered %d %q, want 200 with hello from pid", when, code, body)
	}
}
