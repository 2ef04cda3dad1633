//go:build integration

package capture

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"math"
	"syscall"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// mixedIDs returns n documents per _id type: ObjectId, string, int64, int32,
// double, UUID (binary subtype 4) and Date, with values that never compare
// equal across the numeric types (int32 5 and double 5.0 would be one _id).
func mixedIDs(n int) []any {
	var docs []any
	for i := 0; i < n; i++ {
		u := make([]byte, 16)
		rand.Read(u)
		for _, id := range []any{
			primitive.NewObjectID(),
			fmt.Sprintf("s-%06d", i),
			int64(10_000_000_000 + i),
			int32(i*3 + 1),
			float64(i) + 0.5,
			primitive.Binary{Subtype: 4, Data: u},
			primitive.NewDateTimeFromTime(time.Unix(1_700_000_000+int64(i), 0)),
		} {
			docs = append(docs, bson.D{{Key: "_id", Value: id}, {Key: "n", Value: i}})
		}
	}
	return docs
}

func insertAll(t *testing.T, ctx context.Context, coll *mongo.Collection, docs []any) {
	t.Helper()
	for i := 0; i < len(docs); i += 1000 {
		if _, err := coll.InsertMany(ctx, docs[i:min(i+1000, len(docs))], options.InsertMany().SetOrdered(false)); err != nil {
			t.Fatal(err)
		}
	}
}

// compareWithSource checks that the newest record of every source _id is its
// current document, and that Kafka holds no other key.
func compareWithSource(t *testing.T, ctx context.Context, coll *mongo.Collection, latest map[string]envelope.Event) int {
	t.Helper()
	docs := testbed.SourceDocs(t, ctx, coll)
	live := map[string]bool{}
	for _, doc := range docs {
		key := string(envelope.Key(doc.Lookup("_id")))
		live[key] = true
		e, ok := latest[key]
		if !ok || e.Op == envelope.OpDelete || !bytes.Equal(e.Doc, doc) {
			t.Fatalf("_id %v: newest record %s %v does not match the source %v", doc.Lookup("_id"), e.Op, e.Doc, doc)
		}
	}
	for key, e := range latest {
		if !live[key] && e.Op != envelope.OpDelete {
			t.Fatalf("_id %v is in Kafka (%s) but not in the source", e.ID, e.Op)
		}
	}
	return len(docs)
}

