package faults

import (
	"context"
	"testing"
	"time"

	"agent/internal/lbclient"
)

// The suite counts requests with lbclient, as a load balancer would: over
// kept-alive connections, never retried. Go's http.Transport is not used
// for counting: it silently retries a GET whose kept connection the server
// closed before answering, where an ALB answers 502.

// requestTimeout is how long a request may take before it counts as lost:
// far more than a hold through a restart needs, far less than an ALB's 60 s.
const requestTimeout = 10 * time.Second

// loadBound ends a load that its test did not end: longer than any fault's
// wait for recovery.
const loadBound = 3 * time.Minute

// startLoad sends perSecond GETs a second to addr, open loop, until its
// Stop (or the end of the test, or loadBound).
func startLoad(t *testing.T, addr string, perSecond int) *lbclient.Running {
	t.Helper()
	load, err := lbclient.Load{
		Addr: addr, Rate: perSecond, Timeout: requestTimeout, Duration: loadBound, UserAgent: "faults",
	}.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { load.Stop() })
	return load
}

// sequential sends n GETs to addr one after another on kept connections and
// returns how many failed; it gives up after 3 failures in a row and counts
// the rest as failed too.
func sequential(addr string, n int) (failed int) {
	c := &lbclient.Client{Addr: addr, Timeout: requestTimeout, UserAgent: "faults"}
	defer c.Close()
	inRow := 0
	for i := range n {
		if lbclient.Kind(c.Do(context.Background(), lbclient.Request{})) != "" {
			failed++
			if inRow++; inRow == 3 {
				return failed + n - i - 1
			}
			continue
		}
		inRow = 0
	}
	return failed
}
