// Package sink consumes the capture topics and writes rows into Cassandra,
// keeping DESIGN.md's invariant: every row is written USING TIMESTAMP of its
// source version, every mapped column is set on every upsert, deletes are
// timestamped too, and offsets are committed only after Cassandra acknowledged
// every write below them. Replays and rewinds are therefore harmless.
//
// Each poll's records are split by partition, one worker per partition. A
// worker decodes its records in chunks, groups the changes to tables keyed by
// _id alone by Cassandra partition (each group is one unlogged batch) and
// queues tables with a key map per _id in offset order; the writes go to a
// pool of max_in_flight writers every partition shares, at most concurrency
// of a partition's at a time. A poll is done when every write of it is
// acknowledged. Offsets are committed, asynchronously, only up to what
// Cassandra acknowledged.
// Rebalances are blocked while a poll is being applied, and the revoke
// callback commits synchronously, so a partition never changes owner with
// writes in flight or acknowledged writes uncommitted.
package sink

import (
	"errors"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
)

// Config is the sink section of the daemon config.
type Config struct {
	// Group is the Kafka consumer group. Default "tidemark-sink".
	Group string `yaml:"group"`
	// InstanceID makes this daemon a static member of Group
	// (group.instance.id): restarted after a crash, it takes its partitions
	// back at once instead of waiting for the dead member's session to
	// expire. It must be stable across restarts and unique per daemon; the
	// daemon defaults it to "<hostname>-<admin port>". Empty: dynamic member.
	InstanceID string `yaml:"instance_id"`
	// TopicPrefix must match capture's. Default "tidemark".
	TopicPrefix string `yaml:"topic_prefix"`
	// Concurrency bounds the writes of one partition queued or in flight at once. Default 16.
	Concurrency int `yaml:"concurrency"`
	// MaxInFlight is the number of writers every partition shares, the
	// bound on concurrent writes in total (the throttle may lower it). Default 128.
	MaxInFlight int `yaml:"max_in_flight"`
	// Consistency overrides every table's write consistency (e.g. ONE on a
	// single-node test cluster). Empty keeps each table's own, default LOCAL_QUORUM.
	Consistency string `yaml:"consistency"`
	// Retries is how many times a write failing for want of Cassandra
	// (timeout, unavailable, no hosts) is retried before it is logged as
	// stuck; it is still retried until it succeeds, never dead-lettered.
	// Default 8.
	Retries int `yaml:"retries"`
	// RetryBackoff is the first retry's wait; it doubles, with jitter, up to 10s. Default 100ms.
	RetryBackoff time.Duration `yaml:"retry_backoff"`
	// MarkInterval is how often offset marks are checkpointed. Default 10s.
	MarkInterval time.Duration `yaml:"mark_interval"`
	// Throttle slows writes when Cassandra's latency or error rate rises.
	Throttle ThrottleConfig `yaml:"throttle"`
}

// ThrottleConfig sets the limits the write throttle keeps.
type ThrottleConfig struct {
	// P99 is the write latency above which concurrency is halved. Default 250ms.
	P99 time.Duration `yaml:"p99"`
	// ErrorRate (0..1) above which concurrency is halved. Default 0.05.
	ErrorRate float64 `yaml:"error_rate"`
	// Window over which p99 and error rate are measured. Default 5s.
	Window time.Duration `yaml:"window"`
	// MaxWritesPerSecond caps the rate of Cassandra writes (each row write
	// and each retry counts), whatever the target's health: for a shared
	// production cluster with a write budget. Records wait in Kafka, never in
	// memory; lag grows instead. 0, the default, sets no cap.
	MaxWritesPerSecond float64 `yaml:"max_writes_per_second"`
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Group == "" {
		c.Group = "tidemark-sink"
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = envelope.DefaultTopicPrefix
	}
	if c.Concurrency == 0 {
		c.Concurrency = 16
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 128
	}
	if c.Retries == 0 {
		c.Retries = 8
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = 100 * time.Millisecond
	}
	if c.MarkInterval == 0 {
		c.MarkInterval = 10 * time.Second
	}
	if c.Throttle.P99 == 0 {
		c.Throttle.P99 = 250 * time.Millisecond
	}
	if c.Throttle.ErrorRate == 0 {
		c.Throttle.ErrorRate = 0.05
	}
	if c.Throttle.Window == 0 {
		c.Throttle.Window = 5 * time.Second
	}
	return c
}

// Validate lists every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Concurrency < 0 || c.MaxInFlight < 0 || c.Retries < 0 {
		errs = append(errs, errors.New("sink.concurrency, sink.max_in_flight and sink.retries must not be negative"))
	}
	if c.MaxInFlight > 0 && c.Concurrency > c.MaxInFlight {
		errs = append(errs, errors.New("sink.concurrency must not exceed sink.max_in_flight"))
	}
	if c.Throttle.ErrorRate < 0 || c.Throttle.ErrorRate > 1 {
		errs = append(errs, errors.New("sink.throttle.error_rate must be between 0 and 1"))
	}
	if c.Throttle.MaxWritesPerSecond < 0 {
		errs = append(errs, errors.New("sink.throttle.max_writes_per_second must not be negative (0: no cap)"))
	}
	return errors.Join(errs...)
}
