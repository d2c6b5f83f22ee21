// Package pathsearch finds the program a command name stands for, as a
// shell does: in each directory of a PATH, in order. The app's PATH is not
// the agent's (the app's environment is its own, and npm puts
// node_modules/.bin in front), so exec.LookPath, which reads the agent's,
// does not do.
package pathsearch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultPath is the search path of an environment without a PATH, as
// the shells and execvp use.
const DefaultPath = "/usr/local/bin:/usr/bin:/bin"

// ErrNotFound is wrapped by Look's error when no directory of the PATH has
// the program.
var ErrNotFound = errors.New("not found in PATH")

// Look returns the program that runs for name with the search path path
// (directories separated by colons) in the working directory dir.
//
// A name with a slash is not searched for: Look returns it as is, for exec
// to take relative to the working directory. Otherwise the first regular
// file with an execute bit named name in the directories of path wins; an
// empty entry is the working directory, and a relative entry is relative to
// dir ("" is the agent's own working directory).
func Look(name, path, dir string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range strings.Split(path, ":") {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		if Executable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q %w %s", name, ErrNotFound, path)
}

// Executable reports whether file is a regular file with an execute bit
// set (following symbolic links).
func Executable(file string) bool {
	st, err := os.Stat(file)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

// Env returns the search path of env, a list of KEY=VALUE: its PATH (the
// last one, the one exec.Cmd passes on), or DefaultPath when it has none or
// an empty one.
func Env(env []string) string {
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	if path == "" {
		return DefaultPath
	}
	return path
}
