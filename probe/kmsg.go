package probe

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"time"
)

// KmsgRecord is one record of the kernel log as /dev/kmsg gives it:
// "prio,seq,usec,flags[,...];message", optionally followed by continuation
// lines (" SUBSYSTEM=...", " DEVICE=...") that carry no message text.
type KmsgRecord struct {
	Prio int           // syslog facility<<3 | level; facility 0 is the kernel
	Seq  uint64        // sequence number; a gap means records were lost
	Mono time.Duration // CLOCK_MONOTONIC time of the record, since boot
	Msg  string        // message text, \xNN escapes decoded
}

// Facility reports the syslog facility of the record; 0 is the kernel,
// anything else was written to /dev/kmsg from user space.
func (r KmsgRecord) Facility() int { return r.Prio >> 3 }

// ParseKmsgRecord parses one record read from /dev/kmsg. It reports false for
// anything that is not a record: an empty or malformed header, or a
// continuation line (one that starts with a space). Only the first line of b
// is the record; the continuation lines after it are ignored.
func ParseKmsgRecord(b []byte) (KmsgRecord, bool) {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	semi := bytes.IndexByte(b, ';')
	if semi <= 0 || b[0] == ' ' {
		return KmsgRecord{}, false
	}
	head, msg := b[:semi], b[semi+1:]

	var fields [4][]byte
	for i := range fields {
		if i == len(fields)-1 {
			// flags, possibly followed by fields later kernels may add
			if j := bytes.IndexByte(head, ','); j >= 0 {
				head = head[:j]
			}
			fields[i] = head
			break
		}
		j := bytes.IndexByte(head, ',')
		if j < 0 {
			return KmsgRecord{}, false
		}
		fields[i], head = head[:j], head[j+1:]
	}
	prio, ok := parseUint(fields[0])
	if !ok || prio > math.MaxInt32 {
		return KmsgRecord{}, false
	}
	seq, ok := parseUint(fields[1])
	if !ok {
		return KmsgRecord{}, false
	}
	usec, ok := parseUint(fields[2])
	if !ok || usec > uint64(1<<63-1)/uint64(time.Microsecond) {
		return KmsgRecord{}, false
	}
	if len(fields[3]) == 0 {
		return KmsgRecord{}, false
	}
	return KmsgRecord{
		Prio: int(prio),
		Seq:  seq,
		Mono: time.Duration(usec) * time.Microsecond,
		Msg:  unescapeKmsg(msg),
	}, true
}

// parseUint parses a non-empty run of decimal digits.
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// unescapeKmsg decodes the \xNN escapes the kernel writes for non-printable
// bytes (and for the backslash itself) in /dev/kmsg messages.
func unescapeKmsg(b []byte) string {
	if bytes.IndexByte(b, '\\') < 0 {
		return string(b)
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] == '\\' && i+3 < len(b) && b[i+1] == 'x' {
			hi, ok1 := unhex(b[i+2])
			lo, ok2 := unhex(b[i+3])
			if ok1 && ok2 {
				out = append(out, hi<<4|lo)
				i += 3
				continue
			}
		}
		out = append(out, b[i])
	}
	return string(out)
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// OOMKill is a process the kernel's OOM killer killed.
type OOMKill struct {
	PID  int
	Comm string // the victim's command name, at most 15 bytes
	// Memcg reports whether the kill was for a memory cgroup's limit
	// ("Memory cgroup out of memory") rather than the whole machine's memory.
	Memcg bool
	// Line is the kernel's whole "Killed process" message.
	Line string
	// TaskMemcg and Constraint come from the kernel's "oom-kill:" summary
	// line (Linux 4.19 and later) when it was seen for the same PID.
	TaskMemcg  string // the victim's memory cgroup, e.g. "/oomtest"
	Constraint string // e.g. "CONSTRAINT_MEMCG", "CONSTRAINT_NONE"
}

// oomLine is what one kernel message says about an OOM kill.
type oomLine int

