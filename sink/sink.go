package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strconv"
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
	"go.mongodb.org/mongo-driver/bson"
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

// TopicPartition names one partition (envelope.TopicPartition: the sink,
// the rollout and the admin API share it).
type TopicPartition = envelope.TopicPartition

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
	epoch     int32
	end       int64
	applied   envelope.Version
	appliedAt time.Time
}

// Sink consumes capture topics and writes Cassandra.
type Sink struct {
	cfg     Config
	cl      *kgo.Client
	kopts   []kgo.Opt // the caller's, for the static member's leave
	fenced  atomic.Bool
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
	// tasks is the writers' queue; Run closes it as it returns.
	tasks chan task
	ran   atomic.Bool
	// rowCounters is read-only after New.
	rowCounters map[*transform.Table]rowCounters
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
		paused: map[TopicPartition]bool{}, tasks: make(chan task, cfg.MaxInFlight)}
	s.lim = newThrottle(cfg, s.met)
	s.rowCounters = map[*transform.Table]rowCounters{}
	var topics []string
	for _, ns := range d.Mapping.Namespaces() {
		topics = append(topics, envelope.Topic(cfg.TopicPrefix, ns))
		for _, t := range d.Mapping.Tables(ns) {
			s.rowCounters[t] = rowCounters{s.met.rows.WithLabelValues(t.QualifiedName(), "upsert"), s.met.rows.WithLabelValues(t.QualifiedName(), "delete")}
		}
	}
	s.topics = topics
	s.kopts = d.KafkaOpts
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
		kgo.OnPartitionsLost(s.lost),
	}, d.KafkaOpts...)
	if cfg.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(cfg.InstanceID))
	}
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
			s.owned[TopicPartition{Topic: t, Partition: p}] = true
		}
	}
	s.log.Info("partitions assigned", "partitions", m)
}

// appliedOffsets is what may be committed: per partition, the offset after
// the last record whose writes Cassandra acknowledged. The client's own
// "uncommitted offsets" are not used: they advance when records are polled,
// before they are written.
func (s *Sink) appliedOffsets() map[string]map[int32]kgo.EpochOffset {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]map[int32]kgo.EpochOffset{}
	for tp, st := range s.parts {
		if st.committed < 0 || !s.owned[tp] {
			continue
		}
		if out[tp.Topic] == nil {
			out[tp.Topic] = map[int32]kgo.EpochOffset{}
		}
		out[tp.Topic][tp.Partition] = kgo.EpochOffset{Epoch: st.epoch, Offset: st.committed}
	}
	return out
}

func (s *Sink) commitDone(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
	if err == nil && resp != nil {
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if err = kerr.ErrorForCode(p.ErrorCode); err != nil {
					break
				}
			}
		}
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		// The records stay uncommitted and are applied again later: harmless.
		s.log.Warn("commit failed", "err", err)
	}
}

// revoked runs while no poll is being applied (rebalances are blocked during
// one), so every record handed out has been written; committing synchronously
// here means the next owner starts exactly after them.
func (s *Sink) revoked(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
	cl.CommitOffsetsSync(ctx, s.appliedOffsets(), s.commitDone)
	s.lost(ctx, cl, m)
}

// lost forgets partitions taken away without a chance to commit (the group
// session expired); their new owner replays from the last commit.
func (s *Sink) lost(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ps := range m {
		for _, p := range ps {
			delete(s.owned, TopicPartition{Topic: t, Partition: p})
			delete(s.parts, TopicPartition{Topic: t, Partition: p})
		}
	}
	s.log.Info("partitions revoked", "partitions", m)
}

// ErrFenced means another process joined the group with this sink's
// instance id: two daemons share sink.instance_id. The fenced one stops
// rather than rejoin and fence the other in turn.
var ErrFenced = errors.New("sink: fenced by another member with the same instance id")

func (s *Sink) topicOf(ns string) string { return envelope.Topic(s.cfg.TopicPrefix, ns) }

