package packaging

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// repoRoot returns the repository root (the module directory above this package).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found: %v", err)
	}
	return root
}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestStaticBinary builds the agent the way `make build` does and checks that the
// result is a static executable (no program interpreter, no shared libraries),
// that the version is stamped, and that agentctl is a symlink to it.
func TestStaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the whole agent")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	root := repoRoot(t)
	bin := t.TempDir()
	const version = "9.8.7-static-test"
	run(t, root, nil, "make", "--no-print-directory", "build", "BINDIR="+bin, "VERSION="+version)

	agent := filepath.Join(bin, "agent")
	f, err := elf.Open(agent)
	if err != nil {
		t.Fatalf("open built binary: %v", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("binary has a %v program header: it is dynamically linked", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary needs shared libraries %q", libs)
	}
	if f.Section(".interp") != nil {
		t.Errorf("binary has an .interp section")
	}

	if target, err := os.Readlink(filepath.Join(bin, "agentctl")); err != nil || target != "agent" {
		t.Errorf("agentctl: readlink = %q, %v; want a symlink to agent", target, err)
	}
	if out := run(t, bin, nil, agent, "version"); !strings.Contains(out, version) {
		t.Errorf("agent version printed %q, want it to contain %q", out, version)
	}
}

// stage lays out, in a temporary directory, the files nfpm.yaml refers to
// (relative to the repository root) with a stand-in binary, and returns it.
func stage(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	dir := t.TempDir()
	copyFile := func(rel string, mode os.FileMode) {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatalf("%v (make package needs it)", err)
		}
		dst := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	copyFile("packaging/nfpm.yaml", 0o644)
	copyFile("packaging/agent.service", 0o644)
	for _, s := range []string{"postinstall", "preremove", "postremove"} {
		copyFile("packaging/scripts/"+s+".sh", 0o755)
	}
	// The example config ships from the repository root, the same file the
	// binary embeds; there is no copy under packaging/.
	copyFile("agent.toml.example", 0o644)
	if _, err := os.Stat(filepath.Join(root, "packaging", "agent.toml.example")); err == nil {
		t.Errorf("packaging/agent.toml.example exists; the example config lives at the repository root only")
	}
	// As in the repository, agent/ is a directory: the symlink's target
	// "agent" must not be taken for it.
	for _, d := range []string{"bin", "agent"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "agent"), []byte("#!/bin/sh\necho stand-in\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// nfpm returns the path of the nfpm tool pinned in deploy/go.mod (a module
// of its own, so that nfpm's modules stay out of the agent's), building it if
// needed.
func nfpm(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(run(t, filepath.Join(repoRoot(t), "deploy"), nil, "go", "tool", "-n", "nfpm"))
}

func buildPackage(t *testing.T, packager string) string {
	t.Helper()
	dir := stage(t)
	out := filepath.Join(dir, "dist")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"VERSION=1.2.3+4+gabc", "ARCH=" + runtime.GOARCH, "BINDIR=bin"}
	run(t, dir, env, nfpm(t), "package", "--config", "packaging/nfpm.yaml", "--packager", packager, "--target", out+"/")
	files, err := filepath.Glob(filepath.Join(out, "*."+packager))
	if err != nil || len(files) != 1 {
		t.Fatalf("want one .%s in %s, got %q (%v)", packager, out, files, err)
	}
	return files[0]
}

func TestDebPackage(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed")
	}
	deb := buildPackage(t, "deb")

	// Contents: path -> the line dpkg-deb prints for it (mode, owner, link target).
	listing := run(t, "", nil, "dpkg-deb", "--contents", deb)
	entries := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 6 {
			continue
		}
		entries[strings.TrimPrefix(fields[5], ".")] = line
	}
	want := map[string]string{
		"/usr/bin/agent":                    "-rwxr-xr-x root/root",
		"/usr/bin/agentctl":                 "lrwxrwxrwx root/root",
		"/lib/systemd/system/agent.service": "-rw-r--r-- root/root",
		"/etc/agent/agent.toml":             "-rw-r--r-- root/root",
		"/etc/agent/":                       "drwxr-xr-x root/root",
	}
	for path, prefix := range want {
		line, ok := entries[path]
		if !ok {
			t.Errorf("%s is not in the .deb:\n%s", path, listing)
			continue
		}
		if !strings.HasPrefix(line, prefix) {
			t.Errorf("%s: %q, want it to start with %q", path, line, prefix)
		}
	}
	if line := entries["/usr/bin/agentctl"]; !strings.HasSuffix(line, "-> agent") {
		t.Errorf("agentctl is not a symlink to agent: %q", line)
	}
	if _, ok := entries["/usr/lib/systemd/system/agent.service"]; ok {
		t.Errorf("the .deb carries the rpm unit path too")
	}

	// The config is a conffile: dpkg keeps an edited one on upgrade.
	if conffiles := run(t, "", nil, "dpkg-deb", "--info", deb, "conffiles"); strings.TrimSpace(conffiles) != "/etc/agent/agent.toml" {
		t.Errorf("conffiles = %q, want /etc/agent/agent.toml", conffiles)
	}
	control := run(t, "", nil, "dpkg-deb", "--field", deb, "Package", "Version")
	if !strings.Contains(control, "Package: agent") || !strings.Contains(control, "Version: 1.2.3+4+gabc") {
		t.Errorf("control fields:\n%s", control)
	}
	ctl := t.TempDir()
	run(t, "", nil, "dpkg-deb", "--control", deb, ctl)
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		data, err := os.ReadFile(filepath.Join(ctl, s))
		if err != nil {
			t.Errorf("maintainer script %s: %v", s, err)
			continue
		}
		if !bytes.Contains(data, []byte("systemctl")) {
			t.Errorf("%s does not call systemctl:\n%s", s, data)
		}
	}
}

func TestRPMPackage(t *testing.T) {
	rpm := buildPackage(t, "rpm")
	data, err := os.ReadFile(rpm)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte{0xed, 0xab, 0xee, 0xdb}) {
		t.Fatalf("%s does not start with the rpm lead", rpm)
	}
	// The header (uncompressed) holds directory and base names, the file flags and
	// the scriptlets.
	for _, s := range []string{"/usr/lib/systemd/system/", "agent.service", "/etc/agent/", "agent.toml", "agentctl", "daemon-reload"} {
		if !bytes.Contains(data, []byte(s)) {
			t.Errorf("rpm header lacks %q", s)
		}
	}
	if bytes.Contains(data, []byte("/lib/systemd/system/\x00")) && !bytes.Contains(data, []byte("/usr/lib/systemd/system/\x00")) {
		t.Errorf("rpm carries the deb unit path")
	}
}

func TestMaintainerScriptsShellcheck(t *testing.T) {
	if _, err := exec.LookPath("shellcheck"); err != nil {
		t.Skip("shellcheck is not installed (apt-get install -y shellcheck)")
	}
	scripts, err := filepath.Glob("scripts/*.sh")
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no maintainer scripts: %v", err)
	}
	// dpkg and rpm run them with /bin/sh: POSIX sh, no bashisms.
	out, err := exec.Command("shellcheck", append([]string{"--shell=sh", "--severity=style"}, scripts...)...).CombinedOutput()
	if err != nil {
		t.Errorf("shellcheck: %v\n%s", err, out)
	}
}
