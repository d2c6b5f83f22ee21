package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"agent/agent"
	"agent/internal/logsink"
	"agent/internal/procs"
	"agent/packaging"
)

// Build is what main knows at build time.
type Build struct {
	Version       string // stamped with -ldflags "-X main.version=..."
	ExampleConfig []byte // agent.toml.example, written by `agent install` when no config exists

	argv []string // os.Args, for agent run
}

// Main runs the binary with args (os.Args) and returns its exit code:
// agentctl when invoked by that name, else the agent's commands.
func Main(args []string, b Build, stdout, stderr io.Writer) int {
	if filepath.Base(args[0]) == "agentctl" {
		return ctlMain(args[1:], stdout, stderr)
	}
	b.argv = args
	err := run(args[1:], b, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errCtlExit):
		return err.(ctlExit).code
	case errors.As(err, new(usageError)):
		fmt.Fprintln(stderr, err)
		return 2
	default:
		fmt.Fprintln(stderr, "agent:", err)
		return 1
	}
}

// usageError is a command-line or config error: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// ctlExit carries the exit code of `agent ctl ...` out of run.
type ctlExit struct{ code int }

var errCtlExit = errors.New("agentctl exit")

func (e ctlExit) Error() string        { return fmt.Sprintf("agentctl exit %d", e.code) }
func (e ctlExit) Is(target error) bool { return target == errCtlExit }

func ctlMain(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Ctl(ctx, args, stdout, stderr)
}

const usage = `usage: agent <command> [--config PATH]

commands:
  run       run the agent in the foreground (systemd's ExecStart)
  check     validate the config, print the effective config and any warnings
  install   install the systemd unit and start the agent
  version   print the version
  ctl ...   the same as agentctl ...
  upgrade-check --config PATH --handover-version N
            what agentctl upgrade runs on a new program: exit 0 when it
            takes the config (and the running one on stdin) and the hand-over

The config is --config, else $AGENT_CONFIG, else /etc/agent/agent.toml.
`

func run(args []string, b Build, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{errors.New("agent: no command")}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "version", "--version":
		fmt.Fprintf(stdout, "agent %s\n", b.Version)
		return nil
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return nil
	case "ctl":
		if code := ctlMain(rest, stdout, stderr); code != 0 {
			return ctlExit{code}
		}
		return nil
	case "upgrade-check":
		return upgradeCheck(rest, stdout, stderr)
	}
	fs := flag.NewFlagSet("agent "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config `path`")
	if err := fs.Parse(rest); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("agent %s: unexpected argument %q", cmd, fs.Arg(0))}
	}
	path := *configPath
	if path == "" {
		path = os.Getenv("AGENT_CONFIG")
	}
	if path == "" {
		path = agent.DefaultConfigPath
	}
	switch cmd {
	case "run":
		return runAgent(path, b, stderr)
	case "check":
		cfg, err := agent.Load(path)
		if err != nil {
			return usageError{err}
		}
		for _, w := range cfg.Warnings {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		heap := agent.ResolveHeapMB(cfg, cfg.App.Instances.Count(), zerolog.New(stderr))
		if err := cfg.WriteEffective(stdout, heap); err != nil {
			return err
		}
		plan, err := agent.PlanCommand(cfg)
		if err != nil {
			return usageError{err}
		}
		fmt.Fprintf(stdout, "\n# app.command runs as: %s\n", plan)
		fmt.Fprintf(stderr, "%s: ok\n", path)
		return nil
	case "install":
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, NoColor: true}).With().Timestamp().Logger()
		return packaging.Install(ctx, log, packaging.InstallOptions{
			Root:          "/",
			Binary:        exe,
			ConfigPath:    path,
			ExampleConfig: b.ExampleConfig,
		})
	}
	fmt.Fprint(stderr, usage)
	return usageError{fmt.Errorf("agent: unknown command %q", cmd)}
}

// runAgent is `agent run`: nil on a clean shutdown, a usageError (exit 2)
// on a bad config or a control socket held by another agent, any other
// error (exit 1) on a runtime failure.
func runAgent(path string, b Build, stderr io.Writer) error {
	procs.Set()
	// Signals first, before any slow start-up work.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A log reader that goes away (a crashed collector, a closed pipe) must
	// cost log lines, never the agent: with SIGPIPE notified a write to a
	// broken stdout or stderr returns EPIPE instead of killing the process.
	// Notify, not Ignore: an ignored signal stays ignored in the app across
	// exec, a handled one is reset to the default there.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer func() {
		signal.Stop(hup)
		close(hup) // ends the forwarder
	}()
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()

	// Exec'd by an upgrade: take over from the program before, with the
	// config it ran (the file may say otherwise by now), or go back to it.
	h, err := agent.TakeHandover()
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	var cfg *agent.Config
	if h != nil {
		if cfg, err = h.LoadConfig(); err != nil {
			return execBack(h, fmt.Errorf("the running config: %w", err), stderr)
		}
	} else if cfg, err = agent.Load(path); err != nil {
		return usageError{err}
	}
	out, err := openLog(cfg, stderr)
	if err != nil {
		if h != nil {
			return execBack(h, err, stderr)
		}
		return usageError{err}
	}
	defer out.Close()
	opts := agent.Options{Version: b.Version, LogDropped: out.Dropped, Argv: b.argv, FlushLog: out.Flush}
	var a *agent.Agent
	if h != nil {
		if a, err = agent.Restore(cfg, out.log, opts, h); err != nil {
			out.Close()
			return execBack(h, err, stderr)
		}
	} else {
		a = agent.New(cfg, out.log, opts)
	}
	err = a.Run(ctx, reload)
	if h != nil && !a.TookOver() {
		out.Close()
		return execBack(h, err, stderr)
	}
	if errors.Is(err, agent.ErrSocketInUse) || errors.Is(err, agent.ErrSocketPathTaken) {
		return usageError{err}
	}
	return err
}

