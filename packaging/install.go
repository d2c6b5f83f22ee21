package packaging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"
)

// Paths that Install writes, relative to InstallOptions.Root.
const (
	installBinaryPath   = "/usr/bin/agent"
	installCtlPath      = "/usr/bin/agentctl"
	installUnitPath     = "/etc/systemd/system/agent.service"
	installDefaultConf  = "/etc/agent/agent.toml"
	installSystemdProbe = "/run/systemd/system"
	installUnitName     = "agent.service"
)

// ErrNoSystemd reports that the host is not running systemd, so the unit was
// written but could not be loaded or started.
var ErrNoSystemd = errors.New("systemd is not running here")

// InstallOptions says what `agent install` writes and where.
type InstallOptions struct {
	// Root is the file system root to install into: "/" in production.
	Root string
	// Binary is the path of the running binary (os.Executable()); it is copied
	// to /usr/bin/agent unless it already is that file.
	Binary string
	// ConfigPath is the config the unit runs with; the example config is
	// written there only when no file exists. Default /etc/agent/agent.toml; a
	// relative path is taken from the working directory (with Root "/" only).
	ConfigPath string
	// Unit is the systemd unit to write; nil means the shipped one (Unit).
	Unit []byte
	// ExampleConfig is written to ConfigPath when no config exists there.
	ExampleConfig []byte
	// Systemctl runs systemctl with args; nil runs the real systemctl.
	Systemctl func(args ...string) error
	// Upgrade runs `agentctl upgrade` against the running agent and returns
	// its exit code and output; err only when it could not be run at all.
	// nil runs the installed /usr/bin/agentctl with the config (to find the
	// control socket).
	Upgrade func(ctx context.Context) (exitCode int, output string, err error)
	// Check runs `agent check` of the installed binary on the config before
	// a fallback restart; an error (with the output) keeps the running agent.
	// nil runs the installed /usr/bin/agent.
	Check func(ctx context.Context) (output string, err error)
}

// Exit codes of `agentctl upgrade` that Install acts on.
const (
	upgradeOK          = 0 // the new program serves
	upgradeUnreachable = 3 // no answer on the control socket
	upgradeUnknown     = 4 // the running agent predates upgrades
)

// Install puts the agent on a systemd host without a package: it copies the
// binary to /usr/bin/agent, writes /etc/systemd/system/agent.service, links
// /usr/bin/agentctl to agent, writes the example config if there is no config,
// then runs systemctl daemon-reload and enable --now. Running it again changes
// nothing that is already in place. A changed unit is taken by daemon-reload
// alone. A changed binary replaces a running agent's program in place, as the
// packages do (agentctl upgrade: same PID, the app kept); a running agent that
// predates upgrades (exit 4) or does not answer (exit 3) is restarted instead,
// once the new binary accepts the config; a refused upgrade (exit 1) is
// returned as an error with the reason and leaves the old agent running. An
// agent still starting is restarted (try-restart). On a host without systemd it
// writes the files and returns an error wrapping ErrNoSystemd.
func Install(ctx context.Context, log zerolog.Logger, o InstallOptions) error {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.ConfigPath == "" {
		o.ConfigPath = installDefaultConf
	}
	if !filepath.IsAbs(o.ConfigPath) {
		if o.Root != "/" {
			return fmt.Errorf("install: config path %q is not absolute", o.ConfigPath)
		}
		abs, err := filepath.Abs(o.ConfigPath)
		if err != nil {
			return fmt.Errorf("install: config path: %w", err)
		}
		o.ConfigPath = abs
	}
	if len(o.Unit) == 0 {
		o.Unit = Unit
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("install: find own binary: %w", err)
		}
		o.Binary = exe
	}
	at := func(p string) string { return filepath.Join(o.Root, p) }

	binChanged, err := installBinary(o.Binary, at(installBinaryPath))
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	log.Info().Str("path", installBinaryPath).Bool("changed", binChanged).Msg("install binary")

	if err := installSymlink("agent", at(installCtlPath)); err != nil {
		return fmt.Errorf("install: %w", err)
	}

	unit := o.Unit
	if o.ConfigPath != installDefaultConf {
		unit = bytes.ReplaceAll(unit, []byte("--config "+installDefaultConf), []byte("--config "+o.ConfigPath))
	}
	unitChanged, err := writeIfChanged(at(installUnitPath), unit, 0o644)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	log.Info().Str("path", installUnitPath).Bool("changed", unitChanged).Msg("install unit")

	wrote, err := installConfig(at(o.ConfigPath), o.ExampleConfig)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if wrote {
		log.Warn().Str("path", o.ConfigPath).Msg("no config found: wrote the example config; edit it for the app")
	} else {
		log.Info().Str("path", o.ConfigPath).Msg("config exists: left as is")
	}

	if fi, err := os.Stat(at(installSystemdProbe)); err != nil || !fi.IsDir() {
		return fmt.Errorf("install: %w (no %s); the unit was written to %s", ErrNoSystemd, installSystemdProbe, installUnitPath)
	}
	systemctl := o.Systemctl
	if systemctl == nil {
		path, err := exec.LookPath("systemctl")
		if err != nil {
			return fmt.Errorf("install: %w (no systemctl: %v); the unit was written to %s", ErrNoSystemd, err, installUnitPath)
		}
		systemctl = func(args ...string) error {
			out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
			}
			return nil
		}
	}
	run := func(args ...string) error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		log.Info().Strs("args", args).Msg("systemctl")
		if err := systemctl(args...); err != nil {
			return fmt.Errorf("install: systemctl %s: %w", strings.Join(args, " "), err)
		}
		return nil
	}
	// A new unit file is taken without a restart.
	if err := run("daemon-reload"); err != nil {
		return err
	}
	if binChanged {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		// Exit 0 for active (or reloading), non-zero for anything else.
		if systemctl("is-active", "--quiet", installUnitName) == nil {
			if err := o.upgradeRunning(ctx, log, run, at); err != nil {
				return err
			}
		} else if err := run("try-restart", installUnitName); err != nil {
			// Acts only on an agent still starting on the old binary.
			return err
		}
	}
	return run("enable", "--now", installUnitName)
}