const (
	oomOther    oomLine = iota // nothing about a kill
	oomKilled                  // "[<why>: ]Killed process N (comm) ...": the kill itself
	oomSelected                // "<why>: Kill process N (comm) score S or sacrifice child" (before Linux 5.0)
	oomSummary                 // "oom-kill:constraint=...,task=comm,pid=N,uid=U" (Linux 4.19 and later)
)

// The kernel's wording, from mm/oom_kill.c and mm/memcontrol.c.
const (
	killedProcess   = "Killed process "
	killProcess     = "Kill process "
	summaryPrefix   = "oom-kill:"
	memcgOOMPrefix  = "Memory cgroup out of memory"
	commMaxLen      = 15 // TASK_COMM_LEN - 1
	summaryTaskKey  = ",task="
	summaryPIDKey   = ",pid="
	summaryMemcgKey = ",task_memcg="
)

// ParseOOMKill parses one kernel log message about an OOM kill. It reports
// true for the three kinds of line the kernel prints for a kill:
//
//   - "Memory cgroup out of memory: Killed process 1984 (node) total-vm:..."
//     (or "Out of memory: ...", or a bare "Killed process ..." on kernels
//     before 5.0): the kill itself; Line is set only for this kind.
//   - "Out of memory: Kill process 1234 (node) score 900 or sacrifice child"
//     (kernels before 5.0): the victim chosen; the kill follows, possibly of
//     a child of it.
//   - "oom-kill:constraint=CONSTRAINT_MEMCG,...,task_memcg=/g,task=node,pid=1984,uid=0":
//     the summary printed just before the kill (kernels 4.19 and later).
//
// The watcher merges them so that one kill is one OOMKill. Everything else,
// including "oom_reaper: reaped process ..." (memory freed after a kill that
// was already reported), reports false.
func ParseOOMKill(msg string) (OOMKill, bool) {
	k, kind := parseOOMLine(msg)
	return k, kind != oomOther
}

func parseOOMLine(msg string) (OOMKill, oomLine) {
	if strings.HasPrefix(msg, summaryPrefix) {
		if k, ok := parseOOMSummary(msg); ok {
			return k, oomSummary
		}
		return OOMKill{}, oomOther
	}
	if i := strings.Index(msg, killedProcess); i >= 0 && oomCause(msg[:i]) {
		pid, comm, ok := parsePIDComm(msg[i+len(killedProcess):])
		if !ok {
			return OOMKill{}, oomOther
		}
		return OOMKill{PID: pid, Comm: comm, Memcg: strings.HasPrefix(msg, memcgOOMPrefix), Line: msg}, oomKilled
	}
	if i := strings.Index(msg, ": "+killProcess); i > 0 && oomCause(msg[:i+2]) {
		rest := msg[i+2+len(killProcess):]
		pid, comm, ok := parsePIDComm(rest)
		if !ok || !strings.Contains(rest, " or sacrifice child") {
			return OOMKill{}, oomOther
		}
		return OOMKill{PID: pid, Comm: comm, Memcg: strings.HasPrefix(msg, memcgOOMPrefix)}, oomSelected
	}
	return OOMKill{}, oomOther
}

// oomCause reports whether prefix, the text before "Killed process" or
// "Kill process", is one the OOM killer prints: nothing at all (kernels
// before 5.0) or "<reason>: " where the reason speaks of running out of
// memory ("Out of memory", "Memory cgroup out of memory",
// "Out of memory (oom_kill_allocating_task)").
func oomCause(prefix string) bool {
	if prefix == "" {
		return true
	}
	reason, ok := strings.CutSuffix(prefix, ": ")
	return ok && strings.Contains(strings.ToLower(reason), "out of memory")
}

