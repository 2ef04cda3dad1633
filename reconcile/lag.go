package reconcile

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// Lag tells a round how far the pipeline has got, so that a key still on its
// way is called in flight rather than divergent.
type Lag interface {
	// Caught reports whether every source change of namespace ns with a
	// version at or below v, on the Kafka partition of any of keys (envelope
	// keys; every partition when keys is empty), has been applied to
	// Cassandra. False means "not known to be applied yet", never an error.
	Caught(ctx context.Context, ns string, keys [][]byte, v envelope.Version) (bool, error)
	// Positions is every partition's progress, for reports and verified marks.
	Positions(ctx context.Context, ns string) ([]Position, error)
}

// Position is one partition's progress when a round looked.
type Position struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	// Committed is the sink group's committed offset (-1: none yet).
	Committed     int64   `json:"committed"`
	End           int64   `json:"end"`
	RecordsBehind int64   `json:"records_behind"`
	AppliedT      uint32  `json:"applied_version_t"`
	AppliedI      uint32  `json:"applied_version_i"`
	SecondsBehind float64 `json:"seconds_behind"`
}

// PipelineLag reads progress from where the pipeline keeps it: capture's
// stream checkpoint and the source's oplog (has capture handed every change
// to Kafka?), the sink group's committed offsets against the partitions' ends
// (has the sink applied them?), and the newest applied version per partition,
// from the sink in this process or from the sink's offset marks otherwise.
// Every source is shared by all daemons, so any daemon can run a round.
type PipelineLag struct {
	Store       checkpoints.Store
	Admin       *kadm.Client
	Mongo       *mongo.Client
	Group       string
	TopicPrefix string
	// Applied is the in-process sink's newest applied version of a partition
	// (sink.(*Sink).Applied); nil reads the offset marks instead.
	Applied func(topic string, partition int32) envelope.Version
	// Settle is how long a partition with one unread offset must stay put to
	// count as caught up (that offset is a transaction's commit marker, which
	// consumers never see). Default 2s.
	Settle time.Duration

	mu      sync.Mutex
	parts   map[string]int // partitions per topic
	partsAt time.Time
	quiet   map[string]quietMark
	// newest caches, per namespace, whether the oplog holds a change after
	// capture's position: finding out may scan the oplog, and every
	// in-flight re-check asks.
	newest   map[string]newestEntry
	newestMu sync.Mutex // serialises the oplog reads themselves
	offMu    sync.Mutex
	offCache map[string]offsetsEntry
}

type offsetsEntry struct {
	ends      kadm.ListedOffsets
	committed kadm.OffsetResponses
	at        time.Time
}

type newestEntry struct {
	after   envelope.Version // capture's position asked about
	changed bool
	at      time.Time
}

type quietMark struct {
	committed, end int64
	since          time.Time
}

var _ Lag = (*PipelineLag)(nil)

// streamCheckpoint is the part of capture's stream checkpoint read here.
type streamCheckpoint struct {
	StartT uint32 `json:"start_t"`
	StartI uint32 `json:"start_i"`
	Token  []byte `json:"token"`
	T      uint32 `json:"t"`
	I      uint32 `json:"i"`
}

func (l *PipelineLag) partitionCount(ctx context.Context, topic string) (int, error) {
	l.mu.Lock()
	if n, ok := l.parts[topic]; ok && time.Since(l.partsAt) < time.Minute {
		l.mu.Unlock()
		return n, nil
	}
	l.mu.Unlock()
	td, err := l.Admin.ListTopics(ctx, topic)
	if err != nil {
		return 0, err
	}
	t, ok := td[topic]
	if !ok || t.Err != nil || len(t.Partitions) == 0 {
		return 0, fmt.Errorf("reconcile: topic %s not found", topic)
	}
	l.mu.Lock()
	if l.parts == nil {
		l.parts = map[string]int{}
	}
	l.parts[topic], l.partsAt = len(t.Partitions), time.Now()
	l.mu.Unlock()
	return len(t.Partitions), nil
}

// PartitionOf is the partition capture's producer puts key on. Capture keeps
// franz-go's default partitioner, which sends a keyed record where
// StickyKeyPartitioner(nil) does: KafkaHasher(murmur2) of the key, as
// Kafka's Java client.
func PartitionOf(topic string, key []byte, partitions int) int32 {
	return int32(kgo.StickyKeyPartitioner(nil).ForTopic(topic).Partition(&kgo.Record{Key: key}, partitions))
}

