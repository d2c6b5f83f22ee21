package benchkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNginxConfig checks the upstream block and, where nginx is installed,
// that nginx accepts the whole file.
func TestNginxConfig(t *testing.T) {
	one := NginxConfig{Listen: "127.0.0.1:8080", Servers: []string{"127.0.0.1:3000"}, Keepalive: 128}
	two := NginxConfig{Listen: "127.0.0.1:8080", Servers: []string{"127.0.0.1:3000", "127.0.0.1:3001"}, Workers: 1,
		Balance: "least_conn", Keepalive: 64, KeepaliveTimeout: "4s"}
	shared := two
	shared.Workers = 2
	for _, tt := range []struct {
		c           NginxConfig
		upstream    string
		workerLines string
	}{
		{one, "upstream app { server 127.0.0.1:3000; keepalive 128; }", "worker_processes auto;"},
		{two, "upstream app { least_conn; server 127.0.0.1:3000; server 127.0.0.1:3001; keepalive 64; keepalive_timeout 4s; }", "worker_processes 1;"},
		{shared, "upstream app { least_conn; zone app 64k; server 127.0.0.1:3000;", "worker_processes 2;"},
	} {
		tt.c.Dir = t.TempDir()
		text := tt.c.Text()
		if !strings.Contains(text, tt.upstream) || !strings.Contains(text, tt.workerLines) {
			t.Errorf("want %q and %q in\n%s", tt.upstream, tt.workerLines, text)
		}
		nginx, err := exec.LookPath("nginx")
		if err != nil || os.Geteuid() != 0 {
			continue
		}
		conf := filepath.Join(tt.c.Dir, "nginx.conf")
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(nginx, "-t", "-q", "-c", conf, "-p", tt.c.Dir).CombinedOutput(); err != nil {
			t.Errorf("nginx -t: %v: %s\n%s", err, out, text)
		}
	}
}
