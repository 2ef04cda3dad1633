package capture

import (
	"context"
	"fmt"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// completeEvents fills in the _id of update events that lack one. MongoDB
// always sends documentKey._id; the mongo-java-server stand-in sends the
// update operators in documentKey instead, so for those events the _id is
// read from the oplog entry at the event's cluster time, one query per batch.
// Against real MongoDB this never triggers.
func (c *Capture) completeEvents(ctx context.Context, ns string, evs []changeEvent) error {
	var need []primitive.Timestamp
	for i := range evs {
		if (evs[i].Op == "update" || evs[i].Op == "replace") && evs[i].id.Type == 0 {
			need = append(need, evs[i].ClusterTime)
		}
	}
	if len(need) == 0 {
		return nil
	}
	ids, err := c.src.oplogIDs(ctx, ns, need)
	if err != nil {
		return fmt.Errorf("capture %s: read oplog for update ids: %w", ns, err)
	}
	for i := range evs {
		ev := &evs[i]
		if (ev.Op == "update" || ev.Op == "replace") && ev.id.Type == 0 {
			id, ok := ids[ev.ClusterTime]
			if !ok {
				return fmt.Errorf("capture %s: update event at %d.%d has no _id and none in the oplog", ns, ev.ClusterTime.T, ev.ClusterTime.I)
			}
			ev.id = id
		}
	}
	return nil
}

// lookupEvents fetches the current document of update events that carry
// none: with update_lookup "capture" every update, and the stand-in's
// partial documents (no _id). One $in query per batch, from the primary at
// majority. A document gone since is left nil: its delete follows.
func (c *Capture) lookupEvents(ctx context.Context, ns string, evs []changeEvent) error {
	var ids []bson.RawValue
	for i := range evs {
		ev := &evs[i]
		if ev.Op != "update" && ev.Op != "replace" {
			continue
		}
		if _, err := ev.Full.LookupErr("_id"); ev.Full == nil && c.cfg.UpdateLookup == "capture" || ev.Full != nil && err != nil {
			ev.Full = nil
			ids = append(ids, ev.id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	docs, err := c.src.lookup(ctx, ns, ids)
	if err != nil {
		return fmt.Errorf("capture %s: look up updated documents: %w", ns, err)
	}
	for i := range evs {
		if (evs[i].Op == "update" || evs[i].Op == "replace") && evs[i].Full == nil {
			evs[i].Full = docs[string(envelope.Key(evs[i].id))]
		}
	}
	return nil
}

// envelopeOf is the envelope of a change event stamped v; ok is false for
// events that carry no document change.
func (c *Capture) envelopeOf(ns string, ev *changeEvent, v envelope.Version) (e envelope.Event, ok bool) {
	e, skip := eventEnvelope(ns, ev, v)
	switch skip {
	case skipNoChange:
		// DDL events (create, createIndexes, modify, ...) change no document.
		c.log.Debug("ignoring change event without a document", "namespace", ns, "op", ev.Op, "version", v)
	case skipNoID:
		c.log.Warn("ignoring change event without an _id", "namespace", ns, "op", ev.Op, "version", v)
	}
	return e, skip == ""
}

const (
	skipNoChange = "no document change"
	skipNoID     = "no _id"
)

// eventEnvelope is envelopeOf without the logging: skip says why an event
// has no envelope ("" when it has one).
func eventEnvelope(ns string, ev *changeEvent, v envelope.Version) (e envelope.Event, skip string) {
	e = envelope.Event{Namespace: ns, ID: ev.id, Version: v}
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
		return e, skipNoChange
	}
	if e.ID.Type == 0 {
		return e, skipNoID
	}
	if e.Op == envelope.OpReplace && e.Doc == nil {
		e.Op = envelope.OpUpdate // a replace whose document is already gone: the delete follows
	}
	return e, ""
}

// skipTooLarge handles BSONObjectTooLarge (10334): the server cannot send the
// next event because it exceeds 16 MB, and would fail the same way on every
// retry. capture reopens the stream after its checkpoint with fullDocument
// projected away and batch size 1: the first event returned is the failing
// one, small now, and names its token, _id, operation and cluster time (not
// its document). That _id and version go to the dead-letter topic, the
// checkpoint moves past the event, and the stream goes on. Re-emit the
// document with `tidemark backfill --ids` once it is smaller, or let
// reconcile find it.
func (c *Capture) skipTooLarge(ctx context.Context, ns string, txn *kgo.Client, st *streamState, cause error) error {
	wo := watchOptions{BatchSize: 1, Probe: true, MaxAwait: c.cfg.IdlePoll}
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
	probe, err := c.src.watch(ctx, ns, wo)
	if err != nil {
		return classify(ns, st.position(), err)
	}
	defer probe.Close(context.WithoutCancel(ctx))
	deadline := time.Now().Add(time.Minute)
	for !probe.TryNext(ctx) {
		if err := probe.Err(); err != nil {
			return fmt.Errorf("capture %s: find the event over 16 MB: %w (after %v)", ns, err, cause)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("capture %s: the event over 16 MB did not reappear: %w", ns, cause)
		}
		select {
		case <-ctx.Done():
		case <-time.After(c.cfg.IdlePoll):
		}
	}
	ev, err := decodeEvent(probe.Current())
	if err != nil {
		return fmt.Errorf("capture %s: decode change event: %w", ns, err)
	}
	v := ev.version()
	key := envelope.Key(ev.id)
	reason := fmt.Sprintf("%s event over 16 MB (BSONObjectTooLarge, 10334): the server cannot send it; "+
		"its document is unknown here. Re-emit it with `tidemark backfill --namespace %s --ids ...`", ev.Op, ns)
	b, err := envelope.EncodeDeadLetter(envelope.DeadLetter{Stage: "capture", Reason: reason, Namespace: ns,
		Key: key, Version: v, Topic: envelope.Topic(c.cfg.TopicPrefix, ns), Partition: -1, Offset: -1})
	if err != nil {
		return err
	}
	dl := &kgo.Record{Topic: envelope.DeadLetterTopic(c.cfg.TopicPrefix), Key: key, Value: b}
	if err := c.commit(ctx, txn, nil, []*kgo.Record{dl}); err != nil {
		return err
	}
	c.m.deadLetters.WithLabelValues(ns, "event_too_large").Inc()
	c.log.Error("change event over 16 MB sent to the dead-letter topic", "namespace", ns, "version", v, "op", ev.Op)
	st.Token, st.StartAfter, st.T, st.I, st.AtT, st.AtI, st.Time = append([]byte(nil), ev.Token...), false, v.T, v.I, 0, 0, time.Now().UTC()
	if err := putState(ctx, c, ns, *st); err != nil {
		return err
	}
	return errSkipped
}