func (l *PipelineLag) applied(ctx context.Context, topic string, p int32) envelope.Version {
	if l.Applied != nil {
		if v := l.Applied(topic, p); !v.IsZero() {
			return v
		}
	}
	m, ok, err := checkpoints.GetJSON[checkpoints.Mark](ctx, l.Store, checkpoints.PartitionKey(checkpoints.PrefixMark, topic, p))
	if err != nil || !ok {
		return envelope.Version{}
	}
	return envelope.Version{T: m.VersionT, I: m.VersionI}
}

func (l *PipelineLag) Caught(ctx context.Context, ns string, keys [][]byte, v envelope.Version) (bool, error) {
	topic := capture.Topic(l.TopicPrefix, ns)
	n, err := l.partitionCount(ctx, topic)
	if err != nil {
		return false, err
	}
	want := map[int32]bool{}
	for _, k := range keys {
		want[PartitionOf(topic, k, n)] = true
	}
	if len(keys) == 0 {
		for p := range n {
			want[int32(p)] = true
		}
	}
	// A partition whose sink applied a newer version has applied everything
	// older on it too: capture produces each partition in cluster-time order.
	for p := range want {
		if !l.applied(ctx, topic, p).Before(v) {
			delete(want, p)
		}
	}
	if len(want) == 0 {
		return true, nil
	}
	// Otherwise the partition may just be idle: then capture must hold
	// nothing unproduced at or below v, and the sink nothing unapplied.
	if ok, err := l.captureCaught(ctx, ns, v); err != nil || !ok {
		return false, err
	}
	ends, committed, err := l.offsets(ctx, topic)
	if err != nil {
		return false, err
	}
	for p := range want {
		e, ok := ends.Lookup(topic, p)
		if !ok || e.Err != nil {
			return false, nil
		}
		c := int64(0)
		if o, ok := committed.Lookup(topic, p); ok && o.Err == nil && o.At >= 0 {
			c = o.At
		}
		if !l.quietEnough(topic, p, c, e.Offset) {
			return false, nil
		}
	}
	return true, nil
}

// offsets are the partitions' ends and the sink group's commits, read at
// most every 250 ms however many re-checks ask.
func (l *PipelineLag) offsets(ctx context.Context, topic string) (kadm.ListedOffsets, kadm.OffsetResponses, error) {
	l.offMu.Lock()
	defer l.offMu.Unlock()
	if c, ok := l.offCache[topic]; ok && time.Since(c.at) < 250*time.Millisecond {
		return c.ends, c.committed, nil
	}
	ends, err := l.Admin.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, nil, err
	}
	committed, err := l.Admin.FetchOffsetsForTopics(ctx, l.Group, topic)
	if err != nil {
		return nil, nil, err
	}
	if l.offCache == nil {
		l.offCache = map[string]offsetsEntry{}
	}
	l.offCache[topic] = offsetsEntry{ends: ends, committed: committed, at: time.Now()}
	return ends, committed, nil
}

// quietEnough: nothing left, or one offset left that has stayed unconsumed
// for Settle while the sink kept polling (a commit marker, not a record).
func (l *PipelineLag) quietEnough(topic string, p int32, committed, end int64) bool {
	behind := end - committed
	if behind <= 0 {
		return true
	}
	if behind > 1 {
		return false
	}
	settle := l.Settle
	if settle == 0 {
		settle = 2 * time.Second
	}
	key := fmt.Sprintf("%s/%d", topic, p)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.quiet == nil {
		l.quiet = map[string]quietMark{}
	}
	q, ok := l.quiet[key]
	if !ok || q.committed != committed || q.end != end {
		l.quiet[key] = quietMark{committed: committed, end: end, since: time.Now()}
		return false
	}
	return time.Since(q.since) >= settle
}

