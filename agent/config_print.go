package agent

import (
	"bytes"
	"encoding"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// WriteEffective writes the effective config as TOML for `agent check`:
// every key of the schema (Config's fields), in its order, with a comment
// where a value means more than it says. heapCapMB is the resolved heap
// cap, written for max_old_space_size when it is "auto". Values read from
// env_file are never written (they may be secrets): only the file's path
// and the number of variables.
func (c *Config) WriteEffective(w io.Writer, heapCapMB int) error {
	var b bytes.Buffer
	if c.Path != "" {
		fmt.Fprintf(&b, "# effective config of %s\n", commentSafe(c.Path))
	}
	v := reflect.ValueOf(c).Elem()
	writeKeys := func(parent string) {
		for _, k := range configSchema.keys {
			if k.parent != parent || k.section {
				continue
			}
			value, note := c.effective(k, v.FieldByIndex(k.index), heapCapMB)
			b.WriteString(k.local)
			b.WriteString(" = ")
			b.WriteString(value)
			if note != "" {
				b.WriteString("  # ")
				b.WriteString(note)
			}
			b.WriteByte('\n')
		}
	}
	writeKeys("") // the top's keys come before any section
	for _, k := range configSchema.keys {
		if k.section {
			fmt.Fprintf(&b, "\n[%s]\n", k.name)
			writeKeys(k.name)
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// effective returns the value of the key k, whose field is v, as TOML and
// the comment to write beside it: its zero:"..." note when it is zero,
// unless what it means depends on other keys or on what load resolved.
func (c *Config) effective(k schemaKey, v reflect.Value, heapCapMB int) (value, note string) {
	value = tomlValue(v)
	if v.IsZero() {
		note = k.zeroNote
	}
	switch k.name {
	case "app.user":
		if cr := c.App.Credential; cr != nil {
			groups := make([]string, len(cr.Groups))
			for i, g := range cr.Groups {
				groups[i] = strconv.FormatUint(uint64(g), 10)
			}
			note = fmt.Sprintf("uid %d, gid %d, groups %s", cr.Uid, cr.Gid, strings.Join(groups, ","))
		}
	case "app.env_file":
		if c.App.EnvFile != "" {
			note = fmt.Sprintf("%d variables (values not shown)", len(c.App.EnvFileVars))
		}
	case "app.npm":
		note = "npm scripts run without npm"
		if c.App.NPM == "npm" {
			note = "npm scripts run by npm"
		}
	case "node.max_old_space_size":
		switch h := c.Node.MaxOldSpaceSize; {
		case h.Auto:
			value, note = strconv.Itoa(heapCapMB), "auto: half of the memory limit, in MB"
		case h.MB == 0:
			value, note = "0", "NODE_OPTIONS left alone"
		default:
			value, note = strconv.Itoa(h.MB), "MB"
		}
	case "app.instances":
		n := c.App.Instances.Count()
		if c.App.Instances.Auto {
			note = fmt.Sprintf("%d: the CPUs the agent may use", n)
		}
		if c.ProxyEnabled() {
			first, _ := upstreamPorts(c)
			ports := make([]string, n)
			for i := range ports {
				ports[i] = strconv.Itoa(first + i)
			}
			if note != "" {
				note += "; "
			}
			note += "ports " + strings.Join(ports, ", ")
		}
	case "probe.http":
		if !c.Probe.Enabled() {
			note = "no probe: ready once alive for 1s"
		}
	case "proxy.spare_upstream":
		if _, last := upstreamPorts(c); c.Proxy.SpareUpstream == "" && c.App.Instances.Count() > 1 {
			note = fmt.Sprintf("the port after the last process: %d", last)
		}
	case "control.group":
		if c.Control.Group != "" {
			note = fmt.Sprintf("gid %d (0660)", c.Control.GID)
		}
	}
	return value, note
}

// tomlValue returns the value v as TOML: the value types of units.go as
// the strings they read, a list as an array, a table of values inline with
// its keys sorted.
func tomlValue(v reflect.Value) string {
	if t, ok := v.Interface().(interface{ tomlText() string }); ok {
		return t.tomlText() // a value type that is not always a string
	}
	if m, ok := v.Interface().(encoding.TextMarshaler); ok {
		text, err := m.MarshalText()
		if err != nil {
			panic(err) // the value types of units.go never fail
		}
		return tomlQuote(string(text))
	}
	switch v.Kind() {
	case reflect.String:
		return tomlQuote(v.String())
	case reflect.Int:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Slice:
		elems := make([]string, v.Len())
		for i := range elems {
			elems[i] = tomlValue(v.Index(i))
		}
		return "[" + strings.Join(elems, ", ") + "]"
	case reflect.Map:
		if v.Len() == 0 {
			return "{}"
		}
		keys := make([]string, 0, v.Len())
		for _, k := range v.MapKeys() {
			keys = append(keys, k.String())
		}
		slices.Sort(keys)
		pairs := make([]string, len(keys))
		for i, k := range keys {
			pairs[i] = tomlKey(k) + " = " + tomlValue(v.MapIndex(reflect.ValueOf(k)))
		}
		return "{ " + strings.Join(pairs, ", ") + " }"
	}
	panic(fmt.Sprintf("agent: no TOML form for %s", v.Type()))
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
