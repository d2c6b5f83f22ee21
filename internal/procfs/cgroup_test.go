package procfs

import (
	"errors"
	"strings"
	"testing"
)

func TestParseCgroupStrict(t *testing.T) {
	tests := []struct {
		name, data, v1, v2, err string
	}{
		{"first memory line wins", "4:memory:/a\n5:memory:/b\n", "/a", "", ""},
		{"combined controllers", "7:cpu,memory:/docker/4f1c\n0::/\n", "/docker/4f1c", "/", ""},
		{"named hierarchy", "1:name=systemd:/x\n0::/y\n", "", "/y", ""},
		{"relative path", "0::system.slice\n", "", "", "cgroup line 1: want ID:CONTROLLERS:/PATH"},
		{"bad id", "x:memory:/g\n", "", "", `cgroup line 1: bad hierarchy id "x"`},
		{"empty id", ":memory:/g\n", "", "", `cgroup line 1: bad hierarchy id ""`},
		{"second line bad", "0::/\n4:memory\n", "", "", "cgroup line 2:"},
		{"blank lines counted", "0::/\n\n4:memory\n", "", "", "cgroup line 3:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v1, v2, err := ParseCgroup(tt.data)
			if tt.err != "" {
				if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("err = %v, want ErrMalformed saying %q", err, tt.err)
				}
				return
			}
			if err != nil || v1 != tt.v1 || v2 != tt.v2 {
				t.Errorf("ParseCgroup = %q, %q, %v; want %q, %q", v1, v2, err, tt.v1, tt.v2)
			}
		})
	}
}

func FuzzParseCgroup(f *testing.F) {
	for _, s := range []string{"0::/\n", "4:memory:/a:b\n0::/x\n", "1:name=systemd:/\n", "::\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v1, v2, err := ParseCgroup(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		for _, p := range []string{v1, v2} {
			if p != "" && !strings.HasPrefix(p, "/") {
				t.Errorf("path %q without a leading slash", p)
			}
		}
	})
}