// TestIntegrationBackfillMixedIDTypes backfills a collection whose _ids mix
// seven BSON types, in chunks that end inside every type bracket, with one
// SIGKILL mid-backfill. Every document must reach Kafka. Before paging by
// type bracket, a chunk ending on one type lost every document of the others.
func TestIntegrationBackfillMixedIDTypes(t *testing.T) {
	const perType = 1000
	testbed.Kafka(t)
	mc := testbed.Mongo(t)
	dbName := testbed.UniqueName(t, "mixed")
	coll := mc.Database(dbName).Collection("c")
	t.Cleanup(func() { mc.Database(dbName).Drop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	insertAll(t, ctx, coll, mixedIDs(perType))

	prefix := testbed.UniqueName(t, "mixed")
	cc := childConfig{Namespace: dbName + ".c", Prefix: prefix, StoreDir: t.TempDir(), ChunkSize: 333, RateLimit: 1500}
	child := startChild(t, cc)
	store, err := checkpoints.OpenFile(cc.StoreDir)
	if err != nil {
		t.Fatal(err)
	}
	// Kill once a few chunks are checkpointed but the backfill is not done.
	for deadline := time.Now().Add(3 * time.Minute); ; {
		p, ok, _ := BackfillProgress(ctx, store, cc.Namespace)
		if ok && p.Done {
			t.Fatal("backfill finished before the kill; lower the rate limit")
		}
		if ok && p.Chunks >= 4 {
			t.Logf("killing the capture process after %d chunks (%d documents)", p.Chunks, p.Docs)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("backfill made no progress")
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, with a deadline
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	startChild(t, cc)

	// A sentinel written after the restart proves the stream runs too.
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "zz-sentinel"}}); err != nil {
		t.Fatal(err)
	}
	latest := readTopic(t, ctx, envelope.Topic(prefix, cc.Namespace), func(m map[string]envelope.Event) bool {
		_, ok := m[string(envelope.Key(rawOf(t, "zz-sentinel")))]
		p, _, _ := BackfillProgress(ctx, store, cc.Namespace)
		return ok && p.Done
	})
	n := compareWithSource(t, ctx, coll, latest)
	if n != 7*perType+1 || len(latest) != n {
		t.Fatalf("%d source documents, %d keys in Kafka; want %d of each", n, len(latest), 7*perType+1)
	}
	p, _, _ := BackfillProgress(ctx, store, cc.Namespace)
	t.Logf("all %d documents in Kafka; backfill emitted %d in %d chunks across the kill", n, p.Docs, p.Chunks)
}

// TestIntegrationDropAndReseedBeforeFirstStart reproduces the reported
// stand-in case: the collection is dropped and re-seeded just before capture
// first starts, and capture is SIGKILLed once. T0 is a cluster time after the
// drop, so the old drop's invalidate is never replayed; every document and a
// later change reach Kafka.
func TestIntegrationDropAndReseedBeforeFirstStart(t *testing.T) {
	testbed.Kafka(t)
	mc := testbed.Mongo(t)
	dbName := testbed.UniqueName(t, "reseed")
	coll := mc.Database(dbName).Collection("c")
	t.Cleanup(func() { mc.Database(dbName).Drop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	seed := func(gen int) {
		var docs []any
		for i := 0; i < 3000; i++ {
			docs = append(docs, bson.D{{Key: "_id", Value: int64(i)}, {Key: "gen", Value: gen}})
		}
		insertAll(t, ctx, coll, docs)
	}
	seed(1)
	if err := coll.Drop(ctx); err != nil {
		t.Fatal(err)
	}
	seed(2)
	prefix := testbed.UniqueName(t, "reseed")
	cc := childConfig{Namespace: dbName + ".c", Prefix: prefix, StoreDir: t.TempDir(), ChunkSize: 500}
	child := startChild(t, cc)
	store, _ := checkpoints.OpenFile(cc.StoreDir)
	for deadline := time.Now().Add(2 * time.Minute); ; {
		if st, ok, _ := checkpoints.GetJSON[streamState](ctx, store, streamKey(cc.Namespace)); ok && st.StartT != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("capture never fixed T0")
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, with a deadline
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	startChild(t, cc)
	for i := 0; i < 300; i++ {
		if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: int64(i)}}, bson.D{{Key: "$set", Value: bson.D{{Key: "gen", Value: 3}}}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "sentinel"}}); err != nil {
		t.Fatal(err)
	}
	latest := readTopic(t, ctx, envelope.Topic(prefix, cc.Namespace), func(m map[string]envelope.Event) bool {
		_, ok := m[string(envelope.Key(rawOf(t, "sentinel")))]
		p, _, _ := BackfillProgress(ctx, store, cc.Namespace)
		return ok && p.Done
	})
	n := compareWithSource(t, ctx, coll, latest)
	st, _, _ := checkpoints.GetJSON[streamState](ctx, store, streamKey(cc.Namespace))
	if st.Invalidated != nil {
		t.Fatalf("the stream was invalidated by the drop before T0: %+v", st.Invalidated)
	}
	t.Logf("%d documents match", n)
}

// TestIntegrationIdleCheckpointAdvances: a collection that takes no writes
// while others do must still move its checkpoint forward, so its resume point
// never falls out of the oplog. The stand-in sends no post-batch resume
// token, so this exercises the fallback (newest oplog entry before an empty
// batch); the post-batch-token path is replayed in the unit tests.
func TestIntegrationIdleCheckpointAdvances(t *testing.T) {
	testbed.Kafka(t)
	mc := testbed.Mongo(t)
	dbName := testbed.UniqueName(t, "idle")
	t.Cleanup(func() { mc.Database(dbName).Drop(context.Background()) })
	quiet, busy := mc.Database(dbName).Collection("quiet"), mc.Database(dbName).Collection("busy")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := quiet.InsertOne(ctx, bson.D{{Key: "_id", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	ns := dbName + ".quiet"
	store, _ := checkpoints.OpenFile(t.TempDir())
	c, err := New(Config{TopicPrefix: testbed.UniqueName(t, "idle"), Namespaces: []string{ns}, Partitions: 1,
		IdlePoll: 100 * time.Millisecond, IdleCheckpointInterval: 300 * time.Millisecond}, Deps{Mongo: mc, KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Store: store, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	waitState := func(what string, ok func(streamState) bool) streamState {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); ; {
			st, _, _ := checkpoints.GetJSON[streamState](ctx, store, streamKey(ns))
			if ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: checkpoint %+v", what, st)
			}
			time.Sleep(50 * time.Millisecond) // polling a condition, with a deadline
		}
	}
	waitState("backfill done", func(streamState) bool {
		p, _, _ := BackfillProgress(ctx, store, ns)
		return p.Done
	})
	// Writes elsewhere move the oplog on; the quiet collection's checkpoint
	// must follow past them.
	for i := 0; i < 20; i++ {
		if _, err := busy.InsertOne(ctx, bson.D{{Key: "_id", Value: i}}); err != nil {
			t.Fatal(err)
		}
	}
	newest, ok, err := mongoSource{mc}.newestHistory(ctx)
	if err != nil || !ok {
		t.Fatalf("read the oplog: %v", err)
	}
	st := waitState("idle advance", func(st streamState) bool { return !st.position().Before(newest) })
	t.Logf("idle checkpoint at %s, past the busy collection's last write %s", st.position(), newest)
	// A restart resumes from there and still sees a new write.
	stop()
	<-done
	c2, err := New(Config{TopicPrefix: c.cfg.TopicPrefix, Namespaces: []string{ns}, Partitions: 1}, Deps{Mongo: mc, KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Store: store, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	run2, stop2 := context.WithCancel(ctx)
	done2 := make(chan error, 1)
	go func() { done2 <- c2.Run(run2) }()
	// The store's directory is removed once the test ends: capture must have
	// stopped writing checkpoints into it by then.
	defer func() { stop2(); <-done2 }()
	if _, err := quiet.InsertOne(ctx, bson.D{{Key: "_id", Value: 2}}); err != nil {
		t.Fatal(err)
	}
	readTopic(t, ctx, envelope.Topic(c.cfg.TopicPrefix, ns), func(m map[string]envelope.Event) bool {
		_, ok := m[string(envelope.Key(rawOf(t, int32(2))))]
		return ok
	})
}

// everyIDType is one document per BSON type an _id can have (arrays,
// regular expressions and undefined cannot be one), several per bracket.
func everyIDType() []any {
	dec, _ := primitive.ParseDecimal128("7.25")
	ids := []any{
		primitive.MinKey{}, primitive.Null{},
		// No NaN: MongoDB sorts it below every number, the stand-in (Java
		// Double.compare) above +Inf; paging after it is unit-tested instead.
		math.Inf(-1), int32(-5), int64(-4), -3.5, dec, int32(8), int64(1 << 40), 1e300, math.Inf(1),
		"", "a", "b",
		bson.D{{Key: "k", Value: 1}}, bson.D{{Key: "k", Value: 2}},
		// Two UUIDs, no other binary subtype: the stand-in keeps UUIDs and
		// other binaries as different Java types that $gt does not compare
		// (MongoDB compares all BinData by length, subtype, bytes), so a
		// page ending on one never reaches the other there (docs/mongodb.md).
		primitive.Binary{Subtype: 4, Data: bytes.Repeat([]byte{7}, 16)}, primitive.Binary{Subtype: 4, Data: bytes.Repeat([]byte{9}, 16)},
		primitive.NewObjectID(), primitive.NewObjectID(),
		false, true,
		primitive.NewDateTimeFromTime(time.Unix(0, 0)), primitive.NewDateTimeFromTime(time.Unix(2_000_000_000, 0)),
		primitive.Timestamp{T: 1, I: 1}, primitive.Timestamp{T: 2, I: 1},
		primitive.MaxKey{},
	}
	var docs []any
	for i, id := range ids {
		docs = append(docs, bson.D{{Key: "_id", Value: id}, {Key: "n", Value: i}})
	}
	return docs
}

// TestIntegrationBackfillEveryIDType backfills one chunk per document, so a
// chunk boundary falls after every _id type, and expects every document in
// Kafka.
func TestIntegrationBackfillEveryIDType(t *testing.T) {
	testbed.Kafka(t)
	mc := testbed.Mongo(t)
	dbName := testbed.UniqueName(t, "every")
	coll := mc.Database(dbName).Collection("c")
	t.Cleanup(func() { mc.Database(dbName).Drop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	docs := everyIDType()
	for _, d := range docs {
		if _, err := coll.InsertOne(ctx, d); err != nil {
			t.Fatalf("insert %v: %v", d, err)
		}
	}
	ns := dbName + ".c"
	store, _ := checkpoints.OpenFile(t.TempDir())
	prefix := testbed.UniqueName(t, "every")
	c, err := New(Config{TopicPrefix: prefix, Namespaces: []string{ns}, Partitions: 2, Backfill: BackfillConfig{ChunkSize: 1}}, Deps{Mongo: mc, KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Store: store, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go c.Run(runCtx)
	latest := readTopic(t, ctx, envelope.Topic(prefix, ns), func(m map[string]envelope.Event) bool {
		p, _, _ := BackfillProgress(ctx, store, ns)
		return p.Done && int64(len(m)) >= p.Docs && p.Docs > 0
	})
	n := compareWithSource(t, ctx, coll, latest)
	if n != len(docs) || len(latest) != n {
		t.Fatalf("%d source documents, %d in Kafka, want %d", n, len(latest), len(docs))
	}
}
