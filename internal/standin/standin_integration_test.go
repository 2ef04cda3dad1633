//go:build integration

package standin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/tidemarkhq/tidemark/internal/testbed"
)

func connect(t testing.TB, uri string) *mongo.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := mongo.Connect(ctx, options.Client().ApplyURI(uri))
	if err == nil {
		err = cl.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Err()
	}
	if err != nil {
		t.Fatalf("stand-in at %s: %v", uri, err)
	}
	t.Cleanup(func() { cl.Disconnect(context.Background()) })
	return cl
}

// fill appends n oplog entries (inserts into another collection).
func fill(t testing.TB, ctx context.Context, coll *mongo.Collection, n int) {
	t.Helper()
	docs := make([]any, 0, 1000)
	for i := 0; i < n; i++ {
		docs = append(docs, bson.D{{Key: "pad", Value: "0123456789abcdef0123456789abcdef"}})
		if len(docs) == cap(docs) || i == n-1 {
			if _, err := coll.InsertMany(ctx, docs); err != nil {
				t.Fatal(err)
			}
			docs = docs[:0]
		}
	}
}

// getMoreCost is the median time of a change stream's Next that returns one
// new event: the getMore that reads it from the oplog.
func getMoreCost(t testing.TB, ctx context.Context, coll *mongo.Collection, rounds int) time.Duration {
	t.Helper()
	cs, err := coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetMaxAwaitTime(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close(ctx)
	took := make([]time.Duration, 0, rounds)
	for i := 0; i < rounds; i++ {
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "i", Value: i}}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if !cs.Next(ctx) {
			t.Fatalf("stream ended: %v", cs.Err())
		}
		took = append(took, time.Since(start))
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	return took[len(took)/2]
}

