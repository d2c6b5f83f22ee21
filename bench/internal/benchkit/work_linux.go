package benchkit

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// KillUnder SIGKILLs every process other than this one whose working
// directory is dir or below it (the apps a harness started, should any be
// left) and returns how many it found.
func KillUnder(dir string) int {
	d, err := os.Open("/proc")
	if err != nil {
		return 0
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	n := 0
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid == os.Getpid() {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+"/")) {
			syscall.Kill(pid, syscall.SIGKILL)
			n++
		}
	}
	return n
}

// Finish ends a run in the work directory work: it SIGKILLs whatever still
// works under it, then removes it, or keeps it and says so with -keep.
func (f *Flags) Finish(work string, logf func(format string, args ...any)) {
	KillUnder(work)
	if f.Keep {
		logf("work directory kept: %s", work)
	} else {
		os.RemoveAll(work)
	}
}
