package metrics

import (
	"bytes"
	"os"
	"runtime/metrics"
	"strconv"
	"sync"
	"syscall"
)

// userHZ is the unit of the CPU times in /proc/self/stat: USER_HZ, 100 on
// every Linux the agent runs on.
const userHZ = 100

// bootTime is the kernel's boot time in Unix seconds, from /proc/stat; 0
// when unreadable.
var bootTime = sync.OnceValue(func() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	for l := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(l, []byte("btime ")); ok {
			n, err := strconv.ParseFloat(string(bytes.TrimSpace(v)), 64)
			if err == nil {
				return n
			}
		}
	}
	return 0
})

// procStat holds the fields of /proc/self/stat the exposition uses.
type procStat struct {
	cpuSeconds   float64
	startSeconds float64 // since boot
	vsize        float64
	rss          float64
}

// parseStat parses /proc/PID/stat. It reports whether the line had the
// fields needed.
func parseStat(b []byte) (procStat, bool) {
	// The command name (field 2) is in parentheses and may hold spaces or
	// parentheses itself: the fields that follow start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state): field N is f[N-3].
	if len(f) < 22 {
		return procStat{}, false
	}
	num := func(n int) float64 {
		v, err := strconv.ParseUint(string(f[n-3]), 10, 64)
		if err != nil {
			return 0
		}
		return float64(v)
	}
	return procStat{
		cpuSeconds:   (num(14) + num(15)) / userHZ,
		startSeconds: num(22) / userHZ,
		vsize:        num(23),
		rss:          num(24) * float64(os.Getpagesize()),
	}, true
}

// runtimeSamples are the Go runtime figures written as go_* series.
var runtimeSamples = []struct{ key, name, typ, help string }{
	{"/sched/goroutines:goroutines", "go_goroutines", "gauge", "Number of goroutines that currently exist."},
	{"/memory/classes/heap/objects:bytes", "go_memstats_heap_alloc_bytes", "gauge", "Bytes of allocated heap objects."},
	{"/memory/classes/total:bytes", "go_memstats_sys_bytes", "gauge", "Bytes of memory obtained from the OS."},
	{"/gc/cycles/total:gc-cycles", "go_gc_cycles_total", "counter", "Completed GC cycles."},
}

// writeProcess appends the agent's own process figures under the names
// Prometheus' process and Go collectors use, so stock dashboards work.
func writeProcess(e *expo) {
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		if st, ok := parseStat(b); ok {
			e.help("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.")
			e.sample("process_cpu_seconds_total", "", "", st.cpuSeconds)
			e.help("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
			e.sample("process_resident_memory_bytes", "", "", st.rss)
			e.help("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.")
			e.sample("process_virtual_memory_bytes", "", "", st.vsize)
			if bt := bootTime(); bt > 0 {
				e.help("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.")
				e.sample("process_start_time_seconds", "", "", bt+st.startSeconds)
			}
		}
	}
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		e.help("process_open_fds", "gauge", "Number of open file descriptors.")
		e.sample("process_open_fds", "", "", float64(len(ents)))
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		e.help("process_max_fds", "gauge", "Maximum number of open file descriptors.")
		e.sample("process_max_fds", "", "", float64(lim.Cur))
	}

	s := make([]metrics.Sample, len(runtimeSamples))
	for i, r := range runtimeSamples {
		s[i].Name = r.key
	}
	metrics.Read(s)
	for i, r := range runtimeSamples {
		if s[i].Value.Kind() != metrics.KindUint64 {
			continue
		}
		e.help(r.name, r.typ, r.help)
		e.sample(r.name, "", "", float64(s[i].Value.Uint64()))
	}
}
