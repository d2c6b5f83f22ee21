package benchkit

import (
	"strings"
	"testing"
)

func TestParseWrk(t *testing.T) {
	clean := `Running 10s test @ http://127.0.0.1:8080/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.21ms    1.02ms  20.00ms   90.00%
    Req/Sec   869.50     40.10     0.96k    70.00%
  17350 requests in 10.01s, 2.10MB read
Requests/sec:   1733.42
Transfer/sec:    214.91KB
`
	r, err := parseWrk([]byte(clean))
	if err != nil || r.RPS != 1733.42 || r.Errors != "" {
		t.Fatalf("clean: %+v, %v", r, err)
	}
	bad := strings.Replace(clean, "Requests/sec:", "  Socket errors: connect 0, read 3, write 0, timeout 0\n  Non-2xx or 3xx responses: 7\nRequests/sec:", 1)
	r, err = parseWrk([]byte(bad))
	if err != nil || r.Errors != "Socket errors: connect 0, read 3, write 0, timeout 0; Non-2xx or 3xx responses: 7" {
		t.Fatalf("errors: %+v, %v", r, err)
	}
	if _, err := parseWrk([]byte("unable to connect")); err == nil {
		t.Fatal("no report: want an error")
	}
}