// oplogEntries counts the oplog through the collection, as on any server.
func oplogEntries(t testing.TB, ctx context.Context, cl *mongo.Client) int64 {
	t.Helper()
	n, err := cl.Database("local").Collection("oplog.rs").CountDocuments(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIntegrationStandinGetMoreCostFlat measures a getMore at two oplog
// lengths 10x apart. mongo-java-server 1.47.0 rebuilt the stream from the
// whole oplog on every getMore, so its cost grew with the length; a
// positioned cursor's does not.
func TestIntegrationStandinGetMoreCostFlat(t *testing.T) {
	s := testbed.StartStandin(t)
	cl := connect(t, s.URI)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db := cl.Database("flat")
	watched, filler := db.Collection("watched"), db.Collection("filler")
	const short = 10_000
	fill(t, ctx, filler, short)
	n1 := oplogEntries(t, ctx, cl)
	// Warm the JIT on both paths so the first figure is not the slower one.
	getMoreCost(t, ctx, watched, 50)
	c1 := getMoreCost(t, ctx, watched, 100)
	fill(t, ctx, filler, int(10*n1-oplogEntries(t, ctx, cl)))
	n2 := oplogEntries(t, ctx, cl)
	c2 := getMoreCost(t, ctx, watched, 100)
	t.Logf("median getMore: %v at %d oplog entries, %v at %d", c1, n1, c2, n2)
	if n2 < 10*n1 {
		t.Fatalf("oplog grew to %d entries, want at least %d", n2, 10*n1)
	}
	// A rescan of 10x the entries costs ~10x; allow 2x plus 2 ms for a
	// loaded machine's noise.
	if c2 > 2*c1+2*time.Millisecond {
		t.Fatalf("getMore cost grew with the oplog: %v at %d entries, %v at %d", c1, n1, c2, n2)
	}
}

// TestIntegrationStandinIdleStreamCPU keeps a change stream open on a quiet
// collection: each getMore waits up to maxAwaitTimeMS for an entry, so the
// server burns no CPU. (mongo-java-server answered at once and the driver
// asked again: a busy loop of one core.)
func TestIntegrationStandinIdleStreamCPU(t *testing.T) {
	s := testbed.StartStandin(t)
	cl := connect(t, s.URI)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	coll := cl.Database("idle").Collection("c")
	cs, err := coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetMaxAwaitTime(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close(ctx)
	// Let the JVM finish starting (JIT, GC) before measuring.
	for i := 0; i < 3; i++ {
		if cs.TryNext(ctx) {
			t.Fatal("event on a quiet collection")
		}
	}
	before, err := testbed.ProcessCPU(s.Pid)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	getMores := 0
	for time.Since(start) < 5*time.Second {
		t0 := time.Now()
		if cs.TryNext(ctx) {
			t.Fatal("event on a quiet collection")
		}
		if err := cs.Err(); err != nil {
			t.Fatal(err)
		}
		// The wait is the server's: an empty getMore returns after maxAwaitTimeMS.
		if d := time.Since(t0); d < 400*time.Millisecond {
			t.Fatalf("empty getMore returned after %v, want about the 500ms maxAwaitTimeMS", d)
		}
		getMores++
		if cs.ResumeToken() == nil {
			t.Fatal("empty batch without a post-batch resume token")
		}
	}
	after, err := testbed.ProcessCPU(s.Pid)
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(start)
	share := float64(after-before) / float64(wall)
	t.Logf("idle stream: %d getMores in %v, stand-in CPU %v (%.1f%% of a core)", getMores, wall.Round(time.Millisecond), after-before, 100*share)
	// An idle JVM still runs its GC and JIT threads; a busy loop is ~100%.
	if share > 0.05 {
		t.Fatalf("stand-in used %.1f%% of a core on an idle stream, want under 5%%", 100*share)
	}
}

// TestIntegrationStandinAwaitDataWakes checks that a waiting getMore returns
// as soon as an entry arrives, not at the end of maxAwaitTimeMS.
func TestIntegrationStandinAwaitDataWakes(t *testing.T) {
	s := testbed.StartStandin(t)
	cl := connect(t, s.URI)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	coll := cl.Database("wake").Collection("c")
	cs, err := coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetMaxAwaitTime(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close(ctx)
	go func() {
		time.Sleep(300 * time.Millisecond) // lets the getMore start waiting; the assertion does not depend on it
		coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "wake"}})
	}()
	start := time.Now()
	if !cs.Next(ctx) {
		t.Fatal(cs.Err())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("getMore returned after %v: it waited out maxAwaitTimeMS instead of waking on the insert", d)
	}
	var ev struct {
		Op  string `bson:"operationType"`
		Key bson.D `bson:"documentKey"`
		NS  struct {
			DB, Coll string
		} `bson:"ns"`
	}
	if err := cs.Decode(&ev); err != nil {
		t.Fatal(err)
	}
	if ev.Op != "insert" || len(ev.Key) != 1 || ev.Key[0].Value != "wake" || ev.NS.DB != "wake" || ev.NS.Coll != "c" {
		t.Fatalf("event: %+v", ev)
	}
}

// TestIntegrationStandinHistoryLost caps the oplog at run time and checks
// both ways a real server reports lost history with code 286: resuming from
// a token that fell off, and an open stream that fell behind.
func TestIntegrationStandinHistoryLost(t *testing.T) {
	s := testbed.StartStandin(t)
	cl := connect(t, s.URI)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	coll := cl.Database("lost").Collection("c")
	behind, err := coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetMaxAwaitTime(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer behind.Close(ctx)
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: 0}}); err != nil {
		t.Fatal(err)
	}
	if !behind.Next(ctx) {
		t.Fatal(behind.Err())
	}
	token := behind.ResumeToken()
	// Within the cap, the token resumes.
	if _, err := testbed.SetOplogCap(ctx, cl, 50, -1); err != nil {
		t.Fatal(err)
	}
	fill(t, ctx, coll, 10)
	ok, err := coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetResumeAfter(token))
	if err != nil {
		t.Fatalf("resume within the cap: %v", err)
	}
	ok.Close(ctx)
	// 100 more entries push the token's entry out of a 50-entry oplog.
	fill(t, ctx, coll, 100)
	st, err := testbed.SetOplogCap(ctx, cl, -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != 50 {
		t.Fatalf("capped oplog holds %d entries, want 50", st.Entries)
	}
	_, err = coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetResumeAfter(token))
	wantLost(t, "resumeAfter", err)
	_, err = coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetStartAtOperationTime(&primitive.Timestamp{T: 1, I: 0}))
	wantLost(t, "startAtOperationTime", err)
	// The open stream's next getMore finds its position gone. The driver
	// resumes once on its own; the resume gets 286 too.
	for behind.TryNext(ctx) {
	}
	wantLost(t, "open stream", behind.Err())
}

