package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
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
	// StartT, StartI is the operation time the stream was first opened at (T0
	// of the initial backfill). Kept until a resume token exists, so a crash
	// before the first checkpoint reopens at the same T0.
	StartT uint32 `json:"start_t"`
	StartI uint32 `json:"start_i"`
	// Token is the resume token after the last event Kafka acknowledged.
	Token []byte `json:"token,omitempty"`
	T     uint32 `json:"t"`
	I     uint32 `json:"i"`
	// Time is when this checkpoint was written.
	Time time.Time `json:"time"`
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
	mu      sync.Mutex
	running map[string]context.CancelFunc
	reset   map[string]chan struct{}
}

// New prepares capture. kafkaOpts are the connection options (seed brokers,
// TLS, SASL); capture adds its own producer settings. reg may be nil.
func New(cfg Config, mc *mongo.Client, kafkaOpts []kgo.Opt, store checkpoints.Store, log *slog.Logger, reg prometheus.Registerer) (*Capture, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	plain, err := kgo.NewClient(append(producerOpts(cfg), kafkaOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("capture: kafka client: %w", err)
	}
	return &Capture{cfg: cfg, mongo: mc, kopts: kafkaOpts, plain: plain, store: store,
		log: log.With("stage", "capture"), m: newMetrics(reg), running: map[string]context.CancelFunc{},
		reset: map[string]chan struct{}{}}, nil
}

func producerOpts(cfg Config) []kgo.Opt {
	return []kgo.Opt{
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchMaxBytes(int32(cfg.MaxRecordBytes) + 1024),
		kgo.MaxBufferedRecords(4 * cfg.BatchSize),
		kgo.ProducerLinger(5 * time.Millisecond),
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
		topics = append(topics, Topic(c.cfg.TopicPrefix, ns))
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
	st, _, err := checkpoints.GetJSON[streamState](ctx, c.store, streamKey(ns))
	if err != nil {
		return err
	}
	if st.Token == nil && st.StartT == 0 {
		// First start: fix T0 durably before anything is emitted, so that a
		// crash before the first checkpoint reopens the stream at the same T0
		// the backfill versions are derived from.
		t0, err := c.serverTime(ctx)
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
			if errors.Is(err, ErrHistoryLost) {
				c.m.historyLost.WithLabelValues(ns).Set(1)
				return err
			}
			if errors.Is(err, ErrFenced) {
				return err
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

// serverTime is the source's current time as a version with ordinal 0. Every
// operation the server applies after this moment has a higher cluster time.
func (c *Capture) serverTime(ctx context.Context) (envelope.Version, error) {
	var r struct {
		LocalTime time.Time `bson:"localTime"`
	}
	if err := c.mongo.Database("admin").RunCommand(ctx, bson.D{{Key: "isMaster", Value: 1}}).Decode(&r); err != nil {
		return envelope.Version{}, fmt.Errorf("capture: read server time: %w", err)
	}
	if r.LocalTime.IsZero() {
		return envelope.Version{}, errors.New("capture: server reported no localTime")
	}
	return envelope.Version{T: uint32(r.LocalTime.Unix())}, nil
}

// oldestHistory is the oldest cluster time in the source's oplog.
func (c *Capture) oldestHistory(ctx context.Context) (envelope.Version, bool, error) {
	var e struct {
		TS primitive.Timestamp `bson:"ts"`
	}
	err := c.mongo.Database("local").Collection("oplog.rs").FindOne(ctx, bson.D{},
		options.FindOne().SetSort(bson.D{{Key: "$natural", Value: 1}}).SetProjection(bson.D{{Key: "ts", Value: 1}})).Decode(&e)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return envelope.Version{}, false, nil
	}
	if err != nil {
		return envelope.Version{}, false, err
	}
	return envelope.Version{T: e.TS.T, I: e.TS.I}, true, nil
}

// changeEvent is the part of a change event capture reads.
type changeEvent struct {
	Op          string              `bson:"operationType"`
	ClusterTime primitive.Timestamp `bson:"clusterTime"`
	Key         struct {
		ID bson.RawValue `bson:"_id"`
	} `bson:"documentKey"`
	Full bson.Raw `bson:"fullDocument"`
	NS   struct {
		DB   string `bson:"db"`
		Coll string `bson:"coll"`
	} `bson:"ns"`
}

// stream runs one change stream until an error. Each server batch becomes one
// Kafka transaction; the resume token is checkpointed only after the
// transaction committed, so every earlier event is acknowledged too.
func (c *Capture) stream(ctx context.Context, ns string) error {
	st, _, err := checkpoints.GetJSON[streamState](ctx, c.store, streamKey(ns))
	if err != nil {
		return err
	}
	resumeAt := envelope.Version{T: st.T, I: st.I}
	if st.Token == nil {
		resumeAt = envelope.Version{T: st.StartT, I: st.StartI}
	}
	// MongoDB reports lost history itself (code 286); the oplog check also
	// catches servers that silently restart elsewhere, as the stand-in does.
	if oldest, ok, err := c.oldestHistory(ctx); err != nil {
		c.log.Warn("cannot read the oplog to check for lost history; relying on the server", "namespace", ns, "err", err)
	} else if ok && resumeAt.Before(oldest) && !resumeAt.IsZero() {
		return &HistoryLostError{Namespace: ns, Checkpoint: resumeAt, Oldest: oldest}
	}
	db, coll, _ := cut(ns)
	opts := options.ChangeStream().SetBatchSize(int32(c.cfg.BatchSize))
	if c.cfg.UpdateLookup == "server" {
		opts.SetFullDocument(options.UpdateLookup)
	}
	if st.Token != nil {
		opts.SetResumeAfter(bson.Raw(st.Token))
	} else {
		opts.SetStartAtOperationTime(&primitive.Timestamp{T: st.StartT, I: st.StartI})
	}
	cs, err := c.mongo.Database(db).Collection(coll).Watch(ctx, mongo.Pipeline{}, opts)
	if err != nil {
		return classify(ns, resumeAt, err)
	}
	defer cs.Close(context.WithoutCancel(ctx))

	txn, err := kgo.NewClient(append(append(producerOpts(c.cfg), c.kopts...),
		kgo.TransactionalID("tidemark-capture-"+ns), kgo.TransactionTimeout(60*time.Second))...)
	if err != nil {
		return fmt.Errorf("capture: kafka client: %w", err)
	}
	defer txn.Close()
	topic := Topic(c.cfg.TopicPrefix, ns)
	openedAt, hadToken := resumeAt, st.Token != nil
	var batch, dead []*kgo.Record
	var evs []changeEvent
	for {
		if !cs.Next(ctx) {
			return classify(ns, resumeAt, cs.Err())
		}
		batch, dead = batch[:0], dead[:0]
		evs := evs[:0]
		for {
			var ev changeEvent
			if err := cs.Decode(&ev); err != nil {
				return fmt.Errorf("capture %s: decode change event: %w", ns, err)
			}
			evs = append(evs, ev)
			if cs.RemainingBatchLength() == 0 || len(evs) >= c.cfg.BatchSize {
				break
			}
			if !cs.Next(ctx) {
				return classify(ns, resumeAt, cs.Err())
			}
		}
		if err := c.completeEvents(ctx, ns, evs); err != nil {
			return err
		}
		var last envelope.Version
		for i := range evs {
			ev := &evs[i]
			v := envelope.Version{T: ev.ClusterTime.T, I: ev.ClusterTime.I}
			c.m.sourceTime.WithLabelValues(ns).Set(float64(v.T))
			if hadToken && !openedAt.Before(v) {
				c.m.duplicates.WithLabelValues(ns).Inc()
			}
			if rec, dl, ok := c.record(ns, topic, ev, v); ok {
				if dl != nil {
					dead = append(dead, dl)
				} else {
					batch = append(batch, rec)
				}
			}
			last = v
		}
		if err := c.commit(ctx, txn, batch, dead); err != nil {
			return err
		}
		st.Token, st.T, st.I, st.Time = append([]byte(nil), cs.ResumeToken()...), last.T, last.I, time.Now().UTC()
		if err := checkpoints.PutJSON(ctx, c.store, streamKey(ns), st); err != nil {
			return err
		}
		resumeAt = last
		c.m.producedTime.WithLabelValues(ns).Set(float64(last.T))
		c.m.checkpointTS.WithLabelValues(ns).Set(float64(st.Time.Unix()))
	}
}

// completeEvents fills in what the server left out of update events. MongoDB
// always sends documentKey._id and, with updateLookup, the looked-up document;
// the mongo-java-server stand-in sends the update operators in documentKey and
// a partial fullDocument instead. For those events the _id is read from the
// oplog entry at the event's cluster time and the document is looked up here,
// which is what updateLookup does. With update_lookup: capture, every update
// is looked up here. Both are batched: one oplog query and one lookup per
// server batch.
func (c *Capture) completeEvents(ctx context.Context, ns string, evs []changeEvent) error {
	var needID []any
	byTS := map[primitive.Timestamp]int{}
	for i := range evs {
		if (evs[i].Op == "update" || evs[i].Op == "replace") && evs[i].Key.ID.Type == 0 {
			needID = append(needID, evs[i].ClusterTime)
			byTS[evs[i].ClusterTime] = i
		}
	}
	if len(needID) > 0 {
		cur, err := c.mongo.Database("local").Collection("oplog.rs").Find(ctx,
			bson.D{{Key: "ts", Value: bson.D{{Key: "$in", Value: needID}}}, {Key: "ns", Value: ns}},
			options.Find().SetProjection(bson.D{{Key: "ts", Value: 1}, {Key: "o2", Value: 1}}))
		if err != nil {
			return fmt.Errorf("capture %s: read oplog for update ids: %w", ns, err)
		}
		for cur.Next(ctx) {
			var e struct {
				TS primitive.Timestamp `bson:"ts"`
				O2 struct {
					ID bson.RawValue `bson:"_id"`
				} `bson:"o2"`
			}
			if cur.Decode(&e) == nil {
				if i, ok := byTS[e.TS]; ok {
					evs[i].Key.ID = bson.RawValue{Type: e.O2.ID.Type, Value: append([]byte(nil), e.O2.ID.Value...)}
				}
			}
		}
		cur.Close(ctx)
	}
	var ids bson.A
	for i := range evs {
		ev := &evs[i]
		if ev.Op != "update" && ev.Op != "replace" {
			continue
		}
		if ev.Key.ID.Type == 0 {
			return fmt.Errorf("capture %s: update event at %d.%d has no _id and none in the oplog", ns, ev.ClusterTime.T, ev.ClusterTime.I)
		}
		// Without a server lookup, MongoDB sends no document for an update,
		// and the stand-in sends the update's $set fields: both lack _id.
		if _, err := ev.Full.LookupErr("_id"); ev.Full == nil && c.cfg.UpdateLookup == "capture" || ev.Full != nil && err != nil {
			ev.Full = nil
			ids = append(ids, ev.Key.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	db, coll, _ := cut(ns)
	cur, err := c.mongo.Database(db).Collection(coll).Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return fmt.Errorf("capture %s: look up updated documents: %w", ns, err)
	}
	defer cur.Close(ctx)
	docs := map[string]bson.Raw{}
	for cur.Next(ctx) {
		docs[string(envelope.Key(cur.Current.Lookup("_id")))] = append(bson.Raw(nil), cur.Current...)
	}
	for i := range evs {
		if (evs[i].Op == "update" || evs[i].Op == "replace") && evs[i].Full == nil {
			evs[i].Full = docs[string(envelope.Key(evs[i].Key.ID))] // nil when gone: the delete follows
		}
	}
	return cur.Err()
}

// record turns a change event into a Kafka record, or a dead letter when it is
// too large. ok is false for events that carry no document change.
func (c *Capture) record(ns, topic string, ev *changeEvent, v envelope.Version) (rec, dead *kgo.Record, ok bool) {
	e := envelope.Event{Namespace: ns, ID: ev.Key.ID, Version: v}
	switch ev.Op {
	case "insert":
		e.Op, e.Doc = envelope.OpInsert, ev.Full
	case "update":
		// The lookup returns the document as of now, or nothing when it is
		// gone: then a delete event follows and this update is a no-op.
		e.Op, e.Doc = envelope.OpUpdate, ev.Full
	case "replace":
		e.Op, e.Doc = envelope.OpReplace, ev.Full
	case "delete":
		e.Op = envelope.OpDelete
	default:
		c.log.Warn("ignoring change event without a document", "namespace", ns, "op", ev.Op, "version", v)
		return nil, nil, false
	}
	if e.Op == envelope.OpReplace && e.Doc == nil {
		e.Op = envelope.OpUpdate // a replace whose document is already gone: the delete follows
	}
	c.m.events.WithLabelValues(ns, string(e.Op)).Inc()
	return c.toRecord(topic, &e)
}

func (c *Capture) toRecord(topic string, e *envelope.Event) (rec, dead *kgo.Record, ok bool) {
	val, err := envelope.Encode(nil, e)
	reason := ""
	switch {
	case err != nil:
		reason = "encode: " + err.Error()
	case len(val) > c.cfg.MaxRecordBytes:
		reason = fmt.Sprintf("record of %d bytes exceeds max_record_bytes %d", len(val), c.cfg.MaxRecordBytes)
	}
	key := e.Key()
	if reason == "" {
		return &kgo.Record{Topic: topic, Key: key, Value: val}, nil, true
	}
	c.m.deadLetters.WithLabelValues(e.Namespace, deadReason(err)).Inc()
	c.log.Error("event sent to the dead-letter topic", "namespace", e.Namespace, "version", e.Version, "reason", reason)
	b, _ := envelope.EncodeDeadLetter(envelope.DeadLetter{Stage: "capture", Reason: reason, Namespace: e.Namespace,
		Key: key, Version: e.Version, Topic: topic, Partition: -1, Offset: -1, Record: val})
	return nil, &kgo.Record{Topic: envelope.DeadLetterTopic(c.cfg.TopicPrefix), Key: key, Value: b}, true
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
		if fenced(err) {
			return fmt.Errorf("%w: %v", ErrFenced, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
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
	done := func(_ *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			if first == nil {
				first = err
			}
			mu.Unlock()
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
	if first != nil {
		return first
	}
	if flushErr != nil {
		return flushErr
	}
	return endErr
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
	if errors.As(err, &se) && (se.HasErrorCode(286) || se.HasErrorCode(260) || se.HasErrorCode(280)) {
		return &HistoryLostError{Namespace: ns, Checkpoint: at, Cause: err}
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
