package capture

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
	"go.mongodb.org/mongo-driver/mongo/readconcern"
	"go.mongodb.org/mongo-driver/mongo/readpref"
)

// changeStream is the part of a MongoDB change stream capture reads. The
// production implementation is *mongo.ChangeStream; unit tests replay
// scripted, real-shaped event sequences through it (see replay_test.go).
type changeStream interface {
	// TryNext makes at most one getMore. It returns false with a nil Err when
	// the server answered with an empty batch; ResumeToken then is the batch's
	// post-batch resume token.
	TryNext(ctx context.Context) bool
	// Current is the event TryNext moved to, valid until the next call.
	Current() bson.Raw
	// ResumeToken is the token to resume after everything returned so far: the
	// current event's _id, or the post-batch resume token at the end of a batch.
	ResumeToken() bson.Raw
	// RemainingBatchLength is how many events of the current server batch are
	// left after Current.
	RemainingBatchLength() int
	// Err is the error that ended the stream, if any.
	Err() error
	Close(ctx context.Context) error
}

// watchOptions says where and how a change stream opens.
type watchOptions struct {
	// Exactly one of ResumeAfter, StartAfter and StartAt is set.
	ResumeAfter bson.Raw
	// StartAfter is used after an invalidate: resumeAfter an invalidate token
	// fails with code 260, startAfter does not.
	StartAfter bson.Raw
	StartAt    *envelope.Version
	// UpdateLookup asks the server for fullDocument: updateLookup.
	UpdateLookup bool
	// Split appends $changeStreamSplitLargeEvent (MongoDB 7.0+).
	Split bool
	// Probe drops fullDocument too: used to learn the position of an event
	// the server cannot send (over 16 MB).
	Probe     bool
	BatchSize int32
	MaxAwait  time.Duration
}

// source is what capture needs from MongoDB besides backfill scans.
type source interface {
	watch(ctx context.Context, ns string, o watchOptions) (changeStream, error)
	// lookup returns the current documents with the given _ids, keyed by
	// envelope.Key, read from the primary with readConcern majority.
	lookup(ctx context.Context, ns string, ids []bson.RawValue) (map[string]bson.Raw, error)
	// oplogIDs reads the _id of update events from the oplog; only needed
	// for the mongo-java-server stand-in, whose update events lack it.
	oplogIDs(ctx context.Context, ns string, ts []primitive.Timestamp) (map[primitive.Timestamp]bson.RawValue, error)
	// oldestHistory is the oldest cluster time in the oplog, when readable.
	oldestHistory(ctx context.Context) (envelope.Version, bool, error)
	// newestHistory is the newest cluster time in the oplog, when readable.
	newestHistory(ctx context.Context) (envelope.Version, bool, error)
	// startTime is the cluster time a change stream on ns opened now starts
	// at: T0 for a backfill.
	startTime(ctx context.Context, ns string) (envelope.Version, error)
	// info describes the server, read once per namespace start.
	info(ctx context.Context) (serverInfo, error)
	// collectionType is listCollections' type of ns ("collection", "view",
	// "timeseries"); ok is false when the collection does not exist.
	collectionType(ctx context.Context, ns string) (typ string, ok bool, err error)
}

// serverInfo is what capture adapts to.
type serverInfo struct {
	// Version is buildInfo.versionArray's first two numbers.
	Major, Minor int
	// Sessions is true when the server supports logical sessions (replica
	// sets and mongos do; the stand-in does not).
	Sessions bool
}

// splitLargeEvents reports whether $changeStreamSplitLargeEvent exists
// (MongoDB 7.0, backported to 6.0.9; 7.0 is what the manual documents).
func (s serverInfo) splitLargeEvents() bool { return s.Major >= 7 }

// mongoSource is the source backed by a real driver client.
type mongoSource struct{ c *mongo.Client }

// stampedDB is a database handle for reads whose result is stamped with a
// version: a secondary could return a state older than the version, which
// would then stick in Cassandra, so these reads go to the primary at majority
// whatever the connection string asks for.
func stampedDB(c *mongo.Client, db string) *mongo.Database {
	return c.Database(db, options.Database().SetReadPreference(readpref.Primary()).SetReadConcern(readconcern.Majority()))
}

