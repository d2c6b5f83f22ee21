package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseEnvFile(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"empty", "", nil},
		{"simple", "A=1\nB=two\n", []string{"A=1", "B=two"}},
		{"no final newline", "A=1", []string{"A=1"}},
		{"comments and blanks", "# comment\n\n; also a comment\n   \n  # indented\nA=1\n", []string{"A=1"}},
		{"export", "export A=1\nexport\tB=2\nexportC=3\n", []string{"A=1", "B=2", "exportC=3"}},
		{"blanks around =", "A = 1\n  B\t=\t2  \n", []string{"A=1", "B=2"}},
		{"trailing blanks trimmed", "A=value   \t\n", []string{"A=value"}},
		{"empty value", "A=\nB=''\nC=\"\"\n", []string{"A=", "B=", "C="}},
		{"equals in value", "URL=postgres://u:p@h/db?x=1\n", []string{"URL=postgres://u:p@h/db?x=1"}},
		{"hash in unquoted value", "A=abc#def\n", []string{"A=abc#def"}},
		{"single quotes literal", `A='a "b" \n $c'` + "\n", []string{`A=a "b" \n $c`}},
		{"double quotes escapes", `A="a \"b\" \\ \n \t \$x \q"` + "\n", []string{"A=a \"b\" \\ \n \t $x \\q"}},
		{"quoted keeps blanks", "A='  x  '\n", []string{"A=  x  "}},
		{"comment after quote", "A=\"x\" # note\n", []string{"A=x"}},
		{"multi-line double", "KEY=\"-----BEGIN-----\nabc\n-----END-----\"\nB=2\n", []string{"KEY=-----BEGIN-----\nabc\n-----END-----", "B=2"}},
		{"multi-line single", "A='x\ny'\nB=2\n", []string{"A=x\ny", "B=2"}},
		{"continued line", "A=\"x\\\ny\"\n", []string{"A=xy"}},
		{"crlf", "A=1\r\nB='2'\r\n", []string{"A=1", "B=2"}},
		{"crlf multi-line", "A=\"x\r\ny\r\nz\"\r\nB='p\r\nq'\r\n", []string{"A=x\ny\nz", "B=p\nq"}},
		{"crlf continued line", "A=\"x\\\r\ny\"\r\nB=1\r\n", []string{"A=xy", "B=1"}},
		{"lone cr kept", "A='x\ry'\n", []string{"A=x\ry"}},
		{"bom", "\uFEFFA=1\n", []string{"A=1"}},
		{"duplicates kept in order", "A=1\nB=2\nA=3\n", []string{"A=1", "B=2", "A=3"}},
		{"underscore and digits", "_X1=1\nlower_case=2\n", []string{"_X1=1", "lower_case=2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseEnvFile("app.env", tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseEnvFileErrors(t *testing.T) {
	const secret = "hunter2"
	tests := []struct {
		name   string
		in     string
		prefix string
		frag   string
	}{
		{"no equals", "A=1\n" + secret + "\n", "app.env:2: ", "expected KEY=VALUE"},
		{"blank name", "=" + secret + "\n", "app.env:1: ", "missing variable name"},
		{"bad name", "1A=" + secret + "\n", "app.env:1: ", "invalid variable name"},
		{"name with space", "MY KEY=" + secret + "\n", "app.env:1: ", "invalid variable name"},
		{"name with dash", "MY-KEY=" + secret + "\n", "app.env:1: ", "invalid variable name"},
		{"export alone", "export " + secret + "\n", "app.env:1: ", "expected KEY=VALUE"},
		{"unterminated double", "A=1\nB=\"" + secret + "\nC=3\n", "app.env:2: ", "unterminated quoted value (missing closing \")"},
		{"unterminated single", "B='" + secret, "app.env:1: ", "unterminated quoted value (missing closing ')"},
		{"text after quote", "A='" + secret + "' " + secret + "\n", "app.env:1: ", "unexpected text after the closing quote"},
		{"line after multi-line value", "A=\"x\ny\"z\n", "app.env:2: ", "unexpected text after the closing quote"},
		{"line count after multi-line value", "A=\"x\ny\"\nB\n", "app.env:3: ", "expected KEY=VALUE"},
		{"line count after crlf value", "A=\"x\r\ny\\\r\nz\"\r\nB\r\n", "app.env:4: ", "expected KEY=VALUE"},
		{"NUL", "A=a\x00" + secret + "\n", "app.env:1: ", "NUL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars, err := parseEnvFile("app.env", tt.in)
			if err == nil {
				t.Fatalf("no error, got %q", vars)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T: %v", err, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.prefix) || !strings.Contains(msg, tt.frag) {
				t.Errorf("error %q, want %q...%q", msg, tt.prefix, tt.frag)
			}
			if strings.Contains(msg, secret) {
				t.Errorf("error shows a value: %q", msg)
			}
		})
	}
}

func TestReadEnvFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.env")
	if err := os.WriteFile(path, []byte("# app\nexport NODE_ENV=production\nDB_URL='postgres://x'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ReadEnvFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"NODE_ENV=production", "DB_URL=postgres://x"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}

	if _, err := ReadEnvFile(filepath.Join(dir, "none.env")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := ReadEnvFile(dir); err == nil {
		t.Error("a directory: no error")
	}
	if err := os.WriteFile(path, []byte("A=1\nB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadEnvFile(path); err == nil || err.Error() != path+":2: expected KEY=VALUE" {
		t.Errorf("bad file: %v", err)
	}
	big := make([]byte, maxEnvFileSize+1)
	for i := range big {
		big[i] = '#'
	}
	if err := os.WriteFile(path, big, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadEnvFile(path); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big file: %v", err)
	}
}

// envFileMessages are the only messages an env file error may carry, so
// that no value can ever show up in one.
var envFileMessages = []string{
	"expected KEY=VALUE",
	"missing variable name before '='",
	"invalid variable name: use letters, digits and _, not starting with a digit",
	"unterminated quoted value (missing closing \")",
	"unterminated quoted value (missing closing ')",
	"unexpected text after the closing quote",
	"value contains a NUL character",
}

func FuzzParseEnvFile(f *testing.F) {
	for _, s := range []string{"A=1\n", "export A='x'\n", "A=\"a\\\"b\nc\"\n", "A='", "# x\n;y\nB = 2 \r\n", "A=\"x\" y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		vars, err := parseEnvFile("f.env", in)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T: %v", err, err)
			}
			known := false
			for _, m := range envFileMessages {
				known = known || ce.Msg == m
			}
			if !known || ce.Key != "" || ce.Line < 1 || ce.Line > strings.Count(in, "\n")+1 {
				t.Fatalf("unexpected error %+v", ce)
			}
			return
		}
		for _, kv := range vars {
			k, _, ok := strings.Cut(kv, "=")
			if !ok || !validEnvName(k) {
				t.Fatalf("bad variable %q", kv)
			}
		}
	})
}

// bigEnvFile returns an env file of about size bytes: quoted values, many
// of them over several lines, and plain ones.
func bigEnvFile(size int) (data string, vars int) {
	var b strings.Builder
	for i := 0; b.Len() < size; i++ {
		switch i % 3 {
		case 0:
			fmt.Fprintf(&b, "KEY_%d=\"a \\\"quoted\\\" value\nover two lines\"\n", i)
		case 1:
			fmt.Fprintf(&b, "export KEY_%d='single quoted %d'\n", i, i)
		default:
			fmt.Fprintf(&b, "KEY_%d=plain-%d # not a comment\n", i, i)
		}
		vars++
	}
	return b.String(), vars
}

// TestReadEnvFileLarge reads an env file of the largest size allowed, made
// of quoted values: it parses, and every variable is there.
func TestReadEnvFileLarge(t *testing.T) {
	data, n := bigEnvFile(maxEnvFileSize - 100)
	path := filepath.Join(t.TempDir(), "big.env")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	vars, err := ReadEnvFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(vars) != n {
		t.Fatalf("%d variables, want %d", len(vars), n)
	}
	if want := "KEY_0=a \"quoted\" value\nover two lines"; vars[0] != want {
		t.Errorf("first: %q, want %q", vars[0], want)
	}
	if last := vars[n-1]; !strings.HasPrefix(last, fmt.Sprintf("KEY_%d=", n-1)) {
		t.Errorf("last: %q", last)
	}
}

func BenchmarkParseEnvFile4MiB(b *testing.B) {
	data, _ := bigEnvFile(maxEnvFileSize - 100)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseEnvFile("big.env", data); err != nil {
			b.Fatal(err)
		}
	}
}
