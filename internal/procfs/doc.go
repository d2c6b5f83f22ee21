// Package procfs is the one place the agent reads processes from /proc and
// holds them by pidfd.
//
// Tree and Descendants walk the tree below a process through the children
// files of its threads (/proc/PID/task/TID/children), reading each
// process's parent, group, state, start time and resident memory from
// /proc/PID/stat: that is what the RSS sampler needs every second.
//
// OpenDescendants walks the same tree but also opens a pidfd for each
// process as it finds it, and reads the process's stat again once the pidfd
// is open: only a process whose parent, group and start time still match,
// and which has not exited, is kept. A Handle therefore names one process,
// never whatever process later gets its PID: Signal uses pidfd_send_signal,
// and Wait polls the pidfds for readability, which the kernel reports once
// the process has exited.
//
// Stat, BootTime and OpenFiles give the agent's own process figures (the
// process_* metrics, its resident memory in status), and ParseCgroup is the
// one parser of /proc/PID/cgroup.
package procfs
