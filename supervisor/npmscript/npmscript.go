// Package npmscript runs npm scripts without npm: it reads package.json the way npm 11 does,
// and plans `npm start` / `npm run NAME -- args` as the processes npm would start, with
// npm's environment, so that a script that is one simple command is exec'd directly (Node
// is then the app's own process, with no npm and no sh above it) and anything else runs
// under `sh -c` exactly as npm runs it.
//
// Left out on purpose: `post<NAME>` scripts (the app never ends on its own), npm's
// configuration (`npm_config_*`, `script-shell`, `ignore-scripts`), workspaces, and npm's
// search of parent directories for package.json: the dir given is the package.
package npmscript

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"agent/internal/pathsearch"
)

// ErrNoScript reports that package.json has no script of the name asked for.
var ErrNoScript = errors.New("missing script")

// Parse reports whether argv is an npm script invocation that Resolve can plan:
// ["npm","start",args...], ["npm","run",NAME,args...] or ["npm","run-script",NAME,args...]
// (also "rum" and "urn", npm's aliases of run), and returns the script name and the extra
// args. As in npm 11, the args are the plain words after the name plus every word after
// "--". A word starting with "-" before "--" is an npm option (npm would take it, not pass
// it on): Parse then reports false, and the command is best left to npm itself.
func Parse(argv []string) (name string, args []string, ok bool) {
	if len(argv) < 2 || filepath.Base(argv[0]) != "npm" {
		return "", nil, false
	}
	rest := argv[2:]
	switch argv[1] {
	case "start":
		name = "start"
	case "run", "run-script", "rum", "urn":
		if len(rest) == 0 || rest[0] == "--" || strings.HasPrefix(rest[0], "-") {
			return "", nil, false // npm lists the scripts, or takes an option
		}
		name, rest = rest[0], rest[1:]
	default:
		return "", nil, false
	}
	args = []string{}
	for i, a := range rest {
		if a == "--" {
			return name, append(args, rest[i+1:]...), true
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			return "", nil, false
		}
		args = append(args, a)
	}
	return name, args, true
}

// Step is one process of a plan.
type Step struct {
	// Argv is what to exec: the words of a simple command (after expansion; Argv[0] as
	// written, as sh passes it), or {"/bin/sh", "-c", Line}.
	Argv []string
	// Path is the file to exec: Argv[0] found in Env's PATH as sh finds it, or "/bin/sh".
	Path string
	// Direct is true when the step is exec'd directly (no shell).
	Direct bool
	// Why says why a step runs under sh ("the operator &", …); "" when Direct.
	Why string
	// Line is the script line as npm runs it (with the extra args appended, quoted).
	Line string
	// Env is the step's whole environment: the env given to Resolve plus npm's variables,
	// the PATH npm gives scripts and, for a direct step, the command's leading assignments.
	Env []string
}

// Plan is what `npm run NAME -- args` would run in Dir.
type Plan struct {
	Name string
	Dir  string // the package dir with symlinks resolved, as npm sees it (its cwd)
	Pre  *Step  // pre<NAME>, nil when package.json has none
	Main Step
}

// String describes the plan in one line, e.g.
// "prestart: sh -c 'npm run build' (shell: the operator &); start: exec node server.js --port 3000 (direct)".
func (p *Plan) String() string {
	var b strings.Builder
	if p.Pre != nil {
		b.WriteString("pre" + p.Name + ": " + p.Pre.String() + "; ")
	}
	b.WriteString(p.Name + ": " + p.Main.String())
	return b.String()
}

// String describes the step: "exec WORDS (direct)" or "sh -c LINE (shell: why)".
func (s *Step) String() string {
	if !s.Direct {
		return "sh -c " + quote(s.Line) + " (shell: " + s.Why + ")"
	}
	words := make([]string, len(s.Argv))
	for i, w := range s.Argv {
		words[i] = quote(w)
	}
	return "exec " + strings.Join(words, " ") + " (direct)"
}

