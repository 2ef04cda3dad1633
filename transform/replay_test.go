package transform

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestReplaySafeEveryType classifies every CQL type a spec can name or a
// table can have, in the spellings CREATE TABLE accepts and system_schema
// prints: only a non-frozen list (at any depth outside frozen<>, a tuple or
// a vector) and a counter are refused, each with a safe alternative.
func TestReplaySafeEveryType(t *testing.T) {
	safe := []string{
		// Every scalar.
		"text", "ascii", "varchar", "int", "bigint", "smallint", "tinyint", "varint", "decimal",
		"float", "double", "boolean", "timestamp", "date", "time", "uuid", "timeuuid", "inet",
		"blob", "duration",
		// Case and whitespace as people type them.
		"TEXT", " BigInt ", "VarChar", "\ttimestamp\n",
		// Non-frozen sets and maps: cells keyed by element and by key.
		"set<text>", "set<int>", "set<uuid>", "map<text, text>", "map<text, int>", "map<int, bigint>",
		"SET < TEXT >", "Map<Text,Int>", "map< text ,  double >",
		// Frozen collections: one cell.
		"frozen<list<text>>", "frozen<list<int>>", "frozen<set<text>>", "frozen<map<text, int>>",
		"FROZEN<LIST<TEXT>>", "frozen < list < text > >",
		"frozen<list<frozen<list<int>>>>", "frozen<map<text, list<int>>>", "frozen<list<list<int>>>",
		// Collections of frozen collections and UDTs, as system_schema prints them.
		"set<frozen<list<int>>>", "map<text, frozen<list<int>>>", "map<text, frozen<set<text>>>",
		"map<text, frozen<map<text, int>>>", "set<frozen<address>>",
		"map<text, frozen<address>>",
		// Tuples and vectors are always one cell, whatever they hold.
		"tuple<int, text>", "frozen<tuple<int, text>>", "tuple<int, list<text>>", "frozen<tuple<text, frozen<list<int>>>>",
		"vector<float, 3>",
		// UDTs: frozen (one cell) and non-frozen (cells keyed by field name;
		// Cassandra requires any collection inside to be frozen).
		"address", "frozen<address>", "Address", `"Address"`, `frozen<"MixedCase">`, "app.address", "frozen<app.address>",
		// A custom type is one cell.
		"'org.apache.cassandra.db.marshal.BytesType'",
		// Not a type tidemark can read: not refused either.
		"", "list", "list<",
	}
	for _, typ := range safe {
		if err := ReplaySafe(typ); err != nil {
			t.Errorf("ReplaySafe(%q) = %v; want safe", typ, err)
		}
	}
	unsafe := []struct {
		typ, norm, reason string
		alternatives      []string
	}{
		{"list<text>", "list<text>", "non-frozen list",
			[]string{"frozen<list<text>>", "set<text> (if order and duplicates do not matter)", "text with convert: json"}},
		{"LIST<TEXT>", "list<text>", "non-frozen list",
			[]string{"frozen<list<text>>", "set<text> (if order and duplicates do not matter)", "text with convert: json"}},
		{" list < int > ", "list<int>", "non-frozen list",
			[]string{"frozen<list<int>>", "set<int> (if order and duplicates do not matter)", "text with convert: json"}},
		{"list<frozen<map<text, int>>>", "list<frozen<map<text, int>>>", "non-frozen list",
			[]string{"frozen<list<frozen<map<text, int>>>>", "set<frozen<map<text, int>>> (if order and duplicates do not matter)", "text with convert: json"}},
		{"list<frozen<address>>", "list<frozen<address>>", "non-frozen list",
			[]string{"frozen<list<frozen<address>>>", "set<frozen<address>> (if order and duplicates do not matter)", "text with convert: json"}},
		{"list<frozen<list<int>>>", "list<frozen<list<int>>>", "non-frozen list",
			[]string{"frozen<list<frozen<list<int>>>>", "set<frozen<list<int>>> (if order and duplicates do not matter)", "text with convert: json"}},
		// Nested in a non-frozen map or set value (Cassandra itself requires frozen there).
		{"map<text, list<int>>", "map<text, list<int>>", "non-frozen list",
			[]string{"map<text, frozen<list<int>>>", "frozen<map<text, list<int>>>", "text with convert: json"}},
		{"Map<Text, List<Int>>", "map<text, list<int>>", "non-frozen list",
			[]string{"map<text, frozen<list<int>>>", "frozen<map<text, list<int>>>", "text with convert: json"}},
		{"set<list<int>>", "set<list<int>>", "non-frozen list",
			[]string{"set<frozen<list<int>>>", "frozen<set<list<int>>>", "text with convert: json"}},
		{"map<text, map<text, list<int>>>", "map<text, map<text, list<int>>>", "non-frozen list",
			[]string{"map<text, map<text, frozen<list<int>>>>", "frozen<map<text, map<text, list<int>>>>", "text with convert: json"}},
		{"counter", "counter", "counter", []string{"bigint (the document's value, written as it is)"}},
		{"COUNTER", "counter", "counter", []string{"bigint (the document's value, written as it is)"}},
	}
	for _, tc := range unsafe {
		err := CheckColumn("app.items", "tags", tc.typ)
		var ue *UnsafeTypeError
		if !errors.As(err, &ue) {
			t.Errorf("CheckColumn(%q) = %v; want an *UnsafeTypeError", tc.typ, err)
			continue
		}
		if ue.Table != "app.items" || ue.Column != "tags" || ue.Type != tc.norm || !strings.Contains(ue.Reason, tc.reason) {
			t.Errorf("%q: %+v; want table app.items, column tags, type %q, a reason naming %q", tc.typ, ue, tc.norm, tc.reason)
		}
		if strings.Join(ue.Alternatives, "|") != strings.Join(tc.alternatives, "|") {
			t.Errorf("%q: alternatives %q, want %q", tc.typ, ue.Alternatives, tc.alternatives)
		}
		for _, alt := range ue.Alternatives {
			if a, _, _ := strings.Cut(alt, " "); ReplaySafe(a) != nil {
				t.Errorf("%q: alternative %q is itself unsafe", tc.typ, alt)
			}
		}
		msg := err.Error()
		for _, want := range []string{"app.items.tags", tc.norm, ue.Alternatives[0]} {
			if !strings.Contains(msg, want) {
				t.Errorf("%q: message %q does not name %q", tc.typ, msg, want)
			}
		}
	}
}

