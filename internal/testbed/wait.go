package testbed

import (
	"testing"
	"time"
)

// Until polls cond until it holds, failing the test naming what it waited
// for once within has passed. It polls about a thousand times over within
// (every 5 to 100 ms), often enough for short waits, sparingly on a busy
// machine for long ones.
func Until(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	poll := min(max(within/1000, 5*time.Millisecond), 100*time.Millisecond)
	for deadline := time.Now().Add(within); !cond(); time.Sleep(poll) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
	}
}
