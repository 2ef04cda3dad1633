//go:build race

package envelope

// raceEnabled: the race detector's instrumentation allocates on its own, so
// allocation counts are only asserted without it.
const raceEnabled = true
