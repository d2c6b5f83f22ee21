package npmscript

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// appJS prints, on one line, what a script's process sees.
const appJS = `#!/usr/bin/env node
const keys = ["npm_lifecycle_event", "npm_lifecycle_script", "npm_package_name",
  "npm_package_version", "npm_package_json", "npm_node_execpath", "INIT_CWD", "NODE",
  "npm_package_config_port", "npm_package_engines_node", "npm_package_bin_tool",
  "NODE_ENV", "MYVAR"];
const env = {};
for (const k of keys) env[k] = process.env[k];
console.log("APPJSON:" + JSON.stringify({argv: process.argv, cwd: process.cwd(), env,
  path: process.env.PATH.split(":")}));
`

// seen is what one process printed.
type seen struct {
	Argv []string          `json:"argv"`
	Cwd  string            `json:"cwd"`
	Env  map[string]string `json:"env"`
	Path []string          `json:"path"`
}

func appLines(t *testing.T, out []byte) []seen {
	t.Helper()
	var all []seen
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "APPJSON:"); ok {
			var s seen
			if err := json.Unmarshal([]byte(line), &s); err != nil {
				t.Fatalf("app output %q: %v", line, err)
			}
			// npm puts its own node-gyp-bin dir into PATH (before the PATH it had); the
			// plan leaves it out, as no app needs it, so it is not compared.
			var path []string
			for _, p := range s.Path {
				if !strings.HasSuffix(p, "/node-gyp-bin") {
					path = append(path, p)
				}
			}
			s.Path = path
			all = append(all, s)
		}
	}
	return all
}

// testEnv is the environment both npm and the plan get.
func testEnv(extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "MYVAR=from-env"}, extra...)
}

func runNpm(t *testing.T, dir string, env []string, args ...string) ([]seen, []byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", args...)
	cmd.Dir = dir
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	return appLines(t, out), append(out, stderr.Bytes()...), err
}

// runPlan runs the plan as the agent does: Pre to completion (its failure stops there, as
// npm does), then Main.
func runPlan(t *testing.T, p *Plan) ([]seen, error) {
	t.Helper()
	steps := []*Step{&p.Main}
	if p.Pre != nil {
		steps = []*Step{p.Pre, &p.Main}
	}
	var all []seen
	for _, s := range steps {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, s.Path)
		cmd.Args, cmd.Env, cmd.Dir = s.Argv, s.Env, p.Dir
		out, err := cmd.Output()
		cancel()
		all = append(all, appLines(t, out)...)
		if err != nil {
			return all, err
		}
	}
	return all, nil
}

// writePkg writes files (package.json and others) into dir; app.js is always there.
func writePkg(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if files["app.js"] == "" {
		files["app.js"] = appJS
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(body, "#!") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
}

func needNpm(t *testing.T) {
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("skipping: npm is not installed")
	}
}

