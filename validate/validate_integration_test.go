//go:build integration

package validate

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.yaml.in/yaml/v3"
)

// stack is one test's keyspace (the users tables of examples/specs/users.cql)
// and MongoDB database, both unique and dropped at cleanup.
type stack struct {
	cass *gocql.Session
	mc   *mongo.Client
	ks   string
	db   string
}

func newStack(t *testing.T) *stack {
	t.Helper()
	s := &stack{cass: testbed.Cassandra(t), mc: testbed.Mongo(t),
		ks: testbed.UniqueName(t, "validate"), db: testbed.UniqueName(t, "validate")}
	testbed.UsersSchema(t, s.cass, s.ks)
	t.Cleanup(func() { s.mc.Database(s.db).Drop(context.Background()) })
	return s
}

// spec is examples/specs/users.yaml reading collection coll of the test's
// database and writing to the test's keyspace.
func (s *stack) spec(t *testing.T, coll string) (*transform.Mapping, *transform.Spec) {
	t.Helper()
	b, err := os.ReadFile("../examples/specs/users.yaml")
	if err != nil {
		t.Fatal(err)
	}
	y := strings.ReplaceAll(string(b), "keyspace: app", "keyspace: "+s.ks)
	y = strings.ReplaceAll(y, "namespace: app.users", "namespace: "+s.db+"."+coll)
	return parse(t, y)
}

func parse(t *testing.T, y string) (*transform.Mapping, *transform.Spec) {
	t.Helper()
	m, err := transform.Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	var spec transform.Spec
	if err := yaml.Unmarshal([]byte(y), &spec); err != nil {
		t.Fatal(err)
	}
	return m, &spec
}

// goodUser is a document the users spec converts cleanly.
func goodUser(i int) bson.D {
	d := bson.D{
		{Key: "_id", Value: fmt.Sprintf("u%03d", i)},
		{Key: "name", Value: bson.D{{Key: "first", Value: "Ada"}, {Key: "last", Value: fmt.Sprint("L", i)}}},
		{Key: "age", Value: int32(20 + i%50)},
		{Key: "balance", Value: primitive.NewDecimal128(0, uint64(i*100+7))},
		{Key: "created", Value: primitive.NewDateTimeFromTime(time.Date(2024, 1, 1, 0, 0, i, 0, time.UTC))},
		{Key: "tags", Value: bson.A{"a", "b"}},
		{Key: "address", Value: bson.D{{Key: "street", Value: "1 Main St"}, {Key: "city", Value: "Oslo"}, {Key: "zip", Value: "0150"}}},
		{Key: "prefs", Value: bson.D{{Key: "lang", Value: "en"}}},
		{Key: "score", Value: float64(i) / 3},
	}
	if i%2 == 0 {
		d = append(d, bson.E{Key: "email", Value: fmt.Sprintf("User%d@Example.com", i)})
	}
	return d
}

func set(d bson.D, key string, v any) bson.D {
	out := slices.Clone(d)
	for i := range out {
		if out[i].Key == key {
			out[i].Value = v
			return out
		}
	}
	return append(out, bson.E{Key: key, Value: v})
}

func insert(t *testing.T, c *mongo.Collection, docs ...bson.D) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	many := make([]any, len(docs))
	for i, d := range docs {
		many[i] = d
	}
	if _, err := c.InsertMany(ctx, many); err != nil {
		t.Fatal(err)
	}
}

func check(t *testing.T, s *stack, m *transform.Mapping, opts ...Option) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Check(ctx, m, s.cass, s.mc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	r.WriteText(&text)
	t.Logf("report:\n%s", text.String())
	return r
}

