package rollout

import (
	"context"

	"github.com/tidemarkhq/tidemark/envelope"
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
	// Divergent lists, per namespace of the slice, the keys (envelope.Key)
	// the namespace's newest finished reconcile round found divergent.
	Divergent(ctx context.Context, slice Slice) ([]DivergentKeys, error)
	// Reemit asks the capture role to re-emit keys of namespace ns from the
	// source (deletes for keys it no longer has) and returns the request id
	// once the request is durable.
	Reemit(ctx context.Context, ns string, keys [][]byte, reason string) (string, error)
	// Requests counts the ids still waiting for the capture role.
	Requests(ctx context.Context, ids []string) (int, error)
	// Partitions lists the partitions that hold the slice's keys.
	Partitions(ctx context.Context, slice Slice) ([]envelope.TopicPartition, error)
	// Pause stores tps as paused for every daemon (operator intent, durable
	// when it returns) and returns those that were not paused before.
	Pause(ctx context.Context, tps []envelope.TopicPartition, reason string) ([]envelope.TopicPartition, error)
	// Resume removes tps from the paused intent.
	Resume(ctx context.Context, tps []envelope.TopicPartition, reason string) error
	// Paused reports whether every one of tps is paused in the stored intent
	// and, for partitions this process consumes, in the consumer too.
	Paused(ctx context.Context, tps []envelope.TopicPartition) (bool, error)
	// Rewind moves tps back to their last verified marks through the sink's
	// rewind requests and returns once every owner moved its positions; the
	// details say what moved.
	Rewind(ctx context.Context, tps []envelope.TopicPartition, reason string) (map[string]any, error)
	// CaughtUp reports whether tps have replayed to their end.
	CaughtUp(ctx context.Context, tps []envelope.TopicPartition) (bool, error)
	// Ends returns tps' end offsets now: every record produced before the
	// call is below them.
	Ends(ctx context.Context, tps []envelope.TopicPartition) ([]Offset, error)
	// Passed reports whether the sink has committed every record below ends
	// (a transactional topic's last offset is a commit marker, so one short
	// of an end passes it).
	Passed(ctx context.Context, ends []Offset) (bool, error)
}

// DivergentKeys is what one round found divergent in one namespace.
type DivergentKeys struct {
	Namespace string `json:"namespace"`
	// Round is the report id; empty when no round has finished.
	Round string `json:"round,omitempty"`
	// Keys are the documents behind the divergent rows (envelope.Key).
	Keys [][]byte `json:"keys,omitempty"`
	// Complete says Keys are all of them: the round finished, was not cut
	// short and traced every divergent row to a document.
	Complete bool `json:"complete"`
}

// Offset is a position in one partition.
type Offset struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
}
