package supervisor

import (
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// resetOOMScore sets pid's oom_score_adj back to 0: the agent's unit lowers
// the agent's own score, which its children inherit, and the kernel must pick
// the app, not the agent, when memory runs out.
func resetOOMScore(pid int) error {
	return os.WriteFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", []byte("0\n"), 0)
}

// signalName returns "SIGKILL" for syscall.SIGKILL.
func signalName(s syscall.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return n
	}
	return "signal " + strconv.Itoa(int(s))
}