// parsePIDComm parses "1984 (node)" at the start of s, as printed by
// "%d (%s)". The name may itself contain spaces or parentheses, so its end
// is the last ')' within the longest name that is followed by the end of
// the line, a space or a comma.
func parsePIDComm(s string) (int, string, bool) {
	sp := strings.IndexByte(s, ' ')
	if sp <= 0 {
		return 0, "", false
	}
	pid, err := strconv.Atoi(s[:sp])
	if err != nil || pid <= 0 {
		return 0, "", false
	}
	rest := s[sp+1:]
	if !strings.HasPrefix(rest, "(") {
		return 0, "", false
	}
	rest = rest[1:]
	end := -1
	for i := 0; i < len(rest) && i <= commMaxLen; i++ {
		if rest[i] != ')' {
			continue
		}
		if i+1 == len(rest) || rest[i+1] == ' ' || rest[i+1] == ',' {
			end = i
		}
	}
	if end < 0 {
		return 0, "", false
	}
	return pid, rest[:end], true
}

// parseOOMSummary parses the kernel's one-line summary of a kill:
// "oom-kill:constraint=C,nodemask=...,cpuset=...,mems_allowed=...,
// oom_memcg=...,task_memcg=M,task=COMM,pid=N,uid=U". The cgroup paths and
// the task name may contain commas, so the fields are found from the end,
// where pid and uid are plain numbers.
func parseOOMSummary(msg string) (OOMKill, bool) {
	var k OOMKill
	if c, ok := strings.CutPrefix(msg, summaryPrefix+"constraint="); ok {
		if i := strings.IndexByte(c, ','); i >= 0 {
			c = c[:i]
		}
		k.Constraint = c
	}
	p := strings.LastIndex(msg, summaryPIDKey)
	if p < 0 {
		return OOMKill{}, false
	}
	num := msg[p+len(summaryPIDKey):]
	if i := strings.IndexByte(num, ','); i >= 0 {
		num = num[:i]
	}
	pid, err := strconv.Atoi(num)
	if err != nil || pid <= 0 {
		return OOMKill{}, false
	}
	k.PID = pid
	// The task name is at most commMaxLen bytes: the earliest ",task=" in
	// that reach of ",pid=" starts it.
	from := max(0, p-commMaxLen-len(summaryTaskKey))
	t := strings.Index(msg[from:p], summaryTaskKey)
	if t < 0 {
		return OOMKill{}, false
	}
	t += from
	k.Comm = msg[t+len(summaryTaskKey) : p]
	if m := strings.Index(msg[:t], summaryMemcgKey); m >= 0 {
		k.TaskMemcg = msg[m+len(summaryMemcgKey) : t]
	}
	k.Memcg = k.Constraint == "CONSTRAINT_MEMCG"
	return k, true
}

// oomAssembler merges the lines the kernel prints for one kill into one
// OOMKill. The OOM killer holds a lock while it prints them, so the lines of
// one kill are not interleaved with those of another.
type oomAssembler struct {
	summary    OOMKill // the last "oom-kill:" line not yet merged
	hasSummary bool
	selected   OOMKill // the last "Kill process ... or sacrifice child" line
	hasSel     bool
}

// add feeds one kernel message; it reports a kill when msg completes one.
func (a *oomAssembler) add(msg string) (OOMKill, bool) {
	k, kind := parseOOMLine(msg)
	switch kind {
	case oomSummary:
		a.summary, a.hasSummary = k, true
	case oomSelected:
		a.selected, a.hasSel = k, true
	case oomKilled:
		if a.hasSel {
			// Before Linux 5.0 the cause is on the line that chose the
			// victim; the kill may be of a child of the chosen process.
			k.Memcg = k.Memcg || a.selected.Memcg
			a.hasSel = false
		}
		if a.hasSummary && a.summary.PID == k.PID {
			k.TaskMemcg, k.Constraint = a.summary.TaskMemcg, a.summary.Constraint
			k.Memcg = k.Memcg || a.summary.Memcg
			a.hasSummary = false
		}
		return k, true
	}
	return OOMKill{}, false
}
