package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// The soak's helpers that need no server: TestSoak (soak_integration_test.go,
// opt-in, make soak) runs the daemon.

// The soak's retention settings (reconcile.keep_reports and
// keep_verified_marks): small, so that the rules are reached within the first
// half of a short run and the counts must then stay flat.
const (
	soakKeepReports = 5
	soakKeepMarks   = 3
)

// soakSample is one row of the soak's table.
type soakSample struct {
	at         time.Duration
	rssKiB     int64
	goroutines int64
	fds        int64
	series     int64            // sample lines on /metrics: the number of metric series
	ckptBytes  int64            // the checkpoints topic on disk (log dirs)
	ckptRecs   int64            // records in it (end offsets; a log only grows)
	liveKeys   int64            // keys with a value in it (what the store holds)
	audit      int64            // audit entries in it
	leaderAud  int64            // of which leader.acquire/release: the role moving is audited
	reports    int64            // report files on disk
	byPrefix   map[string]int64 // live keys by their first path segment
	ops        int64            // workload operations done so far
	docs       int64            // documents in the source collection
}

// soakBound is how much one quantity may grow over the second half of the run.
type soakBound struct {
	name string
	get  func(soakSample) int64
	tol  int64 // the most the fitted line may rise over the second half
}

// soakBounds fits a least-squares line through the second half of the
// samples of every quantity that must not grow without bound, and fails
// those whose line rises by more than its tolerance from the first sample of
// that half to the last. The first half is warm-up: the backfill, the first
// rounds, the retention rules not yet reached, label values seen for the
// first time. A line rather than two points, because a sample can land on a
// round in progress or just before the log cleaner ran: the fit averages that
// noise out, a steady leak it does not.
//
// Tolerances: in two 5-minute runs on the shared 2-core machine, flat
// quantities spread sample to sample over RSS 27.2-29.1 MiB, goroutines
// 195-212 (rounds and rebalances come and go), open files 27-40, metric
// series 170-175 and the topic 92-262 KiB (when the cleaner last ran); the
// fitted rise of that noise over the second half stayed within RSS +0.1 MiB,
// goroutines -4, open files +4.3, series 0, topic +1 KiB, keys +1. Over the
// default 30 minutes, with a sample a minute, a leak of one goroutine a
// minute (one per round: +14 over the half), 1 MiB of RSS a minute, an open
// file or a metric series every 90 s, one key or audit entry every three
// minutes, or one report file beyond the retention rule exceeds them
// (TestSoakBoundsCatchGrowth).
//
// fits has one line per quantity: its fitted rise and its bound; fails the
// quantities over their bound.
func soakBounds(samples []soakSample) (fits, fails []string) {
	bounds := []soakBound{
		{"RSS KiB", func(s soakSample) int64 { return s.rssKiB }, 12 << 10},
		{"goroutines", func(s soakSample) int64 { return s.goroutines }, 10},
		{"open files", func(s soakSample) int64 { return s.fds }, 8},
		// Series also appear once for rare events (a retry reason, the
		// leadership moving): a step, not a trend, but a fit sees part of it.
		{"metric series", func(s soakSample) int64 { return s.series }, 8},
		{"checkpoints topic bytes", func(s soakSample) int64 { return s.ckptBytes }, 512 << 10},
		// The election audits every move of the role, and a broker slowed
		// down by the machine's other work can move it: those entries are
		// actions, not growth, and are left out here (the table shows them).
		{"checkpoint live keys (leader moves aside)", func(s soakSample) int64 { return s.liveKeys - s.leaderAud }, 4},
		{"audit entries (leader moves aside)", func(s soakSample) int64 { return s.audit - s.leaderAud }, 4},
		{"report files", func(s soakSample) int64 { return s.reports }, 0},
	}
	half := samples[len(samples)/2:]
	if len(half) < 4 {
		return nil, []string{fmt.Sprintf("only %d samples in the second half: run longer or sample more often", len(half))}
	}
	span := (half[len(half)-1].at - half[0].at).Seconds()
	for _, b := range bounds {
		rise := slope(half, b.get) * span
		fits = append(fits, fmt.Sprintf("%s: %+.1f (allowed %d)", b.name, rise, b.tol))
		if rise > float64(b.tol) {
			fails = append(fails, fmt.Sprintf("%s grew by %.0f over the second half (fitted; allowed %d): %d to %d",
				b.name, rise, b.tol, b.get(half[0]), b.get(half[len(half)-1])))
		}
	}
	if last := samples[len(samples)-1].reports; last > soakKeepReports {
		fails = append(fails, fmt.Sprintf("report files: %d, but reconcile.keep_reports is %d", last, soakKeepReports))
	}
	return fits, fails
}

// slope is the least-squares slope of get over the samples' times, per second.
func slope(ss []soakSample, get func(soakSample) int64) float64 {
	var n, sx, sy, sxx, sxy float64
	for _, s := range ss {
		x, y := s.at.Seconds(), float64(get(s))
		n++
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}

// TestSoakBoundsCatchGrowth checks the soak's verdict on made-up tables: a
// flat run with noise passes; a run whose goroutines, RSS or report files
// keep growing through the second half fails, naming what grew.
func TestSoakBoundsCatchGrowth(t *testing.T) {
	run := func(f func(i int, s *soakSample)) []soakSample {
		var out []soakSample
		for i := range 30 {
			s := soakSample{at: time.Duration(i) * time.Minute, rssKiB: 28 << 10, goroutines: 200, fds: 30, series: 172,
				ckptBytes: 200 << 10, liveKeys: 24, audit: 4, leaderAud: 2, reports: soakKeepReports}
			// Noise: what a flat run showed sample to sample.
			s.rssKiB += int64(i*7%5) * 300
			s.goroutines += int64(i*5%7) * 3
			s.fds += int64(i*3%4) * 3
			s.ckptBytes -= int64(i%2) * (170 << 10)
			f(i, &s)
			out = append(out, s)
		}
		return out
	}
	if _, fails := soakBounds(run(func(int, *soakSample) {})); len(fails) > 0 {
		t.Errorf("a flat run fails: %v", fails)
	}
	if _, fails := soakBounds(run(func(i int, s *soakSample) { s.leaderAud += int64(i); s.audit += int64(i); s.liveKeys += int64(i) })); len(fails) > 0 {
		t.Errorf("leader moves count as growth: %v", fails)
	}
	for what, grow := range map[string]func(i int, s *soakSample){
		// One goroutine a minute, 1 MiB of RSS a minute, a file every 90 s,
		// an audit entry every three minutes, a report file at the end.
		"goroutines":    func(i int, s *soakSample) { s.goroutines += int64(i) },
		"RSS":           func(i int, s *soakSample) { s.rssKiB += int64(i) << 10 },
		"open files":    func(i int, s *soakSample) { s.fds += int64(i * 2 / 3) },
		"audit entries": func(i int, s *soakSample) { s.audit += int64(i / 3) },
		"report files":  func(i int, s *soakSample) { s.reports += int64(i / 29) },
	} {
		_, fails := soakBounds(run(grow))
		if !slices.ContainsFunc(fails, func(f string) bool { return strings.HasPrefix(f, what) }) {
			t.Errorf("%s growing through the run: verdict %v", what, fails)
		}
	}
	if _, fails := soakBounds(run(func(int, *soakSample) {})[:6]); len(fails) != 1 {
		t.Errorf("six samples: %v, want a request for more", fails)
	}
}
