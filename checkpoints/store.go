// Package checkpoints is the durable state a tidemark daemon restarts from:
// capture resume tokens, backfill progress, offset marks, verified marks, operator
// intent, rollout state, and the append-only audit log.
//
// Every stage keeps its state under its own key prefix (see Key* below) as JSON
// through GetJSON and PutJSON, so one Store serves all of them and an operator can
// read any of it with ordinary tools.
package checkpoints

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// ErrNotFound is returned by Get for a key that has no value.
var ErrNotFound = errors.New("checkpoints: not found")

// ErrConflict is CompareAndSwap's refusal: the key changed since it was read.
var ErrConflict = errors.New("checkpoints: the value changed since it was read")

// Store holds tidemark's durable state. Implementations must be safe for
// concurrent use by several goroutines and, where they say so, several processes.
type Store interface {
	// Get returns the newest value stored under key, or ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Put stores value under key. When Put returns nil the value is durable: a
	// process that opens the store afterwards sees it or a newer one, and a crash
	// during Put leaves either the old value or the new one, never a torn mix.
	Put(ctx context.Context, key string, value []byte) error
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns every key starting with prefix and its value.
	List(ctx context.Context, prefix string) (map[string][]byte, error)
	// GetVersion is Get and the value's version: an opaque number that
	// changes with every write of the key, 0 for a key that has no value
	// yet. A missing key returns ErrNotFound with the version to pass to
	// CompareAndSwap to create it.
	GetVersion(ctx context.Context, key string) ([]byte, int64, error)
	// CompareAndSwap stores value under key (a nil value deletes it) only if
	// the key's version is still old, and returns the new version. If any
	// other write of the key came in between — by this process or another —
	// nothing is stored and it returns ErrConflict: read again and retry
	// (Update does). With the same durability as Put.
	CompareAndSwap(ctx context.Context, key string, old int64, value []byte) (int64, error)
	// Append adds e to the audit log. Entries are never changed or removed. A zero
	// e.Time is set to the current time.
	Append(ctx context.Context, e AuditEntry) error
	// Audit returns the entries that match f, oldest first.
	Audit(ctx context.Context, f AuditFilter) ([]AuditEntry, error)
	// Close releases the store's resources.
	Close() error
}

