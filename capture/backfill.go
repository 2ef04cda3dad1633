package capture

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"golang.org/x/time/rate"
)

// Progress is a backfill's checkpointed state, stored per chunk.
type Progress struct {
	Namespace string `json:"namespace"`
	T0T       uint32 `json:"t0_t"`
	T0I       uint32 `json:"t0_i"`
	// LastKey is envelope.Key of the last _id of the last finished chunk.
	LastKey   []byte `json:"last_key,omitempty"`
	Chunks    int64  `json:"chunks"`
	Docs      int64  `json:"docs"`
	Estimated int64  `json:"estimated"`
	Done      bool   `json:"done"`
	// Error is why the backfill stopped, after its retry budget; cleared when
	// it runs again.
	Error   string    `json:"error,omitempty"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
}

func backfillKey(ns string) string { return checkpoints.PrefixBackfill + ns }

// BackfillProgress returns the recorded progress of a namespace's backfill.
func BackfillProgress(ctx context.Context, s checkpoints.Store, ns string) (Progress, bool, error) {
	return checkpoints.GetJSON[Progress](ctx, s, backfillKey(ns))
}

// initialBackfill scans the collection in _id order, one checkpointed chunk at
// a time, stamping every document just below t0. A restart resumes after the
// last finished chunk with the same t0.
func (c *Capture) initialBackfill(ctx context.Context, ns string, t0 envelope.Version) error {
	p, ok, err := BackfillProgress(ctx, c.store, ns)
	if err != nil {
		return err
	}
	if ok && p.Done {
		return nil
	}
	if !ok || p.T0T != t0.T || p.T0I != t0.I {
		p = Progress{Namespace: ns, T0T: t0.T, T0I: t0.I, Started: time.Now().UTC()}
	}
	p.Error = ""
	db, coll, _ := cut(ns)
	col := c.mongo.Database(db).Collection(coll)
	if p.Estimated, err = col.EstimatedDocumentCount(ctx); err != nil {
		return fmt.Errorf("capture %s: count documents: %w", ns, err)
	}
	log := c.log.With("namespace", ns, "t0", t0)
	log.Info("backfill starting", "estimated_docs", p.Estimated, "resume_after_docs", p.Docs)
	var lim *rate.Limiter
	if c.cfg.Backfill.RateLimit > 0 {
		lim = rate.NewLimiter(rate.Limit(c.cfg.Backfill.RateLimit), c.cfg.Backfill.ChunkSize)
	}
	version := envelope.Below(t0)
	start, startDocs := time.Now(), p.Docs
	// The scan reads chunks ahead while up to Parallelism of them are being
	// produced; each chunk's acknowledgement is awaited in scan order, so the
	// checkpoint only ever names a chunk whose every predecessor is in Kafka.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the scan and in-flight chunks when this returns early
	inflight := make(chan *backfillChunk, c.cfg.Backfill.Parallelism)
	scanErr := make(chan error, 1)
	scan, err := c.newScanner(ctx, col, t0)
	if err != nil {
		return err
	}
	go c.scanChunks(ctx, ns, scan, p.LastKey, lim, version, inflight, scanErr)
	for ch := range inflight {
		if err := <-ch.done; err != nil {
			return err
		}
		p.LastKey, p.Chunks, p.Docs, p.Updated = ch.lastKey, p.Chunks+1, p.Docs+int64(ch.n), time.Now().UTC()
		if err := checkpoints.PutJSON(ctx, c.store, backfillKey(ns), p); err != nil {
			return err
		}
		c.m.backfillDocs.WithLabelValues(ns).Add(float64(ch.n))
		c.m.backfillChunk.WithLabelValues(ns).Inc()
		c.progress(log, p, start, startDocs)
	}
	select {
	case err := <-scanErr:
		if ctx.Err() == nil {
			// The error goes into the progress record, where status shows it.
			p.Error, p.Updated = err.Error(), time.Now().UTC()
			if perr := checkpoints.PutJSON(ctx, c.store, backfillKey(ns), p); perr != nil {
				log.Error("cannot record the backfill error", "err", perr)
			}
		}
		return err
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p.Done, p.Updated = true, time.Now().UTC()
	c.m.backfillDone.WithLabelValues(ns).Set(1)
	log.Info("backfill done", "docs", p.Docs, "chunks", p.Chunks, "elapsed", time.Since(p.Started).Round(time.Second))
	return checkpoints.PutJSON(ctx, c.store, backfillKey(ns), p)
}

// backfillChunk is one chunk of the initial backfill on its way to Kafka:
// done gets the outcome of producing its n documents.
type backfillChunk struct {
	n       int
	lastKey []byte
	done    chan error
}

// scanChunks reads the collection in _id order after lastKey (nil: from the
// start), one chunk at a time, and queues each chunk on inflight in scan
// order while its records are produced beside the scan of the next. It
// closes inflight when the scan ends, after sending a scan error, if any, to
// scanErr.
func (c *Capture) scanChunks(ctx context.Context, ns string, scan *scanner, lastKey []byte, lim *rate.Limiter,
	version envelope.Version, inflight chan<- *backfillChunk, scanErr chan<- error) {
	defer close(inflight)
	defer scan.close()
	var last *bson.RawValue
	if lastKey != nil {
		id, err := envelope.ParseKey(lastKey)
		if err != nil {
			scanErr <- err
			return
		}
		last = &id
	}
	topic := envelope.Topic(c.cfg.TopicPrefix, ns)
	for {
		docs, err := c.readChunk(ctx, ns, scan, last, c.cfg.Backfill.ChunkSize)
		if err != nil {
			scanErr <- err
			return
		}
		if len(docs) == 0 {
			return
		}
		lastID := docs[len(docs)-1].Lookup("_id")
		if lim != nil {
			if err := lim.WaitN(ctx, min(len(docs), lim.Burst())); err != nil {
				scanErr <- err
				return
			}
		}
		// Envelopes are built beside the scan of the next chunk, not before it.
		ch := &backfillChunk{n: len(docs), lastKey: envelope.Key(lastID), done: make(chan error, 1)}
		go func() { ch.done <- c.produceDocs(ctx, ns, topic, version, docs) }()
		select {
		case inflight <- ch:
		case <-ctx.Done():
			return
		}
		if len(docs) < c.cfg.Backfill.ChunkSize {
			return
		}
		last = &lastID
	}
}

// produceDocs produces one backfill record per document, stamped version (a
// dead letter for a document that cannot be one), and waits for Kafka.
func (c *Capture) produceDocs(ctx context.Context, ns, topic string, version envelope.Version, docs []bson.Raw) error {
	recs := make([]*kgo.Record, 0, len(docs))
	for _, doc := range docs {
		e := envelope.Event{Op: envelope.OpBackfill, Namespace: ns, ID: doc.Lookup("_id"), Version: version, Doc: doc}
		rec, dl := c.toRecord(topic, &e)
		if dl != nil {
			rec = dl
		}
		recs = append(recs, rec)
	}
	return c.produceAll(ctx, recs)
}

func (c *Capture) progress(log interface {
	Info(string, ...any)
}, p Progress, start time.Time, startDocs int64) {
	ratio := 1.0
	if p.Estimated > 0 {
		ratio = min(1, float64(p.Docs)/float64(p.Estimated))
	}
	c.m.backfillDone.WithLabelValues(p.Namespace).Set(ratio)
	rateNow := float64(p.Docs-startDocs) / max(time.Since(start).Seconds(), 0.001)
	eta := time.Duration(0)
	if rateNow > 0 && p.Estimated > p.Docs {
		eta = time.Duration(float64(p.Estimated-p.Docs)/rateNow) * time.Second
	}
	log.Info("backfill progress", "chunks", p.Chunks, "docs", p.Docs, "estimated", p.Estimated,
		"percent", fmt.Sprintf("%.1f", 100*ratio), "docs_per_second", int(rateNow), "eta", eta.Round(time.Second))
}

// produceAll produces records with the plain idempotent producer and returns
// once Kafka acknowledged all of them, retrying until ctx ends.
func (c *Capture) produceAll(ctx context.Context, recs []*kgo.Record) error {
	for {
		res := c.plain.ProduceSync(ctx, recs...)
		var failed []*kgo.Record
		var first error
		refused := 0
		for _, r := range res {
			switch {
			case r.Err == nil:
			case tooLarge(r.Err) && r.Record.Topic == envelope.DeadLetterTopic(c.cfg.TopicPrefix):
				return fmt.Errorf("capture: kafka refused a dead letter of %d bytes as too large: raise max.message.bytes of %s", len(r.Record.Value), r.Record.Topic)
			case tooLarge(r.Err):
				// Retrying cannot help; the dead letter takes its place.
				failed = append(failed, c.refusedDeadLetter(r.Record))
				refused++
			default:
				failed = append(failed, r.Record)
				if first == nil {
					first = r.Err
				}
			}
		}
		if first == nil && refused > 0 {
			recs = failed
			continue
		}
		if first == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.log.Warn("backfill produce failed; retrying", "records", len(failed), "err", first)
		recs = failed
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Request asks for a targeted backfill while streaming continues: a whole
// namespace, the documents matching Filter, or the listed _ids (repair).
type Request struct {
	Namespace string `json:"namespace"`
	// Keys are envelope.Key values of _ids to re-emit; those the source no
	// longer has are emitted as deletes.
	Keys [][]byte `json:"keys,omitempty"`
	// Filter is a MongoDB query in relaxed extended JSON.
	Filter string `json:"filter,omitempty"`
	// ResetStream restarts the namespace's stream from now: the recovery after
	// lost history (a full re-backfill must accompany it, so Keys and Filter
	// must be empty).
	ResetStream bool `json:"reset_stream,omitempty"`
	// ResumeAfterInvalidate continues a namespace stopped by an invalidate
	// (drop, rename) from just after it, with startAfter: documents of a
	// collection re-created under the name arrive as inserts; rows of the
	// dropped documents stay until reconcile and repair remove them.
	ResumeAfterInvalidate bool   `json:"resume_after_invalidate,omitempty"`
	Reason                string `json:"reason,omitempty"`
	Actor                 string `json:"actor,omitempty"`
	// NotBefore is when the request was made (Enqueue sets it). The
	// re-emitted versions must be above it: a repair restores rows that were
	// deleted or changed in Cassandra by a write stamped with the wall clock,
	// and a version below that write's timestamp would lose to it. An idle
	// source's cluster time lags the clock until its next write or periodic
	// no-op (every 10 s on a replica set), so the backfill waits for it, up to
	// notBeforeWait.
	NotBefore time.Time `json:"not_before,omitzero"`
}

// notBeforeWait bounds the wait for the source's cluster time to pass a
// request's NotBefore; a replica set writes a no-op every 10 s when idle.
const notBeforeWait = 30 * time.Second

// RequestKeyPrefix is where backfill requests wait in the checkpoints store.
const RequestKeyPrefix = checkpoints.PrefixIntent + "backfill/"

// clusterTimeAfter is clusterTime once a backfill at it would stamp versions
// above notBefore (in Cassandra's microseconds), polling while the source's
// cluster time lags; after notBeforeWait it goes on with what it has and says
// so (a repair then reports the rows a newer target write still hides).
func (c *Capture) clusterTimeAfter(ctx context.Context, ns string, notBefore time.Time) (envelope.Version, error) {
	deadline := time.Now().Add(notBeforeWait)
	for {
		t0, err := c.clusterTime(ctx, ns)
		if err != nil || notBefore.IsZero() || envelope.Below(t0).Micros() > notBefore.UnixMicro() {
			return t0, err
		}
		if time.Now().After(deadline) {
			c.log.Warn("the source's cluster time lags the backfill request; rows changed in the target since may stay divergent",
				"namespace", ns, "cluster_time", t0, "requested_at", notBefore)
			return t0, nil
		}
		select {
		case <-ctx.Done():
			return t0, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Enqueue stores a request for whichever daemon runs capture of the namespace.
func Enqueue(ctx context.Context, s checkpoints.Store, r Request) (string, error) {
	if r.NotBefore.IsZero() {
		r.NotBefore = time.Now().UTC()
	}
	id := fmt.Sprintf("%s%d", RequestKeyPrefix, time.Now().UnixNano())
	return id, checkpoints.PutJSON(ctx, s, id, r)
}

// Backfill re-emits documents of a namespace with a fresh T0, while the stream
// continues. T0 is the cluster time of a change stream opened before the scan
// (never a host clock), and the scan reads at or after T0, so every change
// made after the scan read a document has a higher version than what it emits.
func (c *Capture) Backfill(ctx context.Context, r Request) (int, error) {
	if !c.captures(r.Namespace) {
		return 0, fmt.Errorf("capture: namespace %s is not captured here", r.Namespace)
	}
	t0, err := c.clusterTimeAfter(ctx, r.Namespace, r.NotBefore)
	if err != nil {
		return 0, err
	}
	version := envelope.Below(t0)
	db, coll, _ := cut(r.Namespace)
	scan, err := c.newScanner(ctx, c.mongo.Database(db).Collection(coll), t0)
	if err != nil {
		return 0, err
	}
	defer scan.close()
	col := scan.col
	topic := envelope.Topic(c.cfg.TopicPrefix, r.Namespace)
	filter := bson.D{}
	want := map[string]bool{}
	if len(r.Keys) > 0 {
		ids := bson.A{}
		for _, k := range r.Keys {
			id, err := envelope.ParseKey(k)
			if err != nil {
				return 0, err
			}
			ids = append(ids, id)
			want[string(k)] = true
		}
		filter = bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}
	} else if r.Filter != "" {
		if err := bson.UnmarshalExtJSON([]byte(r.Filter), false, &filter); err != nil {
			return 0, fmt.Errorf("capture: backfill filter: %w", err)
		}
	}
	sctx := ctx
	if scan.sess != nil {
		sctx = mongo.NewSessionContext(ctx, scan.sess)
	}
	cur, err := col.Find(sctx, filter)
	if err != nil {
		return 0, fmt.Errorf("capture %s: targeted backfill: %w", r.Namespace, err)
	}
	defer cur.Close(ctx)
	var recs []*kgo.Record
	for cur.Next(ctx) {
		doc := bson.Raw(append([]byte(nil), cur.Current...))
		e := envelope.Event{Op: envelope.OpBackfill, Namespace: r.Namespace, ID: doc.Lookup("_id"), Version: version, Doc: doc}
		delete(want, string(e.Key()))
		rec, dl := c.toRecord(topic, &e)
		if dl != nil {
			rec = dl
		}
		recs = append(recs, rec)
	}
	if err := cur.Err(); err != nil {
		return 0, err
	}
	for k := range want {
		id, _ := envelope.ParseKey([]byte(k))
		e := envelope.Event{Op: envelope.OpDelete, Namespace: r.Namespace, ID: id, Version: version}
		rec, _ := c.toRecord(topic, &e)
		recs = append(recs, rec)
	}
	if err := c.produceAll(ctx, recs); err != nil {
		return 0, err
	}
	c.m.backfillDocs.WithLabelValues(r.Namespace).Add(float64(len(recs)))
	c.log.Info("targeted backfill done", "namespace", r.Namespace, "records", len(recs), "t0", t0, "reason", r.Reason)
	return len(recs), nil
}

func (c *Capture) captures(ns string) bool {
	for _, n := range c.cfg.Namespaces {
		if n == ns {
			return true
		}
	}
	return false
}

// serveRequests runs backfill requests left in the store by operators or by
// reconcile repair, for the namespaces this process captures.
func (c *Capture) serveRequests(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		reqs, err := c.store.List(ctx, RequestKeyPrefix)
		if err != nil {
			c.log.Warn("cannot list backfill requests", "err", err)
			continue
		}
		for key, b := range reqs {
			var r Request
			if err := json.Unmarshal(b, &r); err != nil || !c.captures(r.Namespace) {
				continue
			}
			result := "ok"
			switch {
			case r.ResetStream:
				err = c.resetStream(ctx, r.Namespace)
			case r.ResumeAfterInvalidate:
				err = c.resumeAfterInvalidate(ctx, r.Namespace)
			default:
				_, err = c.Backfill(ctx, r)
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				result = "failed: " + err.Error()
			}
			c.store.Append(ctx, checkpoints.AuditEntry{Actor: orDefault(r.Actor, "auto:capture"), Action: "backfill",
				Target: r.Namespace, Reason: r.Reason, Result: result, Details: map[string]any{"keys": len(r.Keys), "filter": r.Filter, "reset_stream": r.ResetStream,
					"resume_after_invalidate": r.ResumeAfterInvalidate}})
			c.store.Delete(ctx, key)
		}
	}
}

// resetStream is the recovery after lost history: forget the stream position
// and the backfill, so the namespace restarts at a fresh T0 with a full backfill.
func (c *Capture) resetStream(ctx context.Context, ns string) error {
	if err := c.store.Delete(ctx, streamKey(ns)); err != nil {
		return err
	}
	if err := c.store.Delete(ctx, backfillKey(ns)); err != nil {
		return err
	}
	c.m.historyLost.WithLabelValues(ns).Set(0)
	c.m.invalidated.WithLabelValues(ns).Set(0)
	c.restart(ns)
	return nil
}

// resumeAfterInvalidate is the operator's choice to keep capturing a
// namespace whose stream was invalidated, from just after the invalidate.
func (c *Capture) resumeAfterInvalidate(ctx context.Context, ns string) error {
	st, _, err := checkpoints.GetJSON[streamState](ctx, c.store, streamKey(ns))
	if err != nil {
		return err
	}
	inv := st.Invalidated
	if inv == nil {
		return fmt.Errorf("capture %s: the stream is not invalidated; nothing to resume after", ns)
	}
	// resumeAfter an invalidate token fails with 260; startAfter starts a
	// new stream after it. Without an invalidate (the stand-in), resume
	// after the drop itself.
	st.Token, st.StartAfter, st.T, st.I, st.AtT, st.AtI = inv.Token, inv.Invalidate, inv.T, inv.I, 0, 0
	st.Invalidated, st.Stopped, st.Time = nil, "", time.Now().UTC()
	if err := putState(ctx, c, ns, st); err != nil {
		return err
	}
	c.m.invalidated.WithLabelValues(ns).Set(0)
	c.restart(ns)
	return nil
}

// restart stops the namespace's current run, if any, and lets Run start it again.
func (c *Capture) restart(ns string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cancel := c.running[ns]; cancel != nil {
		cancel()
	}
	select {
	case c.reset[ns] <- struct{}{}:
	default:
	}
}

func orDefault(s, d string) string {
	if strings.TrimSpace(s) == "" {
		return d
	}
	return s
}
