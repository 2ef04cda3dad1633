//go:build integration

package reconcile

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
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

// TestIntegrationRoundKeepsItsSlice: the plan's slice widens while a round
// runs. The round judges the slice it started with (even _ids: clean, their
// rows only) and records the slice at its end and that it changed, in the
// report and in the summary rollout reads.
func TestIntegrationRoundKeepsItsSlice(t *testing.T) {
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
	var calls atomic.Int32
	r := f.reconciler(Config{})
	r.d.Lag = Quiescent{}
	// The first call (the round's start) answers even _ids; every later one
	// the widened slice, as if the plan advanced during the round.
	r.d.Slice = func(context.Context) (func(string, []byte) bool, string, error) {
		if calls.Add(1) == 1 {
			return even, "even _ids", nil
		}
		return nil, "every _id", nil
	}
	scope := Scope{Namespace: f.ns, Table: f.ks + ".users"}
	rep, err := r.Round(ctx, scope, RoundOptions{Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != "clean" || rep.RowsCompared != n || rep.Slice != "even _ids" || rep.SliceEnd != "every _id" || !rep.SliceChanged {
		t.Fatalf("round across a slice change: %s, %d rows (want clean, %d), slice %q → %q changed %v, counts %v",
			rep.Status, rep.RowsCompared, n, rep.Slice, rep.SliceEnd, rep.SliceChanged, rep.Counts)
	}
	b, err := os.ReadFile(filepath.Join(r.Reports().Dir, rep.ID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"slice":"even _ids"`, `"slice_end":"every _id"`, `"slice_changed":true`} {
		if !strings.Contains(string(bytes.ReplaceAll(b, []byte(": "), []byte(":"))), field) {
			t.Errorf("report JSON lacks %s", field)
		}
	}
	sum, _, err := checkpoints.GetJSON[checkpoints.RoundSummary](ctx, f.store, checkpoints.KeyReconcileLatest+scope.Key())
	if err != nil || sum.Slice != "even _ids" || !sum.SliceChanged {
		t.Errorf("summary: slice %q changed %v (%v)", sum.Slice, sum.SliceChanged, err)
	}

	// Unchanged: no slice_end difference recorded.
	calls.Store(0)
	r.d.Slice = func(context.Context) (func(string, []byte) bool, string, error) { return even, "even _ids", nil }
	rep, err = r.Round(ctx, scope, RoundOptions{Fresh: true})
	if err != nil || rep.SliceChanged || rep.SliceEnd != "even _ids" || rep.Status != "clean" {
		t.Fatalf("unchanged slice: %v, %s, end %q changed %v", err, rep.Status, rep.SliceEnd, rep.SliceChanged)
	}
}
