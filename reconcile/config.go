package reconcile

import (
	"errors"
	"fmt"
	"time"
)

// Config is the reconcile section of the daemon's config file.
type Config struct {
	// Interval between scheduled rounds in the daemon; 0 turns the schedule off
	// (rounds then run only on demand).
	Interval time.Duration `yaml:"interval"`
	// ReportDir is the folder each round's JSON report is written to. Default
	// ./tidemark-reports.
	ReportDir string `yaml:"report_dir"`
	// KeepReports is how many report files the folder keeps: after each
	// round's report is written, the oldest beyond this many are removed, so
	// a daemon running rounds every few minutes does not fill its volume.
	// Default 1000 (ten days of 15-minute rounds).
	KeepReports int `yaml:"keep_reports"`
	// KeepVerifiedMarks is how many named verified marks (one per clean
	// round, the targets of `tidemark rewind --to-mark ID`) each partition
	// keeps in the checkpoint store besides the newest; older ones are
	// deleted. Default 20.
	KeepVerifiedMarks int `yaml:"keep_verified_marks"`
	// BucketBits sets the tree's leaves to 2^BucketBits token ranges per table.
	// 0 picks about 64 expected rows per leaf from the collection's size.
	BucketBits int `yaml:"bucket_bits"`
	// DocsPerSecond and RowsPerSecond cap how fast a round reads the source
	// documents and the target rows; 0 is unlimited.
	DocsPerSecond float64 `yaml:"docs_per_second"`
	RowsPerSecond float64 `yaml:"rows_per_second"`
	// TimeBox ends a round after this long; its progress is kept and the next
	// round of the same scope resumes it. Default 1h.
	TimeBox time.Duration `yaml:"time_box"`
	// InFlightWait is how long re-checks wait for the caught-up rule to let a
	// key be judged (no backfill pending, capture and the sink past the key's
	// source version) before the key is left in flight. Default 30s.
	InFlightWait time.Duration `yaml:"in_flight_wait"`
	// Settle is how long an idle partition's committed offset must stay put,
	// with at most one offset (a transaction marker) left, before it counts as
	// caught up. Default 2s.
	Settle time.Duration `yaml:"settle"`
	// SampleSize caps the keys listed with both sides' values in a report. Default 100.
	SampleSize int `yaml:"sample_size"`
	// MaxCandidates caps the keys narrowed down in one round; past it the report
	// says it is truncated. Default 100000.
	MaxCandidates int `yaml:"max_candidates"`
	// Concurrency is the number of parallel Cassandra range reads and key
	// re-checks. Default 8.
	Concurrency int `yaml:"concurrency"`
	// OplogReads lets a round read local.oplog.rs directly, as an accelerator:
	// whether capture is behind a version, and whether a row is stale. Off by
	// default: the oplog cannot be read through mongos or on many managed
	// clusters, and a change stream on the namespace answers both (and sees
	// transactions' writes one by one). Where the oplog read fails the change
	// stream answers anyway.
	OplogReads bool `yaml:"oplog_reads"`
	// Segments splits a round's hashing into this many segments that every
	// daemon running a Worker may take (docs/reconcile.md, "Rounds across
	// daemons"). 0 or 1: the daemon that starts a round hashes it alone, as
	// one resumable scan. At most 256.
	Segments int `yaml:"segments"`
	// Lease is how long a round's coordinator or a segment's worker may go
	// without renewing its record (every third of it) before another daemon
	// takes the round or the segment over. Default 15s.
	Lease time.Duration `yaml:"lease"`
	// SinkGroup is the sink's consumer group, whose committed offsets tell how
	// far the sink got. Default: the sink section's group (set by the daemon).
	SinkGroup string `yaml:"sink_group"`
}

// Retention defaults: reconcile.keep_reports and keep_verified_marks when unset.
const (
	DefaultKeepReports       = 1000
	DefaultKeepVerifiedMarks = 20
)

// WithDefaults fills in zero fields.
func (c Config) WithDefaults() Config {
	if c.ReportDir == "" {
		c.ReportDir = "tidemark-reports"
	}
	if c.KeepReports == 0 {
		c.KeepReports = DefaultKeepReports
	}
	if c.KeepVerifiedMarks == 0 {
		c.KeepVerifiedMarks = DefaultKeepVerifiedMarks
	}
	if c.TimeBox == 0 {
		c.TimeBox = time.Hour
	}
	if c.InFlightWait == 0 {
		c.InFlightWait = 30 * time.Second
	}
	if c.Settle == 0 {
		c.Settle = 2 * time.Second
	}
	if c.SampleSize == 0 {
		c.SampleSize = 100
	}
	if c.MaxCandidates == 0 {
		c.MaxCandidates = 100_000
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.Lease == 0 {
		c.Lease = 15 * time.Second
	}
	return c
}

// Validate checks limits, listing every problem.
func (c Config) Validate() error {
	var errs []error
	checks := []struct {
		bad bool
		msg string
	}{
		{c.Interval < 0, "reconcile.interval must not be negative (0 turns the schedule off)"},
		{c.BucketBits < 0 || c.BucketBits > 24, "reconcile.bucket_bits must be 0 (auto) or 1..24"},
		{c.DocsPerSecond < 0 || c.RowsPerSecond < 0, "reconcile.docs_per_second and rows_per_second must not be negative"},
		{c.TimeBox < 0 || c.InFlightWait < 0 || c.Settle < 0, "reconcile durations must not be negative"},
		{c.SampleSize < 0 || c.SampleSize > 10_000, "reconcile.sample_size must be 0..10000"},
		{c.MaxCandidates < 0, "reconcile.max_candidates must not be negative"},
		{c.KeepReports < 0, "reconcile.keep_reports must not be negative (0 means the default, 1000)"},
		{c.KeepVerifiedMarks < 0, "reconcile.keep_verified_marks must not be negative (0 means the default, 20)"},
		{c.Concurrency < 0 || c.Concurrency > 256, "reconcile.concurrency must be 0..256"},
		{c.Segments < 0 || c.Segments > 1<<segBits, "reconcile.segments must be 0..256"},
		{c.Lease < 0 || (c.Lease > 0 && c.Lease < time.Second), "reconcile.lease must be at least 1s"},
	}
	for _, ch := range checks {
		if ch.bad {
			errs = append(errs, errors.New(ch.msg))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("reconcile config: %w", errors.Join(errs...))
	}
	return nil
}