func TestIntegrationValidateGoodSpec(t *testing.T) {
	s := newStack(t)
	const n = 60
	docs := make([]bson.D, n)
	for i := range docs {
		docs[i] = goodUser(i)
	}
	insert(t, s.mc.Database(s.db).Collection("users"), docs...)
	m, spec := s.spec(t, "users")

	for _, tc := range []struct {
		name    string
		opts    []Option
		method  string
		sampled int
	}{
		{"whole collection", []Option{WithSpec(spec)}, MethodAll, n},
		{"$sample", []Option{WithSpec(spec), SampleSize(25)}, MethodSample, 25},
		{"_id windows", []Option{WithSpec(spec), SampleSize(25), Seed(7), func(c *config) { c.forceWindows = true }}, MethodIDWindows, 25},
		{"windows of one", []Option{SampleSize(3), func(c *config) { c.forceWindows = true }}, MethodIDWindows, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := check(t, s, m, tc.opts...)
			if !r.Pass || len(r.Problems) != 0 {
				t.Fatalf("good spec failed: %+v", r.Problems)
			}
			if len(r.Namespaces) != 1 {
				t.Fatalf("namespaces %+v", r.Namespaces)
			}
			nr := r.Namespaces[0]
			want := NamespaceReport{Namespace: s.db + ".users", Method: tc.method, Estimated: n, Sampled: tc.sampled,
				Clean: tc.sampled, Failures: []Failure{}}
			if fmt.Sprint(nr) != fmt.Sprint(want) {
				t.Errorf("got %+v\nwant %+v", nr, want)
			}
		})
	}
}

func TestIntegrationValidateBrokenSpec(t *testing.T) {
	s := newStack(t)
	insert(t, s.mc.Database(s.db).Collection("users"), goodUser(1), goodUser(2))
	// Every table below is wrong in a different way; the gate must list each.
	m, spec := parse(t, fmt.Sprintf(`
version: broken-v1
collections:
  - namespace: %[2]s.users
    tables:
      - keyspace: %[1]s
        table: users
        partition_key: [email]      # wrong key: the table's is id
        clustering_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: email, type: varchar, from: email}
          - {name: age, type: bigint, from: age}             # wrong type: int
          - {name: nickname, type: text, from: nick}         # no such column
          - {name: tags, type: "set< TEXT >", from: tags}    # same type, other spelling
          - {name: address, type: "frozen<address>", from: address,
             fields: [{name: street, type: text, from: street}, {name: zipcode, type: text, from: zip},
                      {name: city, type: int, from: city}]}
      - keyspace: %[1]s
        table: users_by_mail                                 # no such table
        partition_key: [email]
        columns:
          - {name: email, type: text, compute: lower, args: [email]}
      - keyspace: %[1]s
        table: users_by_email
        partition_key: [id]                                  # the table's key (email) is not mapped
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: name, type: text, compute: concat, args: [name.first, name.last], sep: " "}
          - {name: home, type: "frozen<location>", from: home, fields: [{name: x, type: int, from: x}]}
      - keyspace: %[1]s_gone
        table: users
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id}
  - namespace: %[2]s.nosuch
    tables:
      - keyspace: %[1]s
        table: users_nosuch
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id}
`, s.ks, s.db))
	r := check(t, s, m, WithSpec(spec))
	if r.Pass {
		t.Fatal("a broken spec passed")
	}
	type where struct{ kind, table, column string }
	var got []where
	for _, p := range r.Problems {
		got = append(got, where{p.Kind, strings.TrimPrefix(p.Table, s.ks+"."), p.Column})
		if p.Message == "" {
			t.Errorf("%+v has no message", p)
		}
	}
	want := []where{
		{KindPartitionKey, "users", ""},
		{KindClusteringKey, "users", ""},
		{KindTypeMismatch, "users", "age"},
		{KindMissingColumn, "users", "nickname"},
		{KindUDTField, "users", "address.zipcode"},
		{KindUDTField, "users", "address.city"},
		{KindMissingTable, "users_by_mail", ""},
		{KindMissingType, "users_by_email", "home"},
		{KindMissingColumn, "users_by_email", "home"},
		{KindPartitionKey, "users_by_email", ""},
		{KindUnmappedKeyColumn, "users_by_email", "email"},
		{KindMissingKeyspace, s.ks + "_gone.users", ""},
		{KindMissingTable, "users_nosuch", ""},
		{KindMissingCollection, "", ""},
	}
	key := func(w []where) func(i, j int) bool {
		return func(i, j int) bool { return fmt.Sprint(w[i]) < fmt.Sprint(w[j]) }
	}
	sort.Slice(got, key(got))
	sort.Slice(want, key(want))
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("problems\n got %v\nwant %v", got, want)
	}
	for _, p := range r.Problems {
		switch {
		case p.Kind == KindTypeMismatch && p.Message != "spec type bigint, table type int":
			t.Errorf("type mismatch message %q", p.Message)
		case p.Kind == KindPartitionKey && p.Table == s.ks+".users" && p.Message != "spec partition key (email), table partition key (id)":
			t.Errorf("partition key message %q", p.Message)
		case p.Kind == KindMissingCollection && p.Namespace != s.db+".nosuch":
			t.Errorf("missing collection names %q", p.Namespace)
		}
	}
	// The documents are fine, but the spec's wrong UDT field type fails every one of them.
	for _, nr := range r.Namespaces {
		switch nr.Namespace {
		case s.db + ".nosuch":
			if nr.Method != "" || nr.Sampled != 0 {
				t.Errorf("a missing collection was sampled: %+v", nr)
			}
		case s.db + ".users":
			if nr.Sampled != 2 || nr.Failed != 2 || len(nr.Failures) != 1 ||
				nr.Failures[0].Column != "address" || nr.Failures[0].Rule != "string->int" {
				t.Errorf("want both documents to fail on address.city: %+v", nr)
			}
		default:
			t.Errorf("unexpected namespace %s", nr.Namespace)
		}
	}
}

