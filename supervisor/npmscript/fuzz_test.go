package npmscript

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzParseSimple checks that the reader never panics, and that whenever it accepts a line
// the real /bin/sh gives the command the same words and variables.
func FuzzParseSimple(f *testing.F) {
	for _, seed := range []string{
		`server.js`, `'a b' "c d" e\ f`, `"$S" ${PORT:-3000} $E ''`, `X=$A node`, `a && b`,
		`"\$x\"\\"`, `${NOPE-d}x$A$`, "a\\\nb", `$(x)`, `*.js`, `~/x`, `#c`, `"${Q}"`,
	} {
		f.Add(seed)
	}
	sh := newShRunner(f)
	f.Fuzz(func(t *testing.T, s string) {
		line := "node " + s
		cmd, why := parseSimple(line, testLookup)
		if why != "" {
			return
		}
		if strings.ContainsRune(line, 0) {
			t.Fatalf("%q: accepted a line with a NUL byte", line)
		}
		if len(cmd.assigns) != 0 || len(cmd.argv) == 0 || cmd.argv[0] != "node" {
			t.Fatalf("%q: got assigns %q argv %q", line, cmd.assigns, cmd.argv)
		}
		sh.check(t, line, cmd)
	})
}

func TestParse(t *testing.T) {
	tests := []struct {
		argv []string
		name string
		args []string
		ok   bool
	}{
		{[]string{"npm", "start"}, "start", []string{}, true},
		{[]string{"/usr/bin/npm", "start", "--", "-p", "3000"}, "start", []string{"-p", "3000"}, true},
		{[]string{"npm", "start", "a", "b c"}, "start", []string{"a", "b c"}, true},
		{[]string{"npm", "start", "a", "--", "--b", "--"}, "start", []string{"a", "--b", "--"}, true},
		{[]string{"npm", "run", "serve"}, "serve", []string{}, true},
		{[]string{"npm", "run-script", "serve", "--", "x"}, "serve", []string{"x"}, true},
		{[]string{"npm", "rum", "serve", "-"}, "serve", []string{"-"}, true},
		{[]string{"npm", "run", "start", "--", "--port=1"}, "start", []string{"--port=1"}, true},
		{argv: []string{"npm", "start", "--port", "3000"}},
		{argv: []string{"npm", "run"}},
		{argv: []string{"npm", "run", "--", "x"}},
		{argv: []string{"npm", "run", "--silent", "x"}},
		{argv: []string{"npm", "--prefix", "x", "start"}},
		{argv: []string{"npm", "test"}},
		{argv: []string{"npm", "install"}},
		{argv: []string{"npx", "start"}},
		{argv: []string{"node", "server.js"}},
		{argv: []string{"npm"}},
		{argv: nil},
	}
	for _, tt := range tests {
		name, args, ok := Parse(tt.argv)
		if ok != tt.ok || name != tt.name || strings.Join(args, "\x00") != strings.Join(tt.args, "\x00") || (ok && args == nil) {
			t.Errorf("Parse(%q) = %q, %q, %v; want %q, %q, %v", tt.argv, name, args, ok, tt.name, tt.args, tt.ok)
		}
	}
}

// FuzzParsePackage checks that any package.json gives a package or an error naming the
// file, never a panic.
func FuzzParsePackage(f *testing.F) {
	for _, seed := range []string{
		`{"name": "a", "version": "1.0.0", "scripts": {"start": "node s.js"}}`,
		`{"config": {"a": [1, {"b": null}, true, false, 1e30, 0.5]}, "bin": "x.js", "name": "@s/n"}`,
		`{"bin": ["./a", "b/c"], "engines": {"node": ">=18"}}`, `{"bin": {"a:b": "../x"}}`,
		"\xef\xbb\xbf{}", `[]`, `null`, `{`, "{\n\"a\": }", ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parsePackage("/app/package.json", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "/app/package.json") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		for _, kv := range p.env {
			if !strings.HasPrefix(kv[0], "npm_package_") {
				t.Fatalf("variable %q", kv[0])
			}
		}
	})
}

// BenchmarkParseSimple shows the reader is linear: ns/op grows with the line, per byte flat.
func BenchmarkParseSimple(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 16, 1 << 22} {
		var line strings.Builder
		line.WriteString("node server.js")
		for line.Len() < n {
			line.WriteString(` --opt="a b" 'c' \d ${PORT:-3000} $A`)
		}
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.SetBytes(int64(line.Len()))
			for b.Loop() {
				if _, why := parseSimple(line.String(), testLookup); why != "" {
					b.Fatal(why)
				}
			}
		})
	}
}
