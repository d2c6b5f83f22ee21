package npmscript

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// testVars are the variables the word tests expand with.
var testVars = map[string]string{
	"A":    "a",
	"E":    "",
	"S":    "x y",
	"G":    "*.js",
	"PORT": "8080",
	"Q":    `it's "q"`,
}

func testLookup(k string) (string, bool) { v, ok := testVars[k]; return v, ok }

func TestParseSimple(t *testing.T) {
	tests := []struct {
		line    string
		argv    []string // nil: left to sh
		assigns []string
	}{
		{line: "node server.js", argv: []string{"node", "server.js"}},
		{line: "  node\tserver.js  ", argv: []string{"node", "server.js"}},
		{line: "next start", argv: []string{"next", "start"}},
		{line: `node -e "console.log(1)"`, argv: []string{"node", "-e", "console.log(1)"}},
		{line: `node 'a b' "c d" e\ f`, argv: []string{"node", "a b", "c d", "e f"}},
		{line: `node '' "" x`, argv: []string{"node", "", "", "x"}},
		{line: `node "a\"b" "\$x" "\a" 'x\y'`, argv: []string{"node", `a"b`, "$x", `\a`, `x\y`}},
		{line: "node a\\\nb", argv: []string{"node", "ab"}},
		{line: "node $A ${A} \"$A\" x$A${A}y", argv: []string{"node", "a", "a", "a", "xaay"}},
		{line: "node --port ${PORT:-3000}", argv: []string{"node", "--port", "8080"}},
		{line: "node --port ${NOPE:-3000}", argv: []string{"node", "--port", "3000"}},
		{line: "node ${E:-d} ${E-d} ${NOPE-d}", argv: []string{"node", "d", "d"}},
		{line: "node $E x $NOPE", argv: []string{"node", "x"}},
		{line: `node "$E" $E"" ''$NOPE`, argv: []string{"node", "", "", ""}},
		{line: `node "$S" "${G}" "$Q"`, argv: []string{"node", "x y", "*.js", `it's "q"`}},
		{line: "node $ a$ $/ \"$\"", argv: []string{"node", "$", "a$", "$/", "$"}},
		{line: "node a#b a=b", argv: []string{"node", "a#b", "a=b"}},
		{line: "$E node x", argv: []string{"node", "x"}},
		{line: "exec node server.js", argv: []string{"node", "server.js"}},
		{line: "NODE_ENV=production node server.js", argv: []string{"node", "server.js"}, assigns: []string{"NODE_ENV=production"}},
		{line: `X="a b" Y=$X$A Z= node $X`, argv: []string{"node"}, assigns: []string{"X=a b", "Y=a ba", "Z="}},
		{line: `A=1 B=$A node $A`, argv: []string{"node", "a"}, assigns: []string{"A=1", "B=1"}},
		{line: `X=$S node`, argv: []string{"node"}, assigns: []string{"X=x y"}},
		{line: `"if" x`, argv: []string{"if", "x"}},
		{line: `"A=1" node`, argv: []string{"A=1", "node"}},

		{line: "npm run build && next start"},
		{line: "a || b"}, {line: "a; b"}, {line: "a | b"}, {line: "a > f"}, {line: "a < f"},
		{line: "a & "}, {line: "(a)"}, {line: "a\nb"}, {line: "a `b`"}, {line: "a $(b)"},
		{line: `a "$(b)"`}, {line: "a $((1+2))"}, {line: "a *.js"}, {line: "a ?"}, {line: "a [x]"},
		{line: "a ~/x"}, {line: "A=~ a"}, {line: "a # comment"}, {line: "a $S"}, {line: "a $G"},
		{line: "a ${S:-x}"}, {line: "a ${NOPE:-x y}"}, {line: "a $1"}, {line: "a $@"}, {line: `a "$*"`},
		{line: "a $$"}, {line: "a ${#A}"}, {line: "a ${A:=x}"}, {line: "a ${A:+x}"}, {line: "a ${A%x}"},
		{line: "a ${A:-$B}"}, {line: "a ${A"}, {line: "a 'x"}, {line: `a "x`}, {line: `a \`},
		{line: "if true; then a; fi"}, {line: "{ a; }"}, {line: "! a"}, {line: "cd x"},
		{line: "echo hi"}, {line: "export A=1"}, {line: "exec"}, {line: "exec -a x node"},
		{line: "A=1"}, {line: ""}, {line: "   "}, {line: "PATH=/x node"}, {line: "IFS=, node"},
		{line: "A=1 exec node"}, {line: "$NOPE"}, {line: "a $A${S}"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			cmd, why := parseSimple(tt.line, testLookup)
			if tt.argv == nil {
				if why == "" {
					t.Fatalf("parsed as simple %q %q, want it left to sh", cmd.assigns, cmd.argv)
				}
				return
			}
			if why != "" {
				t.Fatalf("left to sh (%s), want %q", why, tt.argv)
			}
			if !reflect.DeepEqual(cmd.argv, tt.argv) || !reflect.DeepEqual(cmd.assigns, tt.assigns) {
				t.Fatalf("got assigns %q argv %q, want %q %q", cmd.assigns, cmd.argv, tt.assigns, tt.argv)
			}
		})
	}
}

// TestParseSimpleAgainstSh runs every line the reader accepts through the real /bin/sh
// and checks that sh gives the command the same argv and the same assigned variables.
func TestParseSimpleAgainstSh(t *testing.T) {
	lines := []string{
		`node server.js`, `node 'a b' "c d" e\ f`, `node '' "" x`,
		`node "a\"b" "\$x" "\a" 'x\y' \\ \'`, "node a\\\nb", `node $A ${A} "$A" x$A${A}y`,
		`node --port ${PORT:-3000} ${NOPE:-3000} ${E:-d} ${E-d} ${NOPE-d}`,
		`node $E x $NOPE "$E" $E"" ''$NOPE`, `node "$S" "${G}" "$Q" "${S:-a b}"`,
		`node $ a$ $/ "$" a#b a=b --x=y`, `$E node x`, `X="a b" Y=$X$A Z= node $X`,
		`A=1 B=$A node $A "$B"`, "node \"\\\\\" \"\\n\" 'a\"b' \"a'b\" \"\\`\"",
	}
	sh := newShRunner(t)
	for _, line := range lines {
		cmd, why := parseSimple(line, testLookup)
		if why != "" {
			t.Errorf("%q: left to sh (%s)", line, why)
			continue
		}
		sh.check(t, line, cmd)
	}
}

// shRunner runs a line with sh, whose command "node" is a script that prints its
// arguments and environment.
type shRunner struct{ dir string }

func newShRunner(t testing.TB) *shRunner {
	dir := t.TempDir()
	show := filepath.Join(dir, "node")
	script := "#!/bin/sh\nfor a; do printf '%s\\0' \"$a\"; done\nprintf '%s\\0' __env_follows_9c1e__\nexec env -0\n"
	if err := os.WriteFile(show, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return &shRunner{dir: dir}
}

func (r *shRunner) check(t testing.TB, line string, want simple) {
	t.Helper()
	if len(want.argv) == 0 || want.argv[0] != "node" {
		t.Fatalf("%q: the command must be node", line)
	}
	cmd := exec.Command("/bin/sh", "-c", line)
	cmd.Env = []string{"PATH=" + r.dir + ":/usr/bin:/bin"}
	for k, v := range testVars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%q: sh: %v", line, err)
	}
	args, envOut, _ := bytes.Cut(out, []byte("__env_follows_9c1e__\x00"))
	got := []string{"node"}
	for _, a := range bytes.Split(args, []byte{0}) {
		got = append(got, string(a))
	}
	got = got[:len(got)-1] // the split's empty tail
	if !reflect.DeepEqual(got, want.argv) {
		t.Errorf("%q: sh gives argv %q, the reader %q", line, got, want.argv)
	}
	shEnv := map[string]string{}
	for _, kv := range bytes.Split(envOut, []byte{0}) {
		k, v, _ := strings.Cut(string(kv), "=")
		shEnv[k] = v
	}
	for _, kv := range want.assigns {
		k, v, _ := strings.Cut(kv, "=")
		if shEnv[k] != v {
			t.Errorf("%q: sh gives the command %s=%q, the reader %q", line, k, shEnv[k], v)
		}
	}
}

func TestQuote(t *testing.T) {
	tests := map[string]string{
		"":          "''",
		"plain":     "plain",
		"--port=3":  "--port=3",
		"a b":       "'a b'",
		"it's":      `'it'\''s'`,
		"'":         `\'`,
		"'a'":       `\''a'\'`,
		"$HOME":     "'$HOME'",
		`say "hi"`:  `'say "hi"'`,
		"x\ny":      "'x\ny'",
		"~":         "'~'",
		"a*":        "'a*'",
		"''":        `\'\'`,
		"a'":        `'a'\'`,
		"percent%=": "percent%=",
	}
	for in, want := range tests {
		if got := quote(in); got != want {
			t.Errorf("quote(%q) = %s, want %s", in, got, want)
		}
	}
	// Whatever the input, sh reads the quoted word back as the input.
	sh := newShRunner(t)
	var line strings.Builder
	line.WriteString("node")
	var want []string
	for in := range tests {
		line.WriteString(" " + quote(in))
		want = append(want, in)
	}
	sh.check(t, line.String(), simple{argv: append([]string{"node"}, want...)})
}