// captureCaught: capture has produced every change of ns up to v, or the
// source has nothing newer than what capture produced.
func (l *PipelineLag) captureCaught(ctx context.Context, ns string, v envelope.Version) (bool, error) {
	st, ok, err := checkpoints.GetJSON[streamCheckpoint](ctx, l.Store, checkpoints.PrefixCapture+ns)
	if err != nil || !ok {
		return false, err
	}
	// Before its first event the stream's position is its start: changes
	// before it are the backfill's business, not a stream position. Compared
	// strictly against the start itself (not a version just below it): the
	// stand-in's ordinals run past a million within one second.
	captured, inclusive := envelope.Version{T: st.T, I: st.I}, true
	if st.Token == nil {
		captured, inclusive = envelope.Version{T: st.StartT, I: st.StartI}, false
	}
	covers := func(x envelope.Version) bool {
		if inclusive {
			return !captured.Before(x)
		}
		return x.Before(captured)
	}
	if covers(v) {
		return true, nil
	}
	changed, err := l.changedSince(ctx, ns, captured, inclusive)
	return !changed, err
}

// changedSince reports whether the oplog holds a change of ns after capture's
// position (at or after it when !inclusive). It asks for such an entry by
// cluster time rather than for the newest entry: the stand-in does not return
// its newest entry for a $natural sort once its oplog has been trimmed, and a
// stale "newest" made a lagging pipeline look caught up. A "yes" stays true
// while capture's position does not move; a "no" is kept for 250 ms.
func (l *PipelineLag) changedSince(ctx context.Context, ns string, pos envelope.Version, inclusive bool) (bool, error) {
	l.newestMu.Lock()
	defer l.newestMu.Unlock()
	l.mu.Lock()
	e, hit := l.newest[ns]
	l.mu.Unlock()
	if hit && e.after == pos && (e.changed || time.Since(e.at) < 250*time.Millisecond) {
		return e.changed, nil
	}
	if l.Mongo == nil {
		return true, errors.New("reconcile: no MongoDB client to read the oplog")
	}
	op := "$gt"
	if !inclusive {
		op = "$gte"
	}
	err := l.Mongo.Database("local").Collection("oplog.rs").FindOne(ctx,
		bson.D{{Key: "ns", Value: ns}, {Key: "ts", Value: bson.D{{Key: op, Value: primitive.Timestamp{T: pos.T, I: pos.I}}}}},
		options.FindOne().SetProjection(bson.D{{Key: "ts", Value: 1}})).Err()
	changed := err == nil
	if err != nil && !errors.Is(err, mongo.ErrNoDocuments) {
		return true, fmt.Errorf("reconcile: read the oplog: %w", err)
	}
	l.mu.Lock()
	if l.newest == nil {
		l.newest = map[string]newestEntry{}
	}
	l.newest[ns] = newestEntry{after: pos, changed: changed, at: time.Now()}
	l.mu.Unlock()
	return changed, nil
}

func (l *PipelineLag) Positions(ctx context.Context, ns string) ([]Position, error) {
	topic := capture.Topic(l.TopicPrefix, ns)
	n, err := l.partitionCount(ctx, topic)
	if err != nil {
		return nil, err
	}
	ends, err := l.Admin.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	committed, err := l.Admin.FetchOffsetsForTopics(ctx, l.Group, topic)
	if err != nil {
		return nil, err
	}
	out := make([]Position, 0, n)
	for p := range int32(n) {
		pos := Position{Topic: topic, Partition: p, Committed: -1}
		if e, ok := ends.Lookup(topic, p); ok && e.Err == nil {
			pos.End = e.Offset
		}
		if o, ok := committed.Lookup(topic, p); ok && o.Err == nil && o.At >= 0 {
			pos.Committed = o.At
		}
		pos.RecordsBehind = max(0, pos.End-max(pos.Committed, 0))
		a := l.applied(ctx, topic, p)
		pos.AppliedT, pos.AppliedI = a.T, a.I
		if pos.RecordsBehind > 1 && !a.IsZero() {
			pos.SecondsBehind = time.Since(a.Time()).Seconds()
		}
		out = append(out, pos)
	}
	return out, nil
}

// Quiescent is a Lag for a pipeline that is not running: nothing is in flight.
// For one-off comparisons (and tests) with no capture or sink.
type Quiescent struct{}

func (Quiescent) Caught(context.Context, string, [][]byte, envelope.Version) (bool, error) {
	return true, nil
}
func (Quiescent) Positions(context.Context, string) ([]Position, error) { return nil, nil }
