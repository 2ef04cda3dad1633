package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/mongoid"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
)

// changeEvent is the part of a change event capture reads.
type changeEvent struct {
	Token       bson.Raw            `bson:"_id"`
	Op          string              `bson:"operationType"`
	ClusterTime primitive.Timestamp `bson:"clusterTime"`
	Key         bson.Raw            `bson:"documentKey"`
	Full        bson.Raw            `bson:"fullDocument"`
	NS          struct {
		DB   string `bson:"db"`
		Coll string `bson:"coll"`
	} `bson:"ns"`
	To struct {
		DB   string `bson:"db"`
		Coll string `bson:"coll"`
	} `bson:"to"`
	// LSID and TxnNumber are set on the events of a multi-document transaction.
	LSID      bson.Raw `bson:"lsid"`
	TxnNumber *int64   `bson:"txnNumber"`
	Split     *struct {
		Fragment int `bson:"fragment"`
		Of       int `bson:"of"`
	} `bson:"splitEvent"`

	// id is documentKey._id, or the stand-in's fallback from the oplog.
	id bson.RawValue
	// pre is the record made while decoding, if any (see decodeEventFor).
	pre prebuilt
}

func (e *changeEvent) version() envelope.Version {
	return envelope.Version{T: e.ClusterTime.T, I: e.ClusterTime.I}
}

// sameGroup reports whether a and b belong to one MongoDB transaction (or
// are one single operation). Every event of one transaction shares its
// clusterTime, lsid and txnNumber; events outside transactions have a
// cluster time of their own.
func sameGroup(a, b *changeEvent) bool {
	if a.ClusterTime != b.ClusterTime || (a.TxnNumber == nil) != (b.TxnNumber == nil) {
		return false
	}
	return a.TxnNumber == nil || *a.TxnNumber == *b.TxnNumber && bytes.Equal(a.LSID, b.LSID)
}

// mergeFragments joins the fragments $changeStreamSplitLargeEvent cut one
// event into: each carries some of the top-level fields, the last one's _id
// is the token to resume after the whole event.
func mergeFragments(frags []bson.Raw) (bson.Raw, error) {
	var d bson.D
	for i, f := range frags {
		elems, err := f.Elements()
		if err != nil {
			return nil, err
		}
		for _, el := range elems {
			switch el.Key() {
			case "splitEvent":
				continue
			case "_id":
				if i != len(frags)-1 {
					continue
				}
			}
			d = append(d, bson.E{Key: el.Key(), Value: el.Value()})
		}
	}
	return bson.Marshal(d)
}