// TestMappingUnsafeColumns: a compiled spec lists its unsafe columns by table
// and column, and a spec without any lists none. Compile itself accepts them:
// whether the live column is safe is what counts, and validate and run check it.
func TestMappingUnsafeColumns(t *testing.T) {
	m, err := Parse([]byte(`
version: v1
collections:
  - namespace: app.items
    tables:
      - keyspace: app
        table: items
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: tags, type: "list<text>", from: tags}
          - {name: safe_tags, type: "frozen<list<text>>", from: tags}
          - {name: labels, type: "set<text>", from: tags}
          - {name: nested, type: "map<text, frozen<list<int>>>", from: m}
`))
	if err != nil {
		t.Fatal(err)
	}
	got := m.UnsafeColumns()
	if len(got) != 1 || got[0].Table != "app.items" || got[0].Column != "tags" || got[0].Type != "list<text>" {
		t.Fatalf("unsafe columns %+v; want only app.items.tags list<text>", got)
	}
	if !strings.Contains(got[0].Error(), "frozen<list<text>>") || !strings.Contains(got[0].Error(), "set<text>") {
		t.Fatalf("message %q does not name the alternatives", got[0].Error())
	}
}

// TestCompileRefusesTypesItCannotWrite: a counter is refused with the
// replay-safety reason and its alternative (not as a user-defined type that
// must be frozen); so are the forms of the other types the transform does not
// write, each with its reason, while every other scalar type compiles.
func TestCompileRefusesTypesItCannotWrite(t *testing.T) {
	const spec = `
version: v1
collections:
  - namespace: app.items
    tables:
      - keyspace: app
        table: items
        partition_key: [%s]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: c, type: %q, from: c}
`
	for typ, want := range map[string]string{
		"counter": "not replay-safe", "COUNTER": "bigint",
		"tuple<int, frozen<addr>>": "no user-defined type inside a tuple",
		"vector<float, 0>":         "not a positive integer", "vector<float, x>": "not a positive integer",
		"vector<list<int>, 2>": "vectors of scalar types", "vector<float>": `expected ','`,
		"tuple<>": "missing type name",
	} {
		_, err := Parse(fmt.Appendf(nil, spec, "id", typ))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "must be frozen") {
			t.Errorf("%s: compile error %v; want one saying %q", typ, err, want)
		}
	}
	for _, typ := range []string{"tinyint", "date", "time", "inet", "duration", "tuple<int, text>",
		"frozen<tuple<int, frozen<list<text>>>>", "vector<float, 3>", "VECTOR<Double,2>"} {
		if _, err := Parse(fmt.Appendf(nil, spec, "id", typ)); err != nil {
			t.Errorf("%s: %v", typ, err)
		}
	}
	// Cassandra refuses a duration in a primary key; tuples and vectors have
	// no key encoding in tidemark.
	for _, typ := range []string{"duration", "tuple<int, int>", "vector<float, 2>"} {
		_, err := Parse(fmt.Appendf(nil, spec, "c", typ))
		if err == nil || !strings.Contains(err.Error(), "must have a scalar type") {
			t.Errorf("%s as a key: %v; want a refusal", typ, err)
		}
	}
}
