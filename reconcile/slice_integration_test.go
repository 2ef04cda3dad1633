//go:build integration

package reconcile

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"go.mongodb.org/mongo-driver/bson"
)

// TestIntegrationSliceLimitsExpectedRows: under a rollout slice the sink
// writes only the slice's keys, so a round must expect only those. Here the
// target holds the users rows of even _ids only: with the slice "even _ids"
// the round is clean, without it the odd ones are missing.
func TestIntegrationSliceLimitsExpectedRows(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const n = 2000
	f.load(ctx, n)
	for i := 1; i < n; i += 2 {
		if err := f.s.Query("DELETE FROM "+f.ks+".users WHERE id = ?", fmt.Sprint(i)).ExecContext(ctx); err != nil {
			t.Fatal(err)
		}
	}
	even := func(_ string, idKey []byte) bool {
		id, err := envelope.ParseKey(idKey)
		return err == nil && id.Type == bson.TypeInt64 && id.Int64()%2 == 0
	}
	r := f.reconciler(Config{})
	r.d.Lag = Quiescent{}
	scope := Scope{Namespace: f.ns, Table: f.ks + ".users"}

	rep, err := r.Round(ctx, scope, RoundOptions{Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts[ClassMissing] != n/2 {
		t.Fatalf("without a slice: %d missing, want the %d odd _ids (%v)", rep.Counts[ClassMissing], n/2, rep.Counts)
	}

	r.d.Slice = func(context.Context) (func(string, []byte) bool, string, error) { return even, "even _ids", nil }
	rep, err = r.Round(ctx, scope, RoundOptions{Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != "clean" || rep.Slice != "even _ids" || rep.RowsCompared != n {
		t.Fatalf("with the slice: status %s, slice %q, %d rows compared (want clean, %d), counts %v", rep.Status, rep.Slice, rep.RowsCompared, n, rep.Counts)
	}
}
