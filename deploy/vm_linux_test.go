package deploy

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"agent/internal/testkit"
)

// The VM tests boot the image that deploy/vm/image.sh builds (Debian 12 with
// its own 6.1 kernel, cgroup v2 with the memory controller, cloud-init, the
// QEMU guest agent) under qemu with software emulation (-accel tcg: nested KVM
// hangs on these machines). Each boot runs on a copy-on-write overlay of the
// cached image in the test's temporary directory; files go in on a small ext4
// disk labelled vmdata (and a NoCloud seed for cloud-init); commands run in the
// guest through the guest agent's guest-exec. Every boot holds the lock that
// the nspawn tests take too, so no two booted systems share the two cores.

const (
	defaultVMCache = "/var/cache/agent-vm"
	vmBootTimeout  = 4 * time.Minute // to a running systemd, under TCG (seen: 30-40 s)
	vmExecTimeout  = 90 * time.Second
	vmPoll         = 500 * time.Millisecond // each question is a process started in the guest
)

// vmImage is the cached image: the root filesystem and the kernel that boots it.
type vmImage struct {
	root, kernel, initrd string
}

// findVMImage returns the image that deploy/vm/image.sh built from the
// script as it is now, or skips the test saying how to build it.
func findVMImage(t *testing.T) vmImage {
	t.Helper()
	if testing.Short() {
		t.Skip("VM test: boots a kernel under qemu")
	}
	if os.Geteuid() != 0 {
		t.Skip("VM test needs root (the image cache, the boot lock)")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "mkfs.ext4", "mkfs.vfat", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("VM test needs %s: run deploy/vm/image.sh as root", tool)
		}
	}
	key, err := vmImageKey()
	if err != nil {
		t.Skipf("VM test: %v: run deploy/e2e/prepare.sh and deploy/vm/image.sh as root", err)
	}
	cache := os.Getenv("AGENT_VM_CACHE")
	if cache == "" {
		cache = defaultVMCache
	}
	dir := filepath.Join(cache, key)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		t.Skipf("no VM image for this deploy/vm/image.sh at %s: run deploy/vm/image.sh as root (about 3 minutes once)", dir)
	}
	return vmImage{root: filepath.Join(dir, "root.img"), kernel: filepath.Join(dir, "vmlinuz"), initrd: filepath.Join(dir, "initrd.img")}
}

// vmImageKey is image.sh's key: a hash of the script, of the Debian tree's
// stamp and of this machine's local certificate authorities.
func vmImageKey() (string, error) {
	h := sha256.New()
	script, err := os.ReadFile("vm/image.sh")
	if err != nil {
		return "", err
	}
	h.Write(script)
	tree := os.Getenv("AGENT_E2E_ROOTFS")
	if tree == "" {
		tree = defaultRootfs
	}
	stamp, err := os.ReadFile(filepath.Join(tree, ".complete"))
	if err != nil {
		return "", fmt.Errorf("no cached Debian 12 tree: %w", err)
	}
	h.Write(stamp)
	crts, _ := filepath.Glob("/usr/local/share/ca-certificates/*.crt")
	sort.Strings(crts) // as the shell's glob
	for _, c := range crts {
		data, err := os.ReadFile(c)
		if err != nil {
			return "", err
		}
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// vmOptions says what a VM gets.
type vmOptions struct {
	// data are the files of the vmdata disk (its path => host file), mounted
	// at /vm by mountData; nil = no such disk.
	data map[string]string
	// seed holds the files of a NoCloud seed volume labelled cidata
	// (user-data, meta-data); nil = no seed, and cloud-init is disabled.
	seed map[string][]byte
	// forward maps host ports (bound on 127.0.0.1 only) to guest ports.
	forward map[int]int
	// network gives the guest qemu's user network (NAT through this machine:
	// the host's loopback is 10.0.2.2, DNS 10.0.2.3); else it has no NIC.
	network bool
}

// vm is one qemu process: the guest may reboot inside it; it ends when the
// guest powers off or the test kills it.
type vm struct {
	t       *testing.T
	dir     string
	console string
	qgaPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error // qemu's exit, valid after done
	qga     net.Conn
	dec     *json.Decoder
	started time.Time
}

// startVM boots img with opts and waits for the guest agent to answer.
// The VM is killed at cleanup if it is still running.
func startVM(t *testing.T, img vmImage, opts vmOptions) *vm {
	t.Helper()
	holdBootLock(t)
	dir := t.TempDir()
	v := &vm{t: t, dir: dir, console: filepath.Join(dir, "console.log"), qgaPath: filepath.Join(dir, "qga.sock"), done: make(chan struct{})}

	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", img.root, disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	appendArgs := "root=/dev/vda rw console=ttyS0 panic=-1"
	args := []string{"-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2",
		"-nodefaults", "-display", "none", "-vga", "none", "-monitor", "none",
		"-serial", "file:" + v.console,
		"-kernel", img.kernel, "-initrd", img.initrd,
		"-drive", "file=" + disk + ",format=qcow2,if=virtio",
		"-chardev", "socket,id=qga0,path=" + v.qgaPath + ",server=on,wait=off",
		"-device", "virtio-serial-pci",
		"-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
	}
	if opts.data != nil {
		args = append(args, "-drive", "file="+dataDisk(t, dir, opts.data)+",format=raw,if=virtio")
	}
	if opts.seed != nil {
		args = append(args, "-drive", "file="+seedDisk(t, dir, opts.seed)+",format=raw,if=virtio")
	} else {
		appendArgs += " cloud-init=disabled"
	}
	if opts.network {
		nic := "user,model=virtio-net-pci"
		hosts := make([]int, 0, len(opts.forward))
		for h := range opts.forward {
			hosts = append(hosts, h)
		}
		sort.Ints(hosts)
		for _, h := range hosts {
			nic += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", h, opts.forward[h])
		}
		args = append(args, "-nic", nic)
	} else {
		args = append(args, "-nic", "none")
	}
	args = append(args, "-append", appendArgs)

	v.cmd = exec.Command("qemu-system-x86_64", args...)
	var stderr strings.Builder
	v.cmd.Stdout, v.cmd.Stderr = &stderr, &stderr
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		v.err = v.cmd.Wait()
		if stderr.Len() > 0 {
			v.err = fmt.Errorf("%v: %s", v.err, strings.TrimSpace(stderr.String()))
		}
		close(v.done)
	}()
	t.Cleanup(func() {
		if !v.exited() {
			_ = v.cmd.Process.Kill()
			<-v.done
		}
		if v.qga != nil {
			v.qga.Close()
		}
		if t.Failed() {
			t.Logf("serial console (last lines):\n%s", tail(v.console, 40))
		}
	})
	v.waitGuest(vmBootTimeout, "the guest agent to answer after boot")
	return v
}

// dataDisk makes an ext4 image labelled vmdata holding files.
func dataDisk(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	src := filepath.Join(dir, "data")
	var size int64
	for name, from := range files {
		copyInto(t, from, filepath.Join(src, name), 0o755)
		if fi, err := os.Stat(from); err == nil {
			size += fi.Size()
		}
	}
	img := filepath.Join(dir, "data.img")
	mb := strconv.FormatInt(size>>20+64, 10) + "M"
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "vmdata", "-d", src, img, mb).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (data disk): %v\n%s", err, out)
	}
	return img
}

