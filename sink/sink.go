package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"golang.org/x/sync/errgroup"
)

// Deps are what the sink needs from the daemon.
type Deps struct {
	// KafkaOpts are connection options (seed brokers, TLS, SASL).
	KafkaOpts []kgo.Opt
	Writer    Writer
	Mapping   *transform.Mapping
	Store     checkpoints.Store
	Logger    *slog.Logger
	// Registerer receives the sink's metrics; nil for none.
	Registerer prometheus.Registerer
}

// TopicPartition names one partition.
type TopicPartition struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
}

// PartitionLag is how far one partition is behind.
type PartitionLag struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	// Committed is the next offset to apply.
	Committed int64 `json:"committed"`
	// End is the partition's high watermark when last fetched.
	End           int64            `json:"end"`
	RecordsBehind int64            `json:"records_behind"`
	Applied       envelope.Version `json:"applied_version"`
	SecondsBehind float64          `json:"seconds_behind"`
	Paused        bool             `json:"paused"`
}

type partState struct {
	committed int64
	end       int64
	applied   envelope.Version
	appliedAt time.Time
}

// Sink consumes capture topics and writes Cassandra.
type Sink struct {
	cfg     Config
	cl      *kgo.Client
	w       Writer
	m       *transform.Mapping
	store   checkpoints.Store
	log     *slog.Logger
	met     *metrics
	lim     *throttle
	inSlice atomic.Pointer[func(string, []byte) bool]

	mu       sync.Mutex
	parts    map[TopicPartition]*partState
	owned    map[TopicPartition]bool
	paused   map[TopicPartition]bool
	lastMark time.Time
	topics   []string
}

// PausedKey holds the operator's paused partitions, shared by every daemon.
const PausedKey = checkpoints.PrefixIntent + "paused"

// RewindKeyPrefix holds rewind requests the partition owners execute.
const RewindKeyPrefix = checkpoints.PrefixIntent + "rewind/"

// New creates a sink for the namespaces mapping maps.
func New(cfg Config, d Deps) (*Sink, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	s := &Sink{cfg: cfg, w: d.Writer, m: d.Mapping, store: d.Store, log: d.Logger.With("stage", "sink"),
		met: newMetrics(d.Registerer), parts: map[TopicPartition]*partState{}, owned: map[TopicPartition]bool{},
		paused: map[TopicPartition]bool{}}
	s.lim = newThrottle(cfg, s.met)
	var topics []string
	for _, ns := range d.Mapping.Namespaces() {
		topics = append(topics, cfg.TopicPrefix+"."+ns)
	}
	s.topics = topics
	opts := append([]kgo.Opt{
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(topics...),
		// Capture produces in transactions; aborted batches must never be applied.
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.OnPartitionsAssigned(s.assigned),
		kgo.OnPartitionsRevoked(s.revoked),
		kgo.OnPartitionsLost(s.revoked),
	}, d.KafkaOpts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("sink: kafka client: %w", err)
	}
	s.cl = cl
	return s, nil
}

// SetSlice restricts writes to keys for which in returns true (nil: all keys).
// Records outside the slice are committed without being written.
func (s *Sink) SetSlice(in func(namespace string, key []byte) bool) {
	if in == nil {
		s.inSlice.Store(nil)
		return
	}
	s.inSlice.Store(&in)
}

func (s *Sink) assigned(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ps := range m {
		for _, p := range ps {
			s.owned[TopicPartition{t, p}] = true
		}
	}
	s.log.Info("partitions assigned", "partitions", m)
}

// revoked runs while no poll is being applied (rebalances are blocked during
// one), so every record handed out has been written and committed already.
func (s *Sink) revoked(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ps := range m {
		for _, p := range ps {
			delete(s.owned, TopicPartition{t, p})
			delete(s.parts, TopicPartition{t, p})
		}
	}
	s.log.Info("partitions revoked", "partitions", m)
}

// Close leaves the group.
func (s *Sink) Close() { s.cl.Close() }

