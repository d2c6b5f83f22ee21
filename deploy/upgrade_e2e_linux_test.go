package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"agent/internal/lbclient"
	"agent/internal/testkit"
)

// TestPackageUpgradeEndToEnd upgrades the .deb under load: a booted Debian 12
// runs the agent from one build of the package, in proxy mode, with the demo
// app; a request loop from this machine goes through the proxy port
// (loadRate a second on loadConns kept connections, never retried) while
// `dpkg -i` installs a newer build (another version string), then another.
// The package's post-install runs agentctl upgrade: no request may fail, the
// agent keeps its PID (systemd's MainPID) and the app its process, and the
// status read back shows the new version and one more upgrade.
func TestPackageUpgradeEndToEnd(t *testing.T) {
	rootfs := e2eRootfs(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	versions := []string{"0.0.1-e2e", "0.0.2-e2e", "0.0.3-e2e"}
	debs := make([]string, len(versions))
	for i, v := range versions {
		_, debs[i] = buildPackage(t, root, filepath.Join(work, strconv.Itoa(i)), v)
	}

	nspawnRuntime(t)
	tree := overlay(t, rootfs)
	for i, deb := range debs {
		copyInto(t, deb, filepath.Join(tree, fmt.Sprintf("root/agent-%d.deb", i)), 0o644)
	}
	copyInto(t, filepath.Join(root, "deploy/demo/server.js"), filepath.Join(tree, "srv/app/server.js"), 0o644)

	// The app's port and the spare, the health port, the proxy's.
	ports := testkit.Ports(t, 4)
	opts := bootOptions{hostNetwork: true, appPort: strconv.Itoa(ports[0]), healthPort: strconv.Itoa(ports[2]), proxyPort: strconv.Itoa(ports[3])}
	c := bootTimed(t, tree, "upgrade", opts)

	c.must("dpkg", "-i", "/root/agent-0.deb")
	c.must("useradd", "--system", "--create-home", "--shell", "/usr/sbin/nologin", "app")
	// The config user_data.sh would write for this app, in proxy mode.
	cfgPath := userDataConfig(t, scriptValues("unused", "/srv/app", "node server.js", opts, "", "", ""))
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "etc/agent/agent.toml"), cfg, 0o640); err != nil {
		t.Fatal(err)
	}
	c.must("systemctl", "enable", "--now", "agent.service")

	const page = "hello from pid"
	addr := "127.0.0.1:" + opts.proxyPort
	var total lbclient.Report
	for i := 1; i < len(versions); i++ {
		ok := t.Run(fmt.Sprintf("dpkg -i %s under load", versions[i]), func(t *testing.T) {
			before := proxyServing(t, c, 0)
			if !strings.Contains(before.Agent.Version, versions[i-1]) {
				t.Fatalf("agent.version = %q before the upgrade, want %s", before.Agent.Version, versions[i-1])
			}
			agentPID, restarts := c.mainPID(), c.show("NRestarts")
			socket := listenerInode(c, opts.proxyPort)
			run, err := lbclient.Load{
				Addr: addr, Rate: loadRate, Conns: loadConns, Timeout: loadTimeout, Duration: loadBound,
				Check: func(body []byte) error {
					if !strings.Contains(string(body), page) {
						return fmt.Errorf("not the app's page")
					}
					return nil
				},
				UserAgent: "e2e",
			}.Start(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { run.Stop() })
			waitSent(t, run, loadAround)

			start := time.Now()
			out, err := c.run("dpkg", "-i", fmt.Sprintf("/root/agent-%d.deb", i))
			took := time.Since(start)
			if err != nil {
				t.Errorf("dpkg -i: %v\n%s", err, out)
			}
			after := proxyServing(t, c, 0)
			waitSent(t, run, run.Sent()+loadAround)
			res := run.Stop()
			total.Sent += res.Sent
			total.Failed += res.Failed

			t.Logf("dpkg -i %s: %s requests failed at %d/s on %d kept connections %s; dpkg took %v; p50 %v, slowest %v; %d connections opened; agent's proxy counters: %s",
				versions[i], res, loadRate, loadConns, lbclient.FormatKinds(res.Kinds), took.Round(time.Millisecond),
				res.P50.Round(100*time.Microsecond), res.Max.Round(time.Millisecond), res.Conns, proxyCounters(after))
			t.Logf("dpkg -i output:\n%s", strings.TrimSpace(out))
			noneFailed(t, res, 0)

			if !strings.Contains(after.Agent.Version, versions[i]) {
				t.Errorf("agent.version = %q after the upgrade, want %s", after.Agent.Version, versions[i])
			}
			if after.Agent.Upgrades != before.Agent.Upgrades+1 || after.Agent.Upgrades != i {
				t.Errorf("agent.upgrades = %d after the upgrade (before %d), want %d", after.Agent.Upgrades, before.Agent.Upgrades, i)
			}
			if pid := c.mainPID(); pid != agentPID || after.Agent.PID != agentPID {
				t.Errorf("the agent's PID changed: MainPID %d -> %d, status %d", agentPID, pid, after.Agent.PID)
			}
			if n := c.show("NRestarts"); n != restarts {
				t.Errorf("NRestarts %s -> %s: systemd restarted the agent", restarts, n)
			}
			if after.PID != before.PID || after.Restarts != before.Restarts {
				t.Errorf("the app was restarted: pid %d -> %d, restarts %d -> %d", before.PID, after.PID, before.Restarts, after.Restarts)
			}
			if now := listenerInode(c, opts.proxyPort); now != socket {
				t.Errorf("the proxy's listening socket changed (inode %s -> %s)", socket, now)
			}
			if v := c.must("dpkg-query", "-W", "-f", "${Version} ${Status}", "agent"); !strings.HasSuffix(v, "install ok installed") {
				t.Errorf("dpkg-query: %q, want the package configured", v)
			}
		})
		if !ok {
			break
		}
	}
	t.Logf("dpkg -i under load, %d upgrades: %d of %d requests failed", len(versions)-1, total.Failed, total.Sent)

	// The program exec'd by the upgrades still feeds systemd's watchdog,
	// and a wedged one is still caught: the agent stopped (SIGSTOP), the
	// watchdog (WatchdogSec=30s) aborts it and systemd starts it again.
	t.Run("the watchdog after the upgrades", func(t *testing.T) {
		pid, restarts, since := c.mainPID(), c.show("NRestarts"), time.Now()
		if pid == 0 {
			t.Fatal("no MainPID")
		}
		c.must("kill", "-STOP", strconv.Itoa(pid))
		testkit.EventuallyMsg(t, 3*time.Minute, "systemd's watchdog restarts the wedged agent", func() (bool, string) {
			now := c.mainPID()
			return c.show("NRestarts") != restarts && now != pid && now != 0,
				fmt.Sprintf("MainPID %d, NRestarts %s, %s", now, c.show("NRestarts"), c.show("ActiveState"))
		})
		if j := c.journal(since); !strings.Contains(j, "Watchdog timeout") {
			t.Errorf("no watchdog timeout in the journal:\n%s", j)
		}
		proxyServing(t, c, 0)
	})
}
