// Package benchkit holds what the benchmark harnesses under bench/ share:
// building the agent from this module, starting an agent on a config and
// talking to its control socket, installing PM2 from npm into a directory
// of its own and driving its daemon, free loopback ports, polling, waiting
// for a side to serve, medians, nginx configs, wrk runs, resident memory
// samples, and the machine banner printed above the results. The load
// that counts failures as a load balancer would is internal/lbclient.
package benchkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"agent/internal/testkit"
)

// ErrTimeout is returned by Poll when its condition never held.
var ErrTimeout = errors.New("timed out")

// Poll calls cond every interval until it reports true or fails, or
// timeout passes (ErrTimeout), or ctx ends.
func Poll(ctx context.Context, timeout, interval time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %s", ErrTimeout, timeout)
		}
		if err := Sleep(ctx, interval); err != nil {
			return err
		}
	}
}

// Sleep waits d or until ctx ends (then it returns ctx's error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// SleepUntil waits until t or until ctx ends (then it returns ctx's error).
func SleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	return Sleep(ctx, d)
}

// FreePorts returns n consecutive free loopback ports, reserved against
// every test and harness on the machine until release is called (see
// testkit.ReservePorts).
func FreePorts(n int) (ports []int, release func(), err error) {
	ports, release, err = testkit.ReservePorts(n)
	if err != nil {
		return nil, nil, fmt.Errorf("free ports: %w", err)
	}
	return ports, release, nil
}

// TOMLList formats s as a TOML array of strings.
func TOMLList(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = strconv.Quote(v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// TailFile returns the last lines of a log file, for error messages.
func TailFile(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// WriteTree copies the tree under root in fsys (an embedded directory of
// apps) into dir, root itself becoming dir.
func WriteTree(fsys fs.ReadFileFS, root, dir string) error {
	return fs.WalkDir(fsys, root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, strings.TrimPrefix(path, root))
		if e.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := fsys.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
}

// BuildAgent builds the agent from the module holding the current
// directory into out, as `make build` does.
func BuildAgent(ctx context.Context, out string) error {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, ".")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build agent: %w\n%s", err, b)
	}
	return nil
}

// Version runs name with args and returns its output trimmed: "-" when
// name is empty (nothing to ask), "?" when the command fails.
func Version(ctx context.Context, name string, args ...string) string {
	if name == "" {
		return "-"
	}
	o, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(o))
}

// MachineLine describes the machine in one line ending in a newline:
// "Machine: OS, N cores (CPU)[, X GiB memory], kernel K". Unknown fields
// read "?".
func MachineLine(memory bool) string {
	field := func(path, key string) string {
		data, _ := os.ReadFile(path)
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(line, key); ok {
				return strings.Trim(strings.TrimSpace(strings.TrimLeft(v, " \t:=")), `"`)
			}
		}
		return "?"
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	mem := ""
	if memory {
		memKB, _ := strconv.ParseFloat(strings.TrimSuffix(field("/proc/meminfo", "MemTotal"), " kB"), 64)
		mem = fmt.Sprintf("%.1f GiB memory, ", memKB/(1<<20))
	}
	return fmt.Sprintf("Machine: %s, %d cores (%s), %skernel %s\n",
		field("/etc/os-release", "PRETTY_NAME"), runtime.NumCPU(), field("/proc/cpuinfo", "model name"),
		mem, strings.TrimSpace(string(kernel)))
}

// WaitServing waits until GET / through addr answers 200.
func WaitServing(ctx context.Context, addr string, timeout time.Duration) error {
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	var last error
	err := Poll(ctx, timeout, 50*time.Millisecond, func() (bool, error) {
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			last = err
			return false, nil
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		last = fmt.Errorf("%s", resp.Status)
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last: %v)", err, last)
	}
	return nil
}
