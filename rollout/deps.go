package rollout

import (
	"context"

	"github.com/tidemarkhq/tidemark/sink"
)

// Signals reads the numbers gates and triggers judge.
type Signals interface {
	// Sample returns a reading of every signal that has data for slice; a
	// missing name means no data. It is called on every evaluation, so a slow
	// source (validate) must cache.
	Sample(ctx context.Context, slice Slice) (map[string]Sample, error)
}

// Actions changes the pipeline. Each method says when its effect holds; the
// engine verifies effects in drills through the read methods.
type Actions interface {
	// ApplySlice makes the sink write only keys in slice from its next poll on;
	// other keys are committed without being written.
	ApplySlice(ctx context.Context, slice Slice) error
	// Backfill asks the capture role to re-emit every document of the
	// namespaces, so that keys a wider slice now includes are written. It
	// returns request ids once the requests are durable.
	Backfill(ctx context.Context, namespaces []string, reason string) ([]string, error)
	// Repair asks for the slice's divergent keys to be re-emitted from the
	// source and returns request ids once the requests are durable, with
	// what each namespace's request covers (for the audit log).
	Repair(ctx context.Context, slice Slice, reason string) ([]string, map[string]any, error)
	// Requests counts the ids still waiting for the capture role.
	Requests(ctx context.Context, ids []string) (int, error)
	// Partitions lists the partitions that hold the slice's keys.
	Partitions(ctx context.Context, slice Slice) ([]sink.TopicPartition, error)
	// Pause stores tps as paused for every daemon (operator intent, durable
	// when it returns) and returns those that were not paused before.
	Pause(ctx context.Context, tps []sink.TopicPartition, reason string) ([]sink.TopicPartition, error)
	// Resume removes tps from the paused intent.
	Resume(ctx context.Context, tps []sink.TopicPartition, reason string) error
	// Paused reports whether every one of tps is paused in the stored intent
	// and, for partitions this process consumes, in the consumer too.
	Paused(ctx context.Context, tps []sink.TopicPartition) (bool, error)
	// Rewind moves tps back to their last verified marks through the sink's
	// rewind requests and returns once every owner moved its positions; the
	// details say what moved.
	Rewind(ctx context.Context, tps []sink.TopicPartition, reason string) (map[string]any, error)
	// CaughtUp reports whether tps have replayed to their end.
	CaughtUp(ctx context.Context, tps []sink.TopicPartition) (bool, error)
}
