package agent

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// decoder decodes one config file into a Config, one key at a time, in the
// order of the file: the first error in the file is the one reported,
// every time. (One toml.Decode into the Config would stop at whichever bad
// value it meets first while ranging over a Go map, and reports a wrong
// type of a plain field without its key.)
//
// Positions are the TOML decoder's own: it records one for every key it
// reads (the value of `key = value`, the key inside an inline table, the
// '[' of a table header) and reports it in the toml.ParseError of a value
// that refuses to unmarshal. The value types of units.go refuse their bad
// values that way; for any other key, position asks for it by decoding the
// key's value into locator, which always refuses.
type decoder struct {
	path string
	data string
	md   toml.MetaData
	// tables holds the values of each table of the file read so far, as
	// undecoded primitives, by the table's dotted key ("" for the top).
	tables map[string]map[string]toml.Primitive
}

// newDecoder parses the TOML of data; its errors are syntax errors.
func newDecoder(path, data string) (*decoder, error) {
	var top map[string]toml.Primitive
	md, err := toml.Decode(data, &top)
	if err != nil {
		var pe toml.ParseError
		if !errors.As(err, &pe) {
			return nil, &ConfigError{Path: path, Msg: strings.TrimPrefix(err.Error(), "toml: "), Err: err}
		}
		e := &ConfigError{Path: path, Msg: tidyMessage(pe.Message), Err: err}
		e.Line, e.Col = lineCol(data, pe.Position)
		return nil, e
	}
	tables := map[string]map[string]toml.Primitive{"": top}
	return &decoder{path: path, data: data, md: md, tables: tables}, nil
}

// decode decodes every key of the file into c.
func (d *decoder) decode(c *Config) error {
	for _, key := range d.md.Keys() {
		if err := d.decodeKey(reflect.ValueOf(c).Elem(), key); err != nil {
			return err
		}
	}
	if len(c.App.Env) == 0 {
		c.App.Env = nil // `env = {}` is no env
	}
	return nil
}

// decodeKey finds the field of key in the struct v, following the toml
// tags, and decodes the key's value into it. A table's own key (a struct
// or map field) only checks that its value is a table: its keys follow in
// the file. A key below a plain value (app.dir.x = 1) makes that value a
// table, which its field refuses.
func (d *decoder) decodeKey(v reflect.Value, key toml.Key) error {
	for i, name := range key {
		at := key[:i+1]
		if v.Kind() == reflect.Map {
			// A key of a table of values (app.env): decode into a new element.
			elem := reflect.New(v.Type().Elem()).Elem()
			if err := d.decodeValue(elem, at, key); err != nil {
				return err
			}
			if v.IsNil() {
				v.Set(reflect.MakeMap(v.Type()))
			}
			v.SetMapIndex(reflect.ValueOf(name), elem)
			return nil
		}
		f, ok := fieldByKey(v, name)
		if !ok {
			return d.unknownKey(at, key, v.Type())
		}
		v = f
		if !isTable(v.Type()) {
			return d.decodeValue(v, at, key)
		}
		if i == len(key)-1 {
			return d.checkTable(v, at)
		}
	}
	return nil
}

// decodeValue decodes the value of the key at into v. The error is
// positioned at that key, or at the key of the file being decoded (below
// at) when at has no position of its own (a table made by a dotted key).
func (d *decoder) decodeValue(v reflect.Value, at, key toml.Key) error {
	p, _ := d.primitive(at)
	err := d.md.PrimitiveDecode(p, v.Addr().Interface())
	var pe toml.ParseError
	switch {
	case errors.As(err, &pe):
		// One of the value types of units.go refused the value.
		e := &ConfigError{Path: d.path, Key: at.String(), Msg: pe.Message}
		if e.Line, e.Col = lineCol(d.data, pe.Position); e.Line == 0 {
			e.Line, e.Col = d.position(key)
		}
		return e
	case err != nil:
		// A plain field (string, int, bool, list) of another type.
		return d.errAt(at, key, d.typeError(at, v.Type()), nil)
	}
	if s, ok := firstNUL(v); ok {
		return d.errAt(at, key, s+"must not contain a NUL character", nil)
	}
	return nil
}