type driverStream struct{ *mongo.ChangeStream }

func (d driverStream) Current() bson.Raw { return d.ChangeStream.Current }

// streamPipeline is the pipeline capture watches with. updateDescription is
// never read and can make an event exceed 16 MB, so it is projected away.
func streamPipeline(o watchOptions) mongo.Pipeline {
	drop := bson.D{{Key: "updateDescription", Value: 0}}
	if o.Probe {
		drop = append(drop, bson.E{Key: "fullDocument", Value: 0})
	}
	p := mongo.Pipeline{{{Key: "$project", Value: drop}}}
	if o.Split {
		// Must be the last stage.
		p = append(p, bson.D{{Key: "$changeStreamSplitLargeEvent", Value: bson.D{}}})
	}
	return p
}

func (m mongoSource) watch(ctx context.Context, ns string, o watchOptions) (changeStream, error) {
	db, coll, _ := cut(ns)
	opts := options.ChangeStream().SetBatchSize(o.BatchSize)
	if o.MaxAwait > 0 {
		opts.SetMaxAwaitTime(o.MaxAwait)
	}
	if o.UpdateLookup && !o.Probe {
		opts.SetFullDocument(options.UpdateLookup)
	}
	switch {
	case o.StartAfter != nil:
		opts.SetStartAfter(o.StartAfter)
	case o.ResumeAfter != nil:
		opts.SetResumeAfter(o.ResumeAfter)
	case o.StartAt != nil:
		opts.SetStartAtOperationTime(&primitive.Timestamp{T: o.StartAt.T, I: o.StartAt.I})
	}
	cs, err := stampedDB(m.c, db).Collection(coll).Watch(ctx, streamPipeline(o), opts)
	if err != nil {
		return nil, err
	}
	return driverStream{cs}, nil
}

func (m mongoSource) lookup(ctx context.Context, ns string, ids []bson.RawValue) (map[string]bson.Raw, error) {
	db, coll, _ := cut(ns)
	in := make(bson.A, len(ids))
	for i, id := range ids {
		in[i] = id
	}
	cur, err := stampedDB(m.c, db).Collection(coll).Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: in}}}})
	if err != nil {
		return nil, err
	}
	defer cur.Close(ctx)
	docs := map[string]bson.Raw{}
	for cur.Next(ctx) {
		docs[string(envelope.Key(cur.Current.Lookup("_id")))] = append(bson.Raw(nil), cur.Current...)
	}
	return docs, cur.Err()
}

func (m mongoSource) oplogIDs(ctx context.Context, ns string, ts []primitive.Timestamp) (map[primitive.Timestamp]bson.RawValue, error) {
	in := make(bson.A, len(ts))
	for i, t := range ts {
		in[i] = t
	}
	cur, err := m.c.Database("local").Collection("oplog.rs").Find(ctx,
		bson.D{{Key: "ts", Value: bson.D{{Key: "$in", Value: in}}}, {Key: "ns", Value: ns}},
		options.Find().SetProjection(bson.D{{Key: "ts", Value: 1}, {Key: "o2", Value: 1}}))
	if err != nil {
		return nil, err
	}
	defer cur.Close(ctx)
	out := map[primitive.Timestamp]bson.RawValue{}
	for cur.Next(ctx) {
		var e struct {
			TS primitive.Timestamp `bson:"ts"`
			O2 struct {
				ID bson.RawValue `bson:"_id"`
			} `bson:"o2"`
		}
		if cur.Decode(&e) == nil && e.O2.ID.Type != 0 {
			out[e.TS] = bson.RawValue{Type: e.O2.ID.Type, Value: append([]byte(nil), e.O2.ID.Value...)}
		}
	}
	return out, cur.Err()
}

