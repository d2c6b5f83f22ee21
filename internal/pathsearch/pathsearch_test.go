package pathsearch

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestLook(t *testing.T) {
	root := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := mk("a/tool", 0o755)
	b := mk("b/tool", 0o755)
	mk("plain/tool", 0o644)
	os.MkdirAll(filepath.Join(root, "dirs", "tool"), 0o755)
	here := mk("app/tool", 0o755)
	rel := mk("app/bin/tool", 0o755)
	link := filepath.Join(root, "link")
	os.Mkdir(link, 0o755)
	if err := os.Symlink(a, filepath.Join(link, "tool")); err != nil {
		t.Fatal(err)
	}
	app := filepath.Join(root, "app")

	tests := []struct {
		name, file, path, dir, want string
	}{
		{"first entry wins", "tool", filepath.Dir(a) + ":" + filepath.Dir(b), "", a},
		{"order", "tool", filepath.Dir(b) + ":" + filepath.Dir(a), "", b},
		{"not executable, not a file: skipped", "tool", filepath.Join(root, "plain") + ":" + filepath.Join(root, "dirs") + ":" + filepath.Dir(b), "", b},
		{"empty entry is dir", "tool", filepath.Join(root, "plain") + "::" + filepath.Dir(b), app, here},
		{"relative entry is relative to dir", "tool", "bin", app, rel},
		{"symbolic link followed", "tool", link, "", filepath.Join(link, "tool")},
		{"slash: as is", "./bin/tool", filepath.Dir(a), app, "./bin/tool"},
		{"slash: as is even if missing", "/no/such/tool", filepath.Dir(a), "", "/no/such/tool"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Look(tt.file, tt.path, tt.dir)
			if err != nil || got != tt.want {
				t.Errorf("Look(%q, %q, %q) = %q, %v; want %q", tt.file, tt.path, tt.dir, got, err, tt.want)
			}
		})
	}

	_, err := Look("tool", filepath.Join(root, "plain")+":/nonexistent", "")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("not found: err = %v, want ErrNotFound", err)
	}
	if want := `"tool" not found in PATH ` + filepath.Join(root, "plain") + ":/nonexistent"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if _, err := Look("tool", "", root); !errors.Is(err, ErrNotFound) {
		t.Errorf("empty PATH, no tool in dir: err = %v", err)
	}
	if got, err := Look("tool", "", app); err != nil || got != here {
		t.Errorf("empty PATH is the working directory: %q, %v", got, err)
	}
}

func TestEnv(t *testing.T) {
	tests := []struct {
		env  []string
		want string
	}{
		{nil, DefaultPath},
		{[]string{"HOME=/root"}, DefaultPath},
		{[]string{"PATH="}, DefaultPath},
		{[]string{"PATH=/a", "XPATH=/x", "PATH=/b"}, "/b"},
		{[]string{"PATH=/a:/c"}, "/a:/c"},
	}
	for _, tt := range tests {
		if got := Env(tt.env); got != tt.want {
			t.Errorf("Env(%q) = %q, want %q", tt.env, got, tt.want)
		}
	}
}