// checkTable checks that the value of the key at, whose field is f, is a
// table.
func (d *decoder) checkTable(f reflect.Value, at toml.Key) error {
	t := f.Type()
	p, _ := d.primitive(at)
	var v any
	if err := d.md.PrimitiveDecode(p, &v); err != nil {
		return d.errAt(at, at, err.Error(), err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return d.errAt(at, at, "expected "+typeName(t)+", got "+describeValue(v), nil)
	}
	if f.Kind() == reflect.Map && f.IsNil() && len(m) > 0 {
		f.Set(reflect.MakeMapWithSize(t, len(m))) // its keys come next
	}
	return nil
}

// unknownKey is the error for the key at, which has no field in the struct
// type t; key is the key of the file being decoded (at or below at).
func (d *decoder) unknownKey(at, key toml.Key, t reflect.Type) error {
	msg := "unknown key " + at.String()
	if s := suggestKey(at[len(at)-1], t); s != "" {
		msg += fmt.Sprintf(" (did you mean %s?)", append(at[:len(at)-1:len(at)-1], s).String())
	}
	e := &ConfigError{Path: d.path, Msg: msg}
	e.Line, e.Col = d.position(at, key)
	return e
}

// errAt is an error about the key at, positioned at at or else at key.
func (d *decoder) errAt(at, key toml.Key, msg string, err error) error {
	e := &ConfigError{Path: d.path, Key: at.String(), Msg: msg, Err: err}
	e.Line, e.Col = d.position(at, key)
	return e
}

// primitive returns the undecoded value of key in the file.
func (d *decoder) primitive(key toml.Key) (toml.Primitive, bool) {
	table := d.tables[""]
	for i, name := range key[:len(key)-1] {
		parent := key[:i+1].String()
		sub, ok := d.tables[parent]
		if !ok {
			p, ok := table[name]
			if !ok {
				return toml.Primitive{}, false
			}
			// Sized from the table's raw value (decoding into any only
			// takes it as it is); a value that is not a table leaves the
			// map empty.
			var raw any
			_ = d.md.PrimitiveDecode(p, &raw)
			m, _ := raw.(map[string]any)
			sub = make(map[string]toml.Primitive, len(m))
			_ = d.md.PrimitiveDecode(p, &sub)
			d.tables[parent] = sub
		}
		table = sub
	}
	p, ok := table[key[len(key)-1]]
	return p, ok
}

// errLocated is the error of locator.
var errLocated = errors.New("located")

// locator refuses every value, so the decoder reports where it is.
type locator struct{}

func (*locator) UnmarshalTOML(any) error { return errLocated }

// position returns the line and column the decoder recorded for the first
// of keys that has one; 0, 0 when none has (a key not in the file, or a
// table made only by dotted keys).
func (d *decoder) position(keys ...toml.Key) (line, col int) {
	for _, key := range keys {
		p, ok := d.primitive(key)
		if !ok {
			continue
		}
		var pe toml.ParseError
		if errors.As(d.md.PrimitiveDecode(p, &locator{}), &pe) && pe.Position.Line > 0 {
			return lineCol(d.data, pe.Position)
		}
	}
	return 0, 0
}

// lineCol returns the 1-based line and byte column of a position of the
// decoder. The line and byte offset it records are right; the column it
// derives is one line off for a position at the start of a line, so the
// column is counted here from the offset.
func lineCol(data string, pos toml.Position) (line, col int) {
	off := pos.Start
	if pos.Line < 1 || off < 0 || off > len(data) || pos.Line > 1 && off == 0 {
		// No offset (some syntax errors have a line only).
		return pos.Line, pos.Col
	}
	start := strings.LastIndexByte(data[:off], '\n') + 1
	return strings.Count(data[:off], "\n") + 1, off - start + 1
}

// fieldByKey returns the field of the struct v whose toml tag is name.
// Keys are case-sensitive, unlike the decoder's own matching.
func fieldByKey(v reflect.Value, name string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		if tomlName(t.Field(i)) == name {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// tomlName returns the key of a struct field: its toml tag, "" for none.
func tomlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "-" {
		return ""
	}
	return name
}

var unmarshalerType = reflect.TypeFor[toml.Unmarshaler]()

// isTable reports whether a field of type t holds a table of keys: a map
// or a struct that is not one of the value types of units.go.
func isTable(t reflect.Type) bool {
	switch {
	case t.Kind() == reflect.Map:
		return true
	case t.Kind() == reflect.Struct:
		return !reflect.PointerTo(t).Implements(unmarshalerType)
	}
	return false
}

// suggestKey returns the key of the struct type t closest to name when it
// is a likely typo, else "".
func suggestKey(name string, t reflect.Type) string {
	limit := 2 // edits allowed
	if len(name) <= 4 {
		limit = 1
	}
	best, bestDist := "", limit+1
	for i := range t.NumField() {
		k := tomlName(t.Field(i))
		if k == "" {
			continue
		}
		d := editDistance(strings.ToLower(name), k)
		if d < bestDist || (d == bestDist && k < best) {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the number of single-byte insertions, deletions,
// substitutions and swaps of neighbours that turn a into b.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// firstNUL reports whether the string, or a string of the list, v holds
// contains a NUL character; the text names the list's element.
func firstNUL(v reflect.Value) (string, bool) {
	switch {
	case v.Kind() == reflect.String:
		return "", strings.IndexByte(v.String(), 0) >= 0
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.String:
		for i := range v.Len() {
			if strings.IndexByte(v.Index(i).String(), 0) >= 0 {
				return fmt.Sprintf("element %d ", i), true
			}
		}
	}
	return "", false
}

// typeName names what a field of type t accepts, for error messages.
func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int:
		return "an integer"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(typeName(t.Elem()), "a ") + "s"
	case reflect.Map:
		return "a table of " + strings.TrimPrefix(typeName(t.Elem()), "a ") + "s"
	case reflect.Struct:
		return "a table"
	}
	return t.String()
}

// typeError is the message for the value of the key at, which a field of
// type t refused as being of another type.
func (d *decoder) typeError(at toml.Key, t reflect.Type) string {
	p, _ := d.primitive(at)
	var v any
	_ = d.md.PrimitiveDecode(p, &v) // decoding into any never fails
	if arr, ok := v.([]any); ok && t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String {
		for i, e := range arr {
			if _, ok := e.(string); !ok {
				return fmt.Sprintf("expected %s, element %d is %s", typeName(t), i, describeValue(e))
			}
		}
	}
	return "expected " + typeName(t) + ", got " + describeValue(v)
}

// describeValue names the type (and, for scalars, the value) of a decoded
// TOML value for error messages.
func describeValue(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return "string " + strconv.Quote(v)
	case int64:
		return "integer " + strconv.FormatInt(v, 10)
	case float64:
		return "float " + strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return "boolean " + strconv.FormatBool(v)
	case []any:
		return "array"
	case map[string]any:
		return "table"
	case []map[string]any:
		return "array of tables"
	case nil:
		return "nothing"
	}
	return "date/time"
}

// tidyMessage makes a message of the TOML decoder read like the others:
// lowercase first word, no final period.
func tidyMessage(m string) string {
	m = strings.TrimSuffix(m, ".")
	if len(m) > 1 && m[0] >= 'A' && m[0] <= 'Z' && m[1] >= 'a' && m[1] <= 'z' {
		m = string(m[0]+'a'-'A') + m[1:]
	}
	return m
}
