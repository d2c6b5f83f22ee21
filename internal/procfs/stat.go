package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"time"
)

// ErrMalformed is wrapped by errors about /proc files whose content does not
// have the layout the kernel writes.
var ErrMalformed = errors.New("malformed /proc file")

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat: 100 on
// every architecture Linux runs on today.
const clockTicks = 100

// Proc is one process as /proc/PID/stat showed it.
type Proc struct {
	PID   int
	PPID  int
	PGID  int
	State byte   // 'R', 'S', 'D', 'Z' (zombie: exited, not yet reaped), ...
	Comm  string // the command name, at most 15 bytes
	// Start is when the process started, in clock ticks after boot. With
	// the PID it names one process: a PID reused later has a later Start.
	Start   uint64
	CPU     time.Duration // user and system time so far
	RSS     uint64        // resident memory in bytes (VmRSS)
	VSize   uint64        // virtual memory in bytes (VmSize); 0 from Children
	Threads int
}

// Zombie reports whether the process has exited and waits to be reaped.
func (p Proc) Zombie() bool { return p.State == 'Z' || p.State == 'X' }

// Started returns when the process started, given when the kernel booted
// (BootTime).
func (p Proc) Started(boot time.Time) time.Time {
	return boot.Add(time.Duration(p.Start) * (time.Second / clockTicks))
}

// parseStat parses the content of /proc/PID/stat, "pid (comm) S ppid pgrp
// ...", where comm may itself hold spaces and parentheses: the fields are
// counted from the last ')'. pageSize converts the rss field to bytes.
func parseStat(b []byte, pageSize uint64) (Proc, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 1 || end < open {
		return Proc{}, fmt.Errorf("stat %q: %w", clip(b), ErrMalformed)
	}
	pid, ok := parseUint(bytes.TrimSpace(b[:open]))
	if !ok || pid == 0 || pid > maxPID {
		return Proc{}, fmt.Errorf("stat %q: %w", clip(b), ErrMalformed)
	}
	p := Proc{PID: int(pid)}
	// The fields after the comm, numbered as in proc(5): 3 is the state.
	var ppid, pgid, utime, stime, threads, start, rss uint64
	field := 3
	rest := b[end+1:]
	for field <= 24 {
		f, r, ok := nextField(rest)
		if !ok {
			return Proc{}, fmt.Errorf("stat %q: %d fields: %w", clip(b), field-1, ErrMalformed)
		}
		rest = r
		switch field {
		case 3:
			if len(f) != 1 {
				return Proc{}, fmt.Errorf("stat %q: state: %w", clip(b), ErrMalformed)
			}
			p.State = f[0]
		case 4, 5, 14, 15, 20, 22, 24:
			n, ok := parseUint(f)
			if !ok {
				return Proc{}, fmt.Errorf("stat %q: field %d: %w", clip(b), field, ErrMalformed)
			}
			switch field {
			case 4:
				ppid = n
			case 5:
				pgid = n
			case 14:
				utime = n
			case 15:
				stime = n
			case 20:
				threads = n
			case 22:
				start = n
			case 24:
				rss = n
			}
		}
		field++
	}
	if ppid > maxPID || pgid > maxPID || rss > 1<<52 || threads > maxPID || utime > 1<<50 || stime > 1<<50 {
		return Proc{}, fmt.Errorf("stat %q: out of range: %w", clip(b), ErrMalformed)
	}
	p.PPID, p.PGID, p.Start, p.RSS, p.Threads = int(ppid), int(pgid), start, rss*pageSize, int(threads)
	p.CPU = time.Duration(utime+stime) * (time.Second / clockTicks)
	p.Comm = string(b[open+1 : end])
	return p, nil
}

// maxPID is above the kernel's largest pid_max (2^22).
const maxPID = 1 << 30

// nextField returns the first space-separated field of b and what follows.
func nextField(b []byte) (field, rest []byte, ok bool) {
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	j := i
	for j < len(b) && !isSpace(b[j]) {
		j++
	}
	if i == j {
		return nil, nil, false
	}
	return b[i:j], b[j:], true
}

func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\t' }

// parseUint parses a decimal number of at most 19 digits without
// allocating.
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// clip shortens b for an error message.
func clip(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

// parseChildren appends the PIDs of a children file ("12 34 ") to dst.
func parseChildren(dst []int, b []byte) ([]int, error) {
	for {
		f, rest, ok := nextField(b)
		if !ok {
			return dst, nil
		}
		b = rest
		n, ok := parseUint(f)
		if !ok || n == 0 || n > maxPID {
			return dst, fmt.Errorf("children %q: %w", clip(f), ErrMalformed)
		}
		dst = append(dst, int(n))
	}
}

// parseStatm returns the virtual and the resident memory in bytes from the
// content of /proc/PID/statm, "size resident shared text lib data dt" in
// pages.
func parseStatm(b []byte, pageSize uint64) (vsize, rss uint64, err error) {
	f, rest, ok1 := nextField(b)
	g, _, ok2 := nextField(rest)
	size, ok3 := parseUint(f)
	resident, ok4 := parseUint(g)
	if !ok1 || !ok2 || !ok3 || !ok4 || size >= 1<<52 || resident >= 1<<52 {
		return 0, 0, fmt.Errorf("statm %q: %w", clip(b), ErrMalformed)
	}
	return size * pageSize, resident * pageSize, nil
}

// parseBootTime returns the btime line of /proc/stat, when the kernel
// booted in Unix seconds.
func parseBootTime(b []byte) (time.Time, error) {
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			n, ok := parseUint(bytes.TrimSpace(v))
			if !ok || n > 1<<40 {
				return time.Time{}, fmt.Errorf("stat %q: btime: %w", clip(line), ErrMalformed)
			}
			return time.Unix(int64(n), 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("stat: no btime: %w", ErrMalformed)
}