// Resolve reads dir/package.json and plans `npm run name -- args` the way npm would, for a
// process whose environment is env (KEY=VALUE, as the app would get it). nodePath is the
// node binary npm_node_execpath names ("": "node" looked up in env's PATH; not found: the
// variable is left out).
//
// Errors name the file: "DIR/package.json:LINE:COL: message" for bad JSON,
// "DIR/package.json: message" otherwise; a missing script wraps ErrNoScript.
func Resolve(dir, name string, args, env []string, nodePath string) (*Plan, error) {
	if name == "" {
		return nil, errors.New("npm script: empty script name")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("npm script: %w", err)
	}
	// npm's cwd is the real dir (getcwd resolves symlinks, as for a release symlink).
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("npm script: %w", unwrapPath(abs, err))
	}
	pkgPath := filepath.Join(real, "package.json")
	pkg, err := readPackage(pkgPath)
	if err != nil {
		return nil, err
	}

	script, ok := pkg.scripts[name]
	if name == "start" && script == "" && isFile(filepath.Join(real, "server.js")) {
		script, ok = "node server.js", true // npm's default start
	}
	switch {
	case !ok && name == "start":
		return nil, fmt.Errorf("%s: %w %q (and no server.js to default to)", pkgPath, ErrNoScript, name)
	case !ok:
		return nil, fmt.Errorf("%s: %w %q", pkgPath, ErrNoScript, name)
	case script == "":
		return nil, fmt.Errorf("%s: script %q is empty", pkgPath, name)
	}

	base := newEnv(env)
	if nodePath == "" {
		if p, err := pathsearch.Look("node", base.get("PATH"), real); err == nil {
			nodePath = p
		}
	}
	if nodePath != "" {
		if r, err := filepath.EvalSymlinks(nodePath); err == nil {
			nodePath = r // process.execPath is the real file
		}
		base.set("npm_node_execpath", nodePath)
		base.set("NODE", nodePath)
	}
	base.set("INIT_CWD", real)
	for _, kv := range pkg.env {
		base.set(kv[0], kv[1])
	}
	base.set("npm_package_json", pkgPath)
	base.set("PATH", npmPath(real, base))

	plan := &Plan{Name: name, Dir: real}
	if pre := pkg.scripts["pre"+name]; pre != "" {
		s := plan.step("pre"+name, pre, nil, base)
		plan.Pre = &s
	}
	plan.Main = plan.step(name, script, args, base)
	return plan, nil
}

// step plans one script as npm's run-script would spawn it.
func (p *Plan) step(event, script string, args []string, base *env) Step {
	e := base.clone()
	e.set("npm_lifecycle_event", event)
	e.set("npm_lifecycle_script", script)
	line := script
	for _, a := range args {
		line += " " + quote(a)
	}
	s := Step{Line: line}
	cmd, why := parseSimple(line, e.lookup)
	if why == "" {
		for _, kv := range cmd.assigns {
			k, v, _ := strings.Cut(kv, "=")
			e.set(k, v)
		}
		// sh runs a name with a slash relative to its working directory.
		path, err := pathsearch.Look(cmd.argv[0], e.get("PATH"), p.Dir)
		if err == nil && !filepath.IsAbs(path) {
			path = filepath.Join(p.Dir, path)
		}
		switch {
		case err != nil:
			why = cmd.argv[0] + " is not found in PATH now"
		case !pathsearch.Executable(path):
			why = cmd.argv[0] + " is not an executable file"
		case !execable(path):
			why = cmd.argv[0] + " is neither a binary nor a #! script"
		default:
			s.Argv, s.Path, s.Direct = cmd.argv, path, true
		}
	}
	if !s.Direct {
		e = base.clone() // sh applies the assignments itself
		e.set("npm_lifecycle_event", event)
		e.set("npm_lifecycle_script", script)
		s.Argv, s.Path, s.Why = []string{"/bin/sh", "-c", line}, "/bin/sh", why
	}
	s.Env = e.list()
	return s
}

// npmPath is the PATH npm gives a script in dir: node_modules/.bin of dir and of every
// parent up to /, then the PATH it had. (npm also puts its own node-gyp-bin dir between
// the two; nothing here needs node-gyp, so it is left out.)
func npmPath(dir string, e *env) string {
	var parts []string
	for d := dir; ; d = filepath.Dir(d) {
		parts = append(parts, filepath.Join(d, "node_modules", ".bin"))
		if filepath.Dir(d) == d {
			break
		}
	}
	if old, ok := e.lookup("PATH"); ok {
		parts = append(parts, old)
	}
	return strings.Join(parts, ":")
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// execable reports whether the kernel can exec p itself: an ELF binary or a #! script (sh
// runs any other file as a shell script).
func execable(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 4)
	n, _ := f.Read(head)
	head = head[:n]
	return bytes.HasPrefix(head, []byte("#!")) || bytes.Equal(head, []byte("\x7fELF"))
}

// pkg is what a plan needs from package.json.
type pkg struct {
	scripts map[string]string // the string-valued scripts (npm drops the others)
	env     [][2]string       // npm_package_* variables
}

