package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/mongo"
	"golang.org/x/sync/errgroup"
)

// ErrHistoryLost means the source no longer holds the change history capture
// must resume from. Capture of that namespace stops; nothing is skipped.
var ErrHistoryLost = errors.New("capture: change history lost")

// ErrFenced means another capture process took over the stream.
var ErrFenced = errors.New("capture: fenced by another capture process for the same stream")

// HistoryLostError names the gap and the recovery.
type HistoryLostError struct {
	Namespace string
	// Checkpoint is the cluster time capture would have resumed after.
	Checkpoint envelope.Version
	// Oldest is the oldest cluster time the source still holds, when known.
	Oldest envelope.Version
	Cause  error
}

func (e *HistoryLostError) Error() string {
	return fmt.Sprintf("capture %s: the source no longer holds changes after %s (oldest available: %s); "+
		"events in between cannot be replayed. Recover with a targeted re-backfill: "+
		"`tidemark backfill --namespace %s --reset-stream --reason ...`", e.Namespace, e.Checkpoint, e.Oldest, e.Namespace)
}

func (e *HistoryLostError) Unwrap() []error { return []error{ErrHistoryLost, e.Cause} }

// streamState is the checkpoint of one namespace's change stream.
type streamState struct {
	// StartT, StartI is T0: the cluster time the stream was first opened at
	// (and the initial backfill's versions are below). Kept until a resume
	// token exists, so a crash before the first checkpoint reopens at the
	// same T0 the backfill versions are derived from.
	StartT uint32 `json:"start_t"`
	StartI uint32 `json:"start_i"`
	// Token is the resume token after the last event Kafka acknowledged, or
	// a post-batch resume token past it.
	Token []byte `json:"token,omitempty"`
	// StartAfter says Token is an invalidate event's: reopen with startAfter
	// (resumeAfter an invalidate fails with code 260).
	StartAfter bool   `json:"start_after,omitempty"`
	T          uint32 `json:"t"`
	I          uint32 `json:"i"`
	// AtT, AtI is a later position than Token on servers that send no
	// post-batch resume token: the newest oplog entry before an empty batch.
	// The stream reopens with startAtOperationTime there.
	AtT uint32 `json:"at_t,omitempty"`
	AtI uint32 `json:"at_i,omitempty"`
	// Invalidated is set when the stream ended with an invalidate; capture of
	// the namespace stays stopped until an operator decides (see Invalidation).
	Invalidated *Invalidation `json:"invalidated,omitempty"`
	// Stopped is why capture of the namespace stopped (history lost,
	// invalidated, fenced, unwatchable, backfill failed), for status. The
	// next checkpoint clears it.
	Stopped string `json:"stopped,omitempty"`
	// Time is when this checkpoint was written.
	Time time.Time `json:"time"`
}

// StreamStatus is what status shows about one namespace's change stream.
type StreamStatus struct {
	// Position is the cluster time the stream resumes from.
	Position envelope.Version `json:"position"`
	// Checkpoint is when the position was last written.
	Checkpoint time.Time `json:"checkpoint"`
	// Stopped says why capture of the namespace stopped; empty while it runs.
	Stopped string `json:"stopped,omitempty"`
}

// Stream returns the status of a namespace's change stream from its checkpoint.
func Stream(ctx context.Context, s checkpoints.Store, ns string) (StreamStatus, bool, error) {
	st, ok, err := checkpoints.GetJSON[streamState](ctx, s, streamKey(ns))
	if err != nil || !ok {
		return StreamStatus{}, ok, err
	}
	return StreamStatus{Position: st.position(), Checkpoint: st.Time, Stopped: st.Stopped}, true, nil
}

// position is the cluster time the stream would resume from.
func (st streamState) position() envelope.Version {
	at := envelope.Version{T: st.AtT, I: st.AtI}
	if st.Token == nil {
		if !at.IsZero() {
			return at
		}
		return envelope.Version{T: st.StartT, I: st.StartI}
	}
	return envelope.Max(envelope.Version{T: st.T, I: st.I}, at)
}

func streamKey(ns string) string { return checkpoints.PrefixCapture + ns }

// Capture runs one change stream and backfill per configured namespace.
type Capture struct {
	cfg     Config
	mongo   *mongo.Client
	kopts   []kgo.Opt
	plain   *kgo.Client
	store   checkpoints.Store
	log     *slog.Logger
	m       *metrics
	src     source
	mu      sync.Mutex
	running map[string]context.CancelFunc
	reset   map[string]chan struct{}
	// fenced is when each namespace's producer was last fenced (see
	// retryFence).
	fenced map[string]time.Time
}

