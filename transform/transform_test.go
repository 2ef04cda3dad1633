package transform

import (
	"bytes"
	"errors"
	"math"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"gopkg.in/inf.v0"
)

func raw(t testing.TB, v any) bson.RawValue {
	t.Helper()
	if v == nil {
		return bson.RawValue{Type: bson.TypeNull}
	}
	typ, data, err := bson.MarshalValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return bson.RawValue{Type: typ, Value: data}
}

func TestConversions(t *testing.T) {
	oid, _ := primitive.ObjectIDFromHex("5f1d7a3e9b1e8a1a2b3c4d5e")
	dec, _ := primitive.ParseDecimal128("1234.5600")
	pre1970 := time.Date(1950, 6, 1, 12, 0, 0, 0, time.UTC)
	uuidStr := "123e4567-e89b-12d3-a456-426614174000"
	u, _ := gocql.ParseUUID(uuidStr)
	cases := []struct {
		name, typ, convert string
		in                 any
		want               any
		wantErr            string
	}{
		{"string to text", "text", "", "héllo ✓", "héllo ✓", ""},
		{"objectid to text", "text", "", oid, "5f1d7a3e9b1e8a1a2b3c4d5e", ""},
		{"objectid to blob", "blob", "", oid, oid[:], ""},
		{"objectid to uuid", "uuid", "", oid, gocql.UUID{0, 0, 0, 0, 0x5f, 0x1d, 0x7a, 0x3e, 0x9b, 0x1e, 0x8a, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e}, ""},
		{"string to uuid", "uuid", "", uuidStr, u, ""},
		{"bad uuid", "uuid", "", "nope", nil, "not a UUID"},
		{"int32 to int", "int", "", int32(7), int32(7), ""},
		{"int64 to int", "int", "", int64(7), int32(7), ""},
		{"int64 overflows int", "int", "", int64(math.MaxInt32) + 1, nil, "overflows int"},
		{"double with fraction to int", "int", "", 1.5, nil, "fraction"},
		{"NaN to bigint", "bigint", "", math.NaN(), nil, "not an integer"},
		{"double to bigint", "bigint", "", 42.0, int64(42), ""},
		{"NaN to double", "double", "", math.NaN(), math.NaN(), ""},
		{"int64 beyond 2^53 to double", "double", "", int64(1<<53 + 1), nil, "precision"},
		{"double overflows float", "float", "", 1e300, nil, "overflows float"},
		{"bool", "boolean", "", true, true, ""},
		{"string to bool", "boolean", "", "true", nil, "no conversion"},
		{"date before 1970", "timestamp", "", pre1970, pre1970, ""},
		{"millis", "timestamp", "millis", int64(-1000), time.UnixMilli(-1000).UTC(), ""},
		{"decimal128", "decimal", "", dec, inf.NewDec(12345600, 4), ""},
		{"double to decimal", "decimal", "", 0.1, inf.NewDec(1, 1), ""},
		{"int to varint", "varint", "", int64(-5), big.NewInt(-5), ""},
		{"array to list", "list<int>", "", bson.A{int32(3), int32(1), int32(3)}, []any{int32(3), int32(1), int32(3)}, ""},
		{"array to set sorts and dedups", "set<text>", "", bson.A{"b", "a", "b"}, []any{"a", "b"}, ""},
		{"empty array is null", "list<int>", "", bson.A{}, nil, ""},
		{"null in list", "list<int>", "", bson.A{nil}, nil, "cannot hold nulls"},
		// Found by the chaos suite: a valid document was dead-lettered.
		{"empty array as a map value", "map<text, frozen<list<int>>>", "", bson.D{{Key: "a", Value: bson.A{}}, {Key: "b", Value: bson.A{int32(1)}}},
			map[string]any{"a": []any{}, "b": []any{int32(1)}}, ""},
		{"empty array in a set", "set<frozen<list<int>>>", "", bson.A{bson.A{}, bson.A{int32(2)}}, []any{[]any{}, []any{int32(2)}}, ""},
		{"empty document in a list", "frozen<list<frozen<map<text, int>>>>", "", bson.A{bson.D{}}, []any{map[string]any{}}, ""},
		{"null as a map value", "map<text, frozen<list<int>>>", "", bson.D{{Key: "a", Value: nil}}, nil, "cannot hold nulls"},
		{"document to map", "map<text, int>", "", bson.D{{Key: "x", Value: int32(1)}}, map[string]any{"x": int32(1)}, ""},
		{"document to json", "text", "json", bson.D{{Key: "b", Value: 1}, {Key: "a", Value: bson.A{"x"}}}, `{"b":1,"a":["x"]}`, ""},
		{"nested document to text is json", "text", "", bson.D{{Key: "d", Value: bson.D{{Key: "e", Value: bson.D{{Key: "f", Value: "deep"}}}}}}, `{"d":{"e":{"f":"deep"}}}`, ""},
		{"explicit null", "text", "", nil, nil, ""},
		{"int as string", "text", "string", int64(12), "12", ""},
		{"hex of binary", "text", "hex", primitive.Binary{Data: []byte{1, 255}}, "01ff", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			typ, err := parseType(c.typ)
			if err != nil {
				t.Fatal(err)
			}
			got, err := convertValue(typ, c.convert, raw(t, c.in), nil)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("got %v, %v; want error containing %q", got, err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			a, err1 := appendCanonical(nil, typ, got, nil)
			b, err2 := appendCanonical(nil, typ, c.want, nil)
			if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
				t.Fatalf("got %#v, want %#v (%v %v)", got, c.want, err1, err2)
			}
		})
	}
}

