package procfs

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// Captured from this machine: a Node process, a zombie, a kernel thread.
	node := "1984 (node) S 1983 1984 1984 0 -1 4194560 17051 0 0 0 52 11 0 0 20 0 11 0 123456 1032138752 14336 18446744073709551615 1 1 0 0 0 0 0 4096 134234626 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
	p, err := parseStat([]byte(node), 4096)
	if err != nil {
		t.Fatal(err)
	}
	want := Proc{PID: 1984, PPID: 1983, PGID: 1984, State: 'S', Comm: "node", Start: 123456,
		CPU: 630 * time.Millisecond, RSS: 14336 * 4096, Threads: 11}
	if p != want {
		t.Errorf("parseStat(node) = %+v, want %+v", p, want)
	}

	tricky := "77 (a) b (c) Z 1 77 77 0 -1 4 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0 18446744073709551615\n"
	p, err = parseStat([]byte(tricky), 4096)
	if err != nil {
		t.Fatal(err)
	}
	if p.Comm != "a) b (c" || p.PPID != 1 || !p.Zombie() || p.Start != 99 || p.Threads != 1 {
		t.Errorf("parseStat(comm with parentheses) = %+v", p)
	}
}

func TestParseStatMalformed(t *testing.T) {
	for _, s := range []string{
		"",
		"1984 node S 1983",
		"1984 (node) S 1983 1984", // cut short
		"x (node) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0",   // pid not a number
		"0 (node) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0",   // pid 0
		"5 (node) SS 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0",  // state
		"5 (node) S -1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0",  // ppid
		"5 (node) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 1e9", // rss
		"5 (node) S 99999999999 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0",
		")5 (node S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0",
	} {
		if p, err := parseStat([]byte(s), 4096); !errors.Is(err, ErrMalformed) {
			t.Errorf("parseStat(%q) = %+v, %v; want ErrMalformed", s, p, err)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1984 (node) S 1983 1984 1984 0 -1 4194560 17051 0 0 0 52 11 0 0 20 0 11 0 123456 1032138752 14336 18446744073709551615"))
	f.Add([]byte("7 (a) b) Z 1 7 7"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseStat(b, 4096)
		if err == nil && (p.PID <= 0 || p.PPID < 0 || p.PGID < 0) {
			t.Errorf("parseStat(%q) = %+v without error", b, p)
		}
	})
}

func TestParseChildren(t *testing.T) {
	got, err := parseChildren([]int{1}, []byte("12 345 4194304 "))
	if err != nil || !slices.Equal(got, []int{1, 12, 345, 4194304}) {
		t.Errorf("parseChildren = %v, %v", got, err)
	}
	if got, err := parseChildren(nil, []byte("")); err != nil || len(got) != 0 {
		t.Errorf("parseChildren(empty) = %v, %v", got, err)
	}
	for _, s := range []string{"12 x", "0", "-3", "99999999999999999999"} {
		if _, err := parseChildren(nil, []byte(s)); !errors.Is(err, ErrMalformed) {
			t.Errorf("parseChildren(%q): err = %v, want ErrMalformed", s, err)
		}
	}
}

func TestParseCgroup(t *testing.T) {
	tests := []struct {
		name, data string
		v1, v2     string
		bad        bool
	}{
		{"hybrid", "12:memory:/system.slice/agent.service\n11:cpu,cpuacct:/system.slice/agent.service\n1:name=systemd:/system.slice/agent.service\n0::/system.slice/agent.service\n",
			"/system.slice/agent.service", "/system.slice/agent.service", false},
		{"v2 only", "0::/system.slice/agent.service\n", "", "/system.slice/agent.service", false},
		{"v1 only", "4:memory,hugetlb:/app\n3:pids:/\n", "/app", "", false},
		{"path with colons", "0::/a:b\n", "", "/a:b", false},
		{"empty", "", "", "", false},
		{"no fields", "garbage\n", "", "", true},
		{"one colon", "4:memory\n", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v1, v2, err := ParseCgroup(tt.data)
			if tt.bad {
				if !errors.Is(err, ErrMalformed) {
					t.Errorf("err = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil || v1 != tt.v1 || v2 != tt.v2 {
				t.Errorf("ParseCgroup = %q, %q, %v; want %q, %q", v1, v2, err, tt.v1, tt.v2)
			}
		})
	}
}

func TestAppendDirentIDs(t *testing.T) {
	// Records as getdents64 lays them out.
	rec := func(name string) []byte {
		reclen := (19 + len(name) + 1 + 7) &^ 7
		r := make([]byte, reclen)
		binary.NativeEndian.PutUint16(r[16:], uint16(reclen))
		copy(r[19:], name)
		return r
	}
	var b []byte
	for _, n := range []string{".", "..", "42", "self", "4194304"} {
		b = append(b, rec(n)...)
	}
	if got := appendDirentIDs(nil, b); !slices.Equal(got, []int{42, 4194304}) {
		t.Errorf("appendDirentIDs = %v, want [42 4194304]", got)
	}
	if got := appendDirentIDs(nil, b[:30]); len(got) != 0 {
		t.Errorf("appendDirentIDs of a cut record = %v, want none", got)
	}
}