func (m mongoSource) oplogEdge(ctx context.Context, dir int) (envelope.Version, bool, error) {
	var e struct {
		TS primitive.Timestamp `bson:"ts"`
	}
	err := m.c.Database("local").Collection("oplog.rs").FindOne(ctx, bson.D{},
		options.FindOne().SetSort(bson.D{{Key: "$natural", Value: dir}}).SetProjection(bson.D{{Key: "ts", Value: 1}})).Decode(&e)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return envelope.Version{}, false, nil
	}
	if err != nil {
		return envelope.Version{}, false, err
	}
	return envelope.Version{T: e.TS.T, I: e.TS.I}, true, nil
}

func (m mongoSource) oldestHistory(ctx context.Context) (envelope.Version, bool, error) {
	return m.oplogEdge(ctx, 1)
}

func (m mongoSource) newestHistory(ctx context.Context) (envelope.Version, bool, error) {
	return m.oplogEdge(ctx, -1)
}

// startTime opens a change stream on ns and takes its cluster time: the
// operationTime of the aggregate's reply (every replica set and mongos sends
// it), else the initial post-batch resume token (4.0.7+). The stand-in sends
// neither; there the newest oplog entry plus one ordinal is used, and an
// empty oplog means no history at all, so any cluster time works.
func (m mongoSource) startTime(ctx context.Context, ns string) (envelope.Version, error) {
	si, err := m.info(ctx)
	if err != nil {
		return envelope.Version{}, err
	}
	db, coll, _ := cut(ns)
	wctx := ctx
	var sess mongo.Session
	if si.Sessions {
		if sess, err = m.c.StartSession(); err != nil {
			return envelope.Version{}, err
		}
		defer sess.EndSession(context.WithoutCancel(ctx))
		wctx = mongo.NewSessionContext(ctx, sess)
	}
	cs, err := stampedDB(m.c, db).Collection(coll).Watch(wctx, mongo.Pipeline{})
	if err != nil {
		return envelope.Version{}, err
	}
	defer cs.Close(context.WithoutCancel(ctx))
	if sess != nil {
		if ot := sess.OperationTime(); ot != nil && ot.T != 0 {
			return envelope.Version{T: ot.T, I: ot.I}, nil
		}
	}
	if v, ok := mongoid.TokenTime(cs.ResumeToken()); ok {
		return v, nil
	}
	newest, ok, err := m.newestHistory(ctx)
	switch {
	case err != nil:
		return envelope.Version{}, fmt.Errorf("the server reports no cluster time and its oplog is not readable: %w", err)
	case !ok:
		return envelope.Version{T: 1}, nil
	}
	return envelope.Version{T: newest.T, I: newest.I + 1}, nil
}

func (m mongoSource) info(ctx context.Context) (serverInfo, error) {
	var bi struct {
		VersionArray []int32 `bson:"versionArray"`
	}
	if err := m.c.Database("admin").RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&bi); err != nil {
		return serverInfo{}, fmt.Errorf("capture: buildInfo: %w", err)
	}
	var hello bson.Raw
	if err := m.c.Database("admin").RunCommand(ctx, bson.D{{Key: "isMaster", Value: 1}}).Decode(&hello); err != nil {
		return serverInfo{}, fmt.Errorf("capture: isMaster: %w", err)
	}
	var si serverInfo
	if len(bi.VersionArray) >= 2 {
		si.Major, si.Minor = int(bi.VersionArray[0]), int(bi.VersionArray[1])
	}
	_, err := hello.LookupErr("logicalSessionTimeoutMinutes")
	si.Sessions = err == nil
	return si, nil
}

func (m mongoSource) collectionType(ctx context.Context, ns string) (string, bool, error) {
	db, coll, _ := cut(ns)
	cur, err := m.c.Database(db).ListCollections(ctx, bson.D{{Key: "name", Value: coll}})
	if err != nil {
		return "", false, err
	}
	defer cur.Close(ctx)
	if !cur.Next(ctx) {
		return "", false, cur.Err()
	}
	typ, _ := cur.Current.Lookup("type").StringValueOK()
	if typ == "" {
		typ = "collection" // MongoDB before 3.4 reports no type
	}
	return typ, true, nil
}
