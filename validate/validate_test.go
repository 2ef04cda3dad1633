package validate

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/tidemarkhq/tidemark/internal/golden"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

func TestCompatible(t *testing.T) {
	for _, tc := range []struct {
		spec, schema string
		want         bool
	}{
		{"text", "text", true},
		{"TEXT", "text", true},
		{"varchar", "text", true},
		{"text", "varchar", true},
		{"ascii", "text", false},
		{"int", "int", true},
		{"int", "bigint", false},
		{"bigint", "int", false},
		{"uuid", "timeuuid", false},
		{"timestamp", "date", false},
		{"double", "float", false},
		{"map<text, text>", "map<text, text>", true},
		{"map<text,text>", "map<text, text>", true},
		{" map < varchar , int > ", "map<text, int>", true},
		{"map<text, int>", "map<text, bigint>", false},
		{"set<text>", "set<text>", true},
		{"set<text>", "list<text>", false},
		{"list<frozen<map<text, int>>>", "list<frozen<map<text, int>>>", true},
		// frozen<udt> is how the spec must spell a UDT column; a non-frozen UDT
		// column is spelled plain in system_schema and takes the same whole value.
		{"frozen<address>", "frozen<address>", true},
		{"frozen<address>", "address", true},
		{"address", "frozen<address>", true},
		{"frozen<address>", "frozen<location>", false},
		{"frozen<address>", "text", false},
		// The leniency is for UDTs only: a frozen collection is a different type.
		{"list<int>", "frozen<list<int>>", false},
		{"frozen<list<int>>", "list<int>", false},
		{"frozen<text>", "text", false},
		{"list<frozen<address>>", "list<frozen<address>>", true},
		{"", "text", false},
		// The types the transform learnt last, as system_schema spells them.
		{"tinyint", "tinyint", true},
		{"tinyint", "smallint", false},
		{"date", "date", true},
		{"time", "time", true},
		{"time", "timestamp", false},
		{"inet", "inet", true},
		{"duration", "duration", true},
		{"vector<float, 3>", "vector<float, 3>", true},
		{"vector<float, 3>", "vector<float, 4>", false},
		{"vector<float, 3>", "vector<double, 3>", false},
		// A tuple is always frozen, and so is what it holds.
		{"tuple<int, text>", "frozen<tuple<int, text>>", true},
		{"frozen<tuple<int, text>>", "frozen<tuple<int, text>>", true},
		{"tuple<int, list<text>>", "frozen<tuple<int, frozen<list<text>>>>", true},
		{"map<text, tuple<int, int>>", "map<text, frozen<tuple<int, int>>>", true},
		{"tuple<int, tuple<int, text>>", "frozen<tuple<int, frozen<tuple<int, text>>>>", true},
		{"tuple<int, text>", "frozen<tuple<text, int>>", false},
		{"tuple<int, text>", "frozen<tuple<int, text, int>>", false},
		{"tuple<int, list<text>>", "frozen<tuple<int, frozen<set<text>>>>", false},
		// The leniency is for tuples only: a frozen list is not a list.
		{"map<text, list<int>>", "map<text, frozen<list<int>>>", false},
	} {
		if got := Compatible(tc.spec, tc.schema); got != tc.want {
			t.Errorf("Compatible(%q, %q) = %v, want %v", tc.spec, tc.schema, got, tc.want)
		}
	}
}

