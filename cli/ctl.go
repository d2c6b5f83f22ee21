// Package cli holds the command-line front ends of the one binary: `agent
// run|check|install|version` and `agentctl`, which talks to a running agent
// over its control socket.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/BurntSushi/toml"

	"agent/agent"
	"agent/supervisor"
)

// Exit codes of agentctl.
const (
	CtlOK          = 0 // done
	CtlAgentError  = 1 // the agent answered with an error
	CtlUnreachable = 3 // the agent could not be reached
	CtlUsage       = 2
	CtlNoUpgrade   = 4 // the running agent predates upgrades in place
)

const ctlUsage = `usage: agentctl [--socket PATH] [--config PATH] [--timeout D] <command>

commands:
  status [--json]     the app's state (a table, or the JSON object)
  restart             restart the app (clears a failed state)
  stop                stop the app; it stays stopped until start
  start               start a stopped or failed app
  reload              replace the app's processes for a deploy (zero downtime
                      with [proxy]), one at a time; exit 0 once the new ones
                      serve, 1 if one failed and the old ones kept serving
  scale N             run N processes of the app (needs [proxy]); exit 0 once
                      N serve
  logs [-n N] [-f]    the app's recent output; -f follows it
  upgrade [--binary PATH]
                      replace the agent's own program in place, without a
                      restart of the app or a dropped request (root only;
                      PATH defaults to the path the agent was started as);
                      exit 1 if refused (the old one keeps running), 4 if the
                      running agent predates upgrades
`

// Ctl runs agentctl with args (without the program name) and returns its
// exit code.
func Ctl(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agentctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlUsage) }
	socket := fs.String("socket", "", "control socket `path`")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait for an action to be done")
	config := fs.String("config", "", "config `path` to find the socket in")
	if err := fs.Parse(args); err != nil {
		return CtlUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return CtlUsage
	}
	c := &agent.Client{Socket: ResolveSocket(*socket, *config)}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	var err error
	switch cmd {
	case "status":
		sub := flag.NewFlagSet("status", flag.ContinueOnError)
		sub.SetOutput(stderr)
		asJSON := sub.Bool("json", false, "print the status object as JSON")
		if sub.Parse(rest) != nil {
			return CtlUsage
		}
		var s *agent.Status
		if s, err = c.Status(ctx); err == nil {
			if *asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				err = enc.Encode(s)
			} else {
				PrintStatus(stdout, s, time.Now())
			}
		}
	case "restart", "stop", "start", "reload":
		actx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		ctx := actx
		var s *agent.Status
		switch cmd {
		case "reload":
			s, err = c.Reload(ctx)
		case "restart":
			s, err = c.Restart(ctx)
		case "stop":
			s, err = c.Stop(ctx)
		case "start":
			s, err = c.Start(ctx)
		}
		if err == nil {
			fmt.Fprintf(stdout, "%s: %s\n", cmd, s.State)
		}
	case "scale":
		n, perr := strconv.Atoi(strings.Join(rest, ""))
		if len(rest) != 1 || perr != nil {
			fmt.Fprintln(stderr, "agentctl: scale takes one number of processes")
			return CtlUsage
		}
		var s *agent.Status
		sctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if s, err = c.Scale(sctx, n); err == nil {
			fmt.Fprintf(stdout, "scale: %s, %d processes\n", s.State, len(s.Instances))
		}
	case "upgrade":
		sub := flag.NewFlagSet("upgrade", flag.ContinueOnError)
		sub.SetOutput(stderr)
		binary := sub.String("binary", "", "the new program (default: the path the agent was started as)")
		if sub.Parse(rest) != nil || sub.NArg() > 0 {
			return CtlUsage
		}
		uctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		var before, after *agent.Status
		if before, err = c.Status(uctx); err == nil {
			after, err = c.Upgrade(uctx, *binary)
		}
		var ae *agent.APIError
		if errors.As(err, &ae) && ae.Code == http.StatusNotFound {
			fmt.Fprintln(stderr, "agentctl: the running agent predates upgrades in place: restart it instead (systemctl restart agent)")
			return CtlNoUpgrade
		}
		if err == nil {
			// The new program answered; its status, read back, must say so.
			if after, err = c.Status(uctx); err == nil && (after.Agent.Upgrades != before.Agent.Upgrades+1 || after.Agent.PID != before.Agent.PID) {
				err = fmt.Errorf("upgrade: the agent answered, but its status shows %d upgrades and pid %d (before: %d, pid %d)",
					after.Agent.Upgrades, after.Agent.PID, before.Agent.Upgrades, before.Agent.PID)
			}
		}
		if err == nil {
			fmt.Fprintf(stdout, "upgrade: agent %s -> %s, pid %d, upgrade %d; app %s\n",
				before.Agent.Version, after.Agent.Version, after.Agent.PID, after.Agent.Upgrades, after.State)
		}
	case "logs":
		sub := flag.NewFlagSet("logs", flag.ContinueOnError)
		sub.SetOutput(stderr)
		n := sub.Int("n", 100, "number of lines")
		follow := sub.Bool("f", false, "follow new output")
		if sub.Parse(rest) != nil {
			return CtlUsage
		}
		err = c.Logs(ctx, *n, *follow, func(l supervisor.Line) {
			fmt.Fprintf(stdout, "%s %s %d | %s\n", l.Time.Local().Format("2006-01-02 15:04:05"), l.Stream, l.PID, l.Text)
		})
	default:
		fmt.Fprintf(stderr, "agentctl: unknown command %q\n", cmd)
		fs.Usage()
		return CtlUsage
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// The agent goes on with it; agentctl only stops waiting.
		fmt.Fprintf(stderr, "agentctl: %s: still under way after %s (see agentctl status)\n", cmd, *timeout)
		return CtlAgentError
	}
	if err != nil {
		fmt.Fprintln(stderr, "agentctl:", err)
		var ue *agent.UnreachableError
		if errors.As(err, &ue) {
			return CtlUnreachable
		}
		return CtlAgentError
	}
	return CtlOK
}

