//go:build integration

package reconcile

import (
	"context"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"go.mongodb.org/mongo-driver/bson"
)

// TestIntegrationSourcePositions: the questions a round asks the source —
// its current version, whether a namespace changed between two versions,
// whether a document changed after a version — answered by change streams
// and by the oplog accelerator alike, on the stand-in.
func TestIntegrationSourcePositions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	mc := testbed.Mongo(t)
	db := testbed.UniqueName(t, "pos")
	ns := db + ".c"
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	src, err := newSource(mc, ns)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "before"}}); err != nil {
		t.Fatal(err)
	}
	v0, err := src.now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the update lands in a later second
	if _, err := src.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "before"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "x", Value: 1}}}}); err != nil {
		t.Fatal(err)
	}
	v1, err := src.now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !v0.Before(v1) {
		t.Fatalf("the source version did not move past a write: %v then %v", v0, v1)
	}
	id := mustRaw(t, "before")
	for _, oplog := range []bool{false, true} {
		probe := streamProbe
		if oplog {
			probe = oplogProbe
		}
		// The update is the only change of ns in (v0, v1].
		quietTo, changeAt, err := probe(ctx, mc, ns, next(v0), v1)
		if err != nil {
			t.Fatalf("oplog %v: %v", oplog, err)
		}
		if changeAt.IsZero() || !v0.Before(changeAt) || v1.Before(changeAt) || !quietTo.Before(changeAt) {
			t.Errorf("oplog %v: between %v and %v: change at %v, quiet to %v; want the update", oplog, v0, v1, changeAt, quietTo)
		}
		// Nothing after it.
		quietTo, changeAt, err = probe(ctx, mc, ns, next(v1), v1)
		if err != nil {
			t.Fatalf("oplog %v: %v", oplog, err)
		}
		if !changeAt.IsZero() && !v1.Before(changeAt) {
			t.Errorf("oplog %v: a change at %v after %v", oplog, changeAt, v1)
		}
		// The stream must have read past v1 to say so (the shared stand-in
		// writes elsewhere too; either way its token reaches v1's entry).
		v2, _ := src.now(ctx)
		quietTo, _, err = probe(ctx, mc, ns, next(v1), v2)
		if err != nil || quietTo.Before(v1) {
			t.Errorf("oplog %v: quiet only to %v (%v), want at least %v", oplog, quietTo, err, v1)
		}
		// The document changed in a later second than v0; not after v1.
		at, ok := src.changedAfter(ctx, id, v0, oplog)
		if !ok || !v0.Before(at) || at.T == v0.T {
			t.Errorf("oplog %v: change of the document after %v: %v %v, want the update", oplog, v0, at, ok)
		}
		if at, ok := src.changedAfter(ctx, id, v1, oplog); ok {
			t.Errorf("oplog %v: a change after %v at %v", oplog, v1, at)
		}
		// Capture's progress as the caught-up rule asks for it: a stream
		// checkpoint at v0 has not produced the update; one at v1 has
		// produced everything of ns up to a later version.
		st := checkpointstest.New()
		l := &PipelineLag{Store: st, Mongo: mc, OplogReads: oplog}
		checkpoints.PutJSON(ctx, st, checkpoints.PrefixCapture+ns, streamCheckpoint{Token: []byte{1}, T: v0.T, I: v0.I})
		if ok, err := l.captureCaught(ctx, ns, v1); ok || err != nil {
			t.Errorf("oplog %v: capture at %v counted as having produced the change before %v (%v)", oplog, v0, v1, err)
		}
		checkpoints.PutJSON(ctx, st, checkpoints.PrefixCapture+ns, streamCheckpoint{Token: []byte{1}, T: v1.T, I: v1.I})
		// The source is asked at most every 250 ms per namespace: until then
		// the answer about capture's earlier position says "not yet".
		v3, _ := src.now(ctx)
		deadline := time.Now().Add(3 * time.Second)
		for {
			ok, err := l.captureCaught(ctx, ns, v3)
			if ok && err == nil {
				break
			}
			if err != nil || time.Now().After(deadline) {
				t.Errorf("oplog %v: capture at %v, nothing of ns since, not caught up to %v in 3s (%v)", oplog, v1, v3, err)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