// AuditEntry records one operator or automatic action: who, what, why, when, result.
type AuditEntry struct {
	Time time.Time `json:"time"`
	// Actor is the token name of an operator, or "auto:<component>" for automatic
	// actions (for example "auto:rollout").
	Actor string `json:"actor"`
	// Action is a short verb phrase: "pause", "rewind", "trigger.fire", ...
	Action string `json:"action"`
	// Target names what was acted on: topics, partitions, a stage, a report id.
	Target string `json:"target,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Result is "ok", "refused", "failed: ..." or "dry-run".
	Result string `json:"result"`
	// Details carries the numbers behind an automatic decision, or a plan.
	Details map[string]any `json:"details,omitempty"`
	// Chain links the entry into the tamper-evident chain (see Chained);
	// nil for entries written without an HMAC key.
	Chain *ChainLink `json:"chain,omitempty"`
}

// AuditFilter selects audit entries; zero fields match everything.
type AuditFilter struct {
	Since  time.Time
	Until  time.Time
	Actor  string
	Action string
	// Limit keeps only the newest Limit entries when positive.
	Limit int
}

// Match reports whether e passes f (Limit aside).
func (f AuditFilter) Match(e AuditEntry) bool {
	return (f.Since.IsZero() || !e.Time.Before(f.Since)) &&
		(f.Until.IsZero() || e.Time.Before(f.Until)) &&
		(f.Actor == "" || f.Actor == e.Actor) &&
		(f.Action == "" || f.Action == e.Action)
}

// Key prefixes. Each stage owns its prefix; nothing else writes under it.
const (
	PrefixCapture   = "capture/"   // capture/<stream>: resume token and cluster time
	PrefixBackfill  = "backfill/"  // backfill/<namespace>/<run>: chunk progress
	PrefixMark      = "mark/"      // mark/<topic>/<partition>: newest applied offset mark
	PrefixVerified  = "verified/"  // verified/<topic>/<partition>: last verified mark
	PrefixIntent    = "intent/"    // intent/paused, intent/rewind/...: operator intent
	PrefixRollout   = "rollout/"   // rollout/state
	PrefixReconcile = "reconcile/" // reconcile/<round>: resumable round progress
	PrefixLeader    = "leader/"    // leader/current: the elected leader (election.enabled)
)

// PartitionKey is the key of a per-partition record under prefix.
func PartitionKey(prefix, topic string, partition int32) string {
	return fmt.Sprintf("%s%s/%d", prefix, topic, partition)
}

// Mark is a point in one partition's history: the next offset to consume, the
// newest source version applied below it, and when it was taken.
type Mark struct {
	Topic     string    `json:"topic"`
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
	VersionT  uint32    `json:"version_t"`
	VersionI  uint32    `json:"version_i"`
	Wall      time.Time `json:"wall"`
	// Name identifies a verified mark (for example the reconcile report id).
	Name string `json:"name,omitempty"`
}

// GetJSON reads key and decodes it into a T. ok is false when the key is missing.
func GetJSON[T any](ctx context.Context, s Store, key string) (v T, ok bool, err error) {
	b, err := s.Get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return v, false, nil
	}
	if err != nil {
		return v, false, err
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, false, fmt.Errorf("checkpoints: decode %s: %w", key, err)
	}
	return v, true, nil
}

// PutJSON encodes v as JSON and stores it under key.
func PutJSON(ctx context.Context, s Store, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("checkpoints: encode %s: %w", key, err)
	}
	return s.Put(ctx, key, b)
}

// Syncer is a Store whose reads can lag other processes' writes (the Kafka
// store reads memory that follows the topic); Sync catches up.
type Syncer interface {
	// Sync returns once the store has read every write any process had
	// acknowledged before Sync was called.
	Sync(ctx context.Context) error
}

// Sync makes s read every write acknowledged before the call, for a Store
// that can lag (Syncer); others read their medium and need nothing.
func Sync(ctx context.Context, s Store) error {
	if y, ok := s.(Syncer); ok {
		return y.Sync(ctx)
	}
	return nil
}

// KeyReconcileLatest holds the RoundSummary of the newest finished reconcile round
// per scope: reconcile writes it, rollout gates and the status page read it.
const KeyReconcileLatest = PrefixReconcile + "latest/" // + <scope>, e.g. "reconcile/latest/app.users"

// RoundSummary is the part of a reconcile report that other stages act on.
type RoundSummary struct {
	ID    string    `json:"id"`
	Scope string    `json:"scope"` // namespace "db.collection", or a table "ks.table"
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Clean is true when no key was divergent (in-flight keys do not count).
	Clean        bool             `json:"clean"`
	RowsCompared int64            `json:"rows_compared"`
	Divergent    int64            `json:"divergent"`
	InFlight     int64            `json:"in_flight"`
	ByClass      map[string]int64 `json:"by_class,omitempty"` // missing, extra, different, stale
	// IDs are the record keys (envelope.Key) of the documents behind the
	// divergent rows, and IDsComplete says they are all of them: the round
	// finished, was not truncated, traced every divergent row to a document,
	// and found at most SummaryIDsMax. Rollout's repair re-emits only these.
	IDs         [][]byte `json:"ids,omitempty"`
	IDsComplete bool     `json:"ids_complete,omitempty"`
	// Slice is the rollout slice the round judged (the one it started with);
	// SliceChanged says the plan's slice was another one when it ended.
	Slice        string `json:"slice,omitempty"`
	SliceChanged bool   `json:"slice_changed,omitempty"`
	// SinkStart and SinkEnd are the sink group's committed offsets when the
	// round started (before it read either side) and when it ended: a round
	// whose SinkStart is at or past the offsets of some records judged a
	// target that already held them.
	SinkStart []SinkOffset `json:"sink_start,omitempty"`
	SinkEnd   []SinkOffset `json:"sink_end,omitempty"`
}

// SinkOffset is the sink group's committed offset on one partition: every
// record below Offset has been applied (0 when the group committed none).
type SinkOffset struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
}

// SummaryIDsMax bounds RoundSummary.IDs: a summary is one stored value, and
// past a few hundred documents re-emitting the collection costs about as
// much as finding them.
const SummaryIDsMax = 1000

// updateAttempts bounds Update's retries. Each retry means another writer's
// change of the same key landed first, so running out takes that many
// writers at once; the caller then reports ErrConflict (HTTP 409).
const updateAttempts = 16

// Update replaces key's value with fn(current) by compare-and-swap,
// retrying with the fresh value when another write came first, so that
// concurrent updates all take effect or Update returns ErrConflict; none is
// lost. fn may run several times and must not have side effects. A nil
// result deletes the key.
func Update(ctx context.Context, s Store, key string, fn func(old []byte, found bool) ([]byte, error)) error {
	for attempt := 0; attempt < updateAttempts; attempt++ {
		old, ver, err := s.GetVersion(ctx, key)
		found := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		nv, err := fn(old, found)
		if err != nil {
			return err
		}
		if _, err = s.CompareAndSwap(ctx, key, ver, nv); !errors.Is(err, ErrConflict) {
			return err
		}
		// Someone else's write landed first. A random pause spreads the
		// retries of many writers that all lost to the same one.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(rand.Int64N(int64(attempt+1) * int64(2*time.Millisecond)))):
		}
	}
	return fmt.Errorf("%w: %s changed %d times while being updated; try again", ErrConflict, key, updateAttempts)
}

// UpdateJSON is Update on a JSON value: fn gets the decoded current value
// (the zero T and false when the key is missing) and returns the new one.
func UpdateJSON[T any](ctx context.Context, s Store, key string, fn func(v T, found bool) (T, error)) (T, error) {
	var out T
	err := Update(ctx, s, key, func(old []byte, found bool) ([]byte, error) {
		var v T
		if found {
			if err := json.Unmarshal(old, &v); err != nil {
				return nil, fmt.Errorf("checkpoints: decode %s: %w", key, err)
			}
		}
		nv, err := fn(v, found)
		if err != nil {
			return nil, err
		}
		out = nv
		b, err := json.Marshal(nv)
		if err != nil {
			return nil, fmt.Errorf("checkpoints: encode %s: %w", key, err)
		}
		return b, nil
	})
	return out, err
}