// Run consumes until ctx ends or a record can be neither written nor
// dead-lettered; then nothing past it is committed.
func (s *Sink) Run(ctx context.Context) error {
	dlq := envelope.DeadLetterTopic(s.cfg.TopicPrefix)
	if _, err := kadm.NewClient(s.cl).CreateTopic(ctx, -1, -1, nil, dlq); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		s.log.Warn("cannot create the dead-letter topic; dead letters will fail until it exists", "topic", dlq, "err", err)
	}
	if err := s.waitForTopics(ctx); err != nil {
		return nil
	}
	s.applyIntents(ctx)
	lastIntent := time.Now()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fs := s.cl.PollRecords(pctx, 10_000)
		cancel()
		if ctx.Err() != nil {
			s.cl.AllowRebalance()
			return nil
		}
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				s.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		if err := s.apply(ctx, fs); err != nil {
			s.cl.AllowRebalance()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if fs.NumRecords() > 0 {
			if err := s.cl.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
				// Records stay uncommitted and are re-applied later: harmless.
				s.log.Warn("commit failed", "err", err)
			}
		}
		s.cl.AllowRebalance()
		if time.Since(lastIntent) > time.Second {
			s.applyIntents(ctx)
			lastIntent = time.Now()
		}
		s.maybeMark(ctx)
	}
}