// stream runs one change stream until an error. Events are produced in Kafka
// transactions that never split a MongoDB transaction; the resume token is
// checkpointed only after the Kafka transaction committed.
func (c *Capture) stream(ctx context.Context, ns string) error {
	st, _, err := checkpoints.GetJSON[streamState](ctx, c.store, streamKey(ns))
	if err != nil {
		return err
	}
	if st.Invalidated != nil {
		return st.Invalidated.err(ns)
	}
	st.Stopped = ""
	resumeAt := st.position()
	// MongoDB reports lost history itself (code 286); the oplog check also
	// catches servers that silently restart elsewhere, as the stand-in does.
	if oldest, ok, err := c.src.oldestHistory(ctx); err != nil {
		c.log.Debug("cannot read the oplog to check for lost history; relying on the server", "namespace", ns, "err", err)
	} else if ok && resumeAt.Before(oldest) && !resumeAt.IsZero() {
		return &HistoryLostError{Namespace: ns, Checkpoint: resumeAt, Oldest: oldest}
	}
	si, err := c.src.info(ctx)
	if err != nil {
		return err
	}
	wo := watchOptions{BatchSize: int32(c.cfg.BatchSize), MaxAwait: c.cfg.IdlePoll, UpdateLookup: c.cfg.UpdateLookup == "server",
		Split: si.splitLargeEvents()}
	switch {
	case st.AtT != 0 && (st.Token == nil || envelope.Version{T: st.T, I: st.I}.Before(envelope.Version{T: st.AtT, I: st.AtI})):
		wo.StartAt = &envelope.Version{T: st.AtT, I: st.AtI}
	case st.Token != nil && st.StartAfter:
		wo.StartAfter = bson.Raw(st.Token)
	case st.Token != nil:
		wo.ResumeAfter = bson.Raw(st.Token)
	default:
		wo.StartAt = &envelope.Version{T: st.StartT, I: st.StartI}
	}
	cs, err := c.src.watch(ctx, ns, wo)
	if err != nil {
		return classify(ns, resumeAt, err)
	}
	defer cs.Close(context.WithoutCancel(ctx))

	txn, err := kgo.NewClient(append(append(producerOpts(c.cfg), c.kopts...),
		kgo.TransactionalID("tidemark-capture-"+ns), kgo.TransactionTimeout(60*time.Second), kgo.MaxVersions(txnVersions()),
		// Kafka answers the next transaction's AddPartitionsToTxn with
		// CONCURRENT_TRANSACTIONS until the previous commit's markers are
		// written, typically a millisecond or two later; franz-go's default
		// 20 ms retry made every transaction after the first wait 20 ms.
		kgo.ConcurrentTransactionsBackoff(2*time.Millisecond),
		// A transaction's records are already in memory (the committer's
		// group, bounded by MaxTxnRecords). With a smaller buffer, Produce
		// blocked until the first requests were acknowledged, and franz-go
		// built the rest of the transaction's requests one at a time as
		// room appeared, each after a linger: a third of a transaction's
		// time in the benchmark went there.
		kgo.MaxBufferedRecords(2*c.cfg.MaxTxnRecords+c.cfg.BatchSize))...)
	if err != nil {
		return fmt.Errorf("capture: kafka client: %w", err)
	}
	defer txn.Close()
	s := &streamRun{c: c, ns: ns, topic: envelope.Topic(c.cfg.TopicPrefix, ns), txn: txn, st: st,
		openedAt: resumeAt, hadToken: st.Token != nil, lastCkpt: time.Now()}
	return s.run(ctx, cs)
}

// txnVersions caps the transactional producer below KIP-890 part 2 (Kafka
// 4's transaction.version 2). On that path franz-go 1.22 can find no
// partition marked as added when a transaction ends although its records
// were acknowledged (seen with a topic produced to for the first time on a
// loaded machine); it then ends the transaction with an abort and returns
// nil for the commit that was asked for. Capture would checkpoint past
// records that never became visible. Below part 2, partitions are added
// with AddPartitionsToTxn before any record is sent, and a commit is a
// commit. TestReplayCommitIsNotTurnedIntoAnAbort watches for it.
func txnVersions() *kversion.Versions {
	v := kversion.Stable()
	v.SetMaxKeyVersion(int16(kmsg.Produce), 11)
	v.SetMaxKeyVersion(int16(kmsg.EndTxn), 4)
	v.SetMaxKeyVersion(int16(kmsg.TxnOffsetCommit), 4)
	return v
}

// streamRun is the state of one opened change stream.
type streamRun struct {
	c        *Capture
	ns       string
	topic    string
	txn      *kgo.Client
	st       streamState
	openedAt envelope.Version
	hadToken bool
	// pending holds events read but not yet in Kafka, in stream order.
	pending []changeEvent
	// held is true while the last pending transaction may continue in the
	// next server batch.
	held     bool
	frags    []bson.Raw
	inval    *Invalidation
	lastCkpt time.Time
	// empties counts consecutive empty batches.
	empties int
	// noPBRT is set once an empty batch left the resume token unchanged:
	// the server sends no post-batch resume tokens.
	noPBRT bool
	// commits takes flushed batches and commits them in groups; tail is
	// the checkpoint of the last batch queued, or st when none is.
	commits *committer
	tail    streamState
	queued  bool
	// inBatch is true between the first and the last event of a server
	// batch, batchLen is its length, and caughtUp says the last batch was
	// short (or empty after events): the server had no more.
	inBatch  bool
	batchLen int
	caughtUp bool
}