// execBack goes back to the program before this one, which handed over
// h, after a take-over failed for why. It returns only if it cannot.
func execBack(h *agent.Handover, why error, stderr io.Writer) error {
	fmt.Fprintf(stderr, "agent: upgrade: cannot take over (%v); going back to the program before\n", why)
	if err := agent.ExecBack(h, why); err != nil {
		return fmt.Errorf("upgrade: cannot take over (%v) nor go back: %w", why, err)
	}
	return nil
}

// upgradeCheck is `agent upgrade-check --config PATH --handover-version N`,
// run by a running agent on the program it is asked to upgrade to: exit 0
// when this program accepts the config file at PATH and the running
// config on standard input, and reads hand-overs of version N.
func upgradeCheck(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent upgrade-check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config `path`")
	version := fs.Int("handover-version", 0, "the hand-over format's version")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *path == "" || fs.NArg() > 0 {
		return usageError{errors.New("usage: agent upgrade-check --config PATH --handover-version N < RUNNING-CONFIG")}
	}
	if !agent.SupportsHandover(*version) {
		return fmt.Errorf("this program cannot take over from a hand-over of version %d", *version)
	}
	if _, err := agent.Load(*path); err != nil {
		return err
	}
	running, err := io.ReadAll(io.LimitReader(os.Stdin, 16<<20))
	if err != nil {
		return fmt.Errorf("read the running config: %w", err)
	}
	if len(running) > 0 {
		if _, err := agent.Parse(*path, running); err != nil {
			return fmt.Errorf("the running config: %w", err)
		}
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}

// logOutput is where the agent's log lines go: stderr (journald) and, with
// log.file, the rotated file, each behind a never-blocking sink so that a
// stuck or vanished reader costs lines, never the agent or the app.
type logOutput struct {
	log    zerolog.Logger
	stderr *logsink.Sink
	file   *logsink.Sink // nil without log.file
	f      io.Closer
}

// Sizes of the sinks' buffers: what a stalled reader may hold back before
// lines are dropped.
const (
	stderrBuffer = 512 << 10
	fileBuffer   = 1 << 20
)

func openLog(cfg *agent.Config, stderr io.Writer) (*logOutput, error) {
	// UTC, as the CloudWatch agent config in deploy/cloudwatch expects.
	zerolog.TimeFieldFormat = time.RFC3339Nano
	zerolog.TimestampFunc = func() time.Time { return time.Now().UTC() }
	o := &logOutput{stderr: logsink.New(stderr, stderrBuffer)}
	var w io.Writer = o.stderr
	if cfg.Log.Format == "console" {
		w = zerolog.ConsoleWriter{Out: o.stderr, TimeFormat: "15:04:05.000"}
	}
	if cfg.Log.File != "" {
		f, err := logsink.OpenFile(cfg.Log.File, int64(cfg.Log.MaxSize), cfg.Log.MaxFiles)
		if err != nil {
			o.stderr.Close()
			return nil, fmt.Errorf("%s: log.file: %w", cfg.Path, err)
		}
		o.f = f
		o.file = logsink.New(f, fileBuffer)
		// The file is always JSON: it is what the CloudWatch agent parses.
		w = zerolog.MultiLevelWriter(w, o.file)
	}
	level, err := zerolog.ParseLevel(cfg.Log.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	o.log = zerolog.New(w).Level(level).With().Timestamp().Logger()
	return o, nil
}

// Flush writes what the sinks hold, waiting a short time at most: before
// an upgrade's exec, which would lose it.
func (o *logOutput) Flush() {
	o.stderr.Flush(500 * time.Millisecond)
	if o.file != nil {
		o.file.Flush(500 * time.Millisecond)
	}
}

// Dropped counts the lines the sinks dropped.
func (o *logOutput) Dropped() uint64 {
	n := o.stderr.Dropped()
	if o.file != nil {
		n += o.file.Dropped()
	}
	return n
}

// Close flushes what the sinks can within a short time.
func (o *logOutput) Close() {
	o.stderr.Close()
	if o.file != nil {
		o.file.Close()
		o.f.Close()
	}
}