// TestAgainstNpm runs each case with the real npm and with the plan, and compares what the
// app's processes saw: argv, npm's variables, PATH, cwd.
func TestAgainstNpm(t *testing.T) {
	needNpm(t)
	const pkgHead = `"name": "demo", "version": "1.2.3", "config": {"port": "8080"}, "engines": {"node": ">=18"}, "bin": {"tool": "./app.js"}`
	tests := []struct {
		name    string
		files   map[string]string
		sub     string   // the package's dir below the temp dir
		npmArgs []string // after "npm"
		env     []string // added to testEnv
		direct  bool     // the main step is exec'd directly
		procs   int      // processes that print (pre + main, or two under sh)
		failPre bool     // prestart fails: npm and Pre both exit non-zero, main never runs
		post    int      // npm's last processes are post<NAME>, which the plan leaves out
		link    bool     // run in a symlink to the package dir (a release symlink)
	}{{
		name: "prestart",
		files: map[string]string{"package.json": `{` + pkgHead + `, "scripts": {
			"prestart": "node app.js pre", "start": "node app.js", "poststart": "node app.js post"}}`},
		npmArgs: []string{"start"}, direct: true, procs: 3, post: 1,
	}, {
		name:    "args after -- with spaces and quotes",
		files:   map[string]string{"package.json": `{` + pkgHead + `, "scripts": {"start": "node app.js"}}`},
		npmArgs: []string{"start", "--", "--port", "3000", "a b", `it's "q"`, "$HOME", "", "*", "~"},
		direct:  true, procs: 1,
	}, {
		name:    "npm run-script with args without --",
		files:   map[string]string{"package.json": `{` + pkgHead + `, "scripts": {"serve": "node app.js --x"}}`},
		npmArgs: []string{"run-script", "serve", "a", "b c"},
		direct:  true, procs: 1,
	}, {
		name:    "npm run with plain args then --",
		files:   map[string]string{"package.json": `{` + pkgHead + `, "scripts": {"serve": "node app.js"}}`},
		npmArgs: []string{"run", "serve", "a", "--", "--b", "--"},
		direct:  true, procs: 1,
	}, {
		name:    "&& runs under sh",
		files:   map[string]string{"package.json": `{` + pkgHead + `, "scripts": {"start": "node app.js one && node app.js two"}}`},
		npmArgs: []string{"start", "--", "x y"},
		direct:  false, procs: 2,
	}, {
		name:    "missing start runs server.js",
		files:   map[string]string{"package.json": `{"name": "demo", "version": "1.0.0"}`, "server.js": appJS},
		npmArgs: []string{"start", "--", "--port", "1"},
		direct:  true, procs: 1,
	}, {
		name: "failing prestart",
		files: map[string]string{"package.json": `{` + pkgHead + `, "scripts": {
			"prestart": "node app.js pre && exit 3", "start": "node app.js"}}`},
		npmArgs: []string{"start"}, direct: true, procs: 1, failPre: true,
	}, {
		name:    "PORT default",
		files:   map[string]string{"package.json": `{` + pkgHead + `, "scripts": {"start": "node app.js --port ${PORT:-3000} $npm_package_config_port"}}`},
		npmArgs: []string{"start"}, direct: true, procs: 1,
	}, {
		name:    "PORT set",
		files:   map[string]string{"package.json": `{` + pkgHead + `, "scripts": {"start": "node app.js --port ${PORT:-3000}"}}`},
		npmArgs: []string{"start"}, env: []string{"PORT=8081"}, direct: true, procs: 1,
	}, {
		name: "nested node_modules/.bin",
		sub:  "outer/inner/pkg",
		files: map[string]string{
			"package.json":                 `{` + pkgHead + `, "scripts": {"start": "tool-outer x && tool-inner y", "serve": "tool-outer z"}}`,
			"node_modules/.bin/tool-inner": appJS,
		},
		npmArgs: []string{"start"}, direct: false, procs: 2,
	}, {
		name: "nested node_modules/.bin direct",
		sub:  "outer/inner/pkg",
		files: map[string]string{
			"package.json":                 `{` + pkgHead + `, "scripts": {"serve": "tool-outer z"}}`,
			"node_modules/.bin/tool-inner": appJS,
		},
		npmArgs: []string{"run", "serve"}, direct: true, procs: 1,
	}, {
		name:    "leading assignments",
		files:   map[string]string{"package.json": `{` + pkgHead + `, "scripts": {"start": "NODE_ENV=production MYVAR=\"$MYVAR+x\" node app.js"}}`},
		npmArgs: []string{"start"}, direct: true, procs: 1,
	}, {
		name:    "through a symlink",
		files:   map[string]string{"package.json": `{` + pkgHead + `, "scripts": {"start": "node app.js"}}`},
		npmArgs: []string{"start"}, direct: true, procs: 1, link: true,
	}, {
		name:    "command word from npm's variable",
		files:   map[string]string{"package.json": `{` + pkgHead + `, "scripts": {"start": "\"$npm_node_execpath\" app.js \"$npm_package_name\""}}`},
		npmArgs: []string{"start"}, direct: true, procs: 1,
	}, {
		name:    "exec prefix",
		files:   map[string]string{"package.json": `{` + pkgHead + `, "scripts": {"start": "exec node ./app.js"}}`},
		npmArgs: []string{"start"}, direct: true, procs: 1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.sub != "" {
				// tool-outer lives in node_modules/.bin two levels above the package.
				writePkg(t, filepath.Join(root, "outer"), map[string]string{"node_modules/.bin/tool-outer": appJS})
			}
			dir := filepath.Join(root, tt.sub)
			writePkg(t, dir, tt.files)
			if tt.link {
				link := filepath.Join(t.TempDir(), "current")
				if err := os.Symlink(dir, link); err != nil {
					t.Fatal(err)
				}
				dir = link
			}
			env := testEnv(tt.env...)

			want, out, npmErr := runNpm(t, dir, env, tt.npmArgs...)
			name, args, ok := Parse(append([]string{"npm"}, tt.npmArgs...))
			if !ok {
				t.Fatalf("Parse(npm %q) = false", tt.npmArgs)
			}
			plan, err := Resolve(dir, name, args, env, "")
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			t.Logf("plan: %s", plan)
			if plan.Main.Direct != tt.direct {
				t.Errorf("main step direct = %v, want %v (%s)", plan.Main.Direct, tt.direct, plan.Main.Why)
			}
			got, planErr := runPlan(t, plan)

			if tt.failPre {
				var npmExit, preExit *exec.ExitError
				if !errors.As(npmErr, &npmExit) || !errors.As(planErr, &preExit) {
					t.Fatalf("npm: %v, plan: %v; want both to fail", npmErr, planErr)
				}
				if preExit.ExitCode() != 3 {
					t.Errorf("prestart exit code %d, want 3", preExit.ExitCode())
				}
				t.Logf("npm exit code %d, prestart's %d", npmExit.ExitCode(), preExit.ExitCode())
			} else if npmErr != nil || planErr != nil {
				t.Fatalf("npm: %v, plan: %v\nnpm said:\n%s", npmErr, planErr, out)
			}
			if len(want) != tt.procs {
				t.Fatalf("npm ran %d app processes, want %d\nnpm said:\n%s", len(want), tt.procs, out)
			}
			want = want[:len(want)-tt.post]
			if !reflect.DeepEqual(got, want) {
				t.Errorf("what the app saw differs\n npm: %+v\nplan: %+v", want, got)
			}
		})
	}
}

