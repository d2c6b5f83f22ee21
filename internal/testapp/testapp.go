// Package testapp builds the Node.js apps that tests and benchmarks run: a tiny
// server written into a temp dir, and a real Next.js app built once and cached.
package testapp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Pinned versions of the Next.js fixture (current 16.x and its React, 2026-11-22).
const (
	NextVersion  = "16.4.6"
	ReactVersion = "19.3.1"
)

// fixtureRev changes whenever the files written below change, so a stale cache is not used.
const fixtureRev = "1"

// CacheRoot holds the built fixtures, kept across test runs.
const CacheRoot = "/var/cache/agent-test"

// ErrRegistryUnreachable reports that the npm registry could not be reached to build a fixture.
var ErrRegistryUnreachable = errors.New("npm registry unreachable")

// NodeApp writes js as server.js into a new temp dir and returns the dir.
func NodeApp(t testing.TB, js string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "server.js"), []byte(js), 0o644); err != nil {
		t.Fatalf("write server.js: %v", err)
	}
	return dir
}

// NextApp returns the dir of a built Next.js app (package.json scripts "start": "next start",
// "build": "next build"; the page at / answers "hello from next"), skipping the test when npm's
// registry cannot be reached to build it.
//
// It returns the cached dir itself, not a copy: node_modules is some hundreds of MB, and
// copying it for every test would cost more than most tests. Callers must not modify the
// dir; `next start` only reads it.
func NextApp(t testing.TB) string {
	t.Helper()
	dir, err := NextAppDir(context.Background())
	if errors.Is(err, ErrRegistryUnreachable) {
		t.Skipf("skipping: the Next.js fixture needs npm's registry: %v", err)
	}
	if err != nil {
		t.Fatalf("next.js fixture: %v", err)
	}
	return dir
}

// NextAppDir is NextApp for programs (benchmarks): it builds the app on first use, under
// CacheRoot/next-<hash of the versions>, and returns its dir. Concurrent callers, even in
// other processes, wait for one build.
func NextAppDir(ctx context.Context) (string, error) {
	node, err := exec.Command("node", "--version").Output()
	if err != nil {
		return "", fmt.Errorf("node --version: %w", err)
	}
	major, _, _ := strings.Cut(strings.TrimSpace(string(node)), ".")
	sum := sha256.Sum256([]byte(strings.Join([]string{fixtureRev, NextVersion, ReactVersion, major}, "\n")))
	dir := filepath.Join(CacheRoot, "next-"+hex.EncodeToString(sum[:6]))
	if done(dir) {
		return dir, nil
	}
	if err := os.MkdirAll(CacheRoot, 0o755); err != nil {
		return "", fmt.Errorf("next.js fixture: %w", err)
	}
	unlock, err := lock(dir + ".lock")
	if err != nil {
		return "", fmt.Errorf("next.js fixture: %w", err)
	}
	defer unlock()
	if done(dir) { // built by another process while this one waited
		return dir, nil
	}
	if err := registryReachable(ctx); err != nil {
		return "", err
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("next.js fixture: %w", err)
	}
	if err := writeNext(tmp); err != nil {
		return "", fmt.Errorf("next.js fixture: %w", err)
	}
	for _, args := range [][]string{
		{"npm", "install", "--no-audit", "--no-fund", "--loglevel=error"},
		{"npm", "run", "build"},
	} {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir = tmp
		cmd.Env = append(os.Environ(), "NEXT_TELEMETRY_DISABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("next.js fixture: %s: %w\n%s", strings.Join(args, " "), err, tail(out))
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, ".built"), nil, 0o644); err != nil {
		return "", fmt.Errorf("next.js fixture: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("next.js fixture: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("next.js fixture: %w", err)
	}
	return dir, nil
}

func done(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, ".built"))
	return err == nil
}

// registryReachable asks npm itself (`npm ping`, its configured registry)
// whether the registry answers.
func registryReachable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "npm", "ping").CombinedOutput(); err != nil {
		return fmt.Errorf("%w: npm ping: %v: %s", ErrRegistryUnreachable, err, tail(out))
	}
	return nil
}

func writeNext(dir string) error {
	files := map[string]string{
		"package.json": `{
  "name": "next-fixture",
  "version": "1.0.0",
  "private": true,
  "scripts": {
    "build": "next build",
    "start": "next start"
  },
  "dependencies": {
    "next": "` + NextVersion + `",
    "react": "` + ReactVersion + `",
    "react-dom": "` + ReactVersion + `"
  }
}
`,
		"app/layout.js": `export default function RootLayout({ children }) {
  return <html lang="en"><body>{children}</body></html>
}
`,
		// Rendered on every request, as an SSR page is.
		"app/page.js": `export const dynamic = 'force-dynamic'
export default function Page() {
  return <main><h1>hello from next</h1><p>{new Date().toISOString()}</p></main>
}
`,
		"next.config.js": "module.exports = {}\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func tail(b []byte) string {
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}
