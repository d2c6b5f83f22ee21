package benchkit

import (
	"fmt"
	"strings"
)

// NginxConfig is an nginx reverse proxy on loopback as the harnesses run
// it (Debian's nginx-light): in the foreground, no access log, every path
// under Dir, HTTP/1.1 with kept connections to the upstream's servers.
type NginxConfig struct {
	Dir     string   // pid file, error log and temporary files
	Listen  string   // host:port
	Servers []string // the upstream's servers, host:port each
	Workers int      // worker_processes; 0 = auto (one per CPU)
	// Balance is the upstream's method: "" = round robin, "least_conn".
	// With more than one worker the upstream gets a shared zone, so the
	// workers count connections together.
	Balance   string
	Keepalive int // idle connections to the upstream kept per worker
	// KeepaliveTimeout closes an idle upstream connection after this long
	// (nginx's default: 60s); below the app's own (Node: 5 s), so nginx
	// never sends on a connection the app is closing.
	KeepaliveTimeout string
}

// Text returns the config file's content.
func (c NginxConfig) Text() string {
	workers := "auto"
	if c.Workers > 0 {
		workers = fmt.Sprint(c.Workers)
	}
	var up strings.Builder
	if c.Balance != "" {
		fmt.Fprintf(&up, " %s;", c.Balance)
		if c.Workers != 1 {
			up.WriteString(" zone app 64k;")
		}
	}
	for _, s := range c.Servers {
		fmt.Fprintf(&up, " server %s;", s)
	}
	fmt.Fprintf(&up, " keepalive %d;", c.Keepalive)
	if c.KeepaliveTimeout != "" {
		fmt.Fprintf(&up, " keepalive_timeout %s;", c.KeepaliveTimeout)
	}
	return fmt.Sprintf(`worker_processes %[4]s;
user root;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  upstream app {%[2]s }
  server {
    listen %[3]s;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }
}
`, c.Dir, up.String(), c.Listen, workers)
}