func (s *streamRun) run(ctx context.Context, cs changeStream) error {
	s.commits = newCommitter(s.c, s.ns, s.txn, s.c.cfg.MaxTxnRecords)
	go s.commits.run(ctx)
	defer s.commits.close()
	err := s.read(ctx, cs)
	serr := s.settle()
	switch {
	case err == nil:
		err = serr
	case errors.Is(serr, ErrFenced):
		// A fence the committer met outranks the reader's error (a stream
		// that broke while the group committed): the namespace decides on
		// fences (one retry with a fresh producer, then stop), while a read
		// error only resumes the stream and would hide the fence.
		err = serr
	}
	return err
}

// read reads the stream until an error; see run.
func (s *streamRun) read(ctx context.Context, cs changeStream) error {
	for {
		// Before an empty batch the newest oplog entry is a position the
		// stream has passed once the batch comes back empty; only read on
		// servers without post-batch resume tokens, and only when due.
		var before envelope.Version
		idleDue := len(s.pending) == 0 && s.inval == nil && time.Since(s.lastCkpt) >= s.c.cfg.IdleCheckpointInterval
		if idleDue && s.noPBRT {
			if v, ok, err := s.c.src.newestHistory(ctx); err == nil && ok {
				before = v
			}
		}
		if err := s.waitIfCaughtUp(ctx); err != nil {
			return err
		}
		// Only a read with no event left in the batch asks the server.
		var polled time.Time
		if cs.RemainingBatchLength() == 0 {
			polled = time.Now()
		}
		if !cs.TryNext(ctx) {
			if done, err := s.emptyBatch(ctx, cs, idleDue, before, polled); done || err != nil {
				return err
			}
			continue
		}
		s.empties = 0
		if !s.inBatch {
			s.inBatch, s.batchLen = true, cs.RemainingBatchLength()+1
		}
		if cs.RemainingBatchLength() == 0 {
			// The last event of a server batch; a short batch means the
			// server had no more.
			s.inBatch, s.caughtUp = false, s.batchLen < s.c.cfg.BatchSize
		}
		raw := cs.Current()
		ev, err := decodeEventFor(raw, s.ns)
		if err == nil && ev.Split != nil {
			var whole bool
			if raw, whole, err = s.assemble(raw, ev.Split.Fragment, ev.Split.Of); err != nil {
				return err
			}
			if !whole {
				continue // a fragment of a split event: the next one goes on
			}
			ev, err = decodeEventFor(raw, s.ns) // the merged event's error is checked below
		}
		if err != nil {
			return fmt.Errorf("capture %s: decode change event: %w", s.ns, err)
		}
		if done, err := s.take(ctx, cs, ev); done || err != nil {
			return err
		}
	}
}

// waitIfCaughtUp waits, after the server had no more to give, until the
// committer has taken what was flushed, one group behind it, rather than
// polling at once. Reading ahead only pays while there is a backlog; a
// reader that caught up would poll the server again and again for a few
// events each, every poll a round trip for the server (and a scan of the
// whole oplog for the mongo-java-server stand-in).
func (s *streamRun) waitIfCaughtUp(ctx context.Context) error {
	if !s.caughtUp {
		return nil
	}
	s.caughtUp = false
	return s.commits.waitTaken(ctx)
}

// emptyBatch handles a poll that returned no event: the server has read to
// the end of its history, so a pending transaction is complete and is
// flushed, an idle stream checkpoints when due, and the next poll waits.
// done says read must return err (nil when the stream ended on purpose).
func (s *streamRun) emptyBatch(ctx context.Context, cs changeStream, idleDue bool, before envelope.Version, polled time.Time) (done bool, err error) {
	if err := cs.Err(); err != nil {
		return true, s.failed(ctx, err)
	}
	if ctx.Err() != nil {
		return true, ctx.Err()
	}
	if s.inval != nil {
		return true, s.invalidated(ctx, nil)
	}
	if len(s.pending) > 0 {
		if err := s.flush(ctx, cs.ResumeToken()); err != nil {
			return true, err
		}
		s.caughtUp = true
	} else if idleDue {
		if err := s.idle(ctx, cs.ResumeToken(), before); err != nil {
			return true, err
		}
	}
	// The stand-in answers an empty getMore at once, ignoring
	// maxAwaitTimeMS. Consecutive empty batches wait 10 ms, 20 ms, ... up
	// to IdlePoll between polls: a stream that just caught up polls again
	// soon, an idle one at most once per IdlePoll. A real server's getMore
	// waits server-side (maxAwaitTimeMS), so the wait below is already
	// spent there.
	s.empties++
	pause := min(s.c.cfg.IdlePoll, 10*time.Millisecond<<min(s.empties-1, 10))
	if wait := pause - time.Since(polled); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return true, ctx.Err()
		case <-t.C:
		}
	}
	return false, nil
}