func wantLost(t *testing.T, what string, err error) {
	t.Helper()
	var se mongo.ServerError
	if !errors.As(err, &se) || !se.HasErrorCode(286) {
		t.Fatalf("%s: got %v, want ChangeStreamHistoryLost (286)", what, err)
	}
	var ce mongo.CommandError
	if errors.As(err, &ce) && ce.Name != "ChangeStreamHistoryLost" {
		t.Fatalf("%s: code name %q, want ChangeStreamHistoryLost", what, ce.Name)
	}
}

// TestIntegrationStandinIDRangesMatchUnindexed pages a collection whose _id
// values span every BSON type an _id can have (all but arrays, regexes and
// undefined, which MongoDB refuses as _id), through the ordered _id index
// (sort {_id: 1} or {_id: -1}, $gt/$gte/$lt/$lte, limit; find min/max with
// hint), and compares every page with the unindexed path (a sort on _id
// plus a constant second key, which the index does not serve).
func TestIntegrationStandinIDRangesMatchUnindexed(t *testing.T) {
	s := testbed.StartStandin(t)
	cl := connect(t, s.URI)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	coll := cl.Database("ids").Collection("c")
	oid := primitive.NewObjectIDFromTimestamp(time.Unix(1_700_000_000, 0))
	ids := []any{
		int32(-5), int32(7), int64(1) << 40, 2.5, math.Inf(-1), primitive.NewDecimal128(0, 42),
		"", "a", "b", "ba",
		bson.D{{Key: "k", Value: 1}}, bson.D{{Key: "k", Value: "x"}},
		primitive.Binary{Subtype: 0, Data: []byte{1}}, primitive.Binary{Subtype: 4, Data: make([]byte, 16)},
		oid, primitive.NewObjectIDFromTimestamp(time.Unix(1_800_000_000, 0)),
		false, true,
		primitive.NewDateTimeFromTime(time.Unix(0, 0)), primitive.NewDateTimeFromTime(time.Unix(1_800_000_000, 0)),
		primitive.Timestamp{T: 5, I: 1},
		primitive.MinKey{}, primitive.MaxKey{},
	}
	for _, id := range ids {
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "v", Value: fmt.Sprint(id)}}); err != nil {
			t.Fatalf("insert _id %v: %v", id, err)
		}
	}
	find := func(filter any, opts *options.FindOptions) []bson.Raw {
		t.Helper()
		cur, err := coll.Find(ctx, filter, opts)
		if err != nil {
			t.Fatalf("find %v: %v", filter, err)
		}
		var out []bson.Raw
		if err := cur.All(ctx, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	same := func(what string, got, want []bson.Raw) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d documents, unindexed %d\n got %v\nwant %v", what, len(got), len(want), got, want)
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("%s: document %d is %v, unindexed %v", what, i, got[i], want[i])
			}
		}
	}
	for _, dir := range []int{1, -1} {
		idx := bson.D{{Key: "_id", Value: dir}}
		plain := bson.D{{Key: "_id", Value: dir}, {Key: "none", Value: 1}}
		same(fmt.Sprintf("all, sort %d", dir), find(bson.D{}, options.Find().SetSort(idx)),
			find(bson.D{}, options.Find().SetSort(plain)))
		for _, op := range []string{"$gt", "$gte", "$lt", "$lte"} {
			for _, x := range ids {
				f := bson.D{{Key: "_id", Value: bson.D{{Key: op, Value: x}}}}
				for _, limit := range []int64{0, 1, 3} {
					what := fmt.Sprintf("{_id: {%s: %v}} sort %d limit %d", op, x, dir, limit)
					same(what, find(f, options.Find().SetSort(idx).SetLimit(limit)),
						find(f, options.Find().SetSort(plain).SetLimit(limit)))
				}
			}
		}
	}
	// min/max with hint: index bounds across types, max exclusive.
	all := find(bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}, {Key: "none", Value: 1}}))
	hint := bson.D{{Key: "_id", Value: 1}}
	for i := 0; i < len(all); i += 5 {
		for j := i; j <= len(all); j += 7 {
			opts := options.Find().SetHint(hint).SetMin(bson.D{{Key: "_id", Value: all[i].Lookup("_id")}})
			want := all[i:]
			if j < len(all) {
				opts.SetMax(bson.D{{Key: "_id", Value: all[j].Lookup("_id")}})
				want = all[i:j]
			}
			same(fmt.Sprintf("min %v max index %d", all[i].Lookup("_id"), j), find(bson.D{}, opts), want)
		}
	}
	if _, err := coll.Find(ctx, bson.D{}, options.Find().SetMin(bson.D{{Key: "_id", Value: 1}})); err == nil {
		t.Fatal("min without a hint was accepted; MongoDB refuses it")
	}
}