// ResolveSocket finds the control socket: flag, $AGENT_SOCKET, the config's
// control.socket (--config, $AGENT_CONFIG, the default path), or the default.
func ResolveSocket(flagSocket, flagConfig string) string {
	if flagSocket != "" {
		return flagSocket
	}
	if s := os.Getenv("AGENT_SOCKET"); s != "" {
		return s
	}
	path := flagConfig
	if path == "" {
		path = os.Getenv("AGENT_CONFIG")
	}
	if path == "" {
		path = agent.DefaultConfigPath
	}
	// Only the socket is wanted: read it leniently, so that agentctl works
	// for a user who could not validate the whole config (app user, dirs).
	var c struct {
		Control struct {
			Socket string `toml:"socket"`
		} `toml:"control"`
	}
	if _, err := toml.DecodeFile(path, &c); err == nil && c.Control.Socket != "" {
		return c.Control.Socket
	}
	return agent.DefaultSocket
}

// PrintStatus writes s as a table, like `pm2 status`: one row for the app
// with one process, one row a process (NAME:INDEX) with several.
func PrintStatus(w io.Writer, s *agent.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPID\tSTATE\tREADY\tUPTIME\tRESTARTS\tCPU\tRSS\tHEAP CAP\tLAST EXIT")
	row := func(name string, pid *int, state string, ready bool, up float64, restarts int, cpu float64, rss uint64, heapMB int, e *agent.ExitStatus) {
		p, uptime := "-", "-"
		if pid != nil {
			p = fmt.Sprint(*pid)
			uptime = humanDuration(time.Duration(up * float64(time.Second)))
		}
		heap := "-"
		if heapMB > 0 {
			heap = fmt.Sprintf("%d MB", heapMB)
		}
		last := "-"
		if e != nil {
			last = e.Reason
			switch {
			case e.Code != nil:
				last += fmt.Sprintf(" (code %d)", *e.Code)
			case e.Signal != nil:
				last += " (" + *e.Signal + ")"
			}
			last += ", " + humanDuration(now.Sub(e.At)) + " ago"
		}
		r := "no"
		if ready {
			r = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%.1f%%\t%s\t%s\t%s\n", name, p, state, r, uptime, restarts, cpu, humanBytes(rss), heap, last)
	}
	if len(s.Instances) > 1 {
		for _, in := range s.Instances {
			row(fmt.Sprintf("%s:%d", s.Name, in.Index), in.PID, in.State, in.Ready, in.UptimeSeconds, in.Restarts, in.CPUPercent, in.RSSBytes, in.HeapCapMB, in.LastExit)
		}
	} else {
		cpu := 0.0
		if len(s.Instances) == 1 {
			cpu = s.Instances[0].CPUPercent
		}
		row(s.Name, s.PID, s.State, s.Ready, s.UptimeSeconds, s.Restarts, cpu, s.RSSBytes, s.HeapCapMB, s.LastExit)
	}
	tw.Flush()
	if len(s.Instances) > 1 {
		fmt.Fprintf(w, "\n%s: %s\n", s.Name, s.State)
	}
	if s.Message != "" {
		fmt.Fprintf(w, "\n%s: %s\n", s.State, s.Message)
	}
	if e := s.LastExit; e != nil && e.Detail != "" {
		fmt.Fprintf(w, "last exit: %s\n", e.Detail)
	}
	if p := s.Proxy; p != nil {
		fmt.Fprintf(w, "proxy %s -> %s: %d in flight, %d held, %d requests, %d replayed, %d failed\n",
			p.Listen, p.Upstream, p.InFlight, p.Held, p.Requests, p.Replayed, p.Failed)
	}
	fmt.Fprintf(w, "agent %s, pid %d, rss %s, up %s, oom watch %s, oom kills %d\n",
		s.Agent.Version, s.Agent.PID, humanBytes(s.Agent.RSSBytes), humanDuration(time.Duration(s.Agent.UptimeSeconds*float64(time.Second))), s.Agent.OOMWatch, s.OOMKills)
}

func humanBytes(b uint64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MB", float64(b)/(1<<20))
}

func humanDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	days, hours := int(d.Hours())/24, int(d.Hours())%24
	if hours == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%dh", days, hours)
}
