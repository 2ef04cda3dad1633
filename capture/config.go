// Package capture moves MongoDB change streams, and backfills of existing
// documents, into Kafka as version-stamped envelopes.
//
// Versions are born here (DESIGN.md, "version-stamped last-write-wins"): a change
// event carries its clusterTime; a backfill record carries envelope.Below(T0),
// where T0 is the operation time the covering change stream was opened at,
// before the scan began. Every change after T0 is therefore also in Kafka with a
// higher version, and the sink's USING TIMESTAMP lets it win.
//
// Each stream produces in Kafka transactions under a transactional id of its
// own ("tidemark-capture-<namespace>"): a second capture process for the same
// stream fences the first, which stops with ErrFenced. Consumers must read with
// read_committed isolation.
package capture

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
)

// Config is the capture section of the daemon config.
type Config struct {
	// TopicPrefix names topics "<prefix>.<db>.<collection>" and the dead-letter
	// topic "<prefix>.deadletter". Default "tidemark".
	TopicPrefix string `yaml:"topic_prefix"`
	// Namespaces lists the "db.collection"s to capture.
	Namespaces []string `yaml:"namespaces"`
	// Partitions for topics capture creates. Default 12.
	Partitions int32 `yaml:"partitions"`
	// ReplicationFactor for topics capture creates. Default 1 (use 3 in production).
	ReplicationFactor int16 `yaml:"replication_factor"`
	// BatchSize is the most events asked of the server per change-stream
	// batch. Default 1000.
	BatchSize int `yaml:"batch_size"`
	// MaxTxnRecords bounds a Kafka transaction: batches read while the
	// previous transaction commits join the next one until it holds this
	// many records (a batch, like a MongoDB transaction, is never split, so
	// one batch may exceed it). Reading waits while that many are queued.
	// Default 10000, and at least BatchSize.
	MaxTxnRecords int `yaml:"max_txn_records"`
	// MaxRecordBytes is the largest record value produced; larger events go to
	// the dead-letter topic. Default 1 MiB (Kafka's default message.max.bytes).
	MaxRecordBytes int `yaml:"max_record_bytes"`
	// UpdateLookup says who fetches the current document of an update event:
	// "server" asks MongoDB for fullDocument: updateLookup (one lookup per
	// event, inside the server); "capture" has capture look up each server
	// batch's updated _ids with one $in query. Both give the document as of
	// the lookup, which is all updateLookup promises. "capture" is much
	// cheaper against the mongo-java-server stand-in, whose updateLookup
	// scans the whole collection for every event. Default "server".
	UpdateLookup string `yaml:"update_lookup"`
	// IdlePoll is the longest wait between two polls of a change stream
	// whose batches come back empty (the wait grows from 10ms while they
	// do); also the server-side maxAwaitTimeMS. Default 1s.
	IdlePoll time.Duration `yaml:"idle_poll"`
	// IdleCheckpointInterval is how often an idle stream checkpoints its
	// post-batch resume token, so a quiet collection never falls out of the
	// oplog window. Default 10s.
	IdleCheckpointInterval time.Duration `yaml:"idle_checkpoint_interval"`
	// Backfill configures the scan of existing documents.
	Backfill BackfillConfig `yaml:"backfill"`
}

