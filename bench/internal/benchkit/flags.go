package benchkit

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// Main runs a harness's run function with a context that SIGINT and
// SIGTERM cancel, prints its error prefixed with name and exits 1 on one.
func Main(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// Logf writes a progress line to w, after the time of day.
func Logf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

// Flags are the flags every harness takes: the agent and the PM2 under
// test, and whether to keep the work directory.
type Flags struct {
	AgentBin   string // -agent: "" builds it from this module
	PM2Version string // -pm2: the version to install from npm
	PM2Dir     string // -pm2-dir: "" installs into the work directory
	Keep       bool   // -keep: keep the work directory
}

// Register defines the flags in fs; keepUsage is -keep's help.
func (f *Flags) Register(fs *flag.FlagSet, keepUsage string) {
	fs.StringVar(&f.AgentBin, "agent", "", "agent binary (default: build it from this module)")
	fs.StringVar(&f.PM2Version, "pm2", "7", "PM2 version to install from npm")
	fs.StringVar(&f.PM2Dir, "pm2-dir", "", "reuse a PM2 install in this directory (default: a fresh one)")
	fs.BoolVar(&f.Keep, "keep", false, keepUsage)
}

// Agent returns the agent binary to run: -agent, or one built from this
// module into work.
func (f *Flags) Agent(ctx context.Context, work string, logf func(format string, args ...any)) (string, error) {
	if f.AgentBin != "" {
		return f.AgentBin, nil
	}
	bin := filepath.Join(work, "agent")
	logf("building the agent")
	if err := BuildAgent(ctx, bin); err != nil {
		return "", err
	}
	return bin, nil
}

// PM2 installs PM2 -pm2 into -pm2-dir, or into work/pm2, and returns its
// command and exact version.
func (f *Flags) PM2(ctx context.Context, work string, logf func(format string, args ...any)) (bin, version string, err error) {
	dir := f.PM2Dir
	if dir == "" {
		dir = filepath.Join(work, "pm2")
	}
	logf("installing pm2@%s into %s", f.PM2Version, dir)
	return InstallPM2(ctx, dir, f.PM2Version)
}