func TestTypeHelpers(t *testing.T) {
	for _, tc := range []struct {
		typ      string
		norm     string
		udts     []string
		frozen   string // frozenUDT's name, "" when not a frozen UDT
		unfrozen string
	}{
		{"text", "text", nil, "", "text"},
		{"Map<VarChar, Text>", "map<text,text>", nil, "", "map<text,text>"},
		{"frozen<address>", "frozen<address>", []string{"address"}, "address", "address"},
		{"list<frozen<address>>", "list<frozen<address>>", []string{"address"}, "", "list<frozen<address>>"},
		{"map<text, frozen<geo>>", "map<text,frozen<geo>>", []string{"geo"}, "", "map<text,frozen<geo>>"},
		{"frozen<tuple<int, address, address>>", "frozen<tuple<int,address,address>>", []string{"address"}, "", "tuple<int,address,address>"},
		{"vector<float, 3>", "vector<float,3>", nil, "", "vector<float,3>"},
		{"frozen<list<int>>", "frozen<list<int>>", nil, "", "list<int>"},
	} {
		n := normType(tc.typ)
		if n != tc.norm {
			t.Errorf("normType(%q) = %q, want %q", tc.typ, n, tc.norm)
		}
		if got := udtNames(tc.typ); !reflect.DeepEqual(got, tc.udts) {
			t.Errorf("udtNames(%q) = %q, want %q", tc.typ, got, tc.udts)
		}
		if got, ok := frozenUDT(n); ok != (tc.frozen != "") || ok && got != tc.frozen {
			t.Errorf("frozenUDT(%q) = %q, %v, want %q", n, got, ok, tc.frozen)
		}
		if got := unfreeze(n); got != tc.unfrozen {
			t.Errorf("unfreeze(%q) = %q, want %q", n, got, tc.unfrozen)
		}
	}
}

func TestKeyColumnsByPosition(t *testing.T) {
	cols := []schemaColumn{
		{name: "c2", kind: "clustering", position: 1},
		{name: "v", kind: "regular", position: -1},
		{name: "p2", kind: "partition_key", position: 1},
		{name: "c1", kind: "clustering", position: 0},
		{name: "p1", kind: "partition_key", position: 0},
	}
	if got := keyColumns(cols, "partition_key"); !reflect.DeepEqual(got, []string{"p1", "p2"}) {
		t.Errorf("partition key %v", got)
	}
	if got := keyColumns(cols, "clustering"); !reflect.DeepEqual(got, []string{"c1", "c2"}) {
		t.Errorf("clustering key %v", got)
	}
}

func TestOptionLimits(t *testing.T) {
	for _, tc := range []struct {
		opts []Option
		bad  string
	}{
		{nil, ""},
		{[]Option{SampleSize(1), MaxFailureRate(1)}, ""},
		{[]Option{SampleSize(0)}, "sample size 0"},
		{[]Option{SampleSize(2_000_000)}, "sample size 2000000"},
		{[]Option{MaxFailureRate(-0.1)}, "max failure rate -0.1"},
		{[]Option{MaxFailureRate(2), SampleSize(-1)}, "max failure rate 2"},
	} {
		cfg := config{sampleSize: 1000}
		for _, o := range tc.opts {
			o(&cfg)
		}
		err := cfg.validate()
		switch {
		case tc.bad == "" && err != nil:
			t.Errorf("%+v: unexpected %v", cfg, err)
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
			t.Errorf("%+v: got %v, want an error naming %q", cfg, err, tc.bad)
		}
	}
}

func TestSpecErrorListsEveryProblem(t *testing.T) {
	_, err := transform.Parse([]byte(`
version: ""
collections:
  - namespace: nodot
    tables:
      - {keyspace: app, table: t, partition_key: [id], columns: [{name: id, type: nosuch<int>, from: _id}]}
`))
	if err == nil {
		t.Fatal("spec parsed")
	}
	r := SpecError(err)
	if r.Pass {
		t.Fatal("a spec that does not compile passed")
	}
	if len(r.Problems) < 3 {
		t.Fatalf("want one problem per compile error, got %+v", r.Problems)
	}
	for _, p := range r.Problems {
		if p.Kind != KindSpec {
			t.Errorf("kind %q", p.Kind)
		}
	}
	_, err = transform.Parse([]byte("version: [unclosed"))
	if r := SpecError(err); r.Pass || len(r.Problems) != 1 {
		t.Errorf("YAML error: %+v", r)
	}
}