// A fence is retried once, after fenceRetryDelay, unless the namespace was
// fenced within fenceRetryWindow before. Kafka answers PRODUCER_FENCED to the
// commit of a transaction it aborted on its timeout while it could not
// answer (a stalled or frozen broker), which franz-go does not recover: that
// transaction's records were never committed, so a fresh producer resumes
// from the last checkpoint and loses nothing. A second capture process for
// the stream fences again at its next retry, and the second fence within
// the window stops this one for good: two writers never take turns.
var (
	fenceRetryDelay  = 10 * time.Second
	fenceRetryWindow = 10 * time.Minute
)

// retryFence reports whether ns, fenced now, gets its one retry.
func (c *Capture) retryFence(ns string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	last, ok := c.fenced[ns]
	c.fenced[ns] = now
	return !ok || now.Sub(last) >= fenceRetryWindow
}

// Deps are what capture needs from the daemon.
type Deps struct {
	// Mongo is the source.
	Mongo *mongo.Client
	// KafkaOpts are the connection options (seed brokers, TLS, SASL);
	// capture adds its own producer settings.
	KafkaOpts []kgo.Opt
	// Store keeps stream positions, backfill progress and requests.
	Store checkpoints.Store
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives capture's metrics; nil for none.
	Registerer prometheus.Registerer
}

// New prepares capture.
func New(cfg Config, d Deps) (*Capture, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mc, kafkaOpts, store, log, reg := d.Mongo, d.KafkaOpts, d.Store, d.Logger, d.Registerer
	if log == nil {
		log = slog.Default()
	}
	// The plain producer carries the backfill: Parallelism chunks in flight
	// must fit in its buffer, or the chunks queue behind each other there.
	plain, err := kgo.NewClient(append(append(producerOpts(cfg),
		kgo.MaxBufferedRecords(max(4*cfg.BatchSize, 2*cfg.Backfill.Parallelism*cfg.Backfill.ChunkSize))), kafkaOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("capture: kafka client: %w", err)
	}
	return &Capture{cfg: cfg, mongo: mc, src: mongoSource{mc}, kopts: kafkaOpts, plain: plain, store: store,
		log: log.With("stage", "capture"), m: newMetrics(reg), running: map[string]context.CancelFunc{},
		reset: map[string]chan struct{}{}, fenced: map[string]time.Time{}}, nil
}

func producerOpts(cfg Config) []kgo.Opt {
	return []kgo.Opt{
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchMaxBytes(int32(cfg.MaxRecordBytes) + 1024),
		kgo.MaxBufferedRecords(4 * cfg.BatchSize),
		kgo.ProducerLinger(5 * time.Millisecond),
		// A partition just created (capture creates its topics at start), or
		// whose leader moved, can answer NOT_LEADER_FOR_PARTITION after the
		// metadata named its leader; franz-go retries after the next metadata
		// refresh, at most one per MetadataMinAge, 5 s by default. That was
		// the 5 s first transaction seen in the benchmarks (both capture and
		// raw produce). A metadata request is small.
		kgo.MetadataMinAge(250 * time.Millisecond),
		// Record retries stay at the default, unlimited: Kafka being down blocks
		// capture with bounded memory (MaxBufferedRecords) and never drops a record.
	}
}

// Close releases the Kafka client.
func (c *Capture) Close() { c.plain.Close() }

// Run captures every namespace until ctx ends. A namespace that stops with
// ErrHistoryLost or ErrFenced stops alone; the others continue. Run returns
// when ctx ends or every namespace has stopped.
func (c *Capture) Run(ctx context.Context) error {
	if err := c.ensureTopics(ctx); err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.serveRequests(ctx) })
	for _, ns := range c.cfg.Namespaces {
		reset := make(chan struct{}, 1)
		c.mu.Lock()
		c.reset[ns] = reset
		c.mu.Unlock()
		g.Go(func() error {
			for {
				nsCtx, cancel := context.WithCancel(ctx)
				c.mu.Lock()
				c.running[ns] = cancel
				c.mu.Unlock()
				err := c.runNamespace(nsCtx, ns)
				cancel()
				if ctx.Err() != nil {
					return nil
				}
				if err != nil {
					// One namespace stopping must not stop the others; it waits
					// for the operator's recovery (a reset request).
					c.log.Error("capture stopped", "namespace", ns, "err", err)
					c.recordStop(context.WithoutCancel(ctx), ns, err)
					c.store.Append(context.WithoutCancel(ctx), checkpoints.AuditEntry{Actor: "auto:capture",
						Action: "capture.stop", Target: ns, Result: "failed: " + err.Error()})
				}
				select {
				case <-ctx.Done():
					return nil
				case <-reset:
					c.log.Info("capture restarting after reset", "namespace", ns)
				}
			}
		})
	}
	return g.Wait()
}