// Close leaves the group. A dynamic member leaves as the client closes (its
// revoke callback commits). A static member does not (franz-go keeps it in
// the group so a restart can take its partitions back), so Close commits what
// was applied, closes the client, and then removes the instance id from the
// group with a LeaveGroup request, so that a clean stop hands its partitions
// to the other daemons at once rather than after the session timeout. A
// fenced sink does not leave: the instance id belongs to the other process.
func (s *Sink) Close() {
	id := s.cfg.InstanceID
	if id == "" {
		s.cl.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !s.fenced.Load() {
		s.cl.CommitOffsetsSync(ctx, s.appliedOffsets(), s.commitDone)
	}
	s.cl.Close()
	if s.fenced.Load() {
		return
	}
	cl, err := kgo.NewClient(s.kopts...)
	if err == nil {
		defer cl.Close()
		var resp kadm.LeaveGroupResponses
		if resp, err = kadm.NewClient(cl).LeaveGroup(ctx, kadm.LeaveGroup(s.cfg.Group).InstanceIDs(id).Reason("tidemark sink closed")); err == nil {
			err = resp.Error()
		}
	}
	if err != nil && !errors.Is(err, kerr.UnknownMemberID) {
		s.log.Warn("cannot leave the group; its partitions move after the session timeout", "group", s.cfg.Group,
			"instance_id", id, "err", err)
		return
	}
	s.log.Info("left the group", "group", s.cfg.Group, "instance_id", id)
}

// Run consumes until ctx ends or a record can be neither written nor
// dead-lettered; then nothing past it is committed. A Sink runs once.
func (s *Sink) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return errors.New("sink: Run called twice")
	}
	dlq := envelope.DeadLetterTopic(s.cfg.TopicPrefix)
	if _, err := kadm.NewClient(s.cl).CreateTopic(ctx, -1, -1, nil, dlq); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		s.log.Warn("cannot create the dead-letter topic; dead letters will fail until it exists", "topic", dlq, "err", err)
	}
	if err := s.waitForTopics(ctx); err != nil {
		return nil
	}
	// The writers outlive ctx: apply waits for every task it queued, and a
	// task queued as ctx ends must still be taken (it returns at once), or
	// apply would wait forever. Once Run no longer applies nothing sends, so
	// closing the queue stops them.
	var pooled sync.WaitGroup
	pooled.Go(func() { s.runPool(s.tasks) })
	defer func() { close(s.tasks); pooled.Wait() }()
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
		var fenced error
		fs.EachError(func(t string, p int32, err error) {
			switch {
			case errors.Is(err, kerr.FencedInstanceID):
				fenced = err
			case !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled):
				s.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		if fenced != nil {
			s.fenced.Store(true)
			s.cl.AllowRebalance()
			return fmt.Errorf("%w: sink.instance_id %q of group %s is in use by another process; "+
				"give each daemon its own (docs/deploy.md): %w", ErrFenced, s.cfg.InstanceID, s.cfg.Group, fenced)
		}
		if err := s.apply(ctx, fs); err != nil {
			s.cl.AllowRebalance()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if fs.NumRecords() > 0 {
			// Asynchronous: the next poll is written while this commit is on
			// its way. franz-go orders commits, and a lost one only means
			// records applied again later, which is harmless.
			s.cl.CommitOffsets(ctx, s.appliedOffsets(), s.commitDone)
		}
		s.cl.AllowRebalance()
		if time.Since(lastIntent) > time.Second {
			s.applyIntents(ctx)
			s.refreshEnds(ctx)
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

// task is one write job for the pool: a batch to one Cassandra partition,
// or the key-map writes of one _id in offset order. It holds no closures:
// there is one per row, and every allocation on this path is paid twice, once
// to make it and once more in garbage collection, on the cores Cassandra uses.
type task struct {
	p   *producer
	g   *group
	its []*item
}

func (t task) run() error {
	if t.g != nil {
		return t.p.s.writeGroup(t.p.ctx, t.g)
	}
	for _, it := range t.its {
		if err := t.p.s.applyMapped(t.p.ctx, it); err != nil {
			return err
		}
	}
	return nil
}

// runPool runs the writers every partition shares until ctx ends. A fixed
// pool sized to the in-flight bound, rather than workers per partition: the
// throttle then only makes a writer wait when it has lowered the bound, and
// the writes of one partition's backlog use every slot the others leave free.
// Writers are long-lived because a fresh goroutine grows its stack through
// gocql's deep call path, which cost more CPU than the write on a machine
// Cassandra shares.
//
// A writer waits on the queue alone: a select that also watched a context
// would lock that context's channel, which every writer shares, once per write.
func (s *Sink) runPool(tasks <-chan task) {
	var wg sync.WaitGroup
	for range s.cfg.MaxInFlight {
		wg.Go(func() {
			for t := range tasks {
				t.p.done(t.run())
			}
		})
	}
	wg.Wait()
}

// pollResult is what one partition's share of a poll applied.
type pollResult struct {
	tp   TopicPartition
	last *kgo.Record
	maxV envelope.Version
}

// apply writes one poll's records. Each partition's records are decoded and
// grouped by a producer of their own, which hands writes to the shared pool
// as it goes, at most Concurrency of them at a time; apply returns once every
// write is acknowledged (or has failed, and then nothing is recorded as
// applied).
func (s *Sink) apply(ctx context.Context, fs kgo.Fetches) error {
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var results []*pollResult
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		tp := TopicPartition{Topic: p.Topic, Partition: p.Partition}
		s.mu.Lock()
		st := s.parts[tp]
		if st == nil {
			st = &partState{committed: -1}
			s.parts[tp] = st
		}
		st.end = max(st.end, p.HighWatermark)
		s.mu.Unlock()
		if len(p.Records) == 0 {
			return
		}
		res := &pollResult{tp: tp, last: p.Records[len(p.Records)-1]}
		results = append(results, res)
		wg.Add(1)
		pr := &producer{s: s, ctx: pctx, fail: cancel, wg: &wg, sem: make(chan struct{}, s.cfg.Concurrency)}
		go func() {
			defer wg.Done()
			if err := pr.produce(p.Records, res); err != nil {
				cancel(err)
			}
		}()
	})
	wg.Wait()
	// An error, or the end of ctx, leaves writes undone: no offset may move.
	if pctx.Err() != nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		return context.Cause(pctx)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range results {
		if st := s.parts[r.tp]; st != nil {
			st.committed = r.last.Offset + 1
			st.epoch = r.last.LeaderEpoch
			st.applied = envelope.Max(st.applied, r.maxV)
			st.appliedAt = time.Now()
			s.setLagMetrics(r.tp, st)
		}
	}
	return nil
}

type item struct {
	rec  *kgo.Record
	ev   envelope.Event
	rows []transform.Row
	dead atomic.Bool
}

func (it *item) row(t *transform.Table) *transform.Row {
	for i := range it.rows {
		if it.rows[i].Table == t {
			return &it.rows[i]
		}
	}
	return nil
}

// group is the changes of one chunk of a partition's records that fall in one
// Cassandra partition of one table: written as one unlogged batch.
type group struct {
	table   *transform.Table
	changes []Change
	items   []*item
	// Most groups hold one row: its change and item live here, which saves
	// two allocations per row.
	change0 [1]Change
	item0   [1]*item
}

// producer decodes one partition's share of a poll and hands its writes to
// the pool, at most Concurrency of them queued or running at a time.
type producer struct {
	s    *Sink
	ctx  context.Context
	fail context.CancelCauseFunc
	wg   *sync.WaitGroup
	sem  chan struct{}
}

// submit queues t. Each step first tries without blocking: a select that can
// block also locks the poll's context channel, which every producer and every
// gocql call of the poll shares.
func (pr *producer) submit(t task) error {
	if err := pr.ctx.Err(); err != nil {
		return err
	}
	select {
	case pr.sem <- struct{}{}:
	default:
		select {
		case pr.sem <- struct{}{}:
		case <-pr.ctx.Done():
			return pr.ctx.Err()
		}
	}
	pr.wg.Add(1)
	select {
	case pr.s.tasks <- t:
		return nil
	default:
	}
	select {
	case pr.s.tasks <- t:
		return nil
	case <-pr.ctx.Done():
		pr.done(nil)
		return pr.ctx.Err()
	}
}

// done ends a task; an error stops the rest of the poll.
func (pr *producer) done(err error) {
	<-pr.sem
	if err != nil {
		pr.fail(err)
	}
	pr.wg.Done()
}

// produceChunk is how many records a producer decodes before handing their
// writes to the pool, so that writing starts before the whole poll is decoded.
const produceChunk = 512

// produce decodes and transforms one partition's records and submits their
// writes. Tables whose key comes from _id alone are last-write-wins per cell,
// so their changes can be written in any order: each chunk's are grouped by
// Cassandra partition and each group is one write. Tables with a key map are
// written per _id in offset order, once the whole poll is decoded: the key map
// is written after the row, so an event cut short by a crash must be replayed
// before any later event of its _id, or the row it wrote under its old key
// would never be deleted.
func (pr *producer) produce(recs []*kgo.Record, res *pollResult) error {
	s, ctx := pr.s, pr.ctx
	slice := s.inSlice.Load()
	mapped := map[string][]*item{}
	var ids []string
	var gk []byte
	for size := produceChunk / 8; len(recs) > 0; size = produceChunk {
		chunk := recs[:min(size, len(recs))]
		recs = recs[len(chunk):]
		groups := make(map[string]*group, len(chunk))
		var batches []*group
		// One allocation per chunk instead of one per record; a namespace
		// with several tables without key map can need more groups than
		// records, and then another slab.
		items := make([]item, len(chunk))
		slab := make([]group, 0, len(chunk))
		for k, r := range chunk {
			ev, err := envelope.Decode(r.Value)
			if err != nil {
				if err := s.deadLetter(ctx, "sink", "malformed record: "+err.Error(), r, nil); err != nil {
					return err
				}
				continue
			}
			if want := s.topicOf(ev.Namespace); r.Topic != want {
				// A record of another collection (a producer other than
				// capture, a topic renamed by hand) would be applied to that
				// collection's tables from the wrong stream, out of order.
				reason := fmt.Sprintf("namespace mismatch: a record of %s on topic %s (its topic is %s)", ev.Namespace, r.Topic, want)
				if err := s.deadLetter(ctx, "sink", reason, r, &ev); err != nil {
					return err
				}
				continue
			}
			res.maxV = envelope.Max(res.maxV, ev.Version)
			if ev.Op == envelope.OpUpdate && ev.Doc == nil {
				continue // the document was gone at lookup time; its delete follows
			}
			if slice != nil && !(*slice)(ev.Namespace, r.Key) {
				s.met.skipped.Inc()
				continue
			}
			it := &items[k]
			it.rec, it.ev = r, ev
			if ev.Op != envelope.OpDelete {
				if it.rows, err = s.m.Apply(ev.Namespace, ev.Doc); err != nil {
					if err := s.deadLetter(ctx, "transform", err.Error(), r, &ev); err != nil {
						return err
					}
					continue
				}
			}
			hasMapped := false
			for _, t := range s.m.Tables(ev.Namespace) {
				if t.NeedsKeyMap() {
					hasMapped = true
					continue
				}
				c := Change{Row: it.row(t), Version: ev.Version.Micros()}
				if gk, err = partitionOf(gk[:0], t, &c, ev.ID); err != nil {
					if err := s.deadLetter(ctx, "sink", err.Error(), r, &it.ev); err != nil {
						return err
					}
					it.dead.Store(true)
					break
				}
				g := groups[string(gk)]
				if g == nil {
					if len(slab) == cap(slab) {
						slab = make([]group, 0, len(chunk))
					}
					slab = append(slab, group{table: t})
					g = &slab[len(slab)-1]
					g.changes, g.items = g.change0[:0], g.item0[:0]
					groups[string(gk)] = g
					batches = append(batches, g)
				}
				g.changes = append(g.changes, c)
				g.items = append(g.items, it)
			}
			if hasMapped && !it.dead.Load() {
				id := string(r.Key)
				if _, ok := mapped[id]; !ok {
					ids = append(ids, id)
				}
				mapped[id] = append(mapped[id], it)
			}
		}
		for _, g := range batches {
			if err := pr.submit(task{p: pr, g: g}); err != nil {
				return err
			}
		}
	}
	for _, k := range ids {
		if err := pr.submit(task{p: pr, its: mapped[k]}); err != nil {
			return err
		}
	}
	return nil
}

// partitionOf completes a change of a table without key map (the delete's key
// comes from the _id) and appends the identity of its Cassandra partition.
func partitionOf(dst []byte, t *transform.Table, c *Change, id bson.RawValue) ([]byte, error) {
	var key []any
	if c.Row != nil && len(t.ClusteringKey) == 0 {
		// The row's encoded key is its partition key: no need to encode again.
		dst = append(dst, t.QualifiedName()...)
		return append(append(dst, 0), c.Row.Key...), nil
	}
	if c.Row != nil {
		key = t.KeyValues(c.Row.Values)
	} else {
		var err error
		if key, err = t.KeyForID(id); err != nil {
			return dst, err
		}
		c.Key = key
	}
	pk, err := t.EncodeKey(key[:len(t.PartitionKey)])
	if err != nil {
		return dst, err
	}
	dst = append(dst, t.QualifiedName()...)
	return append(append(dst, 0), pk...), nil
}

// writeGroup writes one partition's changes. A group the target rejects as
// invalid is split so that only the offending rows are dead-lettered; any
// other failure is retried until it succeeds, the target is broken, or ctx
// ends (see retry), and never dead-letters.
func (s *Sink) writeGroup(ctx context.Context, g *group) error {
	err := s.retry(ctx, func(ctx context.Context) error { return s.w.Write(ctx, g.table, g.changes) })
	if err == nil {
		s.met.batch.Observe(float64(len(g.changes)))
		for _, c := range g.changes {
			s.countRow(g.table, c.Row == nil)
		}
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, ErrTargetBroken) {
		return err
	}
	if len(g.changes) > 1 && isInvalid(err) {
		for i := range g.changes {
			one := &group{table: g.table, changes: g.changes[i : i+1], items: g.items[i : i+1]}
			if err := s.writeGroup(ctx, one); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range g.items {
		if err := s.giveUp(ctx, it, err); err != nil {
			return err
		}
	}
	return nil
}

// applyMapped writes one event to the key-map tables of its namespace.
func (s *Sink) applyMapped(ctx context.Context, it *item) error {
	for _, t := range s.m.Tables(it.ev.Namespace) {
		if !t.NeedsKeyMap() || it.dead.Load() {
			continue
		}
		row := it.row(t)
		err := s.retry(ctx, func(ctx context.Context) error { return s.w.ApplyMapped(ctx, t, &it.ev, row) })
		if err == nil {
			s.countRow(t, row == nil)
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrTargetBroken) {
			return err
		}
		if err := s.giveUp(ctx, it, err); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sink) countRow(t *transform.Table, deleted bool) {
	c := s.rowCounters[t]
	if deleted {
		c.deletes.Inc()
	} else {
		c.upserts.Inc()
	}
}

// rowCounters are tidemark_sink_rows_total's series per table, looked up once:
// finding a series by its label values for every row costs a hash of them.
type rowCounters struct{ upserts, deletes prometheus.Counter }

// giveUp dead-letters an event that could not be written, once.
func (s *Sink) giveUp(ctx context.Context, it *item, err error) error {
	if it.dead.Swap(true) {
		return nil
	}
	s.log.Error("write failed; sending to the dead-letter topic", "namespace", it.ev.Namespace, "version", it.ev.Version, "err", err)
	return s.deadLetter(ctx, "sink", err.Error(), it.rec, &it.ev)
}

// retry runs write until it succeeds, is rejected as invalid, the target is
// broken, or ctx ends, waiting with exponential backoff (up to 10 s) and
// jitter in between and holding a throttle slot while it runs.
//
// Every other error is retried for as long as it takes: a timeout, an
// unavailable or overloaded coordinator, no hosts, a failed heartbeat or a
// closed connection say nothing about the record, only that Cassandra cannot
// answer now. Dead-lettering on them would drop valid records during an
// outage (a chaos run that froze Cassandra lost some this way). The poll
// holding the record is not done, so no offset moves past it meanwhile.
// Past Retries attempts the write is logged as stuck, once.
func (s *Sink) retry(ctx context.Context, write func(context.Context) error) error {
	backoff := s.cfg.RetryBackoff
	for attempt := 0; ; attempt++ {
		if err := s.lim.acquire(ctx); err != nil {
			return err
		}
		start := time.Now()
		err := write(ctx)
		s.lim.release(time.Since(start), err)
		if err == nil || ctx.Err() != nil || isInvalid(err) || errors.Is(err, ErrTargetBroken) {
			return err
		}
		if attempt == s.cfg.Retries {
			s.log.Warn("a write keeps failing; retrying until Cassandra takes it", "attempts", attempt+1, "err", err)
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
}

// isInvalid reports errors that retrying cannot fix (the row is rejected).
func isInvalid(err error) bool {
	var ce *transform.ConvertError
	return errors.Is(err, ErrRejected) || errors.As(err, &ce)
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

// setLagMetrics exports one partition's lag; s.mu is held.
func (s *Sink) setLagMetrics(tp TopicPartition, st *partState) {
	p := strconv.Itoa(int(tp.Partition))
	behind := max(0, st.end-st.committed)
	s.met.lagRecords.WithLabelValues(tp.Topic, p).Set(float64(behind))
	secs := 0.0
	if behind > 1 && !st.applied.IsZero() { // one offset is the commit marker; see Lag
		secs = max(0, time.Since(st.applied.Time()).Seconds())
	}
	s.met.lagSeconds.WithLabelValues(tp.Topic, p).Set(secs)
}

// refreshEnds reads the end offsets of the owned partitions. Fetches report
// them too, but a paused partition is not fetched: without this its lag
// would freeze at the moment of the pause while Kafka keeps buffering.
func (s *Sink) refreshEnds(ctx context.Context) {
	s.mu.Lock()
	topics := map[string]bool{}
	for tp := range s.owned {
		topics[tp.Topic] = true
	}
	s.mu.Unlock()
	if len(topics) == 0 {
		return
	}
	names := make([]string, 0, len(topics))
	for t := range topics {
		names = append(names, t)
	}
	ends, err := kadm.NewClient(s.cl).ListEndOffsets(ctx, names...)
	if err != nil {
		s.log.Debug("cannot list end offsets for lag", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ends.Each(func(o kadm.ListedOffset) {
		tp := TopicPartition{Topic: o.Topic, Partition: o.Partition}
		st := s.parts[tp]
		if o.Err != nil || st == nil || !s.owned[tp] {
			return
		}
		st.end = max(st.end, o.Offset)
		s.setLagMetrics(tp, st)
	})
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
			// Capture writes every batch as a transaction, so a caught-up
			// partition still ends with one offset, the commit marker, that
			// holds no record: one offset behind is not behind in time.
			if !st.applied.IsZero() && l.RecordsBehind > 1 {
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
	if st := s.parts[TopicPartition{Topic: topic, Partition: partition}]; st != nil {
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
				tp := TopicPartition{Topic: t, Partition: p}
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
					st.committed, st.epoch = off, -1
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
		// Owners of other partitions (other daemons) record theirs in the
		// same request at the same time: merge by compare-and-swap, or a
		// plain write would drop theirs and the rewind never finish.
		_, err := checkpoints.UpdateJSON(ctx, s.store, key, func(cur RewindRequest, found bool) (RewindRequest, error) {
			if !found {
				cur = r
			}
			if cur.Done == nil {
				cur.Done = map[string]int64{}
			}
			for k, v := range r.Done {
				cur.Done[k] = v
			}
			return cur, nil
		})
		if err != nil {
			s.log.Error("cannot record rewind progress", "id", r.ID, "err", err)
		}
	}
}

// Pause stores partitions as paused for every daemon; Run applies it.
func Pause(ctx context.Context, st checkpoints.Store, tps []TopicPartition, pause bool) ([]TopicPartition, error) {
	// Compare-and-swap: of concurrent calls (here or on other daemons)
	// each takes effect, or this one returns checkpoints.ErrConflict.
	return checkpoints.UpdateJSON(ctx, st, PausedKey, func(cur []TopicPartition, _ bool) ([]TopicPartition, error) {
		return mergePaused(cur, tps, pause), nil
	})
}

func mergePaused(cur, tps []TopicPartition, pause bool) []TopicPartition {
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
	return out
}
