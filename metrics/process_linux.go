package metrics

import (
	"os"
	"runtime/metrics"
	"syscall"

	"agent/internal/procfs"
)

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
	if p, err := procfs.Stat(os.Getpid()); err == nil {
		e.help("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.")
		e.sample("process_cpu_seconds_total", "", "", p.CPU.Seconds())
		e.help("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
		e.sample("process_resident_memory_bytes", "", "", float64(p.RSS))
		e.help("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.")
		e.sample("process_virtual_memory_bytes", "", "", float64(p.VSize))
		if boot, err := procfs.BootTime(); err == nil {
			e.help("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.")
			e.sample("process_start_time_seconds", "", "", float64(p.Started(boot).UnixNano())/1e9)
		}
	}
	if n, err := procfs.OpenFiles(os.Getpid()); err == nil {
		e.help("process_open_fds", "gauge", "Number of open file descriptors.")
		e.sample("process_open_fds", "", "", float64(n))
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