// assemble collects raw, fragment frag of a split event
// ($changeStreamSplitLargeEvent), and returns the fragments merged once the
// last one came; whole is false before.
func (s *streamRun) assemble(raw bson.Raw, frag, of int) (_ bson.Raw, whole bool, _ error) {
	s.frags = append(s.frags, append(bson.Raw(nil), raw...))
	if frag < of {
		return nil, false, nil
	}
	merged, err := mergeFragments(s.frags)
	s.frags = s.frags[:0]
	if err != nil {
		return nil, false, fmt.Errorf("capture %s: merge split event: %w", s.ns, err)
	}
	return merged, true, nil
}

// take adds an event to the pending group, flushing the group when a
// transaction or a server batch completes it, and stops at a drop, rename
// or invalidate. done says read must return err.
func (s *streamRun) take(ctx context.Context, cs changeStream, ev changeEvent) (done bool, err error) {
	if s.inval != nil {
		// The invalidate follows a drop or rename; anything else means the
		// server does not invalidate (the stand-in): stop at the drop.
		var tok bson.Raw
		if ev.Op == "invalidate" {
			tok = ev.Token
		}
		return true, s.invalidated(ctx, tok)
	}
	switch ev.Op {
	case "drop", "rename", "dropDatabase", "invalidate":
		if err := s.flushAll(ctx); err != nil {
			return true, err
		}
		s.inval = &Invalidation{Op: ev.Op, T: ev.ClusterTime.T, I: ev.ClusterTime.I, Token: ev.Token}
		if ev.Op == "rename" {
			s.inval.To = ev.To.DB + "." + ev.To.Coll
		}
		if ev.Op == "invalidate" {
			return true, s.invalidated(ctx, ev.Token)
		}
		return false, nil
	}
	if n := len(s.pending); n > 0 && !sameGroup(&s.pending[n-1], &ev) && (s.held || n >= s.c.cfg.BatchSize) {
		// The previous transaction is complete: its successor started.
		if err := s.flush(ctx, s.pending[n-1].Token); err != nil {
			return true, err
		}
	}
	s.pending = append(s.pending, ev)
	s.held = false
	if cs.RemainingBatchLength() == 0 {
		tok := cs.ResumeToken()
		// A post-batch resume token past the last event means the server
		// read beyond it, so its transaction is complete. Equal tokens mean
		// the batch was cut by size and the transaction may continue.
		if ev.TxnNumber == nil || !bytes.Equal(tok, ev.Token) {
			if err := s.flush(ctx, tok); err != nil {
				return true, err
			}
		} else {
			s.held = true
		}
	}
	return false, nil
}

// flushAll produces every pending event, as complete.
func (s *streamRun) flushAll(ctx context.Context) error {
	if len(s.pending) == 0 {
		return nil
	}
	return s.flush(ctx, s.pending[len(s.pending)-1].Token)
}

// failed handles an error that ended the stream.
func (s *streamRun) failed(ctx context.Context, err error) error {
	if serr := s.settle(); serr != nil {
		return serr
	}
	if s.inval != nil {
		// The stream ended after a drop or rename before its invalidate
		// arrived: it is invalidated all the same.
		return s.invalidated(ctx, nil)
	}
	var se mongo.ServerError
	if errors.As(err, &se) && se.HasErrorCode(codeTooLarge) {
		if ferr := s.flushAll(ctx); ferr != nil {
			return ferr
		}
		if serr := s.settle(); serr != nil {
			return serr
		}
		return s.c.skipTooLarge(ctx, s.ns, s.txn, &s.st, err)
	}
	// Pending events are not in Kafka; the checkpoint is before them, so
	// the reopened stream replays them.
	return classify(s.ns, s.st.position(), err)
}

