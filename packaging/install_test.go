package packaging

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

var (
	testUnit    = []byte("[Service]\nExecStart=/usr/bin/agent run --config /etc/agent/agent.toml\n")
	testExample = []byte("name = \"web\"\n")
)

// installFixture is a fake host root with systemd "running" (or not), a binary
// to install, and a systemctl that records its calls.
type installFixture struct {
	t     *testing.T
	root  string
	opts  InstallOptions
	calls [][]string
	fail  string // systemctl verb that fails

	active      bool   // systemctl is-active answers active
	upgradeCode int    // exit code of agentctl upgrade
	upgradeOut  string // its output
	upgradeErr  error  // it could not be run
	checkErr    error  // agent check refuses the config
}

func newInstallFixture(t *testing.T, systemd bool) *installFixture {
	t.Helper()
	f := &installFixture{t: t, root: t.TempDir()}
	if systemd {
		if err := os.MkdirAll(filepath.Join(f.root, "run/systemd/system"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(bin, []byte("\x7fELF binary v1"), 0o700); err != nil {
		t.Fatal(err)
	}
	f.opts = InstallOptions{
		Root:          f.root,
		Binary:        bin,
		Unit:          testUnit,
		ExampleConfig: testExample,
		Systemctl: func(args ...string) error {
			f.calls = append(f.calls, args)
			if len(args) > 0 && args[0] == f.fail {
				return errors.New("exit status 1: Failed to " + args[0])
			}
			if len(args) > 0 && args[0] == "is-active" && !f.active {
				return errors.New("exit status 3")
			}
			return nil
		},
		Upgrade: func(context.Context) (int, string, error) {
			f.calls = append(f.calls, agentctlUpgrade)
			return f.upgradeCode, f.upgradeOut, f.upgradeErr
		},
		Check: func(context.Context) (string, error) {
			f.calls = append(f.calls, agentCheck)
			if f.checkErr != nil {
				return "/etc/agent/agent.toml:3:1: unknown key bogus\n", f.checkErr
			}
			return "", nil
		},
	}
	return f
}

func (f *installFixture) install() error {
	f.t.Helper()
	f.calls = nil
	return Install(context.Background(), zerolog.New(zerolog.NewTestWriter(f.t)), f.opts)
}

func (f *installFixture) path(p string) string { return filepath.Join(f.root, p) }

// file returns the contents and permission bits of p under the root.
func (f *installFixture) file(p string) (string, os.FileMode) {
	f.t.Helper()
	data, err := os.ReadFile(f.path(p))
	if err != nil {
		f.t.Fatalf("read %s: %v", p, err)
	}
	fi, err := os.Stat(f.path(p))
	if err != nil {
		f.t.Fatal(err)
	}
	return string(data), fi.Mode().Perm()
}

func (f *installFixture) stat(p string) os.FileInfo {
	f.t.Helper()
	fi, err := os.Lstat(f.path(p))
	if err != nil {
		f.t.Fatal(err)
	}
	return fi
}

func (f *installFixture) wantCalls(want ...[]string) {
	f.t.Helper()
	if !slices.EqualFunc(f.calls, want, slices.Equal) {
		f.t.Errorf("systemctl calls = %q, want %q", f.calls, want)
	}
}

var (
	reload          = []string{"daemon-reload"}
	isActive        = []string{"is-active", "--quiet", "agent.service"}
	tryRestart      = []string{"try-restart", "agent.service"}
	restart         = []string{"restart", "agent.service"}
	enableNow       = []string{"enable", "--now", "agent.service"}
	agentctlUpgrade = []string{"agentctl", "upgrade"} // the Upgrade runner, recorded among the calls
	agentCheck      = []string{"agent", "check"}      // the Check runner
)

func TestInstallFresh(t *testing.T) {
	f := newInstallFixture(t, true)
	if err := f.install(); err != nil {
		t.Fatalf("Install: %v", err)
	}

	if data, mode := f.file("/usr/bin/agent"); data != "\x7fELF binary v1" || mode != 0o755 {
		t.Errorf("/usr/bin/agent = %q mode %v, want the binary with mode 0755", data, mode)
	}
	if target, err := os.Readlink(f.path("/usr/bin/agentctl")); err != nil || target != "agent" {
		t.Errorf("/usr/bin/agentctl: readlink = %q, %v; want a symlink to agent", target, err)
	}
	if data, mode := f.file("/etc/systemd/system/agent.service"); data != string(testUnit) || mode != 0o644 {
		t.Errorf("unit = %q mode %v, want the given unit with mode 0644", data, mode)
	}
	if fi := f.stat("/etc/agent"); !fi.IsDir() || fi.Mode().Perm() != 0o755 {
		t.Errorf("/etc/agent: mode %v, want a directory with mode 0755", fi.Mode())
	}
	if data, mode := f.file("/etc/agent/agent.toml"); data != string(testExample) || mode != 0o644 {
		t.Errorf("config = %q mode %v, want the example with mode 0644", data, mode)
	}
	// No agent is running yet: nothing to upgrade.
	f.wantCalls(reload, isActive, tryRestart, enableNow)

	// No temporary files are left beside what was written.
	for _, dir := range []string{"/usr/bin", "/etc/systemd/system", "/etc/agent"} {
		entries, err := os.ReadDir(f.path(dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") || strings.HasSuffix(e.Name(), ".new") {
				t.Errorf("left behind: %s/%s", dir, e.Name())
			}
		}
	}
}

func TestInstallIsIdempotent(t *testing.T) {
	f := newInstallFixture(t, true)
	if err := f.install(); err != nil {
		t.Fatalf("first Install: %v", err)
	}
	paths := []string{"/usr/bin/agent", "/usr/bin/agentctl", "/etc/systemd/system/agent.service", "/etc/agent/agent.toml"}
	before := map[string]os.FileInfo{}
	for _, p := range paths {
		before[p] = f.stat(p)
	}

	if err := f.install(); err != nil {
		t.Fatalf("second Install: %v", err)
	}
	for _, p := range paths {
		// Written files are renamed into place, so a rewrite changes the inode.
		if after := f.stat(p); !os.SameFile(before[p], after) || !after.ModTime().Equal(before[p].ModTime()) {
			t.Errorf("%s was rewritten by a second install", p)
		}
	}
	// Nothing changed, so a running agent is not restarted.
	f.wantCalls(reload, enableNow)
}

func TestInstallNeverOverwritesConfig(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("name = \"mine\"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"empty file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink", func(t *testing.T, path string) {
			if err := os.Symlink("/nonexistent/agent.toml", path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newInstallFixture(t, true)
			cfg := f.path("/etc/agent/agent.toml")
			if err := os.MkdirAll(filepath.Dir(cfg), 0o700); err != nil {
				t.Fatal(err)
			}
			tc.setup(t, cfg)
			before := f.stat("/etc/agent/agent.toml")
			beforeData, _ := os.ReadFile(cfg)

			if err := f.install(); err != nil {
				t.Fatalf("Install: %v", err)
			}
			after := f.stat("/etc/agent/agent.toml")
			afterData, _ := os.ReadFile(cfg)
			if !os.SameFile(before, after) || after.Mode() != before.Mode() || string(afterData) != string(beforeData) {
				t.Errorf("existing config was touched: %v %q -> %v %q", before.Mode(), beforeData, after.Mode(), afterData)
			}
			// The directory an admin made stays as it is.
			if fi := f.stat("/etc/agent"); fi.Mode().Perm() != 0o700 {
				t.Errorf("/etc/agent mode changed to %v", fi.Mode().Perm())
			}
		})
	}
}

func TestInstallReplacesChangedBinaryAndUnit(t *testing.T) {
	f := newInstallFixture(t, true)
	if err := f.install(); err != nil {
		t.Fatalf("first Install: %v", err)
	}

	if err := os.WriteFile(f.opts.Binary, []byte("\x7fELF binary v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := f.install(); err != nil {
		t.Fatalf("Install with a new binary: %v", err)
	}
	if data, mode := f.file("/usr/bin/agent"); data != "\x7fELF binary v2" || mode != 0o755 {
		t.Errorf("/usr/bin/agent = %q mode %v, want the new binary", data, mode)
	}
	// The agent is not active: only one still starting on the old binary
	// is restarted (try-restart); enable --now starts the new one.
	f.wantCalls(reload, isActive, tryRestart, enableNow)

	// A new unit is taken by daemon-reload, without restarting the agent.
	f.active = true
	f.opts.Unit = append([]byte("# v2\n"), testUnit...)
	if err := f.install(); err != nil {
		t.Fatalf("Install with a new unit: %v", err)
	}
	if data, _ := f.file("/etc/systemd/system/agent.service"); data != string(f.opts.Unit) {
		t.Errorf("unit = %q, want the new unit", data)
	}
	f.wantCalls(reload, enableNow)
}

// A newer binary installed while the agent is active: agentctl upgrade,
// and what each of its exit codes leads to.
func TestInstallUpgradesRunningAgent(t *testing.T) {
	for _, tc := range []struct {
		name       string
		code       int
		out        string
		runErr     error
		checkErr   error
		failVerb   string
		want       [][]string
		wantErr    string // "" for success; else a part of the error
		wantOldBin bool
	}{
		{name: "0: replaced in place", code: 0, out: "upgraded: agent 2 serves\n",
			want: [][]string{reload, isActive, agentctlUpgrade, enableNow}},
		{name: "4: the running agent predates upgrades, restarted", code: 4, out: "agentctl: the running agent does not know upgrades\n",
			want: [][]string{reload, isActive, agentctlUpgrade, agentCheck, restart, enableNow}},
		{name: "3: active but unreachable, restarted", code: 3, out: "agentctl: cannot reach the agent at /run/agent/agent.sock\n",
			want: [][]string{reload, isActive, agentctlUpgrade, agentCheck, restart, enableNow}},
		{name: "1: refused, old agent kept", code: 1, out: "agentctl: upgrade refused: the new program rejects /etc/agent/agent.toml: line 3\n",
			want:    [][]string{reload, isActive, agentctlUpgrade},
			wantErr: "agentctl upgrade failed (exit 1): agentctl: upgrade refused: the new program rejects /etc/agent/agent.toml: line 3; the running agent was not replaced"},
		{name: "2: any other code is a failure", code: 2, out: "usage",
			want:    [][]string{reload, isActive, agentctlUpgrade},
			wantErr: "agentctl upgrade failed (exit 2): usage"},
		{name: "agentctl cannot be run", runErr: errors.New("fork/exec /usr/bin/agentctl: permission denied"),
			want:    [][]string{reload, isActive, agentctlUpgrade},
			wantErr: "agentctl upgrade: fork/exec /usr/bin/agentctl: permission denied; the running agent was not replaced"},
		{name: "4 but the new binary refuses the config: not restarted", code: 4, checkErr: errors.New("exit status 2"),
			want:    [][]string{reload, isActive, agentctlUpgrade, agentCheck},
			wantErr: "the new agent refuses /etc/agent/agent.toml (exit status 2): /etc/agent/agent.toml:3:1: unknown key bogus; the running agent was not restarted"},
		{name: "4 and the restart fails", code: 4, failVerb: "restart",
			want:    [][]string{reload, isActive, agentctlUpgrade, agentCheck, restart},
			wantErr: "systemctl restart agent.service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newInstallFixture(t, true)
			if err := f.install(); err != nil {
				t.Fatalf("first Install: %v", err)
			}
			if err := os.WriteFile(f.opts.Binary, []byte("\x7fELF binary v2"), 0o755); err != nil {
				t.Fatal(err)
			}
			f.active = true
			f.upgradeCode, f.upgradeOut, f.upgradeErr = tc.code, tc.out, tc.runErr
			f.checkErr, f.fail = tc.checkErr, tc.failVerb
			err := f.install()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Install = %v, want success", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Install = %v\nwant an error containing %q", err, tc.wantErr)
			}
			f.wantCalls(tc.want...)
			// The new binary is in place either way: it is what a later
			// agentctl upgrade or restart takes.
			if data, _ := f.file("/usr/bin/agent"); data != "\x7fELF binary v2" {
				t.Errorf("/usr/bin/agent = %q, want the new binary", data)
			}
		})
	}
}