// TestAgainstNpmRefusals shows that what npm refuses to run, Resolve refuses too.
func TestAgainstNpmRefusals(t *testing.T) {
	needNpm(t)
	tests := []struct {
		name    string
		pkg     string // "" = no package.json
		script  string
		wantErr string
	}{
		{"missing script", `{"name": "x", "scripts": {"start": "node app.js"}}`, "nope", `package.json: missing script "nope"`},
		{"missing start without server.js", `{"name": "x"}`, "start", `package.json: missing script "start"`},
		{"script not a string", `{"name": "x", "scripts": {"start": 1}}`, "start", `package.json: missing script "start"`},
		{"not JSON", "{\n  \"name\": \"x\",\n  \"scripts\": {,}\n}\n", "start", "package.json:3:15: invalid character ','"},
		{"no package.json", "", "start", "package.json: no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.pkg != "" {
				writePkg(t, dir, map[string]string{"package.json": tt.pkg})
			}
			_, out, npmErr := runNpm(t, dir, testEnv(), "run", tt.script)
			if npmErr == nil {
				t.Fatalf("npm run %s succeeded, want a refusal:\n%s", tt.script, out)
			}
			_, err := Resolve(dir, tt.script, nil, testEnv(), "")
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Resolve error %v, want one containing %q", err, tt.wantErr)
			}
			t.Logf("npm: %s", firstErrLine(out))
			t.Logf("Resolve: %v", err)
		})
	}
}

func firstErrLine(out []byte) string {
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "npm error") {
			return l
		}
	}
	return strings.TrimSpace(string(out))
}
