//go:build integration

package reconcile

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"go.mongodb.org/mongo-driver/bson"
)

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestIntegrationRoundFindsEachDivergence: among 100,000 correct documents
// (200,000 rows in two tables), one row is deleted, one added, one column
// changed and one row left at an older version than the source's newest
// change, all directly in Cassandra. The round reports exactly those keys in
// the right classes; repair fixes them through capture and the sink; the next
// round is clean and records verified marks.
func TestIntegrationRoundFindsEachDivergence(t *testing.T) {
	n := envInt("TIDEMARK_RECONCILE_TEST_ROWS", 100_000)
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	v := f.load(ctx, n)
	users := f.ks + ".users"

	missing, different, stale := int64(11), int64(22), int64(33)
	mustExec := func(q string, args ...any) {
		t.Helper()
		if err := f.s.Query(q, args...).ExecContext(ctx); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	mustExec("DELETE FROM "+users+" WHERE id = ?", fmt.Sprint(missing))
	mustExec("INSERT INTO " + users + " (id, email, name, age, status) VALUES ('extra-1', 'ghost@x.org', 'No One', 40, 'active')")
	mustExec("UPDATE "+users+" SET age = 999 WHERE id = ?", fmt.Sprint(different))
	// The source moves on (a change the pipeline never saw), in a later second
	// than the load; the target holds the previous values, rewritten at a
	// version below the source's change.
	for sec := time.Now().Unix(); time.Now().Unix() == sec; {
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := f.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: stale}}, bson.D{{Key: "$set", Value: bson.D{{Key: "age", Value: int32(77)}}}}); err != nil {
		t.Fatal(err)
	}
	mustExec("UPDATE "+users+" USING TIMESTAMP ? SET age = ? WHERE id = ?", v.Micros()+1, int32(20+stale%60), fmt.Sprint(stale))
	// The pipeline's stream starts at the source's cluster time, inclusive
	// (startAtOperationTime): were the update the newest oplog entry, the
	// pipeline would be handed it and fix the row. A later write elsewhere
	// keeps it a change the pipeline never saw.
	if _, err := f.coll.Database().Collection("elsewhere").InsertOne(ctx, bson.D{{Key: "_id", Value: 1}}); err != nil {
		t.Fatal(err)
	}

	f.startPipeline(ctx, 4)
	r := f.reconciler(Config{InFlightWait: 20 * time.Second})
	scope := Scope{Namespace: f.ns}
	rep, err := r.Round(ctx, scope, RoundOptions{Actor: "test", Reason: "inject"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("round 1: %s in %.1fs, %d rows compared (%.0f rows/s), %d leaf mismatches, %d candidates, counts %v",
		rep.Status, rep.DurationSeconds, rep.RowsCompared, rep.RowsPerSecond, rep.Tables[0].BucketMismatches, rep.Candidates, rep.Counts)
	if rep.Status != "divergent" || rep.SchemaVersion != SchemaVersion {
		t.Fatalf("status %q, schema %d; want divergent, %d (error %q)", rep.Status, rep.SchemaVersion, SchemaVersion, rep.Error)
	}
	if want := int64(4 * n); rep.RowsCompared != want {
		t.Errorf("rows compared %d, want %d", rep.RowsCompared, want)
	}
	got := map[string]string{}
	for _, s := range rep.Sample {
		got[s.Table+"/"+fmt.Sprint(s.PrimaryKey["id"])+"/"+s.Class] = fmt.Sprint(s.Columns)
	}
	want := map[string]string{
		users + "/11/missing":    "[]",
		users + "/extra-1/extra": "[]",
		users + "/22/different":  "[age]",
		users + "/33/stale":      "[age]",
	}
	if fmt.Sprint(sorted(got)) != fmt.Sprint(sorted(want)) {
		t.Fatalf("divergent keys\n got %v\nwant %v", sorted(got), sorted(want))
	}
	for _, c := range []string{ClassMissing, ClassExtra, ClassDifferent, ClassStale} {
		if rep.Counts[c] != 1 {
			t.Errorf("count %s = %d, want 1", c, rep.Counts[c])
		}
	}
	// The heat-map: every divergent key sits in one leaf of its table.
	for _, tr := range rep.Tables {
		var inLeaves int64
		for _, b := range tr.Buckets {
			if b.ID >= 1<<rep.BucketBits || b.Divergent <= 0 {
				t.Errorf("%s: bucket %+v outside the %d-bit tree", tr.Table, b, rep.BucketBits)
			}
			inLeaves += b.Divergent
		}
		if want := tr.Missing + tr.Extra + tr.Different + tr.Stale; inLeaves != want {
			t.Errorf("%s: %d divergent keys in the buckets, %d in the counts", tr.Table, inLeaves, want)
		}
	}
	if rep.Counts["in_flight"] != 0 {
		t.Errorf("in flight %d on an idle pipeline", rep.Counts["in_flight"])
	}
	if r2, err := r.Reports().Get("latest"); err != nil || r2.ID != rep.ID {
		t.Fatalf("latest report: %v %v", r2, err)
	}
	sum, ok, _ := checkpoints.GetJSON[checkpoints.RoundSummary](ctx, f.store, checkpoints.KeyReconcileLatest+f.ns)
	if !ok || sum.Clean || sum.Divergent != 4 {
		t.Fatalf("round summary %+v", sum)
	}
	if sum.IDsComplete {
		t.Errorf("the summary claims its %d documents are every divergent one, though the extra row has no document", len(sum.IDs))
	}

	res, err := r.Repair(ctx, f.ns, rep.Divergent, RepairOptions{Actor: "test", Reason: "fix injected divergence"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("repair: %+v", res)
	if res.Fixed != 4 || len(res.Remaining) != 0 {
		t.Fatalf("repair fixed %d, remaining %v", res.Fixed, res.Remaining)
	}

	rep, err = r.Round(ctx, scope, RoundOptions{Actor: "test", Reason: "after repair"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("round 2: %s in %.1fs (source scan %.1fs, target scan %.1fs), %d rows, counts %v", rep.Status, rep.DurationSeconds,
		rep.SourceSeconds, rep.TargetSeconds, rep.RowsCompared, rep.Counts)
	if rep.Status != "clean" {
		t.Fatalf("round after repair: %s, sample %+v", rep.Status, rep.Sample)
	}
	// One newest mark per partition, and a copy under the round's name.
	marks, err := f.store.List(ctx, checkpoints.PrefixVerified)
	if err != nil || len(marks) != 8 {
		t.Fatalf("verified marks: %d (%v), want two per partition", len(marks), err)
	}
	for k := range marks {
		if strings.Count(k, "/") == 3 && !strings.HasSuffix(k, "/"+rep.ID) {
			t.Errorf("named mark %s is not named after the clean round %s", k, rep.ID)
		}
	}
	m, _, _ := checkpoints.GetJSON[checkpoints.Mark](ctx, f.store, checkpoints.PartitionKey(checkpoints.PrefixVerified, rep.LagStart[0].Topic, 0))
	if m.Name != rep.ID {
		t.Errorf("verified mark names %q, want the clean round %q", m.Name, rep.ID)
	}
}

func sorted(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}