// The default runners: the installed agentctl with the config, and the
// installed agent's check.
func TestInstallDefaultRunners(t *testing.T) {
	f := newInstallFixture(t, true)
	if err := f.install(); err != nil {
		t.Fatalf("first Install: %v", err)
	}
	// Stand-ins for the installed programs, recording their arguments; the
	// new "binary" is one too, so that it is what gets installed.
	argsLog := filepath.Join(t.TempDir(), "args")
	script := "#!/bin/sh\necho \"$0 $*\" >>" + argsLog + "\ncase $* in *upgrade*) echo 'no upgrades here' >&2; exit 4 ;; esac\nexit 0\n"
	if err := os.WriteFile(f.opts.Binary, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	f.opts.Upgrade, f.opts.Check = nil, nil
	f.active = true
	if err := f.install(); err != nil {
		t.Fatalf("Install: %v", err)
	}
	f.wantCalls(reload, isActive, restart, enableNow)
	data, err := os.ReadFile(argsLog)
	if err != nil {
		t.Fatal(err)
	}
	want := f.path("/usr/bin/agentctl") + " --config /etc/agent/agent.toml upgrade\n" +
		f.path("/usr/bin/agent") + " check --config /etc/agent/agent.toml\n"
	if string(data) != want {
		t.Errorf("programs run:\n%s\nwant:\n%s", data, want)
	}
}

func TestInstallBinaryAlreadyInPlace(t *testing.T) {
	f := newInstallFixture(t, true)
	if err := f.install(); err != nil {
		t.Fatalf("first Install: %v", err)
	}
	// `/usr/bin/agent install`: the binary is the installed file itself.
	f.opts.Binary = f.path("/usr/bin/agent")
	before := f.stat("/usr/bin/agent")
	if err := f.install(); err != nil {
		t.Fatalf("Install from the installed binary: %v", err)
	}
	if after := f.stat("/usr/bin/agent"); !os.SameFile(before, after) {
		t.Errorf("/usr/bin/agent was replaced by itself")
	}
	f.wantCalls(reload, enableNow)
}

func TestInstallReplacesStrayAgentctl(t *testing.T) {
	f := newInstallFixture(t, true)
	ctl := f.path("/usr/bin/agentctl")
	if err := os.MkdirAll(filepath.Dir(ctl), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ctl, []byte("old copy"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := f.install(); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if target, err := os.Readlink(ctl); err != nil || target != "agent" {
		t.Errorf("/usr/bin/agentctl: readlink = %q, %v; want a symlink to agent", target, err)
	}
}

func TestInstallCustomConfigPath(t *testing.T) {
	f := newInstallFixture(t, true)
	f.opts.ConfigPath = "/etc/agent/web.toml"
	if err := f.install(); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if data, _ := f.file("/etc/agent/web.toml"); data != string(testExample) {
		t.Errorf("config = %q, want the example", data)
	}
	if data, _ := f.file("/etc/systemd/system/agent.service"); !strings.Contains(data, "run --config /etc/agent/web.toml\n") {
		t.Errorf("unit does not run with the given config:\n%s", data)
	}
	if _, err := os.Stat(f.path("/etc/agent/agent.toml")); err == nil {
		t.Errorf("the default config was written too")
	}
}

func TestInstallWithoutSystemd(t *testing.T) {
	f := newInstallFixture(t, false)
	err := f.install()
	if !errors.Is(err, ErrNoSystemd) {
		t.Fatalf("Install = %v, want ErrNoSystemd", err)
	}
	const want = "install: systemd is not running here (no /run/systemd/system); the unit was written to /etc/systemd/system/agent.service"
	if err.Error() != want {
		t.Errorf("error = %q\nwant    %q", err, want)
	}
	// The files are in place for when systemd runs; systemctl was not tried.
	for _, p := range []string{"/usr/bin/agent", "/etc/systemd/system/agent.service", "/etc/agent/agent.toml"} {
		f.file(p)
	}
	f.wantCalls()
}

func TestInstallErrors(t *testing.T) {
	t.Run("systemctl fails", func(t *testing.T) {
		f := newInstallFixture(t, true)
		f.fail = "enable"
		err := f.install()
		if err == nil || !strings.Contains(err.Error(), "systemctl enable --now agent.service") {
			t.Errorf("Install = %v, want an error naming the failed systemctl command", err)
		}
	})
	t.Run("missing binary", func(t *testing.T) {
		f := newInstallFixture(t, true)
		f.opts.Binary = filepath.Join(t.TempDir(), "nope")
		if err := f.install(); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Install = %v, want a not-exist error", err)
		}
		f.wantCalls()
	})
	t.Run("no example and no config", func(t *testing.T) {
		f := newInstallFixture(t, true)
		f.opts.ExampleConfig = nil
		if err := f.install(); err == nil || !strings.Contains(err.Error(), "no config at") {
			t.Errorf("Install = %v, want a missing config error", err)
		}
		f.wantCalls()
	})
	t.Run("relative config path under another root", func(t *testing.T) {
		f := newInstallFixture(t, true)
		f.opts.ConfigPath = "agent.toml"
		if err := f.install(); err == nil {
			t.Errorf("Install with a relative config path succeeded")
		}
	})
	t.Run("no unit given: the shipped one", func(t *testing.T) {
		f := newInstallFixture(t, true)
		f.opts.Unit = nil
		if err := f.install(); err != nil {
			t.Fatal(err)
		}
		if data, _ := f.file("/etc/systemd/system/agent.service"); data != string(Unit) {
			t.Errorf("unit written:\n%s\nwant the shipped one", data)
		}
	})
}
