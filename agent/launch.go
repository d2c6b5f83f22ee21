package agent

import (
	"net"
	"net/url"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"agent/supervisor"
	"agent/supervisor/npmscript"
)

// generation is one load of the config and what follows from it (the heap
// cap, the supervisor's settings). It never changes once made: a config
// reload makes a new one, and each app process is started and watched with
// exactly one (through its launch), never with a mix of two.
type generation struct {
	cfg       *Config
	instances int       // app processes: app.instances, or what agentctl scale asked for
	heapMB    int       // per process
	sup       appConfig // without the launch's PORT and Launch
	// npmScript is the script app.command names when it is run without
	// npm (app.npm = "direct"): "" otherwise.
	npmScript string
	npmArgs   []string
}

// launch is what one app process is started with: its generation and,
// with the traffic front, the address it is to listen on (its PORT). Each
// start gets its own copy (prepare), with what is observed of that process.
type launch struct {
	gen      *generation
	slot     int
	upstream string // host:port; "" without the proxy
	obs      *observed
}

// observed is what the agent learns about one app process while it runs.
type observed struct {
	rss  atomic.Uint64         // its tree's RSS, last sample
	cpu  atomic.Uint64         // its tree's CPU use over the last sample's second, in 1/1000 %
	tree atomic.Pointer[[]int] // its tree's PIDs, last sample
	// oomAtStart is the memory cgroup's oom_kill counter when it started,
	// -1 when the cgroup keeps none.
	oomAtStart int64
}

// The supervisor's types for the agent's processes.
type (
	appConfig     = supervisor.Config[*launch]
	appChild      = supervisor.Child[*launch]
	appStatus     = supervisor.Status[*launch]
	appEvent      = supervisor.Event[*launch]
	appSupervisor = supervisor.Supervisor[*launch]
)

// rss returns the last RSS figure of the process l was started with; 0
// for none.
func (l *launch) rss() uint64 {
	if l == nil || l.obs == nil {
		return 0
	}
	return l.obs.rss.Load()
}

// cpuPercent returns the CPU use of l's process tree over the last
// sampling second, in percent of one CPU.
func (l *launch) cpuPercent() float64 {
	if l == nil || l.obs == nil {
		return 0
	}
	return float64(l.obs.cpu.Load()) / 1000
}

// newGeneration resolves cfg once for the processes started with it,
// n of them (app.instances, or what agentctl scale asked for).
func (a *Agent) newGeneration(cfg *Config, n int) *generation {
	g := &generation{cfg: cfg, instances: n, heapMB: ResolveHeapMB(cfg, n, a.log)}
	if cfg.App.NPM != "npm" {
		if name, args, ok := npmscript.Parse(cfg.App.Command); ok {
			g.npmScript, g.npmArgs = name, args
		}
	}
	env, warn := supervisor.BuildEnv(os.Environ(), g.heapMB, userEnv(cfg.App.User), cfg.App.EnvFileVars, envPairs(cfg.App.Env))
	if warn != "" {
		a.log.Warn().Msg(warn)
	}
	g.sup = appConfig{
		Name:       cfg.Name,
		Command:    cfg.App.Command,
		Dir:        cfg.App.Dir,
		Env:        env,
		Credential: cfg.App.Credential,
		Policy: supervisor.Policy{
			Mode:        cfg.Restart.Policy,
			Delay:       cfg.Restart.Delay.D(),
			MaxDelay:    cfg.Restart.MaxDelay.D(),
			ResetAfter:  cfg.Restart.ResetAfter.D(),
			MaxRestarts: cfg.Restart.MaxRestarts,
			Window:      cfg.Restart.Window.D(),
		},
		StopSignal:      cfg.Stop.Signal.Sys(),
		StopTimeout:     cfg.Stop.Timeout.D(),
		ExitOnExhausted: cfg.Restart.OnExhausted == "exit",
	}
	return g
}

// appPort returns the PORT that app.env or app.env_file sets, if any.
func (g *generation) appPort() (string, bool) {
	port, ok := "", false
	for _, kv := range append(slices.Clone(g.cfg.App.EnvFileVars), envPairs(g.cfg.App.Env)...) {
		if v, found := strings.CutPrefix(kv, "PORT="); found {
			port, ok = v, true
		}
	}
	return port, ok
}

