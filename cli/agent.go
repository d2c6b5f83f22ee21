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
	"agent/packaging"
)

// Build is what main knows at build time.
type Build struct {
	Version       string // stamped with -ldflags "-X main.version=..."
	ExampleConfig []byte // agent.toml.example, written by `agent install` when no config exists
}

// Main runs the binary with args (os.Args) and returns its exit code:
// agentctl when invoked by that name, else the agent's commands.
func Main(args []string, b Build, stdout, stderr io.Writer) int {
	if filepath.Base(args[0]) == "agentctl" {
		return ctlMain(args[1:], stdout, stderr)
	}
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
		return runAgent(path, b.Version, stderr)
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
func runAgent(path, version string, stderr io.Writer) error {
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

	cfg, err := agent.Load(path)
	if err != nil {
		return usageError{err}
	}
	out, err := openLog(cfg, stderr)
	if err != nil {
		return usageError{err}
	}
	defer out.Close()
	a := agent.New(cfg, out.log, agent.Options{Version: version, LogDropped: out.Dropped})
	err = a.Run(ctx, reload)
	if errors.Is(err, agent.ErrSocketInUse) || errors.Is(err, agent.ErrSocketPathTaken) {
		return usageError{err}
	}
	return err
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
