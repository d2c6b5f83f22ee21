package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The post-install script's decisions, run for real by sh. systemctl,
// agentctl and agent are small stand-in scripts first (and alone) in PATH
// that record their calls and answer with chosen exit codes: they replace
// systemd and a running agent only to test the script's branching. The real
// thing (the .deb under a booted systemd) is covered by the end-to-end test in
// deploy/.
func TestPostinstall(t *testing.T) {
	const (
		reload   = "systemctl daemon-reload"
		isActive = "systemctl is-active agent.service"
		upgrade  = "agentctl upgrade"
		check    = "agent check --config /etc/agent/agent.toml"
		restart  = "systemctl restart agent.service"
	)
	for _, tc := range []struct {
		name       string
		args       []string
		noSystemd  bool
		state      string // what systemctl is-active prints
		upgrade    int    // agentctl upgrade's exit code
		check      int    // agent check's exit code
		restart    int    // systemctl restart's exit code
		want       []string
		wantFail   bool
		wantStderr string
	}{
		{name: "deb fresh install", args: []string{"configure", ""}, state: "inactive",
			want: []string{reload}},
		{name: "deb upgrade, agent not active", args: []string{"configure", "0.1.0"}, state: "inactive",
			want: []string{reload, isActive}},
		{name: "deb upgrade, agent failed", args: []string{"configure", "0.1.0"}, state: "failed",
			want: []string{reload, isActive}},
		{name: "deb upgrade in place", args: []string{"configure", "0.1.0"}, state: "active",
			want: []string{reload, isActive, upgrade}},
		{name: "deb upgrade while reloading", args: []string{"configure", "0.1.0"}, state: "reloading",
			want: []string{reload, isActive, upgrade}},
		{name: "rpm upgrade in place", args: []string{"2"}, state: "active",
			want: []string{reload, isActive, upgrade}},
		{name: "rpm fresh install", args: []string{"1"}, state: "active",
			want: []string{reload}},
		{name: "deb abort-upgrade", args: []string{"abort-upgrade", "0.2.0"}, state: "active",
			want: []string{reload}},
		{name: "no systemd", args: []string{"configure", "0.1.0"}, noSystemd: true, state: "active",
			want: nil},
		{name: "4: agent predates upgrades, restarted", args: []string{"configure", "0.1.0"}, state: "active", upgrade: 4,
			want: []string{reload, isActive, upgrade, check, restart}, wantStderr: "predates in-place upgrades: restarting it"},
		{name: "3: active but unreachable, restarted", args: []string{"2"}, state: "active", upgrade: 3,
			want: []string{reload, isActive, upgrade, check, restart}, wantStderr: "does not answer: restarting it"},
		{name: "1: refused, configuration fails, no restart", args: []string{"configure", "0.1.0"}, state: "active", upgrade: 1,
			want: []string{reload, isActive, upgrade}, wantFail: true,
			wantStderr: "agentctl: the new program rejects the config\nagent postinst: ERROR: agentctl upgrade failed (exit 1, reason above): the running agent was not replaced."},
		{name: "2: any other code fails too", args: []string{"configure", "0.1.0"}, state: "active", upgrade: 2,
			want: []string{reload, isActive, upgrade}, wantFail: true, wantStderr: "ERROR: agentctl upgrade failed (exit 2"},
		{name: "4 but the new agent refuses the config: not restarted", args: []string{"configure", "0.1.0"}, state: "active", upgrade: 4, check: 2,
			want: []string{reload, isActive, upgrade, check}, wantFail: true, wantStderr: "ERROR: the new agent refuses /etc/agent/agent.toml (above); the old agent keeps running."},
		{name: "4 and the restart fails", args: []string{"configure", "0.1.0"}, state: "active", upgrade: 4, restart: 1,
			want: []string{reload, isActive, upgrade, check, restart}, wantFail: true, wantStderr: "ERROR: systemctl restart agent.service failed"},
		{name: "still starting: restarted on the new program", args: []string{"configure", "0.1.0"}, state: "activating",
			want: []string{reload, isActive, check, restart}, wantStderr: "still starting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bin := filepath.Join(dir, "bin")
			calls := filepath.Join(dir, "calls")
			systemdDir := filepath.Join(dir, "run/systemd/system")
			if !tc.noSystemd {
				if err := os.MkdirAll(systemdDir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			standIn(t, bin, "systemctl", `echo "systemctl $*" >>"$CALLS"
case $1 in
  is-active) echo "$STATE"; [ "$STATE" = active ] || [ "$STATE" = reloading ] || exit 3 ;;
  restart) exit "$RESTART_RC" ;;
esac
exit 0`)
			standIn(t, bin, "agentctl", `echo "agentctl $*" >>"$CALLS"
if [ "$UPGRADE_RC" = 1 ]; then echo "agentctl: the new program rejects the config" >&2; fi
exit "$UPGRADE_RC"`)
			standIn(t, bin, "agent", `echo "agent $*" >>"$CALLS"
exit "$CHECK_RC"`)

			// The script, with the probe for a running systemd pointed at
			// the temporary directory.
			src, err := os.ReadFile("scripts/postinstall.sh")
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(string(src), "/run/systemd/system"); n != 1 {
				t.Fatalf("postinstall.sh names /run/systemd/system %d times, want 1", n)
			}
			script := filepath.Join(dir, "postinstall.sh")
			if err := os.WriteFile(script, []byte(strings.ReplaceAll(string(src), "/run/systemd/system", systemdDir)), 0o755); err != nil {
				t.Fatal(err)
			}

			cmd := exec.Command("/bin/sh", append([]string{script}, tc.args...)...)
			cmd.Env = []string{
				"PATH=" + bin, // the stand-ins only: nothing real is reached
				"CALLS=" + calls,
				"STATE=" + tc.state,
				"UPGRADE_RC=" + strconv.Itoa(tc.upgrade),
				"CHECK_RC=" + strconv.Itoa(tc.check),
				"RESTART_RC=" + strconv.Itoa(tc.restart),
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err = cmd.Run()
			if failed := err != nil; failed != tc.wantFail {
				t.Errorf("postinstall.sh %q: %v, want failure %v\nstderr:\n%s", tc.args, err, tc.wantFail, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("stderr:\n%s\nwant it to contain %q", stderr.String(), tc.wantStderr)
			}
			data, err := os.ReadFile(calls)
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
			if len(data) == 0 {
				got = nil
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func standIn(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}
