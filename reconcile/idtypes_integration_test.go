//go:build integration

package reconcile

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/mongoid"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// mixedIDs are per-type _ids in a collection: ObjectId, string, int32, int64,
// double, UUID (binary subtype 4) and embedded documents, perType of each.
// Numbers do not collide (MongoDB compares them by value).
func mixedIDs(perType int) []any {
	var ids []any
	for i := range perType {
		var oid primitive.ObjectID
		binary.BigEndian.PutUint32(oid[:4], uint32(1_700_000_000+i))
		binary.BigEndian.PutUint64(oid[4:], uint64(i))
		u := make([]byte, 16)
		binary.BigEndian.PutUint64(u[8:], uint64(i))
		u[6], u[8] = 0x40, 0x80|u[8]&0x3f
		ids = append(ids, oid, fmt.Sprintf("s%06d", i), int32(i), int64(1_000_000_000+i), float64(i)+0.5,
			primitive.Binary{Subtype: 4, Data: u}, bson.D{{Key: "a", Value: int32(i)}, {Key: "b", Value: "x"}})
	}
	return ids
}

// idsFixture is a collection with mixedIDs and their rows, written straight
// into a one-table spec keyed by the _id's extended JSON (which every type
// has).
func idsFixture(t *testing.T, ctx context.Context, perType int) (*fixture, int) {
	f := newFixture(t)
	spec := fmt.Sprintf(`version: "ids-v1"
collections:
  - namespace: %s
    tables:
      - keyspace: %s
        table: ids
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: json}
          - {name: n, type: int, from: n}
`, f.ns, f.ks)
	m, err := transform.Parse([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	f.m = m
	if err := f.s.Query("CREATE TABLE " + f.ks + ".ids (id text PRIMARY KEY, n int)").ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	ids := mixedIDs(perType)
	docs := make([]any, len(ids))
	for i, id := range ids {
		docs[i] = bson.D{{Key: "_id", Value: id}, {Key: "n", Value: int32(i)}}
	}
	f.insertAndWrite(t, ctx, docs)
	return f, len(ids)
}

// TestIntegrationRoundResumesAcrossIDTypes: a collection whose _ids mix
// ObjectId, string, int32, int64, double, UUID and embedded documents. A
// round cut by its time box while scanning the numbers is resumed by the next
// one, which must read every later type too: every document exactly once
// (counted against the source), the trees equal, the round clean. A bare
// {_id: {$gt: last}} resume would read only the numbers after the cut.
func TestIntegrationRoundResumesAcrossIDTypes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, total := idsFixture(t, ctx, 600)
	n, err := f.coll.CountDocuments(ctx, bson.D{})
	if err != nil || n != int64(total) {
		t.Fatalf("source holds %d documents (%v), want %d", n, err, total)
	}
	scope := Scope{Namespace: f.ns}

	// A full round first: every type maps and compares clean.
	full := f.reconciler(Config{})
	full.d.Lag = Quiescent{}
	rep, err := full.Round(ctx, scope, RoundOptions{Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != "clean" || rep.DocsScanned != n || rep.SourceErrors != 0 || rep.Tables[0].RowsTarget != n {
		t.Fatalf("full round: %s, %d documents, %d errors, %d target rows, counts %v", rep.Status, rep.DocsScanned, rep.SourceErrors, rep.Tables[0].RowsTarget, rep.Counts)
	}

	// 1,000 documents/s for 1.5 s stops inside the numbers (1,800 of them
	// sort first), so every other bracket is still ahead.
	slow := f.reconciler(Config{TimeBox: 1500 * time.Millisecond, DocsPerSecond: 1000})
	slow.d.Lag = Quiescent{}
	rep, err = slow.Round(ctx, scope, RoundOptions{Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	st, ok, err := checkpoints.GetJSON[roundState](ctx, f.store, progressKey(scope))
	if err != nil || !ok {
		t.Fatalf("no saved progress: %v", err)
	}
	if rep.Status != "incomplete" || st.SourceDone || st.Docs == 0 || st.Docs >= n {
		t.Fatalf("time-boxed round: %s after %d documents (%s)", rep.Status, st.Docs, rep.Error)
	}
	last := mongoid.Bracket(bsontype.Type(st.LastIDType))
	if last >= mongoid.Bracket(bsontype.ObjectID) {
		t.Fatalf("the time box cut the scan in bracket %d, after every other type: the test shows nothing", last)
	}
	t.Logf("first round stopped after %d documents, on a %s _id", st.Docs, bsontype.Type(st.LastIDType))

	fast := f.reconciler(Config{})
	fast.d.Lag = Quiescent{}
	rep2, err := fast.Round(ctx, scope, RoundOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr := rep2.Tables[0]
	t.Logf("resumed round: %s, %d documents, %d source rows, %d target rows, %d leaf mismatches", rep2.Status, rep2.DocsScanned, tr.RowsSource, tr.RowsTarget, tr.BucketMismatches)
	if rep2.ResumedFrom != rep.ID || rep2.DocsScanned != n || tr.RowsSource != n || tr.RowsTarget != n ||
		tr.BucketMismatches != 0 || rep2.Candidates != 0 || rep2.Status != "clean" {
		t.Fatalf("resumed round: from %q (want %s), %s, %d documents / %d source rows / %d target rows (want %d each), %d leaf mismatches, %d candidates, counts %v",
			rep2.ResumedFrom, rep.ID, rep2.Status, rep2.DocsScanned, tr.RowsSource, tr.RowsTarget, n, tr.BucketMismatches, rep2.Candidates, rep2.Counts)
	}
}
