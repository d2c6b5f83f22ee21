package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the apps the tests supervise: with
// SUPERVISOR_TEST_APP set it runs one of the small programs below instead of
// the tests (the os/exec helper-process pattern).
func TestMain(m *testing.M) {
	if mode := os.Getenv("SUPERVISOR_TEST_APP"); mode != "" {
		runApp(mode, os.Args[1:])
		os.Exit(0)
	}
	if err := BecomeSubreaper(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// appCommand returns argv and env that run this test binary as app mode.
func appCommand(mode string, args ...string) ([]string, []string) {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	env := append(os.Environ(), "SUPERVISOR_TEST_APP="+mode)
	return append([]string{exe}, args...), env
}

func runApp(mode string, args []string) {
	switch mode {
	case "exit": // exit CODE: print a line, exit with CODE
		code, _ := strconv.Atoi(args[0])
		fmt.Println("exiting with", code)
		os.Exit(code)
	case "sleep": // print the pid, wait for a signal
		fmt.Println("pid", os.Getpid())
		select {}
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		if os.Getenv("SUPERVISOR_TEST_READY_FD") == "3" { // spawnSelfReady waits for it
			ready := os.NewFile(3, "ready")
			ready.Write([]byte{1})
			ready.Close()
		}
		fmt.Println("pid", os.Getpid())
		select {}
	case "grandchild": // a child in the same process group, like npm -> sh -> node
		c := spawnSelf("ignore-term", nil)
		fmt.Println("pid", os.Getpid(), c)
		select {}
	case "daemonize": // a child that leaves the group and is orphaned, like a daemon
		c := spawnSelf("daemon-mid", nil)
		fmt.Println("pid", os.Getpid(), "mid", c)
		select {}
	case "daemon-mid":
		c := spawnSelf("ignore-term", &syscall.SysProcAttr{Setsid: true})
		fmt.Println("pid", c) // reaches the app's stdout: the daemon inherited it
		os.Exit(0)
	case "detach": // detach N: N detached processes that exit at once
		n, _ := strconv.Atoi(args[0])
		for i := 0; i < n; i++ {
			spawnSelf("detach-mid", nil)
		}
		fmt.Println("detached", n)
		select {}
	case "detach-loop": // orphans that exit at once, batch after batch until killed
		fmt.Println("detaching")
		for i := 1; ; i++ {
			// sh leaves three background processes behind: orphans for the agent.
			exec.Command("/bin/sh", "-c", "/bin/true & /bin/true & /bin/true &").Run()
			time.Sleep(20 * time.Millisecond) // a steady trickle, not a fork storm
			if i%10 == 0 {
				fmt.Println("orphaned", 3*i)
			}
		}
	case "report-signals": // print the pid, then each SIGTERM and SIGWINCH received
		c := make(chan os.Signal, 8)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGWINCH)
		fmt.Println("pid", os.Getpid())
		for s := range c {
			fmt.Println("signal", unix.SignalName(s.(syscall.Signal)))
		}
	case "detach-mid":
		c := spawnSelf("exit-quiet", &syscall.SysProcAttr{Setsid: true})
		fmt.Println("orphan", c)
		os.Exit(0)
	case "exit-quiet":
		os.Exit(0)
	case "exit-leave-child": // exit 1, leaving a child that ignores SIGTERM
		c := spawnSelfReady("ignore-term")
		fmt.Println("child", c)
		os.Exit(1)
	case "flood": // flood BYTES: one line of BYTES without a newline, then exit 0
		n, _ := strconv.Atoi(args[0])
		chunk := []byte(strings.Repeat("x", 1<<20))
		for n > 0 {
			k := min(n, len(chunk))
			os.Stdout.Write(chunk[:k])
			n -= k
		}
		os.Stdout.Write([]byte("\nflood done\n"))
		os.Exit(0)
	case "env":
		for _, kv := range os.Environ() {
			fmt.Println(kv)
		}
		os.Exit(0)
	case "heap-oom": // what V8 prints when its heap is exhausted, then abort
		fmt.Fprintln(os.Stderr, "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory")
		debug.SetTraceback("crash") // die by the signal, as node does, not exit 2
		syscall.Kill(os.Getpid(), syscall.SIGABRT)
		select {}
	default:
		fmt.Fprintln(os.Stderr, "unknown app mode", mode)
		os.Exit(99)
	}
}

// spawnSelf starts this binary in another mode and returns its pid.
// spawnSelfReady is spawnSelf, returning once the child says it is set up
// (a byte on its descriptor 3).
func spawnSelfReady(mode string) int {
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "SUPERVISOR_TEST_APP="+mode, "SUPERVISOR_TEST_READY_FD=3")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	w.Close()
	r.Read(make([]byte, 1))
	r.Close()
	return cmd.Process.Pid
}

func spawnSelf(mode string, attr *syscall.SysProcAttr) int {
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "SUPERVISOR_TEST_APP="+mode)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	return cmd.Process.Pid
}
