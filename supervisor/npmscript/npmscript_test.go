package npmscript

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveErrors(t *testing.T) {
	tests := []struct {
		name, pkg, script, want string
	}{
		{"empty file", "", "start", "package.json:1:1: unexpected end of JSON input"},
		{"truncated", "{\n \"scripts\": {\"start\": \"x\"", "start", "package.json:2:25: unexpected end of JSON input"},
		{"not an object", "[1, 2]", "start", "package.json: not a JSON object"},
		{"null", "null", "start", "package.json: not a JSON object"},
		{"bad char on line 2", "{\n  \"é\": x}", "start", "package.json:2:8: invalid character 'x'"},
		{"empty script", `{"scripts": {"serve": ""}}`, "serve", `package.json: script "serve" is empty`},
		{"scripts not an object", `{"scripts": "x"}`, "serve", `package.json: missing script "serve"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(tt.pkg), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Resolve(dir, tt.script, nil, nil, "")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Resolve error %v, want one containing %q", err, tt.want)
			}
		})
	}
	if _, err := Resolve(t.TempDir(), "start", nil, nil, ""); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no package.json: error %v, want fs.ErrNotExist", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{}`), 0o644)
	if _, err := Resolve(dir, "build", nil, nil, ""); !errors.Is(err, ErrNoScript) {
		t.Errorf("missing script: error %v, want ErrNoScript", err)
	}
}

func TestPlanString(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"scripts": {"prestart": "npm run build && echo ok", "start": "node server.js"}}`), 0o644)
	p, err := Resolve(dir, "start", []string{"--port", "3000", "a b"}, []string{"PATH=/usr/bin:/bin"}, "")
	if err != nil {
		t.Fatal(err)
	}
	want := `prestart: sh -c 'npm run build && echo ok' (shell: the operator &&); start: exec node server.js --port 3000 'a b' (direct)`
	if got := p.String(); got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
	p, err = Resolve(dir, "start", nil, []string{"PATH=/nowhere"}, "/usr/bin/node")
	if err != nil {
		t.Fatal(err)
	}
	if p.Main.Direct || !strings.Contains(p.Main.Why, "node is not found in PATH now") {
		t.Errorf("node not in PATH: %s, want it left to sh (which says \"not found\")", p)
	}
}