func (c *Capture) ensureTopics(ctx context.Context) error {
	adm := kadm.NewClient(c.plain)
	topics := []string{envelope.DeadLetterTopic(c.cfg.TopicPrefix)}
	for _, ns := range c.cfg.Namespaces {
		topics = append(topics, envelope.Topic(c.cfg.TopicPrefix, ns))
	}
	resp, err := adm.CreateTopics(ctx, c.cfg.Partitions, c.cfg.ReplicationFactor, nil, topics...)
	if err != nil {
		return fmt.Errorf("capture: create topics: %w", err)
	}
	for _, r := range resp.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("capture: create topic %s: %w", r.Topic, r.Err)
		}
	}
	return nil
}

// runNamespace runs the stream and, when needed, the initial backfill, and
// restarts the stream after resumable errors with backoff.
func (c *Capture) runNamespace(ctx context.Context, ns string) error {
	log := c.log.With("namespace", ns)
	if err := c.checkWatchable(ctx, ns); err != nil {
		return err
	}
	st, _, err := checkpoints.GetJSON[streamState](ctx, c.store, streamKey(ns))
	if err != nil {
		return err
	}
	if st.Invalidated != nil {
		c.m.invalidated.WithLabelValues(ns).Set(1)
		return st.Invalidated.err(ns)
	}
	if st.Token == nil && st.StartT == 0 {
		// First start: fix T0 durably before anything is emitted, so that a
		// crash before the first checkpoint reopens the stream at the same T0
		// the backfill versions are derived from.
		t0, err := c.clusterTime(ctx, ns)
		if err != nil {
			return err
		}
		st = streamState{StartT: t0.T, StartI: t0.I, Time: time.Now().UTC()}
		if err := checkpoints.PutJSON(ctx, c.store, streamKey(ns), st); err != nil {
			return err
		}
		log.Info("change stream starts", "t0", t0)
	}
	g, gctx := errgroup.WithContext(ctx)
	if *c.cfg.Backfill.Enabled {
		g.Go(func() error {
			return c.initialBackfill(gctx, ns, envelope.Version{T: st.StartT, I: st.StartI})
		})
	}
	g.Go(func() error {
		backoff := 100 * time.Millisecond
		for {
			err := c.stream(gctx, ns)
			if gctx.Err() != nil {
				return nil
			}
			switch {
			case errors.Is(err, ErrHistoryLost):
				c.m.historyLost.WithLabelValues(ns).Set(1)
				return err
			case errors.Is(err, ErrInvalidated):
				c.m.invalidated.WithLabelValues(ns).Set(1)
				return err
			case errors.Is(err, ErrFenced):
				if !c.retryFence(ns) {
					return err
				}
				log.Warn("capture was fenced; retrying once with a fresh producer (Kafka may have aborted a transaction it could not answer in time); a second fence within the window stops this namespace",
					"err", err, "after", fenceRetryDelay, "window", fenceRetryWindow)
				c.store.Append(context.WithoutCancel(gctx), checkpoints.AuditEntry{Actor: "auto:capture", Action: "capture.fence_retry",
					Target: ns, Result: "retrying once: " + err.Error()})
				select {
				case <-gctx.Done():
					return nil
				case <-time.After(fenceRetryDelay):
				}
				continue
			case errors.Is(err, ErrUnresumable):
				return err
			case errors.Is(err, errSkipped):
				backoff = 100 * time.Millisecond
				continue
			}
			log.Warn("change stream interrupted; resuming", "err", err, "backoff", backoff)
			select {
			case <-gctx.Done():
				return nil
			case <-time.After(backoff + time.Duration(rand.Int64N(int64(backoff)))):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	})
	return g.Wait()
}

// checkWatchable refuses namespaces no change stream can watch: views,
// time-series collections (MongoDB refuses change streams on both) and the
// system databases and collections. Retrying would never succeed.
func (c *Capture) checkWatchable(ctx context.Context, ns string) error {
	db, coll, _ := cut(ns)
	switch {
	case db == "admin" || db == "local" || db == "config":
		return &UnwatchableError{Namespace: ns, Reason: "the " + db + " database cannot be watched"}
	case strings.HasPrefix(coll, "system."):
		return &UnwatchableError{Namespace: ns, Reason: "system collections cannot be watched"}
	}
	typ, ok, err := c.src.collectionType(ctx, ns)
	if err != nil {
		return fmt.Errorf("capture %s: list collections: %w", ns, err)
	}
	if ok && typ != "collection" {
		return &UnwatchableError{Namespace: ns, Reason: "it is a " + typ + ", and change streams only watch collections"}
	}
	return nil
}

// clusterTime is T0 for a backfill of ns: a cluster time at or before which
// a change stream opened now starts. It is never a host clock: nodes and
// routers disagree about wall time, and a write just after the stream
// opened could otherwise carry a cluster time below T0 and be skipped.
func (c *Capture) clusterTime(ctx context.Context, ns string) (envelope.Version, error) {
	t, err := c.src.startTime(ctx, ns)
	if err != nil {
		return envelope.Version{}, fmt.Errorf("capture %s: cluster time: %w", ns, err)
	}
	return t, nil
}

// toRecord encodes e into a record, or a dead letter when it cannot be one.
func (c *Capture) toRecord(topic string, e *envelope.Event) (rec, dead *kgo.Record) {
	key, val, err := envelope.AppendRecord(nil, e) // one allocation for both
	return c.recordOf(topic, e, key, val, err)
}

// recordOf is the record of e with its key and value (err: why the value
// could not be encoded), or its dead letter when it cannot be one.
func (c *Capture) recordOf(topic string, e *envelope.Event, key, val []byte, err error) (rec, dead *kgo.Record) {
	reason := ""
	switch {
	case err != nil:
		reason = "encode: " + err.Error()
	case len(val) > c.cfg.MaxRecordBytes:
		reason = fmt.Sprintf("record of %d bytes exceeds max_record_bytes %d", len(val), c.cfg.MaxRecordBytes)
	}
	if reason == "" {
		return &kgo.Record{Topic: topic, Key: key, Value: val}, nil
	}
	return nil, c.deadLetterRecord(envelope.DeadLetter{Stage: "capture", Reason: reason, Namespace: e.Namespace,
		Key: key, Version: e.Version, Topic: topic, Partition: -1, Offset: -1, Record: val}, deadReason(err))
}

// deadLetterRecord counts, logs and encodes d for the dead-letter topic;
// metricReason is the reason label of tidemark_capture_dead_letters_total.
func (c *Capture) deadLetterRecord(d envelope.DeadLetter, metricReason string) *kgo.Record {
	c.m.deadLetters.WithLabelValues(d.Namespace, metricReason).Inc()
	c.log.Error("event sent to the dead-letter topic", "namespace", d.Namespace, "version", d.Version, "reason", d.Reason)
	b, _ := envelope.EncodeDeadLetter(d)
	return &kgo.Record{Topic: envelope.DeadLetterTopic(c.cfg.TopicPrefix), Key: d.Key, Value: b}
}

func deadReason(err error) string {
	if err != nil {
		return "encode"
	}
	return "oversize"
}

// commit produces one batch in a Kafka transaction, retrying transient errors.
func (c *Capture) commit(ctx context.Context, txn *kgo.Client, batch, dead []*kgo.Record) error {
	if len(batch)+len(dead) == 0 {
		return nil
	}
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := c.produceTxn(ctx, txn, batch, dead)
		if err == nil {
			c.m.produce.Observe(time.Since(start).Seconds())
			return nil
		}
		if fenced(err) && !c.timedOut(ctx, txn, err) {
			return fmt.Errorf("%w: %v", ErrFenced, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var big *refusedError
		if errors.As(err, &big) {
			// The transaction was aborted; the same batch again, with the
			// refused records as dead letters, is what the next try commits.
			if batch, dead, err = c.deadLetterRefused(batch, dead, big.recs); err != nil {
				return err
			}
			continue
		}
		c.log.Warn("kafka transaction failed; retrying the batch", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (c *Capture) produceTxn(ctx context.Context, txn *kgo.Client, batch, dead []*kgo.Record) error {
	if err := txn.BeginTransaction(); err != nil {
		// A transaction left open by an earlier failure blocks every later
		// one; abort it so that the retry starts clean.
		if abortErr := txn.EndTransaction(ctx, kgo.TryAbort); abortErr != nil {
			return abortErr
		}
		return err
	}
	var mu sync.Mutex
	var first error
	var refused []*kgo.Record
	// A partition per topic: written to, or whose records failed.
	acked, failed := map[string]int32{}, map[string]int32{}
	done := func(r *kgo.Record, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			acked[r.Topic] = r.Partition
			return
		}
		failed[r.Topic] = r.Partition
		if first == nil {
			first = err
		}
		if tooLarge(err) {
			refused = append(refused, r)
		}
	}
	for _, r := range batch {
		r.Partition, r.Offset = 0, 0
		txn.Produce(ctx, r, done)
	}
	for _, r := range dead {
		r.Partition, r.Offset = 0, 0
		txn.Produce(ctx, r, done)
	}
	flushErr := txn.Flush(ctx)
	if flushErr == nil {
		flushErr = partitionsStored(ctx, txn, acked, failed)
	}
	commit := kgo.TryCommit
	if first != nil || flushErr != nil {
		commit = kgo.TryAbort
	}
	endErr := txn.EndTransaction(ctx, commit)
	if errors.Is(endErr, kerr.OperationNotAttempted) {
		// The commit was refused because the producer id is in error (for
		// example fenced). The client stays inside the transaction until it
		// is aborted, and every later BeginTransaction would fail; the abort
		// either recovers the id or reports why it cannot (fencing).
		if abortErr := txn.EndTransaction(ctx, kgo.TryAbort); abortErr != nil {
			endErr = abortErr
		} else if _, _, idErr := txn.ProducerID(ctx); idErr != nil {
			endErr = idErr
		}
	}
	if len(refused) > 0 && endErr == nil {
		return &refusedError{recs: refused, err: first}
	}
	if first != nil {
		return first
	}
	if flushErr != nil {
		return flushErr
	}
	return endErr
}

// partitionsStored waits until txn has stored the partitions of every topic
// a record of the transaction was written to (acked: topic → a partition),
// and for a while of every topic whose records failed (failed).
//
// franz-go 1.22.3 sends the records it buffered for a topic produced to for
// the first time as soon as it has partitioned them, and stores the topic's
// partitions only afterwards (a deferred store in storePartitionsUpdate).
// EndTransaction finds the partitions added to the transaction through that
// store: a transaction whose records were acknowledged in between is "ended"
// without an EndTxn ("no records were produced during the commit"), and the
// commit returns nil. Its records then sit in an open transaction that the
// broker aborts at the transaction timeout, after capture has checkpointed
// past them: lost. It showed as a commit marker that never came in the
// replay tests on a loaded machine, always a stream's first transaction.
// The same skip leaves a producer id that a refused produce put in error
// unrecovered, so an abort after a transaction timeout looked like a fence
// (TestCommitSurvivesATransactionTimeout, about one run in 1,200 under
// load). The store follows the partitioning by microseconds; waiting for it
// closes the window. A record that failed before it was partitioned (its
// topic's metadata never came) has no store to wait for: a second bounds
// that wait.
func partitionsStored(ctx context.Context, txn *kgo.Client, acked, failed map[string]int32) error {
	wait := func(ctx context.Context, topic string, p int32) error {
		for {
			if leader, _, err := txn.PartitionLeader(topic, p); leader >= 0 || err != nil {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Microsecond):
			}
		}
	}
	for topic, p := range acked {
		if err := wait(ctx, topic, p); err != nil {
			return err
		}
	}
	bounded, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	for topic, p := range failed {
		if _, ok := acked[topic]; !ok {
			wait(bounded, topic, p) // past the bound it returns at once
		}
	}
	return ctx.Err()
}

// tooLarge reports whether Kafka refused a record as over the topic's
// max.message.bytes (or the broker's message.max.bytes): no retry can help,
// so the record is dead-lettered instead of stalling its namespace.
func tooLarge(err error) bool {
	return errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge)
}

// refusedError is a transaction aborted because Kafka refused recs as too large.
type refusedError struct {
	recs []*kgo.Record
	err  error
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("kafka refused %d records as too large: %v", len(e.recs), e.err)
}

func (e *refusedError) Unwrap() error { return e.err }

// deadLetterRefused takes the records Kafka refused out of batch and adds a
// dead letter (with a truncated copy) for each to dead. A refused dead
// letter cannot be kept anywhere, so that is an error that stops capture.
func (c *Capture) deadLetterRefused(batch, dead, refused []*kgo.Record) (keep, deadOut []*kgo.Record, err error) {
	out := make(map[*kgo.Record]bool, len(refused))
	for _, r := range refused {
		if r.Topic == envelope.DeadLetterTopic(c.cfg.TopicPrefix) {
			return nil, nil, fmt.Errorf("capture: kafka refused a dead letter of %d bytes as too large: raise max.message.bytes of %s", len(r.Value), r.Topic)
		}
		out[r] = true
		dead = append(dead, c.refusedDeadLetter(r))
	}
	keep = batch[:0:0]
	for _, r := range batch {
		if !out[r] {
			keep = append(keep, r)
		}
	}
	return keep, dead, nil
}

// refusedDeadLetter is the dead letter for a record Kafka refused as too large.
func (c *Capture) refusedDeadLetter(r *kgo.Record) *kgo.Record {
	d := envelope.DeadLetter{Stage: "capture", Key: r.Key, Topic: r.Topic, Partition: -1, Offset: -1, Record: r.Value,
		Reason: fmt.Sprintf("record of %d bytes refused by Kafka as too large for %s (max.message.bytes); raise it or lower capture.max_record_bytes",
			len(r.Value), r.Topic)}
	if ev, err := envelope.Decode(r.Value); err == nil {
		d.Namespace, d.Version = ev.Namespace, ev.Version
	}
	return c.deadLetterRecord(d, "too_large")
}

// timedOut reports whether a fenced-looking err was Kafka aborting the
// transaction after its timeout, and the producer recovered from it. A
// transaction open longer than the transaction timeout (Kafka frozen or
// unreachable for a minute, a long pause of this process) is aborted by the
// coordinator, which bumps the producer epoch: the next request fails with
// INVALID_PRODUCER_EPOCH although no other process took the stream. Taking
// that for a fence stopped capture of the namespace for good after a 60 s
// Kafka outage (the chaos suite). franz-go re-initialises the producer id
// with the old epoch then (KIP-588), which a coordinator refuses with
// PRODUCER_FENCED once another process did take the id: only then is this a
// fence. The aborted transaction's records are invisible to read_committed
// readers and its checkpoint was never written, so the batch is simply
// produced again.
func (c *Capture) timedOut(ctx context.Context, txn *kgo.Client, err error) bool {
	if !errors.Is(err, kerr.InvalidProducerEpoch) || errors.Is(err, kerr.ProducerFenced) {
		return false
	}
	if abortErr := txn.EndTransaction(ctx, kgo.TryAbort); abortErr != nil && !errors.Is(abortErr, kerr.InvalidProducerEpoch) {
		return false
	}
	if _, _, idErr := txn.ProducerID(ctx); idErr != nil {
		return false
	}
	c.log.Warn("kafka aborted a capture transaction after its timeout (Kafka unreachable or stalled); producing the batch again",
		"err", err)
	return true
}

func fenced(err error) bool {
	return errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) ||
		errors.Is(err, kerr.TransactionalIDAuthorizationFailed)
}

// classify turns a change stream error into ErrHistoryLost where the server
// says the resume point is gone.
func classify(ns string, at envelope.Version, err error) error {
	if err == nil {
		return errors.New("capture: change stream closed")
	}
	var se mongo.ServerError
	switch {
	case errors.As(err, &se) && (se.HasErrorCode(codeHistoryLost) || se.HasErrorCode(codeFatal)):
		// 286 ChangeStreamHistoryLost; before 4.4 servers say 280
		// ChangeStreamFatalError when the resume point left the oplog.
		return &HistoryLostError{Namespace: ns, Checkpoint: at, Cause: err}
	case errors.As(err, &se) && se.HasErrorCode(codeInvalidResumeToken):
		return &UnresumableError{Namespace: ns, Checkpoint: at, Cause: err}
	}
	return fmt.Errorf("capture %s: change stream: %w", ns, err)
}

func cut(ns string) (db, coll string, ok bool) {
	for i := 0; i < len(ns); i++ {
		if ns[i] == '.' {
			return ns[:i], ns[i+1:], true
		}
	}
	return ns, "", false
}

func putState(ctx context.Context, c *Capture, ns string, st streamState) error {
	return checkpoints.PutJSON(ctx, c.store, streamKey(ns), st)
}

// recordStop keeps why a namespace stopped in its checkpoint, for status.
func (c *Capture) recordStop(ctx context.Context, ns string, cause error) {
	st, _, err := checkpoints.GetJSON[streamState](ctx, c.store, streamKey(ns))
	if err != nil {
		return
	}
	st.Stopped = cause.Error()
	if err := putState(ctx, c, ns, st); err != nil {
		c.log.Warn("cannot record why capture stopped", "namespace", ns, "err", err)
	}
}
