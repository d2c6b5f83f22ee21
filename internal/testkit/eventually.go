package testkit

import (
	"testing"
	"time"
)

// PollInterval is how often Eventually asks again.
const PollInterval = 20 * time.Millisecond

// Eventually calls cond at once and then every PollInterval until it holds;
// if timeout passes first, it fails t with "timed out after TIMEOUT waiting
// for WHAT". It is the wait for a condition that something outside the test
// (a process, the kernel, a server's goroutines) makes true.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	EventuallyMsg(t, timeout, what, func() (bool, string) { return cond(), "" })
}

// EventuallyMsg is Eventually for a condition that says why it does not
// hold yet: the failure ends with "; last: MSG", the last non-empty message.
func EventuallyMsg(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	EventuallyEvery(t, timeout, PollInterval, what, cond)
}

// EventuallyEvery is EventuallyMsg asking every interval instead, for a
// condition that is costly to ask (one that runs a command in a container).
func EventuallyEvery(t testing.TB, timeout, interval time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	last := ""
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if msg != "" {
			last = msg
		}
		if time.Now().After(deadline) {
			if last != "" {
				t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, last)
			} else {
				t.Fatalf("timed out after %v waiting for %s", timeout, what)
			}
			return
		}
		<-tick.C
	}
}