func TestIntegrationValidateBadDocuments(t *testing.T) {
	s := newStack(t)
	const good = 40
	var docs []bson.D
	for i := range good {
		docs = append(docs, goodUser(i))
	}
	docs = append(docs,
		set(goodUser(101), "age", "forty"),
		set(goodUser(102), "age", "x"),
		set(goodUser(103), "created", "2020-01-02"),
		set(goodUser(104), "address", bson.D{{Key: "street", Value: "s"}, {Key: "zip", Value: int32(12345)}}),
		set(goodUser(105), "_id", bson.D{{Key: "a", Value: int32(1)}}),
		set(goodUser(106), "tags", bson.A{"ok", int32(3)}),
		set(goodUser(107), "age", int64(1)<<40),
	)
	insert(t, s.mc.Database(s.db).Collection("mixed"), docs...)
	m, spec := s.spec(t, "mixed")

	r := check(t, s, m, WithSpec(spec))
	if r.Pass {
		t.Fatal("passed with failing documents and no allowed failure rate")
	}
	if len(r.Problems) != 0 {
		t.Fatalf("the schema is right, yet: %+v", r.Problems)
	}
	nr := r.Namespaces[0]
	if nr.Sampled != good+7 || nr.Clean != good || nr.Failed != 7 {
		t.Fatalf("sampled %d clean %d failed %d, want %d %d 7", nr.Sampled, nr.Clean, nr.Failed, good+7, good)
	}
	users := s.ks + ".users"
	type group struct {
		table, column, rule string
		count               int
		ids                 []string
	}
	var got []group
	for _, f := range nr.Failures {
		ids := make([]string, len(f.Examples))
		for i, e := range f.Examples {
			ids[i] = string(e)
		}
		sort.Strings(ids)
		got = append(got, group{f.Table, f.Column, f.Rule, f.Count, ids})
		if f.Error == "" || f.Path == "" {
			t.Errorf("failure without reason or path: %+v", f)
		}
	}
	want := []group{
		{users, "age", "string->int", 2, []string{`"u101"`, `"u102"`}},
		{users, "address", "32-bit integer->text", 1, []string{`"u104"`}},
		{users, "age", "64-bit integer->int", 1, []string{`"u107"`}},
		{users, "created_at", "string->timestamp", 1, []string{`"u103"`}},
		{users, "id", "string", 1, []string{`{"a":1}`}},
		{users, "tags", "32-bit integer->text", 1, []string{`"u106"`}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("failures\n got %v\nwant %v", got, want)
	}

	// 7 of 47 is 14.9%: within a 15% allowance the gate passes.
	if r := check(t, s, m, MaxFailureRate(0.15)); !r.Pass {
		t.Errorf("failed within the allowed rate: %+v", r)
	}
}