// seedDisk makes a NoCloud seed: a vfat volume labelled cidata with files.
func seedDisk(t *testing.T, dir string, files map[string][]byte) string {
	t.Helper()
	img := filepath.Join(dir, "seed.img")
	if out, err := exec.Command("mkfs.vfat", "-n", "CIDATA", "-C", img, "2048").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.vfat (seed): %v\n%s", err, out)
	}
	for name, data := range files {
		p := filepath.Join(dir, "seed-"+name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mcopy", "-i", img, p, "::"+name).CombinedOutput(); err != nil {
			t.Fatalf("mcopy %s: %v\n%s", name, err, out)
		}
	}
	return img
}

// exited reports whether qemu has exited.
func (v *vm) exited() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// fatalf fails the test with the serial console's last lines.
func (v *vm) fatalf(format string, args ...any) {
	v.t.Helper()
	v.t.Fatalf("%s\nserial console (last lines):\n%s", fmt.Sprintf(format, args...), tail(v.console, 40))
}

// waitGuest waits until the guest agent answers (after a boot or a reboot).
func (v *vm) waitGuest(timeout time.Duration, what string) {
	v.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if v.exited() {
			v.fatalf("qemu exited while waiting for %s: %v", what, v.err)
		}
		if last = v.sync(); last == nil {
			return
		}
		// sync waited up to its own deadline: this is the poll's pace.
	}
	_ = v.cmd.Process.Kill()
	<-v.done
	v.fatalf("timed out after %v waiting for %s (last: %v); qemu killed", timeout, what, last)
}

// sync (re)connects to the guest agent and does its guest-sync handshake,
// which also skips any answer left over from before.
func (v *vm) sync() error {
	if v.qga != nil {
		v.qga.Close()
		v.qga = nil
	}
	conn, err := net.DialTimeout("unix", v.qgaPath, 2*time.Second)
	if err != nil {
		time.Sleep(vmPoll) // the socket appears a moment after qemu starts
		return err
	}
	v.qga, v.dec = conn, json.NewDecoder(bufio.NewReader(conn))
	id := time.Now().UnixNano() & (1<<52 - 1)
	var got int64
	if err := v.call("guest-sync", map[string]any{"id": id}, &got, 3*time.Second, func(r json.RawMessage) bool {
		return json.Unmarshal(r, &got) == nil && got == id
	}); err != nil {
		v.qga.Close()
		v.qga = nil
		return err
	}
	return nil
}

