package logsink

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/natefinch/lumberjack.v2"
)

func TestOpenFileErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "plain")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		path     string
		size     int64
		files    int
		contains string
	}{
		{"empty path", "", 1 << 20, 1, "empty path"},
		{"zero size", filepath.Join(dir, "a.log"), 0, 1, "max size"},
		{"no files kept", filepath.Join(dir, "a.log"), 1 << 20, 0, "max files"},
		{"parent is a file", filepath.Join(file, "a.log"), 1 << 20, 1, "not a directory"},
		{"grandparent is a file", filepath.Join(file, "sub", "a.log"), 1 << 20, 1, "not a directory"},
		{"path is a directory", dir, 1 << 20, 1, "is a directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, err := OpenFile(c.path, c.size, c.files)
			if err == nil {
				w.Close()
				t.Fatalf("OpenFile(%q) succeeded", c.path)
			}
			if !strings.Contains(err.Error(), c.contains) {
				t.Errorf("error %q does not say %q", err, c.contains)
			}
		})
	}
}

func TestOpenFileModes(t *testing.T) {
	old := umask(0o077) // a strict umask must not change the modes
	t.Cleanup(func() { umask(old) })
	dir := filepath.Join(t.TempDir(), "log", "agent")
	path := filepath.Join(dir, "web.log")
	w, err := OpenFile(path, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for p, want := range map[string]os.FileMode{dir: 0o750, filepath.Dir(dir): 0o750, path: 0o640} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", p, got, want)
		}
	}
	if lj := w.(*lumberjack.Logger); lj.MaxSize != 1 || lj.MaxBackups != 2 || !lj.Compress {
		t.Errorf("rotation %+v, want 1 MiB, 2 kept, compressed", lj)
	}

	// An existing file keeps its mode and its lines.
	if _, err := w.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	w, err = OpenFile(path, 3<<20+1, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("two\n")); err != nil {
		t.Fatal(err)
	}
	if b := readFile(t, path); string(b) != "one\ntwo\n" {
		t.Errorf("file holds %q", b)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("existing file's mode changed to %o", got)
	}
	if lj := w.(*lumberjack.Logger); lj.MaxSize != 4 {
		t.Errorf("3 MiB + 1 byte rotates at %d MiB, want 4", lj.MaxSize)
	}
}
