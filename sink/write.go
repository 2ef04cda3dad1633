package sink

// This file writes: the pool of writers, grouping a partition's records into
// one write per Cassandra partition, retries and dead letters.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
)

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
// jitter in between, cut short when another write succeeds, and holding a
// throttle slot while it runs.
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
		if err == nil {
			s.recovered.broadcast()
			return nil
		}
		if ctx.Err() != nil || isInvalid(err) || errors.Is(err, ErrTargetBroken) {
			return err
		}
		if attempt == s.cfg.Retries {
			s.log.Warn("a write keeps failing; retrying until Cassandra takes it", "attempts", attempt+1, "err", err)
		}
		s.met.retries.Inc()
		wait := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
		woken := s.recovered.enter()
		select {
		case <-ctx.Done():
			s.recovered.leave()
			return ctx.Err()
		case <-time.After(wait):
		case <-woken:
			// Another write just succeeded. Without this, after a long
			// outage every partition's writes sat out a backoff of 5-15 s
			// after Cassandra answered again (the chaos suite measured
			// 12.6 s to lag under 5 s after a 60 s outage).
		}
		s.recovered.leave()
		backoff = min(2*backoff, 10*time.Second)
	}
}

// wakeup lets writes sleeping out a backoff be woken at once. Its zero
// value is ready.
type wakeup struct {
	sleepers atomic.Int32
	mu       sync.Mutex
	ch       chan struct{} // closed by broadcast; guarded by mu
}

// enter registers a sleeper and returns the channel broadcast closes; the
// sleeper calls leave when it stops waiting.
func (w *wakeup) enter() <-chan struct{} {
	w.sleepers.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch == nil {
		w.ch = make(chan struct{})
	}
	return w.ch
}

func (w *wakeup) leave() { w.sleepers.Add(-1) }

// broadcast wakes every sleeper; with none (the usual case: every write
// succeeds) it costs one atomic load.
func (w *wakeup) broadcast() {
	if w.sleepers.Load() == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch != nil {
		close(w.ch)
		w.ch = nil
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
