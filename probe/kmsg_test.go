package probe

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// kmsgFile is a file of testdata/kmsg: records as read from /dev/kmsg, one
// per line with their continuation lines after them, "#" comment lines, and
// "# want: pid=N comm=C memcg=B [task_memcg=M] [constraint=X]" lines giving
// the kills the records hold, in order.
type kmsgFile struct {
	records [][]byte
	want    []OOMKill
}

func readKmsgFile(t testing.TB, path string) kmsgFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f kmsgFile
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# want:"):
			spec := strings.TrimSpace(strings.TrimPrefix(line, "# want:"))
			if spec != "none" {
				f.want = append(f.want, parseWant(t, spec))
			}
		case strings.HasPrefix(line, "#"), line == "":
		case strings.HasPrefix(line, " "):
			if len(f.records) == 0 {
				t.Fatalf("%s: continuation line before any record", path)
			}
			last := &f.records[len(f.records)-1]
			*last = append(append(*last, '\n'), line...)
		default:
			f.records = append(f.records, []byte(line))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return f
}

func parseWant(t testing.TB, spec string) OOMKill {
	t.Helper()
	var k OOMKill
	for _, field := range strings.Fields(spec) {
		key, val, _ := strings.Cut(field, "=")
		switch key {
		case "pid":
			k.PID, _ = strconv.Atoi(val)
		case "comm":
			k.Comm = val
		case "memcg":
			k.Memcg = val == "true"
		case "task_memcg":
			k.TaskMemcg = val
		case "constraint":
			k.Constraint = val
		default:
			t.Fatalf("want line: unknown field %q", key)
		}
	}
	return k
}

func kmsgFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "kmsg", "*.kmsg"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/kmsg files: %v", err)
	}
	return files
}

