//go:build integration

package validate

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// TestIntegrationValidateNewTypes: a spec naming tinyint, date, time, inet,
// duration, tuples (also with a collection inside and inside a map, which
// system_schema spells frozen) and a vector passes the schema check against
// the live table, and sampled documents that cannot convert are counted by
// rule: a Date with a time of day, a tuple of the wrong length.
func TestIntegrationValidateNewTypes(t *testing.T) {
	s := newStack(t)
	stmt := "CREATE TABLE %s.things (id text PRIMARY KEY, ti tinyint, d date, tm time, ip inet, du duration, " +
		"tu tuple<int, list<text>>, vec vector<float, 3>, mt map<text, frozen<tuple<int, text>>>)"
	if err := s.cass.Query(fmt.Sprintf(stmt, s.ks)).Exec(); err != nil {
		t.Fatal(err)
	}
	m, spec := parse(t, fmt.Sprintf(`version: v1
collections:
  - namespace: %[2]s.things
    tables:
      - keyspace: %[1]s
        table: things
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: ti, type: tinyint, from: ti}
          - {name: d, type: date, from: d}
          - {name: tm, type: time, from: tm}
          - {name: ip, type: inet, from: ip}
          - {name: du, type: duration, from: du}
          - {name: tu, type: "tuple<int, list<text>>", from: tu}
          - {name: vec, type: "vector<float, 3>", from: vec}
          - {name: mt, type: "map<text, tuple<int, text>>", from: mt}
`, s.ks, s.db))
	day := primitive.NewDateTimeFromTime(time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC))
	good := func(id string) bson.D {
		return bson.D{{Key: "_id", Value: id}, {Key: "ti", Value: int32(-5)}, {Key: "d", Value: day},
			{Key: "tm", Value: "12:00:00"}, {Key: "ip", Value: "::1"}, {Key: "du", Value: "P1D"},
			{Key: "tu", Value: bson.A{int32(1), bson.A{"a"}}}, {Key: "vec", Value: bson.A{1.0, 2.0, 3.0}},
			{Key: "mt", Value: bson.D{{Key: "k", Value: bson.A{int32(1), "v"}}}}}
	}
	docs := []bson.D{good("g1"), good("g2"), good("g3")}
	late := good("late")
	late[2].Value = primitive.NewDateTimeFromTime(time.Date(2025, 3, 1, 9, 30, 0, 0, time.UTC))
	short := good("short")
	short[6].Value = bson.A{int32(1)}
	docs = append(docs, late, short)
	insert(t, s.mc.Database(s.db).Collection("things"), docs...)

	r := check(t, s, m, WithSpec(spec))
	if len(r.Problems) != 0 {
		t.Fatalf("schema problems for the new types: %+v", r.Problems)
	}
	if len(r.Namespaces) != 1 || r.Namespaces[0].Sampled != 5 || r.Namespaces[0].Clean != 3 {
		t.Fatalf("namespaces %+v", r.Namespaces)
	}
	var rules []string
	for _, f := range r.Namespaces[0].Failures {
		rules = append(rules, f.Column+" "+f.Rule+fmt.Sprint(f.Count))
	}
	slices.Sort(rules)
	want := []string{"d UTC datetime->date1", "tu array->tuple<int, list<text>>1"}
	if !slices.Equal(rules, want) {
		t.Fatalf("failures %q, want %q", rules, want)
	}
}
