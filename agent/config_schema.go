package agent

import (
	"encoding"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// The Config struct is the schema of the config file. Each key is a field
// with a toml tag (a struct field is a section of keys, a map field a table
// of values); its other tags are:
//
//	default:"VALUE"   the key's default, in the text form its type reads:
//	                  "1s", "100MB", "SIGTERM", "auto", "10", "true", a
//	                  list's elements separated by spaces. Without it the
//	                  default is the zero value. A field that is no key
//	                  (toml:"-") may have one too: what load resolves when
//	                  the key it comes from is not set (control's GID).
//	reload:"restart"  a change of the key takes effect only when the agent
//	                  restarts; on a section, for each of its keys.
//	zero:"NOTE"       what the zero value means, written beside it by
//	                  `agent check`.
//
// The tags are read once, when the package is initialised, into
// configSchema: Default, the decoder's defaults, the printer, RestartNeeded
// and the test of agent.toml.example all work from it. A malformed tag
// panics there, so every test of the package finds it.

// schemaKey is one key of the config file.
type schemaKey struct {
	name     string // dotted, e.g. "restart.delay"
	local    string // within its section, e.g. "delay"
	parent   string // dotted name of its section; "" at the top
	section  bool   // a section of keys ([app]); app.env is a value
	index    []int  // of the field, from Config
	restart  bool   // reload:"restart", here or on its section
	zeroNote string // zero:"..."
}

// fieldDefault is the parsed default:"..." tag of one field.
type fieldDefault struct {
	index []int
	value reflect.Value
}

// schema is what the tags of Config say.
type schema struct {
	keys     []schemaKey // sections and their keys, in the order of the fields
	defaults []fieldDefault
}

var configSchema = readSchema(reflect.TypeFor[Config]())

// readSchema reads the tags of the struct type t; it panics on a tag it
// cannot read.
func readSchema(t reflect.Type) *schema {
	s := &schema{}
	s.read(t, nil, "", false)
	return s
}

func (s *schema) read(t reflect.Type, index []int, parent string, restart bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		at := append(slices.Clone(index), i)
		if text, ok := f.Tag.Lookup("default"); ok {
			v, err := parseDefault(f.Type, text)
			if err != nil {
				panic(fmt.Sprintf("agent: field %s of %s: default %q: %v", f.Name, t, text, err))
			}
			s.defaults = append(s.defaults, fieldDefault{index: at, value: v})
		}
		local := tomlName(f)
		if local == "" {
			continue
		}
		name := local
		if parent != "" {
			name = parent + "." + local
		}
		k := schemaKey{
			name:     name,
			local:    local,
			parent:   parent,
			section:  f.Type.Kind() == reflect.Struct && isTable(f.Type),
			index:    at,
			restart:  restart,
			zeroNote: f.Tag.Get("zero"),
		}
		switch r := f.Tag.Get("reload"); r {
		case "":
		case "restart":
			k.restart = true
		default:
			panic(fmt.Sprintf("agent: field %s of %s: unknown reload:%q", f.Name, t, r))
		}
		s.keys = append(s.keys, k)
		if k.section {
			s.read(f.Type, at, name, k.restart)
		}
	}
}

// parseDefault returns the value of a field of type t that text (a
// default:"..." tag) gives.
func parseDefault(t reflect.Type, text string) (reflect.Value, error) {
	v := reflect.New(t).Elem()
	if u, ok := v.Addr().Interface().(encoding.TextUnmarshaler); ok {
		return v, u.UnmarshalText([]byte(text))
	}
	switch t.Kind() {
	case reflect.String:
		v.SetString(text)
	case reflect.Int:
		n, err := strconv.Atoi(text)
		if err != nil {
			return v, err
		}
		v.SetInt(int64(n))
	case reflect.Bool:
		b, err := strconv.ParseBool(text)
		if err != nil {
			return v, err
		}
		v.SetBool(b)
	case reflect.Slice:
		if t.Elem().Kind() != reflect.String {
			return v, fmt.Errorf("no defaults for %s", t)
		}
		v.Set(reflect.ValueOf(strings.Fields(text)).Convert(t))
	default:
		return v, fmt.Errorf("no defaults for %s", t)
	}
	return v, nil
}

// setDefaults sets every field of the Config v that has a default to it.
func (s *schema) setDefaults(v reflect.Value) {
	for _, d := range s.defaults {
		f := v.FieldByIndex(d.index)
		if d.value.Kind() == reflect.Slice {
			// A copy, so that no two configs share the default's array.
			f.Set(reflect.AppendSlice(reflect.MakeSlice(d.value.Type(), 0, d.value.Len()), d.value))
			continue
		}
		f.Set(d.value)
	}
}

// key returns the key named by dotted.
func (s *schema) key(dotted string) (schemaKey, bool) {
	for _, k := range s.keys {
		if k.name == dotted {
			return k, true
		}
	}
	return schemaKey{}, false
}

// RestartNeeded returns the keys that differ between old and cur and take
// effect only when the agent restarts (reload:"restart" in Config), as
// sorted dotted names, e.g. ["health.listen", "proxy.listen"]; nil when
// there are none. Until that restart the agent goes on with their old
// values.
func RestartNeeded(old, cur *Config) []string {
	var keys []string
	ov, cv := reflect.ValueOf(old).Elem(), reflect.ValueOf(cur).Elem()
	for _, k := range configSchema.keys {
		if k.section || !k.restart {
			continue
		}
		if !reflect.DeepEqual(ov.FieldByIndex(k.index).Interface(), cv.FieldByIndex(k.index).Interface()) {
			keys = append(keys, k.name)
		}
	}
	slices.Sort(keys)
	return keys
}
