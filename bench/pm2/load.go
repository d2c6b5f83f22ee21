package main

import (
	"context"
	"io"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// loadResult is the outcome of a fixed-rate load.
type loadResult struct {
	latencies []float64 // ms, one per request; +Inf for a failed one
	failures  int
	errs      map[string]int // failure kinds, for the log
}

// fixedRate sends GET url at rate requests a second for dur, open loop: a
// request goes out on its tick whether or not the earlier ones came back,
// so a stalled server cannot slow the load down and hide its own stall.
// Each request uses a new connection, as a load balancer's health check
// does, and fails when it has no 200 answer within timeout.
func fixedRate(ctx context.Context, url string, rate int, dur, timeout time.Duration) loadResult {
	client := &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
	defer client.CloseIdleConnections()
	n := int(dur.Seconds() * float64(rate))
	res := loadResult{latencies: make([]float64, n), errs: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := range n {
		select {
		case <-ctx.Done():
			res.latencies = res.latencies[:i]
			wg.Wait()
			return res
		case <-tick.C:
		}
		wg.Go(func() {
			start := time.Now()
			kind := ""
			resp, err := client.Get(url)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					kind = resp.Status
				}
			}
			if err != nil {
				kind = errKind(err)
			}
			ms := float64(time.Since(start)) / float64(time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			if kind != "" {
				res.failures++
				res.errs[kind]++
				ms = math.Inf(1)
			}
			res.latencies[i] = ms
		})
	}
	wg.Wait()
	return res
}

func errKind(err error) string {
	type timeout interface{ Timeout() bool }
	if t, ok := err.(timeout); ok && t.Timeout() {
		return "timeout"
	}
	return err.Error()
}

// hammer keeps conc requests to url in flight until ctx ends (closed loop,
// keep-alive) and returns how many completed.
func hammer(ctx context.Context, url string, conc int) func() int64 {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc, Proxy: nil}}
	var done atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				if err != nil {
					return
				}
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						time.Sleep(10 * time.Millisecond) // refused: the app restarts
					}
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				done.Add(1)
			}
		})
	}
	return func() int64 {
		wg.Wait()
		client.CloseIdleConnections()
		return done.Load()
	}
}
