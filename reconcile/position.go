package reconcile

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/mongoid"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// Source positions without reading local.oplog.rs: the oplog is not readable
// through mongos or on many managed clusters, and it records a transaction's
// writes inside one applyOps entry under admin.$cmd. Change streams work in
// all three cases and unroll transactions. Reading the oplog stays an
// optional accelerator (reconcile.oplog_reads), always with the change
// stream as the fallback.

// probeWait bounds how long one probe keeps reading a change stream whose
// post-batch resume token has not reached the version asked about yet.
const probeWait = time.Second

// prev is the cluster time right before v.
func prev(v envelope.Version) envelope.Version {
	if v.I == 0 {
		if v.T == 0 {
			return v
		}
		return envelope.Version{T: v.T - 1, I: 1<<32 - 1}
	}
	return envelope.Version{T: v.T, I: v.I - 1}
}

// scanned is how far a change stream opened at startAtOperationTime from is
// known to have read, from its post-batch resume token: the token is the
// newest oplog time the server scanned, every event at or before it has been
// returned. A token still at from itself says nothing was scanned yet.
func scanned(cs *mongo.ChangeStream, from envelope.Version) (envelope.Version, bool) {
	tt, ok := mongoid.TokenTime(cs.ResumeToken())
	if !ok || !from.Before(tt) {
		return envelope.Version{}, false
	}
	return tt, true
}

func eventTime(cs *mongo.ChangeStream) (envelope.Version, error) {
	var ev struct {
		ClusterTime primitive.Timestamp `bson:"clusterTime"`
	}
	if err := cs.Decode(&ev); err != nil {
		return envelope.Version{}, err
	}
	if ev.ClusterTime.T == 0 {
		return envelope.Version{}, errors.New("a change event without clusterTime")
	}
	return envelope.Version{T: ev.ClusterTime.T, I: ev.ClusterTime.I}, nil
}

// streamProbe asks a change stream on ns opened at startAtOperationTime from
// for the first change at or after from: it is at changeAt (zero: none
// seen), and there is none in [from, quietTo]. It reads until it finds one,
// or its post-batch resume token passes v, or probeWait is over.
func streamProbe(ctx context.Context, mc *mongo.Client, ns string, from, v envelope.Version) (quietTo, changeAt envelope.Version, err error) {
	quietTo = prev(from)
	db, coll, ok := cutNamespace(ns)
	if !ok {
		return quietTo, changeAt, fmt.Errorf("namespace %q is not db.collection", ns)
	}
	pipeline := mongo.Pipeline{{{Key: "$project", Value: bson.D{{Key: "fullDocument", Value: 0}, {Key: "updateDescription", Value: 0}}}}}
	cs, err := mc.Database(db).Collection(coll).Watch(ctx, pipeline, options.ChangeStream().
		SetStartAtOperationTime(&primitive.Timestamp{T: from.T, I: from.I}).SetBatchSize(1).SetMaxAwaitTime(200*time.Millisecond))
	if err != nil {
		return quietTo, changeAt, err
	}
	defer cs.Close(context.WithoutCancel(ctx))
	deadline := time.Now().Add(probeWait)
	for {
		if cs.TryNext(ctx) {
			at, err := eventTime(cs)
			if err != nil {
				return quietTo, changeAt, err
			}
			return prev(at), at, nil
		}
		if err := cs.Err(); err != nil {
			return quietTo, changeAt, err
		}
		if tt, ok := scanned(cs, from); ok && quietTo.Before(tt) {
			quietTo = tt
		}
		if !quietTo.Before(v) || time.Now().After(deadline) {
			return quietTo, changeAt, nil
		}
	}
}

// oplogProbe answers what streamProbe answers from local.oplog.rs, applyOps
// (transactions) included: first that the oplog reaches v, then for the
// first entry of ns in [from, v]. An error (no access, mongos) sends the
// caller to streamProbe.
func oplogProbe(ctx context.Context, mc *mongo.Client, ns string, from, v envelope.Version) (quietTo, changeAt envelope.Version, err error) {
	quietTo = prev(from)
	oplog := mc.Database("local").Collection("oplog.rs")
	var e struct {
		TS primitive.Timestamp `bson:"ts"`
	}
	err = oplog.FindOne(ctx, bson.D{{Key: "ts", Value: bson.D{{Key: "$gte", Value: primitive.Timestamp{T: v.T, I: v.I}}}}},
		options.FindOne().SetProjection(bson.D{{Key: "ts", Value: 1}})).Decode(&e)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return quietTo, changeAt, nil // the oplog does not reach v yet
	}
	if err != nil {
		return quietTo, changeAt, err
	}
	filter := bson.D{{Key: "ts", Value: bson.D{{Key: "$gte", Value: primitive.Timestamp{T: from.T, I: from.I}},
		{Key: "$lte", Value: primitive.Timestamp{T: v.T, I: v.I}}}},
		{Key: "$or", Value: bson.A{bson.D{{Key: "ns", Value: ns}},
			bson.D{{Key: "ns", Value: "admin.$cmd"}, {Key: "o.applyOps.ns", Value: ns}}}}}
	err = oplog.FindOne(ctx, filter, options.FindOne().SetSort(bson.D{{Key: "$natural", Value: 1}}).
		SetProjection(bson.D{{Key: "ts", Value: 1}})).Decode(&e)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return v, changeAt, nil
	}
	if err != nil {
		return quietTo, changeAt, err
	}
	at := envelope.Version{T: e.TS.T, I: e.TS.I}
	return prev(at), at, nil
}

