package agent

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// WriteEffective writes the effective config as TOML, every key in the
// contract's order, for `agent check`. heapCapMB is the resolved heap cap,
// written for max_old_space_size when it is "auto". Values read from
// env_file are never written (they may be secrets): only the file's path
// and the number of variables.
func (c *Config) WriteEffective(w io.Writer, heapCapMB int) error {
	var b bytes.Buffer
	line := func(key, value, comment string) {
		b.WriteString(key)
		b.WriteString(" = ")
		b.WriteString(value)
		if comment != "" {
			b.WriteString("  # ")
			b.WriteString(comment)
		}
		b.WriteByte('\n')
	}
	str := tomlQuote
	dur := func(d Duration) string { return tomlQuote(d.String()) }
	section := func(name string) { fmt.Fprintf(&b, "\n[%s]\n", name) }
	offIfEmpty := func(s string) string {
		if s == "" {
			return "off"
		}
		return ""
	}

	if c.Path != "" {
		fmt.Fprintf(&b, "# effective config of %s\n", commentSafe(c.Path))
	}
	line("name", str(c.Name), "")

	section("app")
	args := make([]string, len(c.App.Command))
	for i, a := range c.App.Command {
		args[i] = str(a)
	}
	line("command", "["+strings.Join(args, ", ")+"]", "")
	dirNote := ""
	if c.App.Dir == "" {
		dirNote = "the agent's working directory"
	}
	line("dir", str(c.App.Dir), dirNote)
	userNote := "the agent's user"
	if cr := c.App.Credential; cr != nil {
		groups := make([]string, len(cr.Groups))
		for i, g := range cr.Groups {
			groups[i] = strconv.FormatUint(uint64(g), 10)
		}
		userNote = fmt.Sprintf("uid %d, gid %d, groups %s", cr.Uid, cr.Gid, strings.Join(groups, ","))
	} else if c.App.User != "" {
		userNote = ""
	}
	line("user", str(c.App.User), userNote)
	names := make([]string, 0, len(c.App.Env))
	for k := range c.App.Env {
		names = append(names, k)
	}
	sort.Strings(names)
	pairs := make([]string, len(names))
	for i, k := range names {
		pairs[i] = tomlKey(k) + " = " + str(c.App.Env[k])
	}
	if len(pairs) == 0 {
		line("env", "{}", "")
	} else {
		line("env", "{ "+strings.Join(pairs, ", ")+" }", "")
	}
	envFileNote := ""
	if c.App.EnvFile != "" {
		envFileNote = fmt.Sprintf("%d variables (values not shown)", len(c.App.EnvFileVars))
	}
	line("env_file", str(c.App.EnvFile), envFileNote)
	npmNote := "npm scripts run without npm"
	if c.App.NPM == "npm" {
		npmNote = "npm scripts run by npm"
	}
	line("npm", str(c.App.NPM), npmNote)

	section("node")
	if c.Node.MaxOldSpaceSize.Auto {
		line("max_old_space_size", strconv.Itoa(heapCapMB), "auto: half of the memory limit, in MB")
	} else if c.Node.MaxOldSpaceSize.MB == 0 {
		line("max_old_space_size", "0", "NODE_OPTIONS left alone")
	} else {
		line("max_old_space_size", strconv.Itoa(c.Node.MaxOldSpaceSize.MB), "MB")
	}

	r := c.Restart
	section("restart")
	line("policy", str(r.Policy), "")
	line("delay", dur(r.Delay), "")
	line("max_delay", dur(r.MaxDelay), "")
	line("reset_after", dur(r.ResetAfter), "")
	line("max_restarts", strconv.Itoa(r.MaxRestarts), "")
	line("window", dur(r.Window), "")
	line("on_exhausted", str(r.OnExhausted), "")

	section("stop")
	line("signal", str(c.Stop.Signal.String()), "")
	line("timeout", dur(c.Stop.Timeout), "")
	line("drain", dur(c.Stop.Drain), "")

	section("memory")
	rssNote := ""
	if c.Memory.MaxRSS == 0 {
		rssNote = "no limit"
	}
	line("max_rss", str(c.Memory.MaxRSS.String()), rssNote)
	line("rss_grace", dur(c.Memory.RSSGrace), "")
	line("watch_oom", strconv.FormatBool(c.Memory.WatchOOM), "")

	pr := c.Probe
	section("probe")
	probeNote := ""
	if !pr.Enabled() {
		probeNote = "no probe: ready once alive for 1s"
	}
	line("http", str(pr.HTTP), probeNote)
	line("tcp", str(pr.TCP), "")
	line("interval", dur(pr.Interval), "")
	line("timeout", dur(pr.Timeout), "")
	line("failure_threshold", strconv.Itoa(pr.FailureThreshold), "")
	line("startup_timeout", dur(pr.StartupTimeout), "")

	section("health")
	line("listen", str(c.Health.Listen), "")
	line("path", str(c.Health.Path), "")

	section("control")
	line("socket", str(c.Control.Socket), "")
	groupNote := "root only (0600)"
	if c.Control.Group != "" {
		groupNote = fmt.Sprintf("gid %d (0660)", c.Control.GID)
	}
	line("group", str(c.Control.Group), groupNote)

	p := c.Proxy
	section("proxy")
	line("listen", str(p.Listen), offIfEmpty(p.Listen))
	line("upstream", str(p.Upstream), "")
	spareNote := ""
	if p.SpareUpstream == "" {
		spareNote = "reload without overlap"
	}
	line("spare_upstream", str(p.SpareUpstream), spareNote)
	line("hold", dur(p.Hold), "")
	line("idle_timeout", dur(p.IdleTimeout), "")

	section("log")
	line("level", str(c.Log.Level), "")
	line("format", str(c.Log.Format), "")
	fileNote := ""
	if c.Log.File == "" {
		fileNote = "stderr only"
	}
	line("file", str(c.Log.File), fileNote)
	line("max_size", str(c.Log.MaxSize.String()), "")
	line("max_files", strconv.Itoa(c.Log.MaxFiles), "")

	section("metrics")
	line("listen", str(c.Metrics.Listen), offIfEmpty(c.Metrics.Listen))

	_, err := w.Write(b.Bytes())
	return err
}

// tomlQuote returns s as a TOML basic string.
func tomlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

// tomlKey returns k as a TOML key: bare when it can be, else quoted.
func tomlKey(k string) string {
	for _, r := range k {
		if !(r == '_' || r == '-' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return tomlQuote(k)
		}
	}
	if k == "" {
		return `""`
	}
	return k
}

// commentSafe replaces line breaks so s fits in a comment.
func commentSafe(s string) string {
	return strings.NewReplacer("\n", `\n`, "\r", `\r`).Replace(s)
}
