package main

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"agent/internal/lbclient"
)

func TestTrafficLoad(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	conns := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("User-Agent") == "bench-traffic" {
			paths = append(paths, r.URL.Path)
		}
		conns[r.RemoteAddr] = true
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	defer srv.Close()

	t0 := time.Now()
	r, err := trafficLoad(srv.Listener.Addr().String(), []string{"/", "/", "/fail"}, 100, time.Second, 300*time.Millisecond).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 5*time.Second {
		t.Fatalf("the load ran %s past its 300ms bound", took)
	}
	mu.Lock()
	defer mu.Unlock()
	if r.Sent < 9 || len(paths) != r.Sent || !slices.Equal(paths[:3], []string{"/", "/", "/fail"}) {
		t.Fatalf("%d sent, the server saw %v", r.Sent, paths)
	}
	if r.Kinds["HTTP 502"] != r.Failed || r.Failed != r.Sent/3 {
		t.Fatalf("%s failed: %s; want every third, as HTTP 502", r, lbclient.FormatKinds(r.Kinds))
	}
	if len(conns) >= r.Sent {
		t.Fatalf("%d connections for %d requests: keep-alive not used", len(conns), r.Sent)
	}
	if ms := latencyMS(r, r.Max); math.IsNaN(ms) || ms <= 0 {
		t.Fatalf("max latency %v ms", ms)
	}
	if ms := latencyMS(lbclient.Report{}, 0); !math.IsNaN(ms) {
		t.Fatalf("latency of no request: %v, want NaN", ms)
	}
}