// flush encodes the pending events and queues them, with tok (the resume
// token after the last of them) as their checkpoint, for the committer,
// which commits them in a Kafka transaction, possibly with batches queued
// before and after, and then checkpoints. Reading goes on meanwhile; what
// reads the committed state waits for the queue first with settle. A failed
// commit ends the stream, which reopens at the last checkpoint: nothing read
// after it is lost, since it was never checkpointed.
func (s *streamRun) flush(ctx context.Context, tok bson.Raw) error {
	c := s.c
	evs := s.pending
	if err := c.completeEvents(ctx, s.ns, evs); err != nil {
		return err
	}
	evs = coalesce(evs)
	if err := c.lookupEvents(ctx, s.ns, evs); err != nil {
		return err
	}
	last := s.pending[len(s.pending)-1].version()
	batch, dead := s.records(evs)
	s.pending, s.held = s.pending[:0], false
	if tv, ok := mongoid.TokenTime(tok); ok && last.Before(tv) {
		last = tv
	}
	next := s.st
	if s.queued {
		next = s.tail
	}
	next.Token, next.StartAfter = append([]byte(nil), tok...), false
	next.T, next.I, next.AtT, next.AtI, next.Time = last.T, last.I, 0, 0, time.Now().UTC()
	s.tail, s.queued = next, true
	return s.commits.enqueue(ctx, txnBatch{recs: batch, dead: dead, state: next})
}

// records encodes evs (coalesced, complete) into records for the stream's
// topic and dead letters.
func (s *streamRun) records(evs []changeEvent) (batch, dead []*kgo.Record) {
	c := s.c
	batch = make([]*kgo.Record, 0, len(evs))
	// Metrics are counted here and added once: a labelled lookup per event
	// was a visible share of capture's CPU.
	var dups int
	counts := map[envelope.Op]int{}
	for i := range evs {
		ev := &evs[i]
		v := ev.version()
		if s.hadToken && !s.openedAt.Before(v) {
			dups++
		}
		if e, ok := c.envelopeOf(s.ns, ev, v); ok {
			counts[e.Op]++
			key, val, ok := ev.record(&e)
			var err error
			if !ok {
				key, val, err = envelope.AppendRecord(nil, &e)
			}
			if rec, dl := c.recordOf(s.topic, &e, key, val, err); dl != nil {
				dead = append(dead, dl)
			} else {
				batch = append(batch, rec)
			}
		}
	}
	if len(evs) > 0 {
		c.m.sourceTime.WithLabelValues(s.ns).Set(float64(evs[len(evs)-1].version().T))
	}
	if dups > 0 {
		c.m.duplicates.WithLabelValues(s.ns).Add(float64(dups))
	}
	for op, n := range counts {
		c.m.events.WithLabelValues(s.ns, string(op)).Add(float64(n))
	}
	return batch, dead
}

// settle waits until every queued batch is committed and checkpointed, and
// makes the newest checkpoint the stream's committed state. It does not give
// up when ctx ends: the committer does, and the transactional client must not
// be used by anything else while a commit is under way.
func (s *streamRun) settle() error {
	if !s.queued {
		return nil
	}
	st, err := s.commits.settle()
	if err != nil {
		return err
	}
	s.queued = false
	if st != nil {
		s.st = *st
		s.lastCkpt = time.Now()
	}
	return nil
}

func (s *streamRun) checkpoint(ctx context.Context, tok bson.Raw, at envelope.Version) error {
	s.st.Token, s.st.StartAfter = append([]byte(nil), tok...), false
	s.st.T, s.st.I, s.st.AtT, s.st.AtI, s.st.Time = at.T, at.I, 0, 0, time.Now().UTC()
	if err := checkpoints.PutJSON(ctx, s.c.store, streamKey(s.ns), s.st); err != nil {
		return err
	}
	s.lastCkpt = time.Now()
	s.c.m.producedTime.WithLabelValues(s.ns).Set(float64(at.T))
	s.c.m.checkpointTS.WithLabelValues(s.ns).Set(float64(s.st.Time.Unix()))
	return nil
}