// waitForTopics blocks until capture created every topic the sink consumes.
// A group joined before its topics exist would notice them only at the next
// metadata refresh, minutes later.
func (s *Sink) waitForTopics(ctx context.Context) error {
	adm := kadm.NewClient(s.cl)
	logged := false
	for {
		td, err := adm.ListTopics(ctx, s.topics...)
		missing := []string{}
		for _, t := range s.topics {
			if d, ok := td[t]; err != nil || !ok || d.Err != nil {
				missing = append(missing, t)
			}
		}
		if len(missing) == 0 {
			s.cl.ForceMetadataRefresh()
			return nil
		}
		if !logged {
			s.log.Info("waiting for capture to create topics", "topics", missing)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// apply writes one poll's records: one worker per partition.
func (s *Sink) apply(ctx context.Context, fs kgo.Fetches) error {
	g, gctx := errgroup.WithContext(ctx)
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		tp := TopicPartition{p.Topic, p.Partition}
		s.mu.Lock()
		st := s.parts[tp]
		if st == nil {
			st = &partState{committed: -1}
			s.parts[tp] = st
		}
		st.end = p.HighWatermark
		s.mu.Unlock()
		if len(p.Records) == 0 {
			return
		}
		g.Go(func() error { return s.applyPartition(gctx, tp, p.Records) })
	})
	return g.Wait()
}

type item struct {
	rec *kgo.Record
	ev  envelope.Event
}

func (s *Sink) applyPartition(ctx context.Context, tp TopicPartition, recs []*kgo.Record) error {
	// Keys are written concurrently; each key's events in offset order. Every
	// event is applied, not only a key's newest: the key map of a mutable-key
	// table is written after the row, so an event cut short by a crash must be
	// replayed before any later event of its key, or the row it wrote under
	// its key would never be deleted.
	byKey := map[string][]*item{}
	var order []string
	var maxV envelope.Version
	slice := s.inSlice.Load()
	for _, r := range recs {
		ev, err := envelope.Decode(r.Value)
		if err != nil {
			if err := s.deadLetter(ctx, "sink", "malformed record: "+err.Error(), r, nil); err != nil {
				return err
			}
			continue
		}
		maxV = envelope.Max(maxV, ev.Version)
		if ev.Op == envelope.OpUpdate && ev.Doc == nil {
			continue // the document was gone at lookup time; its delete follows
		}
		if slice != nil && !(*slice)(ev.Namespace, r.Key) {
			s.met.skipped.Inc()
			continue
		}
		k := string(r.Key)
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], &item{r, ev})
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.cfg.Concurrency)
	for _, k := range order {
		items := byKey[k]
		g.Go(func() error {
			for _, it := range items {
				if err := s.applyOne(gctx, it); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	last := recs[len(recs)-1]
	s.mu.Lock()
	if st := s.parts[tp]; st != nil {
		st.committed = last.Offset + 1
		st.applied = envelope.Max(st.applied, maxV)
		st.appliedAt = time.Now()
		s.met.lagRecords.WithLabelValues(tp.Topic, fmt.Sprint(tp.Partition)).Set(float64(max(0, st.end-st.committed)))
		s.met.lagSeconds.WithLabelValues(tp.Topic, fmt.Sprint(tp.Partition)).Set(max(0, time.Since(st.applied.Time()).Seconds()))
	}
	s.mu.Unlock()
	return nil
}

// applyOne transforms and writes one event, retrying transient failures and
// dead-lettering what cannot be written.
func (s *Sink) applyOne(ctx context.Context, it *item) error {
	var rows []transform.Row
	if it.ev.Op != envelope.OpDelete {
		var err error
		rows, err = s.m.Apply(it.ev.Namespace, it.ev.Doc)
		if err != nil {
			return s.deadLetter(ctx, "transform", err.Error(), it.rec, &it.ev)
		}
	}
	backoff := s.cfg.RetryBackoff
	var err error
	for attempt := 0; attempt <= s.cfg.Retries; attempt++ {
		if err = s.lim.acquire(ctx); err != nil {
			return err
		}
		start := time.Now()
		err = s.w.Apply(ctx, &it.ev, rows)
		s.lim.release(time.Since(start), err)
		if err == nil {
			for _, r := range rows {
				s.met.rows.WithLabelValues(r.Table.QualifiedName(), "upsert").Inc()
			}
			if it.ev.Op == envelope.OpDelete {
				s.met.rows.WithLabelValues(it.ev.Namespace, "delete").Inc()
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ce *transform.ConvertError
		if errors.As(err, &ce) || isInvalid(err) {
			break
		}
		s.met.retries.Inc()
		wait := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
	s.log.Error("write failed; sending to the dead-letter topic", "namespace", it.ev.Namespace, "version", it.ev.Version, "err", err)
	return s.deadLetter(ctx, "sink", err.Error(), it.rec, &it.ev)
}

// isInvalid reports errors that retrying cannot fix (the row is rejected).
func isInvalid(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "Invalid") || strings.Contains(msg, "marshal")
}

// deadLetter keeps a record that cannot be applied. If the dead-letter topic
// cannot take it, the error stops the sink so the offset is not committed.
func (s *Sink) deadLetter(ctx context.Context, stage, reason string, r *kgo.Record, ev *envelope.Event) error {
	d := envelope.DeadLetter{Stage: stage, Reason: reason, Key: r.Key, Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Record: r.Value}
	if ev != nil {
		d.Namespace, d.Version = ev.Namespace, ev.Version
	}
	b, err := envelope.EncodeDeadLetter(d)
	if err != nil {
		return err
	}
	short := reason
	if i := strings.IndexByte(short, ':'); i > 0 && stage == "sink" {
		short = short[:i]
	}
	s.met.deadLetters.WithLabelValues(stage).Inc()
	res := s.cl.ProduceSync(ctx, &kgo.Record{Topic: envelope.DeadLetterTopic(s.cfg.TopicPrefix), Key: r.Key, Value: b})
	if err := res.FirstErr(); err != nil {
		return fmt.Errorf("sink: dead-letter %s/%d@%d (%s): %w", r.Topic, r.Partition, r.Offset, short, err)
	}
	return nil
}

// Lag reports every partition this process owns.
func (s *Sink) Lag() []PartitionLag {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PartitionLag, 0, len(s.owned))
	for tp := range s.owned {
		l := PartitionLag{Topic: tp.Topic, Partition: tp.Partition, Paused: s.paused[tp], Committed: -1}
		if st := s.parts[tp]; st != nil {
			l.Committed, l.End, l.Applied = st.committed, st.end, st.applied
			if st.committed >= 0 {
				l.RecordsBehind = max(0, st.end-st.committed)
			}
			if !st.applied.IsZero() && l.RecordsBehind > 0 {
				l.SecondsBehind = time.Since(st.applied.Time()).Seconds()
			}
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Partition < out[j].Partition
	})
	return out
}

// Applied is the newest source version applied on a partition (zero if unknown).
func (s *Sink) Applied(topic string, partition int32) envelope.Version {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.parts[TopicPartition{topic, partition}]; st != nil {
		return st.applied
	}
	return envelope.Version{}
}

func (s *Sink) maybeMark(ctx context.Context) {
	if time.Since(s.lastMark) < s.cfg.MarkInterval {
		return
	}
	s.lastMark = time.Now()
	for _, l := range s.Lag() {
		if l.Committed < 0 {
			continue
		}
		m := checkpoints.Mark{Topic: l.Topic, Partition: l.Partition, Offset: l.Committed,
			VersionT: l.Applied.T, VersionI: l.Applied.I, Wall: time.Now().UTC()}
		if err := checkpoints.PutJSON(ctx, s.store, checkpoints.PartitionKey(checkpoints.PrefixMark, l.Topic, l.Partition), m); err != nil {
			s.log.Warn("cannot write offset mark", "err", err)
		}
	}
}

// applyIntents reconciles paused partitions and executes rewind requests for
// partitions this process owns. It runs between polls, when nothing is in flight.
func (s *Sink) applyIntents(ctx context.Context) {
	var want []TopicPartition
	if _, err := s.store.Get(ctx, PausedKey); err == nil {
		w, _, err := checkpoints.GetJSON[[]TopicPartition](ctx, s.store, PausedKey)
		if err != nil {
			s.log.Warn("cannot read paused partitions", "err", err)
			return
		}
		want = w
	}
	wantSet := map[TopicPartition]bool{}
	for _, tp := range want {
		wantSet[tp] = true
	}
	s.mu.Lock()
	pause, resume := map[string][]int32{}, map[string][]int32{}
	for tp := range wantSet {
		if !s.paused[tp] {
			pause[tp.Topic] = append(pause[tp.Topic], tp.Partition)
		}
	}
	for tp := range s.paused {
		if !wantSet[tp] {
			resume[tp.Topic] = append(resume[tp.Topic], tp.Partition)
		}
	}
	s.paused = wantSet
	s.mu.Unlock()
	if len(pause) > 0 {
		s.cl.PauseFetchPartitions(pause)
		s.log.Info("paused", "partitions", pause)
	}
	if len(resume) > 0 {
		s.cl.ResumeFetchPartitions(resume)
		s.log.Info("resumed", "partitions", resume)
	}
	s.met.paused.Set(float64(len(wantSet)))
	s.executeRewinds(ctx)
}

// RewindRequest asks the owners of partitions to move their positions.
type RewindRequest struct {
	ID      string                     `json:"id"`
	Targets map[string]map[int32]int64 `json:"targets"`
	Actor   string                     `json:"actor"`
	Reason  string                     `json:"reason"`
	// Done records, per "topic/partition", the offset it was moved from.
	Done map[string]int64 `json:"done,omitempty"`
}

// Remaining reports how many partitions have not been rewound yet.
func (r *RewindRequest) Remaining() int {
	n := 0
	for t, ps := range r.Targets {
		for p := range ps {
			if _, ok := r.Done[fmt.Sprintf("%s/%d", t, p)]; !ok {
				n++
			}
		}
	}
	return n
}

func (s *Sink) executeRewinds(ctx context.Context) {
	reqs, err := s.store.List(ctx, RewindKeyPrefix)
	if err != nil || len(reqs) == 0 {
		return
	}
	for key, b := range reqs {
		var r RewindRequest
		if json.Unmarshal(b, &r) != nil || r.Remaining() == 0 {
			continue
		}
		if r.Done == nil {
			r.Done = map[string]int64{}
		}
		set := map[string]map[int32]kgo.EpochOffset{}
		s.mu.Lock()
		for t, ps := range r.Targets {
			for p, off := range ps {
				tp := TopicPartition{t, p}
				if _, done := r.Done[fmt.Sprintf("%s/%d", t, p)]; done || !s.owned[tp] {
					continue
				}
				if set[t] == nil {
					set[t] = map[int32]kgo.EpochOffset{}
				}
				set[t][p] = kgo.EpochOffset{Epoch: -1, Offset: off}
				from := int64(-1)
				if st := s.parts[tp]; st != nil {
					from = st.committed
					st.committed = off
				}
				r.Done[fmt.Sprintf("%s/%d", t, p)] = from
			}
		}
		s.mu.Unlock()
		if len(set) == 0 {
			continue
		}
		// Nothing is in flight between polls: moving the positions and
		// committing them is the whole rewind.
		s.cl.SetOffsets(set)
		var commitErr error
		s.cl.CommitOffsetsSync(ctx, set, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			if err != nil {
				commitErr = err
				return
			}
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if e := kerr.ErrorForCode(p.ErrorCode); e != nil && commitErr == nil {
						commitErr = e
					}
				}
			}
		})
		if commitErr != nil {
			s.log.Error("rewind commit failed", "id", r.ID, "err", commitErr)
			continue
		}
		s.log.Info("rewound", "id", r.ID, "targets", set, "reason", r.Reason)
		if err := checkpoints.PutJSON(ctx, s.store, key, r); err != nil {
			s.log.Error("cannot record rewind progress", "id", r.ID, "err", err)
		}
	}
}

// Pause stores partitions as paused for every daemon; Run applies it.
func Pause(ctx context.Context, st checkpoints.Store, tps []TopicPartition, pause bool) ([]TopicPartition, error) {
	cur, _, err := checkpoints.GetJSON[[]TopicPartition](ctx, st, PausedKey)
	if err != nil {
		return nil, err
	}
	set := map[TopicPartition]bool{}
	for _, tp := range cur {
		set[tp] = true
	}
	for _, tp := range tps {
		set[tp] = pause
	}
	out := []TopicPartition{}
	for tp, on := range set {
		if on {
			out = append(out, tp)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Topic < out[j].Topic || out[i].Topic == out[j].Topic && out[i].Partition < out[j].Partition
	})
	return out, checkpoints.PutJSON(ctx, st, PausedKey, out)
}