func TestParseKmsgRecord(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want KmsgRecord
		ok   bool
	}{
		{
			name: "memcg kill",
			in:   "3,422,227801473,-;Memory cgroup out of memory: Killed process 5236 (node) total-vm:984976kB",
			want: KmsgRecord{Prio: 3, Seq: 422, Mono: 227801473 * time.Microsecond, Msg: "Memory cgroup out of memory: Killed process 5236 (node) total-vm:984976kB"},
			ok:   true,
		},
		{
			name: "trailing newline",
			in:   "6,342,1376323,-;tokio-rt-worker (69): drop_caches: 3\n",
			want: KmsgRecord{Prio: 6, Seq: 342, Mono: 1376323 * time.Microsecond, Msg: "tokio-rt-worker (69): drop_caches: 3"},
			ok:   true,
		},
		{
			name: "continuation lines after the record are ignored",
			in:   "5,340,1319960,-;virtio_blk virtio1: [vda] new size\n SUBSYSTEM=virtio\n DEVICE=+virtio:virtio1\n",
			want: KmsgRecord{Prio: 5, Seq: 340, Mono: 1319960 * time.Microsecond, Msg: "virtio_blk virtio1: [vda] new size"},
			ok:   true,
		},
		{
			name: "message starting with a space is still a record",
			in:   "4,347,227798606,-; <TASK>",
			want: KmsgRecord{Prio: 4, Seq: 347, Mono: 227798606 * time.Microsecond, Msg: " <TASK>"},
			ok:   true,
		},
		{
			name: "user space facility, continuation flag and extra header fields",
			in:   "14,9,100,c,caller=T42;hello; world",
			want: KmsgRecord{Prio: 14, Seq: 9, Mono: 100 * time.Microsecond, Msg: "hello; world"},
			ok:   true,
		},
		{
			name: "escapes decoded",
			in:   `3,1,2,-;Killed process 7 (a\x5cb\x09c) total-vm:1kB\x`,
			want: KmsgRecord{Prio: 3, Seq: 1, Mono: 2 * time.Microsecond, Msg: "Killed process 7 (a\\b\tc) total-vm:1kB\\x"},
			ok:   true,
		},
		{name: "continuation line alone", in: " SUBSYSTEM=virtio"},
		{name: "continuation line with a semicolon", in: " DEVICE=+a;b"},
		{name: "empty", in: ""},
		{name: "no semicolon", in: "3,1,2,-"},
		{name: "missing flags", in: "3,1,2;msg"},
		{name: "empty flags", in: "3,1,2,;msg"},
		{name: "non-numeric prio", in: "x,1,2,-;msg"},
		{name: "negative seq", in: "3,-1,2,-;msg"},
		{name: "empty time", in: "3,1,,-;msg"},
		{name: "time overflows a duration", in: "3,1,18446744073709551615,-;msg"},
		{name: "seq overflows", in: "3,18446744073709551616,1,-;msg"},
		{name: "huge prio", in: "99999999999,1,1,-;msg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseKmsgRecord([]byte(tt.in))
			if ok != tt.ok || got != tt.want {
				t.Errorf("ParseKmsgRecord(%q) = %+v, %v; want %+v, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestKmsgRecordFacility(t *testing.T) {
	r, _ := ParseKmsgRecord([]byte("14,1,1,-;from user space"))
	if r.Facility() != 1 {
		t.Errorf("facility of prio 14 = %d, want 1", r.Facility())
	}
	r, _ = ParseKmsgRecord([]byte("3,1,1,-;from the kernel"))
	if r.Facility() != 0 {
		t.Errorf("facility of prio 3 = %d, want 0", r.Facility())
	}
}

func TestParseOOMKill(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want OOMKill
		ok   bool
	}{
		{
			name: "memcg kill",
			in:   "Memory cgroup out of memory: Killed process 1984 (node) total-vm:984976kB, anon-rss:64768kB, file-rss:33552kB, shmem-rss:0kB, UID:0 pgtables:580kB oom_score_adj:0",
			want: OOMKill{PID: 1984, Comm: "node", Memcg: true, Line: "Memory cgroup out of memory: Killed process 1984 (node) total-vm:984976kB, anon-rss:64768kB, file-rss:33552kB, shmem-rss:0kB, UID:0 pgtables:580kB oom_score_adj:0"},
			ok:   true,
		},
		{
			name: "global kill",
			in:   "Out of memory: Killed process 1984 (node) total-vm:984976kB, anon-rss:964768kB",
			want: OOMKill{PID: 1984, Comm: "node", Line: "Out of memory: Killed process 1984 (node) total-vm:984976kB, anon-rss:964768kB"},
			ok:   true,
		},
		{
			name: "kill of the allocating task",
			in:   "Out of memory (oom_kill_allocating_task): Killed process 42 (node) total-vm:1kB",
			want: OOMKill{PID: 42, Comm: "node", Line: "Out of memory (oom_kill_allocating_task): Killed process 42 (node) total-vm:1kB"},
			ok:   true,
		},
		{
			name: "kill without cause, before 5.0",
			in:   "Killed process 1234 (node) total-vm:1045732kB, anon-rss:63828kB, file-rss:25388kB, shmem-rss:0kB",
			want: OOMKill{PID: 1234, Comm: "node", Line: "Killed process 1234 (node) total-vm:1045732kB, anon-rss:63828kB, file-rss:25388kB, shmem-rss:0kB"},
			ok:   true,
		},
		{
			name: "RHEL 7 wording, comma after the name",
			in:   "Killed process 21945 (tidb-server), UID 1000, total-vm:33027492kB",
			want: OOMKill{PID: 21945, Comm: "tidb-server", Line: "Killed process 21945 (tidb-server), UID 1000, total-vm:33027492kB"},
			ok:   true,
		},
		{
			name: "name with a space and parentheses",
			in:   "Out of memory: Killed process 5 (Web (Content)) total-vm:1kB",
			want: OOMKill{PID: 5, Comm: "Web (Content)", Line: "Out of memory: Killed process 5 (Web (Content)) total-vm:1kB"},
			ok:   true,
		},
		{
			name: "name at the end of the line",
			in:   "Out of Memory: Killed process 2592 (mysql)",
			want: OOMKill{PID: 2592, Comm: "mysql", Line: "Out of Memory: Killed process 2592 (mysql)"},
			ok:   true,
		},
		{
			name: "victim chosen, before 5.0",
			in:   "Out of memory: Kill process 1234 (node) score 900 or sacrifice child",
			want: OOMKill{PID: 1234, Comm: "node"},
			ok:   true,
		},
		{
			name: "memcg victim chosen, before 5.0",
			in:   "Memory cgroup out of memory: Kill process 1234 (node) score 900 or sacrifice child",
			want: OOMKill{PID: 1234, Comm: "node", Memcg: true},
			ok:   true,
		},
		{
			name: "summary",
			in:   "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/oomtest,task_memcg=/oomtest,task=node,pid=1984,uid=0",
			want: OOMKill{PID: 1984, Comm: "node", Memcg: true, TaskMemcg: "/oomtest", Constraint: "CONSTRAINT_MEMCG"},
			ok:   true,
		},
		{
			name: "global summary",
			in:   "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/user.slice,task=node,pid=77,uid=1000",
			want: OOMKill{PID: 77, Comm: "node", TaskMemcg: "/user.slice", Constraint: "CONSTRAINT_NONE"},
			ok:   true,
		},
		{
			name: "summary with commas in the cgroup and the name",
			in:   "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,b,task_memcg=/a,b,task=x,y,pid=9,uid=0",
			want: OOMKill{PID: 9, Comm: "x,y", Memcg: true, TaskMemcg: "/a,b", Constraint: "CONSTRAINT_MEMCG"},
			ok:   true,
		},
		{name: "reaper is not a kill", in: "oom_reaper: reaped process 1984 (node), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB"},
		{name: "invoked line", in: "node invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0"},
		{name: "call trace", in: " oom_kill_process.cold+0x8/0x8a"},
		{name: "other cause", in: "audit: Killed process 12 (x) total-vm:1kB"},
		{name: "chosen without score", in: "Out of memory: Kill process 1234 (node)"},
		{name: "no pid", in: "Out of memory: Killed process (node)"},
		{name: "zero pid", in: "Out of memory: Killed process 0 (node) total-vm:1kB"},
		{name: "no name", in: "Out of memory: Killed process 12 node"},
		{name: "name too long", in: "Out of memory: Killed process 12 (abcdefghijklmnopqrstuvwxyz) total-vm:1kB"},
		{name: "summary without pid", in: "oom-kill:constraint=CONSTRAINT_NONE,task=node,uid=0"},
		{name: "summary without task", in: "oom-kill:constraint=CONSTRAINT_NONE,task_memcg=/,pid=3,uid=0"},
		{name: "empty", in: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseOOMKill(tt.in)
			if ok != tt.ok || got != tt.want {
				t.Errorf("ParseOOMKill(%q)\n got  %+v, %v\n want %+v, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

// TestKmsgTestdata runs every captured or quoted kernel log in testdata/kmsg
// through the record parser and the assembler the watcher uses, and checks
// that each kill comes out once, merged, with its "Killed process" line.
func TestKmsgTestdata(t *testing.T) {
	for _, path := range kmsgFiles(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			f := readKmsgFile(t, path)
			var a oomAssembler
			var got []OOMKill
			var killedLines []string
			for _, raw := range f.records {
				r, ok := ParseKmsgRecord(raw)
				if !ok {
					t.Fatalf("record not parsed: %q", raw)
				}
				if strings.Contains(r.Msg, "Killed process") {
					killedLines = append(killedLines, r.Msg)
				}
				if k, ok := a.add(r.Msg); ok {
					got = append(got, k)
				}
			}
			if len(got) != len(f.want) {
				t.Fatalf("got %d kills %+v, want %d %+v", len(got), got, len(f.want), f.want)
			}
			for i, k := range got {
				if k.Line != killedLines[i] {
					t.Errorf("kill %d: Line = %q, want %q", i, k.Line, killedLines[i])
				}
				k.Line = ""
				if k != f.want[i] {
					t.Errorf("kill %d = %+v, want %+v", i, k, f.want[i])
				}
			}
		})
	}
}

func TestOOMAssemblerSummaryOfAnotherPID(t *testing.T) {
	var a oomAssembler
	if _, ok := a.add("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/g,task_memcg=/g,task=node,pid=10,uid=0"); ok {
		t.Fatal("summary alone reported as a kill")
	}
	k, ok := a.add("Out of memory: Killed process 11 (node) total-vm:1kB")
	if !ok || k.PID != 11 || k.TaskMemcg != "" || k.Constraint != "" || k.Memcg {
		t.Fatalf("kill of another pid = %+v, %v; want pid 11 without the summary's fields", k, ok)
	}
	// The summary stays for its own kill.
	k, ok = a.add("Memory cgroup out of memory: Killed process 10 (node) total-vm:1kB")
	if !ok || k.TaskMemcg != "/g" || k.Constraint != "CONSTRAINT_MEMCG" || !k.Memcg {
		t.Fatalf("kill = %+v, %v; want the summary merged", k, ok)
	}
}

func FuzzParseKmsgRecord(f *testing.F) {
	for _, path := range kmsgFiles(f) {
		for _, r := range readKmsgFile(f, path).records {
			f.Add(r)
		}
	}
	f.Add([]byte(" SUBSYSTEM=virtio"))
	f.Add([]byte(`3,1,2,-;a\x5`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := ParseKmsgRecord(b)
		if !ok {
			if r != (KmsgRecord{}) {
				t.Errorf("not ok but a record: %+v", r)
			}
			return
		}
		if r.Prio < 0 || r.Mono < 0 {
			t.Errorf("negative fields: %+v", r)
		}
		if len(r.Msg) > len(b) {
			t.Errorf("message longer than the input: %q from %q", r.Msg, b)
		}
		ParseOOMKill(r.Msg)
	})
}

func FuzzParseOOMKill(f *testing.F) {
	for _, path := range kmsgFiles(f) {
		for _, raw := range readKmsgFile(f, path).records {
			if r, ok := ParseKmsgRecord(raw); ok {
				f.Add(r.Msg)
			}
		}
	}
	f.Add("Out of memory: Killed process 1 () total-vm:1kB")
	f.Add("oom-kill:,task=,pid=1")
	f.Fuzz(func(t *testing.T, msg string) {
		k, ok := ParseOOMKill(msg)
		if !ok {
			if k != (OOMKill{}) {
				t.Errorf("not ok but a kill: %+v", k)
			}
			return
		}
		if k.PID <= 0 {
			t.Errorf("kill without a pid: %+v from %q", k, msg)
		}
		if len(k.Comm) > commMaxLen {
			t.Errorf("name longer than the kernel's: %q from %q", k.Comm, msg)
		}
		if k.Line != "" && k.Line != msg {
			t.Errorf("Line %q is not the message %q", k.Line, msg)
		}
		var a oomAssembler
		a.add(msg)
		a.add(msg)
	})
}