func TestPassAndFailureRate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		problems int
		sampled  int
		failed   int
		rate     float64
		pass     bool
	}{
		{"clean", 0, 100, 0, 0, true},
		{"one failure, strict", 0, 100, 1, 0, false},
		{"one failure within 1%", 0, 100, 1, 0.01, true},
		{"two failures over 1%", 0, 100, 2, 0.01, false},
		{"schema problem", 1, 100, 0, 0, false},
		{"empty collection", 0, 0, 0, 0, true},
	} {
		r := &Report{MaxFailureRate: tc.rate, Namespaces: []NamespaceReport{{Sampled: tc.sampled, Failed: tc.failed}}}
		for range tc.problems {
			r.Problems = append(r.Problems, Problem{Kind: KindMissingTable})
		}
		r.decide()
		if r.Pass != tc.pass {
			t.Errorf("%s: pass %v, want %v", tc.name, r.Pass, tc.pass)
		}
	}
}

func TestIDJSON(t *testing.T) {
	oid, _ := primitive.ObjectIDFromHex("65a1b2c3d4e5f60718293a4b")
	for _, tc := range []struct {
		id   any
		want string
	}{
		{"u1", `"u1"`},
		{int32(7), `7`},
		{int64(1) << 40, `1099511627776`},
		{oid, `{"$oid":"65a1b2c3d4e5f60718293a4b"}`},
		{bson.D{{Key: "a", Value: int32(1)}}, `{"a":1}`},
	} {
		doc, err := bson.Marshal(bson.D{{Key: "_id", Value: tc.id}, {Key: "x", Value: 1}})
		if err != nil {
			t.Fatal(err)
		}
		if got := string(idJSON(doc)); got != tc.want {
			t.Errorf("idJSON(%v) = %s, want %s", tc.id, got, tc.want)
		}
	}
}

// TestReportGolden fixes the human output and the JSON form; -update rewrites them.
func TestReportGolden(t *testing.T) {
	r := &Report{
		SpecVersion: "users-v1", SpecChecksum: "0123456789abcdef0123",
		Problems: []Problem{
			{Kind: KindMissingTable, Namespace: "app.users", Table: "app.users_by_mail", Message: "table app.users_by_mail does not exist (see the spec's columns for its CREATE TABLE)"},
			{Kind: KindTypeMismatch, Namespace: "app.users", Table: "app.users", Column: "age", Message: "spec type bigint, table type int"},
			{Kind: KindMissingCollection, Namespace: "app.user", Message: "collection user does not exist in database app; is the spec's namespace spelled right?"},
		},
		Namespaces: []NamespaceReport{{
			Namespace: "app.users", Method: MethodSample, Estimated: 12000, Sampled: 1000, Clean: 997, Failed: 3,
			Failures: []Failure{
				{Table: "app.users", Column: "age", Rule: "string->int", Path: "age", BSONTypes: []string{"string"}, Count: 2,
					Examples: []json.RawMessage{json.RawMessage(`"u17"`), json.RawMessage(`{"$oid":"65a1b2c3d4e5f60718293a4b"}`)},
					Error:    `cannot convert string to an integer`},
				{Table: "app.users", Column: "id", Rule: "string", Path: "_id", BSONTypes: []string{"embedded document"}, Count: 1,
					Examples: []json.RawMessage{json.RawMessage(`{"a":1}`)},
					Error:    `cannot render embedded document as text`},
			},
		}, {Namespace: "app.user", Failures: []Failure{}}},
	}
	r.decide()
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "report.txt", text.Bytes())
	golden.Check(t, "report.json", append(js, '\n'))

	compact, _ := json.Marshal(r)
	var back Report
	if err := json.Unmarshal(compact, &back); err != nil || !reflect.DeepEqual(&back, r) {
		t.Errorf("JSON does not round-trip: %v\n%+v\n%+v", err, back, *r)
	}

	r = &Report{SpecVersion: "users-v1", SpecChecksum: "0123456789abcdef0123", Problems: []Problem{},
		Namespaces: []NamespaceReport{{Namespace: "app.users", Method: MethodIDWindows, Estimated: 50000, Sampled: 1000, Clean: 1000,
			NoRows: 12, Failures: []Failure{}}}}
	r.decide()
	text.Reset()
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "pass.txt", text.Bytes())
}