// call sends one guest agent command and decodes the answer that match
// accepts (all, when match is nil) into out.
func (v *vm) call(cmd string, args any, out any, timeout time.Duration, match func(json.RawMessage) bool) error {
	if v.qga == nil {
		return errors.New("not connected to the guest agent")
	}
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	_ = v.qga.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(v.qga).Encode(req); err != nil {
		return err
	}
	for {
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := v.dec.Decode(&resp); err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		if resp.Error != nil {
			return fmt.Errorf("%s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		}
		if match == nil || match(resp.Return) {
			return json.Unmarshal(resp.Return, out)
		}
	}
}

// run runs a command in the guest (as root, with a clean environment, killed
// after vmExecTimeout) and returns its output (stdout, then stderr).
func (v *vm) run(args ...string) (string, error) {
	if v.qga == nil {
		if err := v.sync(); err != nil {
			return "", err
		}
	}
	argv := append([]string{"-i"}, containerEnv...)
	argv = append(argv, "timeout", "-k", "5", strconv.Itoa(int(vmExecTimeout/time.Second)))
	argv = append(argv, args...)
	var started struct {
		PID int `json:"pid"`
	}
	if err := v.call("guest-exec", map[string]any{"path": "/usr/bin/env", "arg": argv, "capture-output": true}, &started, 10*time.Second, nil); err != nil {
		v.qga.Close()
		v.qga = nil
		return "", err
	}
	deadline := time.Now().Add(vmExecTimeout + 15*time.Second)
	for {
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode *int   `json:"exitcode"`
			Signal   *int   `json:"signal"`
			Out      string `json:"out-data"`
			Err      string `json:"err-data"`
		}
		if err := v.call("guest-exec-status", map[string]any{"pid": started.PID}, &st, 10*time.Second, nil); err != nil {
			v.qga.Close()
			v.qga = nil
			return "", err
		}
		if st.Exited {
			stdout, _ := base64.StdEncoding.DecodeString(st.Out)
			stderr, _ := base64.StdEncoding.DecodeString(st.Err)
			out := string(stdout) + string(stderr)
			switch {
			case st.Signal != nil:
				return out, fmt.Errorf("%s: killed by signal %d: %s", strings.Join(args, " "), *st.Signal, strings.TrimSpace(out))
			case st.ExitCode != nil && *st.ExitCode != 0:
				return out, fmt.Errorf("%s: exit status %d: %s", strings.Join(args, " "), *st.ExitCode, strings.TrimSpace(out))
			}
			return out, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s: no exit within %v", strings.Join(args, " "), vmExecTimeout)
		}
		time.Sleep(50 * time.Millisecond) // the guest agent has no wait call
	}
}

// must runs a command in the guest and fails the test if it fails.
func (v *vm) must(args ...string) string {
	v.t.Helper()
	out, err := v.run(args...)
	if err != nil {
		v.t.Fatalf("in the VM: %v", err)
	}
	return out
}

// sh runs a shell command line in the guest.
func (v *vm) sh(script string) (string, error) { return v.run("sh", "-c", script) }

// mountData mounts the vmdata disk at /vm.
func (v *vm) mountData() {
	v.t.Helper()
	v.must("sh", "-c", "mkdir -p /vm && mount LABEL=vmdata /vm")
}

// bootID is the guest's boot id: it changes on every boot.
func (v *vm) bootID() string {
	out, _ := v.run("cat", "/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(out)
}

// waitSystem waits until the guest's systemd reports running (or degraded).
func (v *vm) waitSystem(timeout time.Duration) {
	v.t.Helper()
	v.eventually(timeout, "the guest's systemd to be running", func() (bool, string) {
		out, _ := v.run("systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		return state == "running" || state == "degraded", "is-system-running: " + state
	})
	if out, _ := v.run("systemctl", "--failed", "--no-legend", "--plain"); strings.TrimSpace(out) != "" {
		v.t.Logf("failed units in the VM (tolerated):\n%s", out)
	}
}

// eventually polls cond in the guest; a qemu that exits ends the wait at once.
func (v *vm) eventually(timeout time.Duration, what string, cond func() (bool, string)) {
	v.t.Helper()
	testkit.EventuallyEvery(v.t, timeout, vmPoll, what, func() (bool, string) {
		if v.exited() {
			v.fatalf("qemu exited while waiting for %s: %v", what, v.err)
		}
		return cond()
	})
}

// poweroff asks the guest to power off and waits for qemu to exit, killing
// it after timeout.
func (v *vm) poweroff(timeout time.Duration) {
	v.t.Helper()
	_, _ = v.run("systemctl", "--no-block", "poweroff")
	select {
	case <-v.done:
	case <-time.After(timeout):
		_ = v.cmd.Process.Kill()
		<-v.done
		v.fatalf("the VM did not power off within %v; qemu killed", timeout)
	}
}
