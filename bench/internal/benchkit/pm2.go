package benchkit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// InstallPM2 installs pm2@version from npm into dir (unless a pm2 command
// is already there) and returns the path of its command and its exact
// version.
func InstallPM2(ctx context.Context, dir, version string) (bin, got string, err error) {
	bin = filepath.Join(dir, "node_modules", ".bin", "pm2")
	if _, err := os.Stat(bin); err != nil {
		cmd := exec.CommandContext(ctx, "npm", "install", "--prefix", dir, "--no-audit", "--no-fund", "pm2@"+version)
		// npm must not start anything; PM2_HOME keeps any stray pm2 call
		// away from the machine's own ~/.pm2.
		cmd.Env = append(os.Environ(), "PM2_HOME="+filepath.Join(dir, "home"))
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("npm install pm2@%s: %w\n%s", version, err, out)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", "pm2", "package.json"))
	if err != nil {
		return "", "", fmt.Errorf("pm2 version: %w", err)
	}
	var pkg struct{ Version string }
	if err := json.Unmarshal(b, &pkg); err != nil {
		return "", "", fmt.Errorf("pm2 version: %w", err)
	}
	return bin, pkg.Version, nil
}

// PM2 is a PM2 God daemon with its own PM2_HOME. The daemon starts on the
// first command that needs it.
type PM2 struct {
	Bin  string // the pm2 command
	Home string // PM2_HOME
}

// Run runs `pm2 args...` against the daemon (60 s at most) and returns its
// stdout.
func (d *PM2) Run(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.Bin, args...)
	cmd.Env = append(os.Environ(), "PM2_HOME="+d.Home, "PM2_DISCRETE_MODE=true")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("pm2 %s: %w: %s%s", strings.Join(args, " "), err, out.Bytes(), errb.Bytes())
	}
	return out.Bytes(), nil
}

// PID returns the God daemon's pid (PM2_HOME/pm2.pid).
func (d *PM2) PID() (int, error) {
	b, err := os.ReadFile(filepath.Join(d.Home, "pm2.pid"))
	if err != nil {
		return 0, fmt.Errorf("pm2 daemon pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("pm2 daemon pid: %w", err)
	}
	return pid, nil
}

// Kill stops the daemon and every app it runs (`pm2 kill`); a daemon never
// started is left alone.
func (d *PM2) Kill(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(d.Home, "pm2.pid")); err != nil {
		return nil // never started
	}
	_, err := d.Run(ctx, "kill")
	return err
}

// Start writes app (one entry of an ecosystem file's "apps", with at least
// its "name") to dir/NAME.ecosystem.json, starts it with `pm2 start` and
// returns the God daemon's pid.
func (d *PM2) Start(ctx context.Context, dir, name string, app map[string]any) (god int, err error) {
	b, err := json.MarshalIndent(map[string]any{"apps": []any{app}}, "", "  ")
	if err != nil {
		return 0, fmt.Errorf("pm2 ecosystem: %w", err)
	}
	path := filepath.Join(dir, name+".ecosystem.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return 0, fmt.Errorf("pm2 ecosystem: %w", err)
	}
	if _, err := d.Run(ctx, "start", path); err != nil {
		return 0, err
	}
	return d.PID()
}