// BackfillConfig configures backfill scans.
type BackfillConfig struct {
	// Enabled runs an initial backfill of every namespace that has none recorded. Default true.
	Enabled *bool `yaml:"enabled"`
	// ChunkSize is the number of documents per checkpointed chunk. Default 1000.
	ChunkSize int `yaml:"chunk_size"`
	// Parallelism is how many chunks may be in flight to Kafka at once while
	// the scan reads ahead. Progress is checkpointed in chunk order, so a
	// restart resumes from the first chunk not yet acknowledged. Each chunk
	// in flight holds ChunkSize documents and their records. Default 8.
	Parallelism int `yaml:"parallelism"`
	// RateLimit caps documents per second (0 = unlimited).
	RateLimit float64 `yaml:"rate_limit"`
	// Retries is how many consecutive failed reads of one chunk are retried
	// (resuming after the chunk's last document read) before the backfill
	// stops with the error in status. Default 8.
	Retries int `yaml:"retries"`
	// RetryBackoff is the first wait between retries; it doubles up to 30s.
	// Default 1s.
	RetryBackoff time.Duration `yaml:"retry_backoff"`
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.TopicPrefix == "" {
		c.TopicPrefix = envelope.DefaultTopicPrefix
	}
	if c.Partitions == 0 {
		c.Partitions = 12
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = 1
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.MaxTxnRecords == 0 {
		c.MaxTxnRecords = max(10_000, c.BatchSize)
	}
	if c.UpdateLookup == "" {
		c.UpdateLookup = "server"
	}
	if c.MaxRecordBytes == 0 {
		c.MaxRecordBytes = 1 << 20
	}
	if c.Backfill.ChunkSize == 0 {
		c.Backfill.ChunkSize = 1000
	}
	if c.Backfill.Parallelism == 0 {
		// 8 kept the backfill at 0.60-0.84 of a plain scan where 4 gave
		// 0.38-0.61 (docs/performance.md).
		c.Backfill.Parallelism = 8
	}
	if c.IdlePoll == 0 {
		c.IdlePoll = time.Second
	}
	if c.IdleCheckpointInterval == 0 {
		c.IdleCheckpointInterval = 10 * time.Second
	}
	if c.Backfill.Retries == 0 {
		c.Backfill.Retries = 8
	}
	if c.Backfill.RetryBackoff == 0 {
		c.Backfill.RetryBackoff = time.Second
	}
	if c.Backfill.Enabled == nil {
		t := true
		c.Backfill.Enabled = &t
	}
	return c
}

// Validate lists every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if len(c.Namespaces) == 0 {
		errs = append(errs, errors.New("capture.namespaces: at least one db.collection is required"))
	}
	for _, ns := range c.Namespaces {
		if db, coll, ok := strings.Cut(ns, "."); !ok || db == "" || coll == "" {
			errs = append(errs, fmt.Errorf("capture.namespaces: %q is not db.collection", ns))
		}
	}
	if c.Partitions < 0 {
		errs = append(errs, errors.New("capture.partitions must be positive"))
	}
	if c.UpdateLookup != "" && c.UpdateLookup != "server" && c.UpdateLookup != "capture" {
		errs = append(errs, fmt.Errorf("capture.update_lookup is %q; use \"server\" or \"capture\"", c.UpdateLookup))
	}
	if c.BatchSize < 0 || c.Backfill.ChunkSize < 0 {
		errs = append(errs, errors.New("capture.batch_size and capture.backfill.chunk_size must be positive"))
	}
	if c.MaxTxnRecords < 0 {
		errs = append(errs, errors.New("capture.max_txn_records must be positive"))
	}
	if c.MaxRecordBytes < 0 || c.MaxRecordBytes > 100<<20 {
		errs = append(errs, errors.New("capture.max_record_bytes must be between 1 and 100 MiB"))
	}
	if c.Backfill.Parallelism < 0 || c.Backfill.Parallelism > 64 {
		errs = append(errs, errors.New("capture.backfill.parallelism must be between 1 and 64"))
	}
	if c.IdlePoll < 0 || c.IdlePoll > time.Minute {
		errs = append(errs, errors.New("capture.idle_poll must be between 1ms and 1m"))
	}
	if c.IdleCheckpointInterval < 0 {
		errs = append(errs, errors.New("capture.idle_checkpoint_interval must not be negative"))
	}
	if c.Backfill.Retries < 0 || c.Backfill.RetryBackoff < 0 {
		errs = append(errs, errors.New("capture.backfill.retries and capture.backfill.retry_backoff must not be negative"))
	}
	if c.Backfill.RateLimit < 0 {
		errs = append(errs, errors.New("capture.backfill.rate_limit must not be negative"))
	}
	return errors.Join(errs...)
}