// readPackage reads package.json as npm does (@npmcli/package-json's normalize, the parts
// that matter here).
func readPackage(path string) (*pkg, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, unwrapPath(path, err)
	}
	return parsePackage(path, data)
}

// parsePackage is readPackage without the I/O; path only names the file in errors.
func parsePackage(path string, data []byte) (*pkg, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			line, col := lineCol(data, syn.Offset)
			return nil, fmt.Errorf("%s:%d:%d: %w", path, line, col, err)
		}
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) {
			return nil, fmt.Errorf("%s: not a JSON object", path)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if top == nil {
		return nil, fmt.Errorf("%s: not a JSON object", path)
	}
	p := &pkg{scripts: map[string]string{}}
	var scripts map[string]any
	if json.Unmarshal(top["scripts"], &scripts) == nil {
		for k, v := range scripts {
			if s, ok := v.(string); ok {
				p.scripts[k] = s
			}
		}
	}
	// npm's package-envs.js: name, version, config, engines, bin as npm_package_*.
	vals := map[string]any{}
	for _, key := range []string{"name", "version", "config", "engines", "bin"} {
		raw, ok := top[key]
		if !ok {
			continue
		}
		var v any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if dec.Decode(&v) == nil {
			vals[key] = v
		}
	}
	vals["bin"] = normalizeBin(vals["name"], vals["bin"])
	for _, key := range []string{"name", "version", "config", "engines", "bin"} {
		if v, ok := vals[key]; ok && v != nil {
			flatten("npm_package_"+key, v, &p.env)
		}
	}
	return p, nil
}

// normalizeBin is npm-normalize-package-bin: a string bin becomes {name: path}, an array
// {basename(path): path}; then names are reduced to their base name and paths cleaned.
func normalizeBin(name, bin any) any {
	var obj map[string]any
	switch b := bin.(type) {
	case string:
		n, ok := name.(string)
		if !ok || n == "" || b == "" {
			return nil
		}
		obj = map[string]any{n: b}
	case []any:
		obj = map[string]any{}
		for _, v := range b {
			if s, ok := v.(string); ok {
				obj[path.Base(s)] = s
			}
		}
	case map[string]any:
		obj = b
	default:
		return nil
	}
	out := map[string]any{}
	for k, v := range obj {
		s, ok := v.(string)
		base := strings.TrimPrefix(path.Join("/", path.Base(strings.NewReplacer("\\", "/", ":", "/").Replace(k))), "/")
		if !ok || base == "" {
			continue
		}
		if target := strings.TrimPrefix(path.Join("/", strings.ReplaceAll(s, "\\", "/")), "/"); target != "" {
			out[base] = target
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// flatten turns a JSON value into variables as npm's package-envs.js does: objects by
// KEY_SUBKEY, arrays by KEY_INDEX, null and false as "".
func flatten(key string, v any, out *[][2]string) {
	switch v := v.(type) {
	case nil:
		*out = append(*out, [2]string{key, ""})
	case bool:
		s := ""
		if v {
			s = "true"
		}
		*out = append(*out, [2]string{key, s})
	case string:
		*out = append(*out, [2]string{key, v})
	case json.Number:
		*out = append(*out, [2]string{key, jsNumber(v)})
	case []any:
		for i, item := range v {
			flatten(key+"_"+strconv.Itoa(i), item, out)
		}
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			flatten(key+"_"+k, v[k], out)
		}
	}
}

// jsNumber formats a JSON number as JavaScript's String(n) does for the usual cases.
func jsNumber(n json.Number) string {
	f, err := n.Float64()
	if err != nil || math.IsInf(f, 0) {
		return n.String()
	}
	if f == math.Trunc(f) && math.Abs(f) < 1e21 {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// lineCol turns json.SyntaxError's Offset (bytes read when the error was found) into the
// line and column (in characters, from 1) of the offending byte.
func lineCol(data []byte, offset int64) (line, col int) {
	at := int(offset) - 1 // the byte that was read last is the bad one
	if at < 0 {
		at = 0
	}
	if at > len(data) {
		at = len(data)
	}
	before := data[:at]
	line = 1 + bytes.Count(before, []byte("\n"))
	col = 1 + utf8.RuneCount(before[bytes.LastIndexByte(before, '\n')+1:])
	return line, col
}

// unwrapPath turns an *fs.PathError into "path: message", keeping the cause for errors.Is.
func unwrapPath(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", path, pe.Err)
	}
	return fmt.Errorf("%s: %w", path, err)
}
