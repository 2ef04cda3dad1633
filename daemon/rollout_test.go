package daemon

import (
	"bytes"
	"context"
	"testing"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/rollout"
	"go.mongodb.org/mongo-driver/bson"
)

// TestRolloutRepairReemitsWhatTheRoundFound checks what the rollout's
// repair reads and asks capture for: each namespace's newest round summary
// (its documents, and whether it listed all of them; a partial or missing
// summary is no list, so the engine holds instead of re-emitting the
// collection), and a targeted request for exactly the keys handed over.
func TestRolloutRepairReemitsWhatTheRoundFound(t *testing.T) {
	ctx := context.Background()
	store := checkpointstest.New()
	key := func(id int64) []byte {
		typ, b, _ := bson.MarshalValue(id)
		return envelope.Key(bson.RawValue{Type: typ, Value: b})
	}
	put := func(ns string, sum checkpoints.RoundSummary) {
		if err := checkpoints.PutJSON(ctx, store, checkpoints.KeyReconcileLatest+ns, sum); err != nil {
			t.Fatal(err)
		}
	}
	put("app.found", checkpoints.RoundSummary{ID: "r1", Divergent: 3, IDs: [][]byte{key(7), key(9)}, IDsComplete: true})
	put("app.clean", checkpoints.RoundSummary{ID: "r2", Clean: true, IDsComplete: true})
	put("app.partial", checkpoints.RoundSummary{ID: "r3", Divergent: 5000})
	a := &daemonActions{d: &daemon{store: store}}
	slice := rollout.Slice{"app.found": 10000, "app.clean": 10000, "app.partial": 10000, "app.unreconciled": 5000}
	ds, err := a.Divergent(ctx, slice)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]rollout.DivergentKeys{}
	for _, d := range ds {
		got[d.Namespace] = d
	}
	if d := got["app.found"]; d.Round != "r1" || !d.Complete || len(d.Keys) != 2 || !bytes.Equal(d.Keys[0], key(7)) || !bytes.Equal(d.Keys[1], key(9)) {
		t.Errorf("app.found: %+v, want round r1's two documents, complete", d)
	}
	if d := got["app.clean"]; d.Round != "r2" || !d.Complete || len(d.Keys) != 0 {
		t.Errorf("app.clean: %+v, want a complete empty list", d)
	}
	if d := got["app.partial"]; d.Round != "r3" || d.Complete {
		t.Errorf("app.partial: %+v, want an incomplete list", d)
	}
	if d, ok := got["app.unreconciled"]; !ok || d.Round != "" {
		t.Errorf("app.unreconciled: %+v (present %v), want no round", d, ok)
	}
	id, err := a.Reemit(ctx, "app.found", [][]byte{key(9)}, "test")
	if err != nil {
		t.Fatal(err)
	}
	r, ok, err := checkpoints.GetJSON[capture.Request](ctx, store, id)
	if err != nil || !ok {
		t.Fatalf("request %s: %v %v", id, ok, err)
	}
	if r.Namespace != "app.found" || r.Actor != rollout.AutoActor || r.Reason != "test" || len(r.Keys) != 1 || !bytes.Equal(r.Keys[0], key(9)) || r.Filter != "" {
		t.Errorf("request: %+v, want exactly key 9 of app.found by %s", r, rollout.AutoActor)
	}
}