// now is a cluster time no older than any change a read of the source made
// before it can have seen: the primary's last write (isMaster lastWrite, on
// replica sets), else the position a change stream opened now starts from
// (its first post-batch resume token; the stand-in appends to its oplog as
// it writes), else the server's clock rounded up to the next second.
func (s *source) now(ctx context.Context) (envelope.Version, error) {
	return again(ctx, func() (envelope.Version, error) { return s.nowOnce(ctx) })
}

func (s *source) nowOnce(ctx context.Context) (envelope.Version, error) {
	var r struct {
		LocalTime time.Time `bson:"localTime"`
		LastWrite struct {
			OpTime struct {
				TS primitive.Timestamp `bson:"ts"`
			} `bson:"opTime"`
		} `bson:"lastWrite"`
	}
	if err := s.mc.Database("admin").RunCommand(ctx, bson.D{{Key: "isMaster", Value: 1}}).Decode(&r); err != nil {
		return envelope.Version{}, fmt.Errorf("reconcile: read the source's time: %w", err)
	}
	if ts := r.LastWrite.OpTime.TS; ts.T != 0 {
		return envelope.Version{T: ts.T, I: ts.I}, nil
	}
	cs, err := s.coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetBatchSize(1))
	if err == nil {
		tt, ok := mongoid.TokenTime(cs.ResumeToken())
		cs.Close(context.WithoutCancel(ctx))
		if ok {
			return tt, nil
		}
	}
	if r.LocalTime.IsZero() {
		return envelope.Version{}, errors.New("reconcile: the source reported no localTime")
	}
	return envelope.Version{T: uint32(r.LocalTime.Unix()) + 1}, nil
}

// changedAfter reports a change of document id in a later second than
// version v: the source-derived expectation that tells a stale row (the
// source moved on, the target did not) from a different one. Only whole
// seconds compare: a row's write time is microseconds (the pipeline's
// T*1e6+I, or a native write's clock) while an ordinal counts operations.
// ok is false when no such change is known. A change stream filtered on the
// document answers; with oplogReads the oplog is asked first.
func (s *source) changedAfter(ctx context.Context, id bson.RawValue, v envelope.Version, oplogReads bool) (envelope.Version, bool) {
	from := envelope.Version{T: v.T + 1}
	if oplogReads {
		if at, ok, err := s.oplogChangeOf(ctx, id, from); err == nil {
			return at, ok
		}
	}
	until, err := s.now(ctx)
	if err != nil {
		return envelope.Version{}, false
	}
	if until.Before(from) {
		return envelope.Version{}, false
	}
	pipeline := mongo.Pipeline{{{Key: "$match", Value: bson.D{{Key: "documentKey._id", Value: id}}}},
		{{Key: "$project", Value: bson.D{{Key: "fullDocument", Value: 0}, {Key: "updateDescription", Value: 0}}}}}
	cs, err := s.coll.Watch(ctx, pipeline, options.ChangeStream().
		SetStartAtOperationTime(&primitive.Timestamp{T: from.T, I: from.I}).SetMaxAwaitTime(200*time.Millisecond))
	if err != nil {
		return envelope.Version{}, false
	}
	defer cs.Close(context.WithoutCancel(ctx))
	deadline := time.Now().Add(probeWait)
	for {
		if cs.TryNext(ctx) {
			at, err := eventTime(cs)
			return at, err == nil
		}
		if cs.Err() != nil {
			return envelope.Version{}, false
		}
		if tt, ok := scanned(cs, from); (ok && !tt.Before(until)) || time.Now().After(deadline) {
			return envelope.Version{}, false
		}
	}
}

// oplogChangeOf is the first oplog entry of document id at or after from,
// transactions (applyOps) included.
func (s *source) oplogChangeOf(ctx context.Context, id bson.RawValue, from envelope.Version) (envelope.Version, bool, error) {
	var e struct {
		TS primitive.Timestamp `bson:"ts"`
	}
	byID := bson.A{bson.D{{Key: "o._id", Value: id}}, bson.D{{Key: "o2._id", Value: id}}}
	filter := bson.D{{Key: "ts", Value: bson.D{{Key: "$gte", Value: primitive.Timestamp{T: from.T, I: from.I}}}},
		{Key: "$or", Value: bson.A{
			bson.D{{Key: "ns", Value: s.ns}, {Key: "$or", Value: byID}},
			bson.D{{Key: "ns", Value: "admin.$cmd"}, {Key: "o.applyOps", Value: bson.D{{Key: "$elemMatch", Value: bson.D{
				{Key: "ns", Value: s.ns}, {Key: "$or", Value: byID}}}}}},
		}}}
	err := s.mc.Database("local").Collection("oplog.rs").FindOne(ctx, filter,
		options.FindOne().SetProjection(bson.D{{Key: "ts", Value: 1}})).Decode(&e)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return envelope.Version{}, false, nil
	}
	if err != nil {
		return envelope.Version{}, false, err
	}
	return envelope.Version{T: e.TS.T, I: e.TS.I}, true, nil
}
