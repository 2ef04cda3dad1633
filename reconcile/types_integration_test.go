//go:build integration

package reconcile

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// TestIntegrationRoundComparesNewTypes: rows with tinyint, date, time, inet
// (IPv4 and IPv6), duration, tuples (one null, one missing) and a vector,
// written by the sink, compare clean with their documents in a full round
// (Cassandra gives them back in other Go forms: tuples split by component,
// nulls as zeros, vectors as []float32). One inet then changed behind the
// pipeline's back is found, re-checked and reported as different.
func TestIntegrationRoundComparesNewTypes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t)
	m, err := transform.Parse(fmt.Appendf(nil, `version: "types-v1"
collections:
  - namespace: %s
    tables:
      - keyspace: %s
        table: things
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: ti, type: tinyint, from: ti}
          - {name: d, type: date, from: d}
          - {name: tm, type: time, from: tm}
          - {name: ip, type: inet, from: ip}
          - {name: du, type: duration, from: du}
          - {name: tu, type: "tuple<int, text>", from: tu}
          - {name: vec, type: "vector<float, 2>", from: vec}
`, f.ns, f.ks))
	if err != nil {
		t.Fatal(err)
	}
	f.m = m
	if err := f.s.Query("CREATE TABLE " + f.ks + ".things (id text PRIMARY KEY, ti tinyint, d date, tm time, ip inet, " +
		"du duration, tu tuple<int, text>, vec vector<float, 2>)").ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 40
	docs := make([]any, n)
	for i := range n {
		d := bson.D{{Key: "_id", Value: fmt.Sprintf("t%03d", i)}, {Key: "ti", Value: int32(i - 20)},
			{Key: "d", Value: primitive.NewDateTimeFromTime(time.Date(1950+i, 1, 1+i%28, 0, 0, 0, 0, time.UTC))},
			{Key: "tm", Value: int64(i) * 3600e9 / 2}, {Key: "du", Value: fmt.Sprintf("%dmo%dd%dns", i, i, i)},
			{Key: "vec", Value: bson.A{float64(i) / 4, -1.0}}}
		if i%2 == 0 {
			d = append(d, bson.E{Key: "ip", Value: fmt.Sprintf("10.0.0.%d", i)})
		} else {
			d = append(d, bson.E{Key: "ip", Value: fmt.Sprintf("2001:db8::%x", i)})
		}
		switch i % 3 {
		case 0:
			d = append(d, bson.E{Key: "tu", Value: bson.A{int32(i), fmt.Sprint(i)}})
		case 1:
			d = append(d, bson.E{Key: "tu", Value: nil})
		}
		docs[i] = d
	}
	v := f.insertAndWrite(t, ctx, docs)
	scope := Scope{Namespace: f.ns}
	r := f.reconciler(Config{})
	r.d.Lag = Quiescent{}
	rep, err := r.Round(ctx, scope, RoundOptions{Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	tr := rep.Tables[0]
	if rep.Status != "clean" || rep.DocsScanned != n || tr.RowsSource != n || tr.RowsTarget != n || tr.BucketMismatches != 0 {
		t.Fatalf("full round: %s, %d documents, %d source / %d target rows, %d leaf mismatches, counts %v, sample %+v",
			rep.Status, rep.DocsScanned, tr.RowsSource, tr.RowsTarget, tr.BucketMismatches, rep.Counts, rep.Sample)
	}

	// An IPv6 address changed in Cassandra alone.
	if err := f.s.Query("UPDATE "+f.ks+".things USING TIMESTAMP ? SET ip = '2001:db8::ffff' WHERE id = 't003'",
		v.Micros()+1).ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = r.Round(ctx, scope, RoundOptions{Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts[ClassDifferent] != 1 || rep.Counts[ClassMissing] != 0 || rep.Counts[ClassExtra] != 0 {
		t.Fatalf("after changing one inet: %s, counts %v", rep.Status, rep.Counts)
	}
	t.Logf("clean round over %d rows; after one inet changed: %s, counts %v", n, rep.Status, rep.Counts)
}