// idle advances the checkpoint of a stream that returned an empty batch, so
// that a quiet collection's resume point never falls out of the oplog
// window. The post-batch resume token is the position; servers without one
// (before 4.0.7, and the stand-in) advance to before, the newest oplog entry
// read before the empty batch, when it is known.
func (s *streamRun) idle(ctx context.Context, tok bson.Raw, before envelope.Version) error {
	if s.queued {
		// The batches queued checkpoint now: the idle checkpoint is due
		// IdleCheckpointInterval after them, as after any other.
		return s.settle()
	}
	if tok != nil && !bytes.Equal(tok, s.st.Token) {
		at, ok := mongoid.TokenTime(tok)
		if !ok {
			at = envelope.Version{T: s.st.T, I: s.st.I}
		}
		return s.checkpoint(ctx, tok, at)
	}
	s.noPBRT = true
	if before.IsZero() || !(envelope.Version{T: s.st.T, I: s.st.I}).Before(before) {
		return nil
	}
	s.st.AtT, s.st.AtI, s.st.Time = before.T, before.I, time.Now().UTC()
	if err := checkpoints.PutJSON(ctx, s.c.store, streamKey(s.ns), s.st); err != nil {
		return err
	}
	s.lastCkpt = time.Now()
	s.c.m.checkpointTS.WithLabelValues(s.ns).Set(float64(s.st.Time.Unix()))
	return nil
}

// invalidated records that the namespace's stream ended with an invalidate
// (drop, rename, dropDatabase) and stops it. tok is the invalidate event's
// token when the server sent one: resuming needs startAfter with it.
func (s *streamRun) invalidated(ctx context.Context, tok bson.Raw) error {
	if err := s.settle(); err != nil {
		return err
	}
	inv := s.inval
	if tok != nil {
		inv.Token, inv.Invalidate = tok, true
	}
	inv.Time = time.Now().UTC()
	s.st.Invalidated = inv
	if err := checkpoints.PutJSON(ctx, s.c.store, streamKey(s.ns), s.st); err != nil {
		return err
	}
	return inv.err(s.ns)
}

// coalesce keeps one event per _id per transaction: the state at its end.
// Every event of a transaction carries the transaction's clusterTime, so two
// records for one _id would carry equal versions and Cassandra would break
// the tie by value (or let a delete win), not by order. Within one
// documentKey the last event is the final state. A shard-key change arrives
// as a delete under the old documentKey and an insert under the new one, in
// either order (they come from two shards): the document exists at the end,
// so an event that leaves a document wins over a delete of another
// documentKey.
func coalesce(evs []changeEvent) []changeEvent {
	type perKey struct {
		lastByDocKey map[string]int
		order        []string
	}
	// Most batches hold no transaction: nothing to coalesce, nothing to copy.
	alone := true
	for i := 1; i < len(evs) && alone; i++ {
		alone = !sameGroup(&evs[i-1], &evs[i])
	}
	if alone {
		return evs
	}
	// Sized once: growing it by appends was a visible share of a flush.
	out := make([]changeEvent, 0, len(evs))
	for start := 0; start < len(evs); {
		end := start + 1
		for end < len(evs) && sameGroup(&evs[end], &evs[start]) {
			end++
		}
		if end-start == 1 {
			out = append(out, evs[start])
			start = end
			continue
		}
		ids := map[string]*perKey{}
		for i := start; i < end; i++ {
			k := string(envelope.Key(evs[i].id))
			p := ids[k]
			if p == nil {
				p = &perKey{lastByDocKey: map[string]int{}}
				ids[k] = p
			}
			dk := string(evs[i].Key)
			if _, ok := p.lastByDocKey[dk]; !ok {
				p.order = append(p.order, dk)
			}
			p.lastByDocKey[dk] = i
		}
		keep := map[int]bool{}
		for _, p := range ids {
			final := -1
			for _, dk := range p.order {
				i := p.lastByDocKey[dk]
				if final < 0 {
					final = i
					continue
				}
				fDel, iDel := evs[final].Op == "delete", evs[i].Op == "delete"
				if fDel && !iDel || fDel == iDel && i > final {
					final = i
				}
			}
			keep[final] = true
		}
		for i := start; i < end; i++ {
			if keep[i] {
				out = append(out, evs[i])
			}
		}
		start = end
	}
	return out
}