func loadUsers(t testing.TB) *Mapping {
	t.Helper()
	m, err := Load("../examples/specs/users.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func userDoc(t testing.TB, email string) bson.Raw {
	oid, _ := primitive.ObjectIDFromHex("65a000000000000000000001")
	dec, _ := primitive.ParseDecimal128("10.50")
	b, err := bson.Marshal(bson.D{{Key: "_id", Value: oid}, {Key: "email", Value: email},
		{Key: "name", Value: bson.D{{Key: "first", Value: "Ada"}, {Key: "last", Value: "Lovelace"}}},
		{Key: "age", Value: int32(36)}, {Key: "balance", Value: dec},
		{Key: "created", Value: primitive.NewDateTimeFromTime(time.Date(1843, 1, 1, 0, 0, 0, 0, time.UTC))},
		{Key: "tags", Value: bson.A{"math", "engines"}},
		{Key: "address", Value: bson.D{{Key: "street", Value: "St James's Square"}, {Key: "city", Value: "London"}}},
		{Key: "prefs", Value: bson.D{{Key: "lang", Value: "en"}}}, {Key: "score", Value: 9.5}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestApplyUsers(t *testing.T) {
	m := loadUsers(t)
	rows, err := m.Apply("app.users", userDoc(t, "Ada@Example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	users, byEmail := rows[0], rows[1]
	get := func(r Row, col string) any {
		for i, c := range r.Table.Columns {
			if c.Name == col {
				return r.Values[i]
			}
		}
		t.Fatalf("no column %s", col)
		return nil
	}
	if get(users, "id") != "65a000000000000000000001" || get(users, "name") != "Ada Lovelace" || get(users, "status") != "active" {
		t.Fatalf("users row: %v", users.Values)
	}
	if addr := get(users, "address").(map[string]any); addr["zip"] != nil || addr["city"] != "London" {
		t.Fatalf("address: %v", addr)
	}
	if get(byEmail, "email") != "ada@example.com" {
		t.Fatalf("users_by_email key: %v", byEmail.Values)
	}
	if !users.Table.KeyFromIDOnly || byEmail.Table.KeyFromIDOnly || !byEmail.Table.NeedsKeyMap() || users.Table.NeedsKeyMap() {
		t.Fatal("key provenance wrong")
	}
	key, err := users.Table.KeyForID(raw(t, mustOID("65a000000000000000000001")))
	if err != nil || key[0] != "65a000000000000000000001" {
		t.Fatalf("KeyForID: %v %v", key, err)
	}
	for _, r := range rows {
		back, err := r.Table.DecodeKey(r.Key)
		if err != nil {
			t.Fatal(err)
		}
		again, _ := r.Table.EncodeKey(back)
		if !bytes.Equal(again, r.Key) {
			t.Fatalf("%s key does not round-trip", r.Table.Name)
		}
	}
	// Deterministic: the same document gives byte-identical canonical rows.
	again, _ := m.Apply("app.users", userDoc(t, "Ada@Example.com"))
	for i := range rows {
		a, _ := rows[i].Table.AppendCanonical(nil, rows[i].Values)
		b, _ := again[i].Table.AppendCanonical(nil, again[i].Values)
		if !bytes.Equal(a, b) {
			t.Fatal("transform is not deterministic")
		}
	}
	// A document without email produces no users_by_email row.
	noEmail, _ := bson.Marshal(bson.D{{Key: "_id", Value: mustOID("65a000000000000000000002")}})
	rows, err = m.Apply("app.users", noEmail)
	if err != nil || len(rows) != 1 || rows[0].Table.Name != "users" {
		t.Fatalf("filter: %v %v", rows, err)
	}
	for i, v := range rows[0].Values {
		if c := rows[0].Table.Columns[i].Name; c != "id" && c != "status" && c != "bucket" && v != nil && !(c == "address" && v.(map[string]any) == nil) {
			t.Fatalf("missing field %s gave %v, want null", c, v)
		}
	}
}

func mustOID(h string) primitive.ObjectID {
	o, err := primitive.ObjectIDFromHex(h)
	if err != nil {
		panic(err)
	}
	return o
}

func TestConvertErrorNamesFieldTypeAndRule(t *testing.T) {
	m := loadUsers(t)
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: mustOID("65a000000000000000000003")}, {Key: "age", Value: "forty"}})
	_, err := m.Apply("app.users", doc)
	var ce *ConvertError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want *ConvertError", err)
	}
	if ce.Column != "age" || ce.Path != "age" || ce.BSONType != "string" || ce.Rule != "string->int" {
		t.Fatalf("error fields: %+v", ce)
	}
}

func TestIDOfEveryType(t *testing.T) {
	spec := `version: v1
collections:
  - namespace: a.b
    tables:
      - {keyspace: k, table: t, partition_key: [id], columns: [{name: id, type: text, from: _id, convert: json}]}
`
	m, err := Parse([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	ids := []any{mustOID("65a000000000000000000004"), "s", int32(1), int64(2), 3.5, true, bson.D{{Key: "a", Value: 1}},
		primitive.Binary{Subtype: 4, Data: make([]byte, 16)}, primitive.NewDateTimeFromTime(time.Unix(0, 0)),
		primitive.Timestamp{T: 1, I: 2}, primitive.MinKey{}, primitive.MaxKey{}, primitive.Regex{Pattern: "x"}}
	seen := map[string]bool{}
	for _, id := range ids {
		doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: id}})
		rows, err := m.Apply("a.b", doc)
		if err != nil {
			t.Fatalf("_id %T: %v", id, err)
		}
		s := rows[0].Values[0].(string)
		if seen[s] {
			t.Fatalf("_id %T collides as %s", id, s)
		}
		seen[s] = true
	}
}

func TestSpecErrorsListedAtOnce(t *testing.T) {
	spec := `version: ""
collections:
  - namespace: nodot
    tables:
      - keyspace: k
        table: t
        partition_key: [missing]
        consistency: SOMETIMES
        columns:
          - {name: a, type: "list<", from: a}
          - {name: b, type: int, compute: wat}
`
	_, err := Parse([]byte(spec))
	if err == nil {
		t.Fatal("bad spec compiled")
	}
	for _, want := range []string{"version is required", "not db.collection", "SOMETIMES", `column "a"`, "unknown compute", `key column "missing"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if _, err := Parse([]byte("version: v\nbogus: 1\n")); err == nil {
		t.Fatal("unknown key accepted")
	}
}

func TestChecksumIgnoresFormatting(t *testing.T) {
	b, _ := os.ReadFile("../examples/specs/users.yaml")
	m1, _ := Parse(b)
	m2, _ := Parse([]byte("# comment\n" + string(b)))
	m3, _ := Parse([]byte(strings.Replace(string(b), "users-v1", "users-v2", 1)))
	if m1.Checksum() != m2.Checksum() || m1.Checksum() == m3.Checksum() || m1.Version() != "users-v1" {
		t.Fatal("checksum does not track meaning")
	}
}

func TestCustomFunc(t *testing.T) {
	RegisterFunc("cents", func(v bson.RawValue) (any, error) { return int64(v.Double() * 100), nil })
	m, err := Parse([]byte(`version: v
collections:
  - namespace: a.b
    tables:
      - {keyspace: k, table: t, partition_key: [id], columns: [{name: id, type: text, from: _id}, {name: c, type: bigint, from: p, convert: cents}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: "x"}, {Key: "p", Value: 1.25}})
	rows, err := m.Apply("a.b", doc)
	if err != nil || rows[0].Values[1] != int64(125) {
		t.Fatalf("%v %v", rows, err)
	}
}

func FuzzApply(f *testing.F) {
	m, err := Load("../examples/specs/users.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(userDoc(f, "a@b.c")))
	f.Add([]byte{5, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, doc []byte) {
		rows, err := m.Apply("app.users", doc)
		if err != nil {
			return
		}
		for _, r := range rows {
			if _, err := r.Table.AppendCanonical(nil, r.Values); err != nil {
				t.Fatalf("row from Apply does not encode: %v", err)
			}
			if _, err := r.Table.DecodeKey(r.Key); err != nil {
				t.Fatalf("key from Apply does not decode: %v", err)
			}
		}
	})
}