// TestIntegrationStandinClusterTimePerSecond checks the oplog's timestamps
// count I from 1 within each second, as a replica set's do: tidemark's
// version T*1e6+I orders only while I stays under a million.
// (mongo-java-server's own clock never resets I.)
func TestIntegrationStandinClusterTimePerSecond(t *testing.T) {
	s := testbed.StartStandin(t)
	cl := connect(t, s.URI)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	coll := cl.Database("ts").Collection("c")
	cs, err := coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetBatchSize(1000))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close(ctx)
	// Enough writes to span at least two seconds.
	start := time.Now()
	n := 0
	for time.Since(start) < 2500*time.Millisecond {
		fill(t, ctx, coll, 200)
		n += 200
	}
	var prev primitive.Timestamp
	seconds := 0
	for i := 0; i < n; i++ {
		if !cs.Next(ctx) {
			t.Fatal(cs.Err())
		}
		var ev struct {
			CT primitive.Timestamp `bson:"clusterTime"`
		}
		if err := cs.Decode(&ev); err != nil {
			t.Fatal(err)
		}
		switch {
		case i == 0:
		case ev.CT.T == prev.T && ev.CT.I != prev.I+1:
			t.Fatalf("event %d at %d.%d follows %d.%d in the same second", i, ev.CT.T, ev.CT.I, prev.T, prev.I)
		case ev.CT.T > prev.T && ev.CT.I != 1:
			t.Fatalf("event %d opens second %d with I = %d, want 1", i, ev.CT.T, ev.CT.I)
		case ev.CT.T < prev.T:
			t.Fatalf("event %d at %d.%d goes back from %d.%d", i, ev.CT.T, ev.CT.I, prev.T, prev.I)
		}
		if i > 0 && ev.CT.T > prev.T {
			seconds++
		}
		prev = ev.CT
	}
	if seconds == 0 {
		t.Fatalf("%d events all in one second; the test needs a second boundary", n)
	}
}

