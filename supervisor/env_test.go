package supervisor

import (
	"slices"
	"testing"
)

func TestBuildEnv(t *testing.T) {
	base := []string{"PATH=/usr/bin", "NOTIFY_SOCKET=/run/systemd/notify", "WATCHDOG_USEC=30000000", "WATCHDOG_PID=1", "LISTEN_FDS=1", "LISTEN_PID=1", "LISTEN_FDNAMES=x", "HOME=/root", "PORT=1"}
	file := []string{"PORT=2", "SECRET=s3cr3t"}
	env := []string{"PORT=3000", "NODE_ENV=production"}
	got, warn := BuildEnv(base, 0, file, env)
	want := []string{"PATH=/usr/bin", "HOME=/root", "PORT=3000", "SECRET=s3cr3t", "NODE_ENV=production"}
	if !slices.Equal(got, want) {
		t.Fatalf("env\n got %q\nwant %q", got, want)
	}
	if warn != "" {
		t.Fatalf("unexpected warning %q", warn)
	}
}

func TestBuildEnvNodeOptions(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing string // "" = NODE_OPTIONS unset
		heap     int
		want     string // "" = NODE_OPTIONS must be absent
		warn     bool
	}{
		{"heap 0 leaves it absent", "", 0, "", false},
		{"heap 0 leaves it untouched", "NODE_OPTIONS=--max-old-space-size=9000 --enable-source-maps", 0, "--max-old-space-size=9000 --enable-source-maps", false},
		{"set when absent", "", 512, "--max-old-space-size=512", false},
		{"other flags kept", "NODE_OPTIONS=--enable-source-maps --trace-warnings", 384, "--enable-source-maps --trace-warnings --max-old-space-size=384", false},
		{"existing replaced", "NODE_OPTIONS=--max-old-space-size=4096 --enable-source-maps", 512, "--enable-source-maps --max-old-space-size=512", true},
		{"underscore spelling replaced", "NODE_OPTIONS=--max_old_space_size=4096", 512, "--max-old-space-size=512", true},
		{"space-separated value replaced", "NODE_OPTIONS=--max-old-space-size 4096 --inspect", 512, "--inspect --max-old-space-size=512", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var layer []string
			if tc.existing != "" {
				layer = []string{tc.existing}
			}
			got, warn := BuildEnv([]string{"PATH=/bin"}, tc.heap, layer)
			var opts string
			found := false
			for _, kv := range got {
				if len(kv) > 13 && kv[:13] == "NODE_OPTIONS=" {
					opts, found = kv[13:], true
				}
			}
			if tc.want == "" && found {
				t.Fatalf("NODE_OPTIONS=%q set, want absent", opts)
			}
			if tc.want != "" && opts != tc.want {
				t.Fatalf("NODE_OPTIONS=%q, want %q", opts, tc.want)
			}
			if (warn != "") != tc.warn {
				t.Fatalf("warning %q, want warning: %v", warn, tc.warn)
			}
		})
	}
}