// supervisorConfig is the supervisor's config for a process of g in slot
// given upstream ("" without the proxy): PORT is set to its port unless the
// app's own environment sets PORT, and NODE_APP_INSTANCE to the slot (PM2's
// variable).
func (g *generation) supervisorConfig(slot int, upstream string) appConfig {
	sc := g.sup
	sc.Launch = &launch{gen: g, slot: slot, upstream: upstream}
	sc.Env = append(slices.Clone(sc.Env), "NODE_APP_INSTANCE="+strconv.Itoa(slot))
	if upstream != "" {
		if _, set := g.appPort(); !set {
			sc.Env = append(sc.Env, "PORT="+portOf(upstream))
		}
	}
	return sc
}

// canOverlap reports whether a reload can run the new process beside the
// old one: the proxy is on with a spare port, and the app takes its port
// from PORT (app.env does not pin it).
func (g *generation) canOverlap() bool {
	_, pinned := g.appPort()
	return g.cfg.ProxyEnabled() && (g.cfg.Proxy.SpareUpstream != "" || g.instances > 1) && !pinned
}

// prepare is the supervisor's Prepare: each start gets its own launch, to
// hold what is observed of its process; an npm script run without npm is
// planned afresh (a deploy may change package.json) and run as npm would,
// pre<NAME> first.
func (a *Agent) prepare(sc appConfig) (appConfig, error) {
	l := *sc.Launch
	l.obs = &observed{oomAtStart: a.cgroupOOMKills()}
	sc.Launch = &l
	if l.gen.npmScript == "" {
		return sc, nil
	}
	plan, err := npmscript.Resolve(sc.Dir, l.gen.npmScript, l.gen.npmArgs, sc.Env, "")
	if err != nil {
		return sc, err
	}
	sc.Dir, sc.Env = plan.Dir, plan.Main.Env
	sc.Command, sc.Path = plan.Main.Argv, plan.Main.Path
	if plan.Pre != nil {
		sc.Command, sc.Path = preThenExec(plan), "/bin/sh"
	}
	return sc, nil
}

// preThenExec returns the argv that runs plan's pre step to completion (its
// failure is the start's failure, with its exit code) and then execs the
// main step in the same process, so that no shell stays above the app:
//
//	sh -c '<pre's own variables> /bin/sh -c "$0" || exit; exec "$@"' PRE-LINE MAIN-ARGV...
func preThenExec(plan *npmscript.Plan) []string {
	var vars strings.Builder
	for _, kv := range plan.Pre.Env {
		if !slices.Contains(plan.Main.Env, kv) {
			k, v, _ := strings.Cut(kv, "=")
			vars.WriteString(k + "=" + shellQuote(v) + " ")
		}
	}
	script := vars.String() + `/bin/sh -c "$0" || exit; exec "$@"`
	main := append([]string{plan.Main.Path}, plan.Main.Argv[1:]...)
	return append([]string{"/bin/sh", "-c", script, plan.Pre.Line}, main...)
}

// shellQuote quotes s for sh: single quotes, with ' written as '\”.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// PlanCommand says how app.command will run for `agent check`: the npm
// script's plan when it runs without npm, else the command itself.
func PlanCommand(cfg *Config) (string, error) {
	if cfg.App.NPM == "npm" {
		return strings.Join(cfg.App.Command, " ") + " (npm itself, app.npm = \"npm\")", nil
	}
	name, args, ok := npmscript.Parse(cfg.App.Command)
	if !ok {
		return strings.Join(cfg.App.Command, " "), nil
	}
	env, _ := supervisor.BuildEnv(os.Environ(), 0, userEnv(cfg.App.User), cfg.App.EnvFileVars, envPairs(cfg.App.Env))
	plan, err := npmscript.Resolve(cfg.App.Dir, name, args, env, "")
	if err != nil {
		return "", err
	}
	return plan.String() + " (without npm)", nil
}

// portOf returns the port of a host:port address.
func portOf(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return port
}

// probeURL returns the probe URL sent to the port a process was given:
// the configured one with its host:port replaced, its path kept.
func probeURL(raw, upstream string) string {
	u, err := url.Parse(raw)
	if err != nil || upstream == "" {
		return raw
	}
	u.Host = upstream
	return u.String()
}

// userEnv returns HOME, USER and LOGNAME for the app's user (a name or a
// numeric uid), as systemd sets them for User=; nil for the agent's own.
func userEnv(name string) []string {
	if name == "" {
		return nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return nil
		}
	}
	return []string{"HOME=" + u.HomeDir, "USER=" + u.Username, "LOGNAME=" + u.Username}
}

// envPairs returns m as KEY=VALUE, sorted by key so the app's environment
// is the same from one start to the next.
func envPairs(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}
