package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/mongo"
)

// Lag tells a round how far the pipeline has got, so that a key still on its
// way is called in flight rather than divergent.
type Lag interface {
	// Caught applies the caught-up rule to keys (envelope keys of namespace
	// ns; every partition when keys is empty) whose source state was read at
	// source version v. It is true only when (a) no backfill of ns is
	// pending, (b) capture has produced to Kafka every change of ns up to v,
	// and (c) the sink group has committed past the end offsets of the keys'
	// partitions pinned once (a) and (b) held. w carries that pin from one
	// call to the next for the same key (zero on the first call; a new v
	// starts over). False means "not known to be applied yet", never an error.
	Caught(ctx context.Context, ns string, keys [][]byte, v envelope.Version, w *Watermark) (bool, error)
	// Positions is every partition's progress, for reports and verified marks.
	Positions(ctx context.Context, ns string) ([]Position, error)
}

// Watermark is what a key waits for: the partitions' end offsets read once
// no backfill was pending and capture had produced everything up to V. Every
// record of the key's changes up to V sits below them.
type Watermark struct {
	V    envelope.Version
	Ends map[int32]int64
	// Waiting is what the last call that answered false waited for
	// (WaitBackfill, WaitCapture, WaitSink); empty once caught up.
	Waiting string
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
// backfill progress and queued backfill requests (is a backfill pending?),
// capture's stream checkpoint and, past it, a change stream on the namespace
// (has capture handed every change up to a version to Kafka?), and the sink
// group's committed offsets against end offsets pinned after that (has the
// sink applied them?). Every source is shared by all daemons, so any daemon
// can run a round.
//
// The newest version the sink applied on a partition is not a watermark and
// is only reported: backfills (a widened rollout slice, a repair) produce
// records stamped just below their own, fresh T0 into the same partitions as
// the live stream, so a partition can hold a record of a newer version ahead
// of unapplied changes of older ones. Taking it for one called keys missing
// and stale while those changes were still in Kafka (issue 17).
type PipelineLag struct {
	Store       checkpoints.Store
	Admin       *kadm.Client
	Mongo       *mongo.Client
	Group       string
	TopicPrefix string
	// Applied is the in-process sink's newest applied version of a partition
	// (sink.(*Sink).Applied), for Positions; nil reads the offset marks.
	Applied func(topic string, partition int32) envelope.Version
	// Settle is how long a partition with one unread offset must stay put to
	// count as caught up (that offset is a transaction's commit marker, which
	// consumers never see). Default 2s.
	Settle time.Duration
	// OplogReads lets capture's progress be checked against local.oplog.rs
	// first (reconcile.oplog_reads): one indexed query instead of opening a
	// change stream. Where the oplog cannot be read (mongos, managed
	// clusters) the change stream answers.
	OplogReads bool

	mu      sync.Mutex
	parts   map[string]int // partitions per topic
	partsAt time.Time
	quiet   map[string]quietMark
	// probes caches, per namespace, what the source said about changes
	// after capture's position: every in-flight re-check asks.
	probes   map[string]probeEntry
	probeMu  sync.Mutex // serialises the probes themselves
	offMu    sync.Mutex
	offCache map[string]offsetsEntry
	bfMu     sync.Mutex
	bfCache  map[string]backfillEntry
}

// backfillEntry is what backfills of a namespace are pending: a whole one
// (the initial backfill, a namespace or filter request) or these keys.
type backfillEntry struct {
	whole bool
	keys  map[string]bool
	at    time.Time
}

type offsetsEntry struct {
	ends      kadm.ListedOffsets
	committed kadm.OffsetResponses
	at        time.Time
	asked     time.Time // when the read started
}

// probeEntry is what the source said about changes of a namespace from
// capture's position after on: none up to quietTo; one at changeAt (zero:
// none seen).
type probeEntry struct {
	after    envelope.Version
	quietTo  envelope.Version
	changeAt envelope.Version
	at       time.Time
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
	AtT    uint32 `json:"at_t"`
	AtI    uint32 `json:"at_i"`
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

func (l *PipelineLag) Caught(ctx context.Context, ns string, keys [][]byte, v envelope.Version, w *Watermark) (bool, error) {
	topic := envelope.Topic(l.TopicPrefix, ns)
	n, err := l.partitionCount(ctx, topic)
	if err != nil {
		return false, err
	}
	if w.V != v {
		*w = Watermark{V: v}
	}
	w.Waiting = WaitUnreadable
	// (a) and (b) are checked at every look until they hold, then (c)'s
	// offsets are pinned: only then is every record of a change up to v in
	// Kafka, below the partitions' ends.
	if w.Ends == nil {
		if pending, err := l.backfillPending(ctx, ns, keys); err != nil || pending {
			if err == nil {
				w.Waiting = WaitBackfill
			}
			return false, err
		}
		// Ends read after capture's checkpoint was read hold every record
		// the checkpoint covers: it is written once Kafka acknowledged them.
		// Reads other re-checks started after this moment serve too.
		asked := time.Now()
		if ok, err := l.captureCaught(ctx, ns, v); err != nil || !ok {
			if err == nil {
				w.Waiting = WaitCapture
			}
			return false, err
		}
		ends, _, err := l.offsets(ctx, topic, asked)
		if err != nil {
			return false, err
		}
		pin := map[int32]int64{}
		add := func(p int32) bool {
			e, ok := ends.Lookup(topic, p)
			if ok && e.Err == nil {
				pin[p] = e.Offset
			}
			return ok && e.Err == nil
		}
		for _, k := range keys {
			if !add(PartitionOf(topic, k, n)) {
				return false, nil // pinned at a later look
			}
		}
		if len(keys) == 0 {
			for p := range int32(n) {
				if !add(p) {
					return false, nil
				}
			}
		}
		w.Ends = pin
	}
	_, committed, err := l.offsets(ctx, topic, time.Time{})
	if err != nil {
		return false, err
	}
	w.Waiting = WaitSink
	for p, end := range w.Ends {
		c := int64(0)
		if o, ok := committed.Lookup(topic, p); ok && o.Err == nil && o.At >= 0 {
			c = o.At
		}
		if c >= end {
			continue
		}
		// One offset short of the pin: the last offset below it may be a
		// transaction's commit marker, which the sink never consumes. It
		// counts once the whole partition has nothing else left and has
		// stayed so for Settle.
		if c < end-1 {
			return false, nil
		}
		ends, _, err := l.offsets(ctx, topic, time.Time{})
		if err != nil {
			return false, err
		}
		e, ok := ends.Lookup(topic, p)
		if !ok || e.Err != nil || !l.quietEnough(topic, p, c, e.Offset) {
			return false, nil
		}
	}
	w.Waiting = ""
	return true, nil
}

// offsets are the partitions' ends and the sink group's commits, read at
// most every 250 ms however many re-checks ask; ends read before notBefore
// are read again (a pin needs ends read after capture was seen caught up).
func (l *PipelineLag) offsets(ctx context.Context, topic string, notBefore time.Time) (kadm.ListedOffsets, kadm.OffsetResponses, error) {
	l.offMu.Lock()
	defer l.offMu.Unlock()
	if c, ok := l.offCache[topic]; ok && time.Since(c.at) < 250*time.Millisecond && !c.asked.Before(notBefore) {
		return c.ends, c.committed, nil
	}
	asked := time.Now()
	committed, err := l.Admin.FetchOffsetsForTopics(ctx, l.Group, topic)
	if errors.Is(err, kerr.GroupIDNotFound) {
		// The sink group has not committed anything yet.
		committed, err = kadm.OffsetResponses{}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	ends, err := l.Admin.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, nil, err
	}
	if l.offCache == nil {
		l.offCache = map[string]offsetsEntry{}
	}
	l.offCache[topic] = offsetsEntry{ends: ends, committed: committed, at: time.Now(), asked: asked}
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

// backfillPending: the namespace's initial backfill has not finished, or a
// targeted backfill (a widened rollout slice, an operator's, a repair) waits
// or runs whose records are not all in Kafka yet: one of the whole
// namespace or a filter, or one that lists any of keys (every key when keys
// is empty). Read at most every 250 ms.
func (l *PipelineLag) backfillPending(ctx context.Context, ns string, keys [][]byte) (bool, error) {
	b, err := l.backfills(ctx, ns)
	if err != nil {
		return true, err
	}
	if b.whole || (len(keys) == 0 && len(b.keys) > 0) {
		return true, nil
	}
	for _, k := range keys {
		if b.keys[string(k)] {
			return true, nil
		}
	}
	return false, nil
}

func (l *PipelineLag) backfills(ctx context.Context, ns string) (backfillEntry, error) {
	l.bfMu.Lock()
	defer l.bfMu.Unlock()
	if c, ok := l.bfCache[ns]; ok && time.Since(c.at) < 250*time.Millisecond {
		return c, nil
	}
	e := backfillEntry{keys: map[string]bool{}}
	p, ok, err := capture.BackfillProgress(ctx, l.Store, ns)
	if err != nil {
		return e, err
	}
	e.whole = ok && !p.Done
	reqs, err := l.Store.List(ctx, capture.RequestKeyPrefix)
	if err != nil {
		return e, err
	}
	for _, b := range reqs {
		var r capture.Request
		// A request capture cannot read is dropped by it, never run.
		if json.Unmarshal(b, &r) != nil || r.Namespace != ns || r.ResumeAfterInvalidate {
			continue
		}
		if len(r.Keys) == 0 {
			e.whole = true // the namespace, a filter, or a reset stream's full backfill
		}
		for _, k := range r.Keys {
			e.keys[string(k)] = true
		}
	}
	e.at = time.Now()
	if l.bfCache == nil {
		l.bfCache = map[string]backfillEntry{}
	}
	l.bfCache[ns] = e
	return e, nil
}

// captureCaught: capture has produced every change of ns up to v — its
// checkpoint is at or past v, or the source holds no change of ns between
// capture's position and v.
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
	// On servers without post-batch resume tokens an idle stream records
	// the newest oplog entry it had scanned past (at_t/at_i).
	if at := (envelope.Version{T: st.AtT, I: st.AtI}); captured.Before(at) {
		captured, inclusive = at, true
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
	from := captured
	if inclusive {
		from = next(captured)
	}
	changed, err := l.changedBetween(ctx, ns, from, v)
	return !changed, err
}

// next is the cluster time right after v.
func next(v envelope.Version) envelope.Version {
	if v.I == math.MaxUint32 {
		return envelope.Version{T: v.T + 1}
	}
	return envelope.Version{T: v.T, I: v.I + 1}
}

// changedBetween reports whether the source may hold a change of ns at a
// cluster time in [from, v]: true unless it is known there is none. The
// answer is cached per namespace: a change seen stays seen while capture has
// not passed it, "none up to x" answers every v <= x, and the source is
// asked at most every 250 ms per namespace.
func (l *PipelineLag) changedBetween(ctx context.Context, ns string, from, v envelope.Version) (bool, error) {
	l.probeMu.Lock()
	defer l.probeMu.Unlock()
	l.mu.Lock()
	e, hit := l.probes[ns]
	l.mu.Unlock()
	// Capture's position only moves forward, and under load it moves with
	// every batch: an answer about an earlier position still holds ("none
	// in [after, quietTo]" covers [from, quietTo]; a change at or after from
	// is still ahead of capture). Keying the cache on the exact position
	// would open a stream for nearly every re-check.
	if hit && !from.Before(e.after) {
		if !e.quietTo.Before(v) {
			return false, nil
		}
		if !e.changeAt.IsZero() && !e.changeAt.Before(from) && !v.Before(e.changeAt) {
			return true, nil
		}
		if time.Since(e.at) < 250*time.Millisecond {
			return true, nil
		}
	}
	if l.Mongo == nil {
		return true, errors.New("reconcile: no MongoDB client to ask for changes")
	}
	var quietTo, changeAt envelope.Version
	var err error
	done := false
	if l.OplogReads {
		quietTo, changeAt, err = oplogProbe(ctx, l.Mongo, ns, from, v)
		done = err == nil
	}
	if !done {
		quietTo, changeAt, err = streamProbe(ctx, l.Mongo, ns, from, v)
		if err != nil {
			return true, fmt.Errorf("reconcile: ask the source for changes of %s: %w", ns, err)
		}
	}
	l.mu.Lock()
	if l.probes == nil {
		l.probes = map[string]probeEntry{}
	}
	l.probes[ns] = probeEntry{after: from, quietTo: quietTo, changeAt: changeAt, at: time.Now()}
	l.mu.Unlock()
	if !changeAt.IsZero() && !v.Before(changeAt) {
		return true, nil
	}
	return quietTo.Before(v), nil
}

func (l *PipelineLag) Positions(ctx context.Context, ns string) ([]Position, error) {
	topic := envelope.Topic(l.TopicPrefix, ns)
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

func (Quiescent) Caught(context.Context, string, [][]byte, envelope.Version, *Watermark) (bool, error) {
	return true, nil
}
func (Quiescent) Positions(context.Context, string) ([]Position, error) { return nil, nil }