// TestIntegrationStandinEventShapes checks each operation's event against
// the shape the MongoDB manual documents for it.
func TestIntegrationStandinEventShapes(t *testing.T) {
	s := testbed.StartStandin(t)
	cl := connect(t, s.URI)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	coll := cl.Database("shapes").Collection("c")
	cs, err := coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetFullDocument(options.UpdateLookup))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close(ctx)
	next := func() bson.M {
		t.Helper()
		if !cs.Next(ctx) {
			t.Fatalf("stream ended: %v", cs.Err())
		}
		var ev bson.M
		if err := cs.Decode(&ev); err != nil {
			t.Fatal(err)
		}
		delete(ev, "_id")
		delete(ev, "clusterTime")
		return ev
	}
	ns := bson.M{"db": "shapes", "coll": "c"}
	check := func(what string, got, want bson.M) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s event:\n got %v\nwant %v", what, got, want)
		}
	}
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "k"}, {Key: "a", Value: int32(1)}, {Key: "b", Value: int32(2)}}); err != nil {
		t.Fatal(err)
	}
	check("insert", next(), bson.M{"operationType": "insert", "ns": ns, "documentKey": bson.M{"_id": "k"},
		"fullDocument": bson.M{"_id": "k", "a": int32(1), "b": int32(2)}})
	if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "k"}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: int32(5)}}}, {Key: "$unset", Value: bson.D{{Key: "b", Value: ""}}}}); err != nil {
		t.Fatal(err)
	}
	check("update", next(), bson.M{"operationType": "update", "ns": ns, "documentKey": bson.M{"_id": "k"},
		"updateDescription": bson.M{"updatedFields": bson.M{"a": int32(5)}, "removedFields": bson.A{"b"}},
		"fullDocument":      bson.M{"_id": "k", "a": int32(5)}})
	if _, err := coll.ReplaceOne(ctx, bson.D{{Key: "_id", Value: "k"}}, bson.D{{Key: "c", Value: "x"}}); err != nil {
		t.Fatal(err)
	}
	check("replace", next(), bson.M{"operationType": "replace", "ns": ns, "documentKey": bson.M{"_id": "k"},
		"fullDocument": bson.M{"_id": "k", "c": "x"}})
	if _, err := coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: "k"}}); err != nil {
		t.Fatal(err)
	}
	check("delete", next(), bson.M{"operationType": "delete", "ns": ns, "documentKey": bson.M{"_id": "k"}})
	// A drop of another collection of the database is not this stream's.
	if err := cl.Database("shapes").Collection("other").Drop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := coll.Drop(ctx); err != nil {
		t.Fatal(err)
	}
	check("drop", next(), bson.M{"operationType": "drop", "ns": ns})
	check("invalidate", next(), bson.M{"operationType": "invalidate"})
	if cs.Next(ctx) {
		t.Fatal("an event after invalidate")
	}
}

// TestIntegrationStandinSampleManyTimes runs $sample often enough on a
// collection large enough for TimSort to check its comparator (32 or more
// documents): mongo-java-server's own $sample sorted by a random comparator
// and now and then failed with "Comparison method violates its general
// contract!". Every answer must hold size distinct documents of the
// collection, for sizes below, at and above the collection's.
func TestIntegrationStandinSampleManyTimes(t *testing.T) {
	s := testbed.StartStandin(t)
	cl := connect(t, s.URI)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const docs = 1000
	coll := cl.Database("sample").Collection("c")
	batch := make([]any, docs)
	for i := range batch {
		batch[i] = bson.D{{Key: "_id", Value: int32(i)}}
	}
	if _, err := coll.InsertMany(ctx, batch); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		size, rounds, want int
	}{
		{size: 0, rounds: 5, want: 0},
		{size: 1, rounds: 20, want: 1},
		{size: 50, rounds: 200, want: 50},
		{size: docs, rounds: 20, want: docs},
		{size: 2 * docs, rounds: 5, want: docs},
	} {
		t.Run(fmt.Sprint("size=", tc.size), func(t *testing.T) {
			first := map[int32]int{} // how often each _id came first
			for r := 0; r < tc.rounds; r++ {
				cur, err := coll.Aggregate(ctx, mongo.Pipeline{{{Key: "$sample", Value: bson.D{{Key: "size", Value: tc.size}}}}})
				if err != nil {
					t.Fatalf("round %d: %v", r, err)
				}
				var got []struct {
					ID int32 `bson:"_id"`
				}
				if err := cur.All(ctx, &got); err != nil {
					t.Fatalf("round %d: %v", r, err)
				}
				seen := map[int32]bool{}
				for _, d := range got {
					if d.ID < 0 || d.ID >= docs || seen[d.ID] {
						t.Fatalf("round %d: _id %d is not in the collection or came twice", r, d.ID)
					}
					seen[d.ID] = true
				}
				if len(got) != tc.want {
					t.Fatalf("round %d: %d documents, want %d", r, len(got), tc.want)
				}
				if len(got) > 0 {
					first[got[0].ID]++
				}
			}
			// The order is random too: 20 samples of the whole collection
			// that all start with one document would mean it is not.
			if tc.want > 1 && tc.rounds >= 20 && len(first) == 1 {
				t.Fatalf("every sample started with _id %v", first)
			}
		})
	}
}