// upgradeRunning hands the running agent over to the binary just installed,
// with `agentctl upgrade`, or restarts it when that is not possible.
func (o InstallOptions) upgradeRunning(ctx context.Context, log zerolog.Logger, systemctl func(args ...string) error, at func(string) string) error {
	upgrade := o.Upgrade
	if upgrade == nil {
		upgrade = func(ctx context.Context) (int, string, error) {
			return runExit(ctx, at(installCtlPath), "--config", o.ConfigPath, "upgrade")
		}
	}
	check := o.Check
	if check == nil {
		check = func(ctx context.Context) (string, error) {
			code, out, err := runExit(ctx, at(installBinaryPath), "check", "--config", o.ConfigPath)
			if err == nil && code != 0 {
				err = fmt.Errorf("exit status %d", code)
			}
			return out, err
		}
	}
	log.Info().Msg("agentctl upgrade: replacing the running agent's program in place")
	code, out, err := upgrade(ctx)
	out = strings.TrimSpace(out)
	if err != nil {
		return fmt.Errorf("install: agentctl upgrade: %w; the running agent was not replaced", err)
	}
	switch code {
	case upgradeOK:
		log.Info().Str("output", out).Msg("agentctl upgrade: the new program serves")
		return nil
	case upgradeUnknown:
		log.Warn().Str("output", out).Msg("the running agent predates in-place upgrades: restarting it instead (the app restarts too)")
	case upgradeUnreachable:
		log.Warn().Str("output", out).Msg("the agent is active but its control socket does not answer: restarting it instead")
	default:
		return fmt.Errorf("install: agentctl upgrade failed (exit %d): %s; the running agent was not replaced", code, out)
	}
	if out, err := check(ctx); err != nil {
		return fmt.Errorf("install: the new agent refuses %s (%v): %s; the running agent was not restarted", o.ConfigPath, err, strings.TrimSpace(out))
	}
	return systemctl("restart", installUnitName)
}

// runExit runs path with args and returns its exit code and combined output;
// err only when it could not be run or was killed by a signal.
func runExit(ctx context.Context, path string, args ...string) (int, string, error) {
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() >= 0 {
		return ee.ExitCode(), string(out), nil
	}
	if err != nil {
		return 0, string(out), err
	}
	return 0, string(out), nil
}

// installBinary copies src to dst (mode 0755) unless dst already is src or has
// the same contents, and reports whether dst changed. The copy is renamed into
// place, so a running dst is never written to.
func installBinary(src, dst string) (bool, error) {
	sfi, err := os.Stat(src)
	if err != nil {
		return false, fmt.Errorf("binary: %w", err)
	}
	if dfi, err := os.Stat(dst); err == nil {
		if os.SameFile(sfi, dfi) {
			return false, nil
		}
		if dfi.Size() == sfi.Size() && dfi.Mode().Perm() == 0o755 {
			same, err := sameContents(src, dst)
			if err != nil {
				return false, fmt.Errorf("binary: %w", err)
			}
			if same {
				return false, nil
			}
		}
	}
	in, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("binary: %w", err)
	}
	defer in.Close()
	if err := writeAtomic(dst, 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	}); err != nil {
		return false, fmt.Errorf("binary: %w", err)
	}
	return true, nil
}

func sameContents(a, b string) (bool, error) {
	da, err := os.ReadFile(a)
	if err != nil {
		return false, err
	}
	db, err := os.ReadFile(b)
	if err != nil {
		return false, err
	}
	return bytes.Equal(da, db), nil
}

// installSymlink makes path a symlink to target, replacing whatever is there.
func installSymlink(target, path string) error {
	if got, err := os.Readlink(path); err == nil && got == target {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	tmp := path + ".new"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("symlink: %w", err)
	}
	return nil
}

// installConfig writes example to path when no file is there, and reports
// whether it wrote. An existing config is never touched.
func installConfig(path string, example []byte) (bool, error) {
	if _, err := os.Lstat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("config: %w", err)
	}
	if len(example) == 0 {
		return false, fmt.Errorf("config: no config at %s and no example to write", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, fmt.Errorf("config: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return false, fmt.Errorf("config: %w", err)
	}
	if _, err := f.Write(example); err != nil {
		f.Close()
		return false, fmt.Errorf("config: %w", err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("config: %w", err)
	}
	return true, nil
}

// writeIfChanged writes data to path (atomically, with mode) unless the file
// already holds exactly that, and reports whether it wrote.
func writeIfChanged(path string, data []byte, mode os.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == mode {
			return false, nil
		}
	}
	err := writeAtomic(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	if err != nil {
		return false, err
	}
	return true, nil
}

// writeAtomic writes a temporary file beside path with fill, syncs it, sets mode
// and renames it over path.
func writeAtomic(path string, mode os.FileMode, fill func(io.Writer) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this finds nothing
	if err := fill(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
