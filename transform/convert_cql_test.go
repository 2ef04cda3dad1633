package transform

import (
	"bytes"
	"errors"
	"math"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// roundTrip marshals v as gocql does for a bound column of CQL type typ, reads
// it back as a scan into `any` does, and requires both to have the same
// canonical form (what reconcile and the test checker compare), zero folded to
// null as Table.AppendCanonical does for a non-key column.
func roundTrip(t *testing.T, typ string, v any) {
	t.Helper()
	ct, err := parseType(typ)
	if err != nil {
		t.Fatal(err)
	}
	info := gocql.NewNativeType(4, gocql.TypeCustom, typ)
	data, err := gocql.Marshal(info, typedNull(ct, v))
	if err != nil {
		t.Fatalf("gocql refuses %#v for %s: %v", v, typ, err)
	}
	var back any
	if tup, ok := info.(gocql.TupleTypeInfo); ok {
		// A tuple column is scanned as one destination per component, each
		// holding the component's zero value (what MapScan and RowData do).
		dest := make([]any, len(tup.Elems))
		for i, e := range tup.Elems {
			z := e.Zero()
			dest[i] = &z
		}
		if err := gocql.Unmarshal(info, data, dest); err != nil {
			t.Fatalf("gocql cannot read back %s: %v", typ, err)
		}
		for i := range dest {
			dest[i] = *dest[i].(*any)
		}
		back = dest
	} else if err := gocql.Unmarshal(info, data, &back); err != nil {
		t.Fatalf("gocql cannot read back %s: %v", typ, err)
	}
	for _, fold := range []bool{false, true} {
		if fold == false && v == nil {
			continue // a null key is impossible; gocql reads null as zero
		}
		a, err1 := appendFolded(nil, ct, v, nil, fold)
		b, err2 := appendFolded(nil, ct, back, nil, fold)
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Fatalf("%s: wrote %#v, read back %#v: canonical %x vs %x (%v, %v)", typ, v, back, a, b, err1, err2)
		}
	}
}

func TestConvertCQLTypes(t *testing.T) {
	day := time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC)
	old := time.Date(1066, 10, 14, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name, typ string
		in        any
		want      any
		wantErr   string
	}{
		// tinyint: 8-bit signed.
		{"int32 to tinyint", "tinyint", int32(-128), int8(-128), ""},
		{"int64 to tinyint", "tinyint", int64(127), int8(127), ""},
		{"integral double to tinyint", "tinyint", 5.0, int8(5), ""},
		{"decimal128 to tinyint", "tinyint", mustDec(t, "-7"), int8(-7), ""},
		{"tinyint overflow", "tinyint", int32(128), nil, "128 overflows tinyint"},
		{"tinyint underflow", "tinyint", int64(-129), nil, "-129 overflows tinyint"},
		{"tinyint fraction", "tinyint", 1.5, nil, "has a fraction"},
		{"tinyint from string", "tinyint", "5", nil, "string->tinyint"},

		// date: days, no time part.
		{"midnight date", "date", day, day, ""},
		{"date before 1970", "date", old, old, ""},
		{"epoch date", "date", time.Unix(0, 0), time.Unix(0, 0).UTC(), ""},
		{"date string", "date", "2024-02-29", day, ""},
		{"date with a time of day", "date", day.Add(time.Millisecond), nil, "has a time of day"},
		{"date an hour off midnight", "date", day.Add(-time.Hour), nil, "2024-02-28T23:00:00Z has a time of day"},
		{"date beyond the date range", "date", primitive.DateTime(int64(1<<31) * msPerDay), nil, "overflows date"},
		{"bad date string", "date", "2024-02-30", nil, "is not a date"},
		{"date string with time", "date", "2024-02-29T00:00:00Z", nil, "is not a date"},
		{"date from int", "date", int64(19782), nil, "no conversion from 64-bit integer to date"},

		// time: nanoseconds since midnight.
		{"time string", "time", "13:45:07.123456789", 13*time.Hour + 45*time.Minute + 7*time.Second + 123456789, ""},
		{"time string, short fraction", "time", "01:02:03.5", time.Hour + 2*time.Minute + 3500*time.Millisecond, ""},
		{"time string, no fraction", "time", "23:59:59", 24*time.Hour - time.Second, ""},
		{"time string, one-digit fields", "time", "1:2:3", time.Hour + 2*time.Minute + 3*time.Second, ""},
		{"time nanos int64", "time", int64(86399999999999), time.Duration(86399999999999), ""},
		{"time nanos int32", "time", int32(5), time.Duration(5), ""},
		{"midnight", "time", "00:00:00", time.Duration(0), ""},
		{"time 24:00", "time", "24:00:00", nil, "not a time of day"},
		{"time 10 fraction digits", "time", "01:02:03.1234567891", nil, "not a time of day"},
		{"time without seconds", "time", "01:02", nil, "not a time of day"},
		{"time nanos of a whole day", "time", int64(nsPerDay), nil, "is not a time of day"},
		{"negative time", "time", int64(-1), nil, "is not a time of day"},
		{"time fraction of a nanosecond", "time", 1.5, nil, "has a fraction"},
		{"time from a Date", "time", day, nil, "no conversion from UTC datetime to time"},

		// inet: IPv4 as 4 bytes, IPv6 as 16.
		{"ipv4 string", "inet", "192.168.0.1", net.IP{192, 168, 0, 1}, ""},
		{"ipv6 string", "inet", "2001:db8::1", net.ParseIP("2001:db8::1").To16(), ""},
		{"ipv6 upper case", "inet", "2001:DB8::1", net.ParseIP("2001:db8::1").To16(), ""},
		{"ipv4 binary", "inet", primitive.Binary{Data: []byte{10, 0, 0, 1}}, net.IP{10, 0, 0, 1}, ""},
		{"ipv6 binary", "inet", primitive.Binary{Data: net.ParseIP("fe80::1").To16()}, net.ParseIP("fe80::1").To16(), ""},
		{"ipv4-mapped ipv6", "inet", "::ffff:10.0.0.1", nil, "IPv4-mapped"},
		{"ipv4-mapped binary", "inet", primitive.Binary{Data: net.ParseIP("10.0.0.1").To16()}, nil, "IPv4-mapped"},
		{"ipv6 with zone", "inet", "fe80::1%eth0", nil, "has a zone"},
		{"not an ip", "inet", "10.0.0.256", nil, "is not an IP address"},
		{"ip with a mask", "inet", "10.0.0.0/8", nil, "is not an IP address"},
		{"binary of 5 bytes", "inet", primitive.Binary{Data: []byte{1, 2, 3, 4, 5}}, nil, "5 bytes is not an IP address"},
		{"uuid binary", "inet", primitive.Binary{Subtype: 4, Data: make([]byte, 16)}, nil, "subtype 4"},

		// duration: months, days, nanoseconds kept apart.
		{"duration units", "duration", "1y2mo3w4d5h6m7s8ms9us10ns",
			gocql.Duration{Months: 14, Days: 25, Nanoseconds: ((5*60+6)*60+7)*1e9 + 8e6 + 9e3 + 10}, ""},
		{"duration units upper case, µs", "duration", "1H30M2µS", gocql.Duration{Nanoseconds: 5400e9 + 2e3}, ""},
		{"negative duration", "duration", "-2d3h", gocql.Duration{Days: -2, Nanoseconds: -3 * 3600e9}, ""},
		{"iso duration", "duration", "P1Y2M3DT4H5M6S", gocql.Duration{Months: 14, Days: 3, Nanoseconds: (4*3600 + 5*60 + 6) * 1e9}, ""},
		{"iso date part only", "duration", "P1M", gocql.Duration{Months: 1}, ""},
		{"iso time part only", "duration", "PT1M", gocql.Duration{Nanoseconds: 60e9}, ""},
		{"iso weeks", "duration", "P2W", gocql.Duration{Days: 14}, ""},
		{"iso alternative", "duration", "P0001-02-03T04:05:06", gocql.Duration{Months: 14, Days: 3, Nanoseconds: (4*3600 + 5*60 + 6) * 1e9}, ""},
		{"negative iso", "duration", "-PT1S", gocql.Duration{Nanoseconds: -1e9}, ""},
		{"duration from nanos", "duration", int64(-1500), gocql.Duration{Nanoseconds: -1500}, ""},
		{"a day is not 24 hours", "duration", "1d", gocql.Duration{Days: 1}, ""},
		{"zero duration", "duration", "0s", gocql.Duration{}, ""},
		{"fractional unit", "duration", "1.5h", nil, "is not a duration"},
		{"fractional iso seconds", "duration", "PT1.5S", nil, "is not a duration"},
		{"unknown unit", "duration", "3x", nil, "unknown unit"},
		{"iso out of order", "duration", "P1D2M", nil, "out of place"},
		{"iso with a bad designator", "duration", "P1X", nil, "unknown designator"},
		{"bare P", "duration", "P", nil, "is not a duration"},
		{"P with an empty T", "duration", "P1DT", nil, "is not a duration"},
		{"empty duration", "duration", "", nil, "is not a duration"},
		{"months overflow", "duration", "200000000y", nil, "overflows"},
		{"nanos overflow", "duration", "9999999999999h", nil, "overflows"},
		{"duration nanos fraction", "duration", 0.5, nil, "has a fraction"},
		{"duration from a Date", "duration", day, nil, "no conversion from UTC datetime to duration"},

		// tuple: exactly as many elements as components, each converted.
		{"tuple", "tuple<int, text, boolean>", bson.A{int64(1), "a", true}, []any{int32(1), "a", true}, ""},
		{"tuple with a null", "tuple<int, text>", bson.A{nil, "a"}, []any{nil, "a"}, ""},
		{"tuple of new types", "tuple<date, inet, frozen<list<tinyint>>>", bson.A{day, "::1", bson.A{int32(1), int32(2)}},
			[]any{day, net.ParseIP("::1"), []any{int8(1), int8(2)}}, ""},
		{"nested tuple", "tuple<int, tuple<text, int>>", bson.A{int32(1), bson.A{"x", int32(2)}}, []any{int32(1), []any{"x", int32(2)}}, ""},
		{"null in a nested tuple", "tuple<int, tuple<text, int>>", bson.A{int32(1), bson.A{nil, int32(2)}}, nil, "[1]: tuple: [0] is null"},
		{"null in a tuple in a list", "frozen<list<frozen<tuple<int, int>>>>", bson.A{bson.A{nil, int32(2)}}, nil, "[0]: tuple: [0] is null"},
		{"tuples in a map", "map<text, frozen<tuple<int, int>>>", bson.D{{Key: "a", Value: bson.A{int32(1), int32(2)}}},
			map[string]any{"a": []any{int32(1), int32(2)}}, ""},
		{"tuple too short", "tuple<int, text>", bson.A{int32(1)}, nil, "an array of 1 elements for tuple<int, text> of 2"},
		{"tuple too long", "tuple<int, text>", bson.A{int32(1), "a", "b"}, nil, "an array of 3 elements"},
		{"tuple component refused", "tuple<int, tinyint>", bson.A{int32(1), int32(300)}, nil, "[1]: 32-bit integer->tinyint: 300 overflows tinyint"},
		{"tuple from a document", "tuple<int, text>", bson.D{{Key: "a", Value: 1}}, nil, "it takes an array"},

		// vector: exactly n non-null elements.
		{"vector<float>", "vector<float, 3>", bson.A{0.5, int32(2), int64(-3)}, []any{float32(0.5), float32(2), float32(-3)}, ""},
		{"vector<double>", "vector<double, 2>", bson.A{math.Pi, 1e300}, []any{math.Pi, 1e300}, ""},
		{"vector<int>", "vector<int, 2>", bson.A{int32(1), 2.0}, []any{int32(1), int32(2)}, ""},
		{"vector too short", "vector<float, 3>", bson.A{0.5, 1.0}, nil, "an array of 2 elements for vector<float, 3>"},
		{"vector too long", "vector<float, 1>", bson.A{0.5, 1.0}, nil, "an array of 2 elements"},
		{"vector with a null", "vector<float, 2>", bson.A{0.5, nil}, nil, "cannot hold nulls"},
		{"vector element overflows float", "vector<float, 1>", bson.A{1e300}, nil, "overflows float"},
		{"vector of strings", "vector<float, 1>", bson.A{"1"}, nil, "[0]: string->float"},
		{"vector from a number", "vector<float, 1>", 1.0, nil, "it takes an array"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			typ, err := parseType(c.typ)
			if err != nil {
				t.Fatal(err)
			}
			got, err := convertValue(typ, "", raw(t, c.in), nil)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("got %#v, %v; want error containing %q", got, err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %#v, want %#v", got, c.want)
			}
			roundTrip(t, c.typ, got)
		})
	}
}

func mustDec(t *testing.T, s string) primitive.Decimal128 {
	d, err := primitive.ParseDecimal128(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestEveryBSONTypeToCQLTypes feeds a value of every BSON type to each of the
// types above: the ones listed convert (a valid value of that BSON type), and
// every other BSON type is refused with an error naming the rule
// ("<bson type>-><cql type>"); null and undefined are null.
func TestEveryBSONTypeToCQLTypes(t *testing.T) {
	oid, _ := primitive.ObjectIDFromHex("5f1d7a3e9b1e8a1a2b3c4d5e")
	generic := map[bsontype.Type]any{
		bsontype.Double: 1.25, bsontype.String: "x", bsontype.EmbeddedDocument: bson.D{{Key: "a", Value: 1}},
		bsontype.Array: bson.A{"x"}, bsontype.Binary: primitive.Binary{Subtype: 0x80, Data: []byte{1}},
		bsontype.ObjectID: oid, bsontype.Boolean: true,
		bsontype.DateTime:  primitive.DateTime(1),
		bsontype.Regex:     primitive.Regex{Pattern: "a", Options: "i"},
		bsontype.DBPointer: primitive.DBPointer{DB: "d", Pointer: oid}, bsontype.JavaScript: primitive.JavaScript("f()"),
		bsontype.Symbol: primitive.Symbol("s"), bsontype.CodeWithScope: primitive.CodeWithScope{Code: "f()", Scope: bson.D{}},
		bsontype.Int32: int32(1000), bsontype.Timestamp: primitive.Timestamp{T: 1, I: 2}, bsontype.Int64: int64(1) << 62,
		bsontype.Decimal128: mustDec(t, "0.5"), bsontype.MinKey: primitive.MinKey{}, bsontype.MaxKey: primitive.MaxKey{},
	}
	day := primitive.NewDateTimeFromTime(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC))
	accepts := map[string]map[bsontype.Type]any{
		"tinyint": {bsontype.Int32: int32(1), bsontype.Int64: int64(1), bsontype.Double: 1.0, bsontype.Decimal128: mustDec(t, "1")},
		"date":    {bsontype.DateTime: day, bsontype.String: "2000-01-01"},
		"time": {bsontype.Int32: int32(1), bsontype.Int64: int64(1), bsontype.Double: 1.0, bsontype.Decimal128: mustDec(t, "1"),
			bsontype.String: "10:00:00"},
		"inet": {bsontype.String: "1.2.3.4", bsontype.Binary: primitive.Binary{Data: []byte{1, 2, 3, 4}}},
		"duration": {bsontype.Int32: int32(1), bsontype.Int64: int64(1), bsontype.Double: 1.0, bsontype.Decimal128: mustDec(t, "1"),
			bsontype.String: "1h"},
		"tuple<int, text>": {bsontype.Array: bson.A{int32(1), "a"}},
		"vector<float, 2>": {bsontype.Array: bson.A{1.0, 2.0}},
	}
	for typ, ok := range accepts {
		ct, err := parseType(typ)
		if err != nil {
			t.Fatal(err)
		}
		for bt, sample := range generic {
			in := sample
			if v, yes := ok[bt]; yes {
				in = v
			}
			got, err := convertValue(ct, "", raw(t, in), nil)
			_, yes := ok[bt]
			switch {
			case yes && (err != nil || got == nil):
				t.Errorf("%s from %s: %#v, %v; want a value", typ, bt, got, err)
			case yes:
				roundTrip(t, typ, got)
			case err == nil:
				t.Errorf("%s from %s (%v): converted to %#v; want a refusal", typ, bt, sample, got)
			case !strings.Contains(err.Error(), bt.String()+"->"+ct.name):
				t.Errorf("%s from %s: error %q does not name the rule", typ, bt, err)
			}
		}
		for _, null := range []bson.RawValue{{Type: bsontype.Null}, {Type: bsontype.Undefined}} {
			if got, err := convertValue(ct, "", null, nil); got != nil || err != nil {
				t.Errorf("%s from %s: %#v, %v; want null", typ, null.Type, got, err)
			}
		}
	}
}

// TestReadBackFormsCompareEqual: what gocql returns for these types may be
// another Go form of the value written; each must compare equal, and a
// different value must not.
func TestReadBackFormsCompareEqual(t *testing.T) {
	cases := []struct {
		typ          string
		wrote, read  any
		differs      any
		foldedToNull bool
	}{
		{"inet", net.IP{10, 0, 0, 1}, net.ParseIP("10.0.0.1"), net.IP{10, 0, 0, 2}, false},
		{"date", time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC), time.Date(2024, 1, 2, 1, 0, 0, 0, time.FixedZone("CET", 3600)),
			time.Date(2024, 1, 3, 0, 0, 0, 0, time.UTC), false},
		{"time", time.Duration(5), int64(5), time.Duration(6), false},
		{"duration", gocql.Duration{Days: 1}, gocql.Duration{Days: 1}, gocql.Duration{Nanoseconds: 24 * 3600e9}, false},
		{"tinyint", int8(3), int8(3), int8(4), false},
		{"vector<float, 2>", []any{float32(1), float32(2)}, []float32{1, 2}, []float32{2, 1}, false},
		{"tuple<int, text>", []any{int32(1), nil}, []any{int32(1), ""}, []any{int32(1), "a"}, false},
		{"tuple<int, text>", (*[]any)(nil), []any{int32(0), ""}, []any{int32(1), ""}, true},
		{"frozen<list<frozen<tuple<int, inet>>>>", []any{[]any{int32(1), net.IP{1, 2, 3, 4}}},
			[][]any{{int32(1), net.ParseIP("1.2.3.4")}}, [][]any{{int32(1), net.ParseIP("1.2.3.5")}}, false},
	}
	for _, c := range cases {
		ct, err := parseType(c.typ)
		if err != nil {
			t.Fatal(err)
		}
		a, err1 := appendFolded(nil, ct, c.wrote, nil, true)
		b, err2 := appendFolded(nil, ct, c.read, nil, true)
		d, err3 := appendFolded(nil, ct, c.differs, nil, true)
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("%s: %v %v %v", c.typ, err1, err2, err3)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s: wrote %#v, read %#v: %x != %x", c.typ, c.wrote, c.read, a, b)
		}
		if bytes.Equal(a, d) {
			t.Errorf("%s: %#v and %#v compare equal", c.typ, c.wrote, c.differs)
		}
		if c.foldedToNull != (len(a) == 1 && a[0] == tagNull) {
			t.Errorf("%s: %#v encodes as %x", c.typ, c.wrote, a)
		}
	}
}

// TestApplyCQLTypes: a spec with a column of each type compiles and Apply
// writes them, a null or missing tuple as a typed nil gocql writes as null;
// tinyint, date, time and inet key columns survive EncodeKey and DecodeKey in
// forms gocql binds.
func TestApplyCQLTypes(t *testing.T) {
	m, err := Parse([]byte(`
version: v1
collections:
  - namespace: app.things
    tables:
      - keyspace: app
        table: things
        partition_key: [k_tiny, k_date]
        clustering_key: [k_time, k_inet]
        columns:
          - {name: k_tiny, type: tinyint, from: tiny}
          - {name: k_date, type: date, from: day}
          - {name: k_time, type: time, from: clock}
          - {name: k_inet, type: inet, from: ip}
          - {name: c_dur, type: duration, from: dur}
          - {name: c_tuple, type: "frozen<tuple<int, text>>", from: pair}
          - {name: c_vec, type: "vector<float, 2>", from: emb}
          - {name: c_missing, type: "tuple<int, int>", from: nothing}
          - {name: c_default, type: "tuple<int, text>", from: nothing, default: true, value: [1, "x"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2020, 5, 17, 0, 0, 0, 0, time.UTC)
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: 1}, {Key: "tiny", Value: int32(-3)},
		{Key: "day", Value: primitive.NewDateTimeFromTime(day)}, {Key: "clock", Value: "08:30:00"},
		{Key: "ip", Value: "2001:db8::7"}, {Key: "dur", Value: "P1M2DT3S"}, {Key: "pair", Value: bson.A{int32(4), "four"}},
		{Key: "emb", Value: bson.A{0.25, 0.5}}})
	rows, err := m.Apply("app.things", doc)
	if err != nil {
		t.Fatal(err)
	}
	want := []any{int8(-3), day, 8*time.Hour + 30*time.Minute, net.ParseIP("2001:db8::7"),
		gocql.Duration{Months: 1, Days: 2, Nanoseconds: 3e9}, []any{int32(4), "four"}, []any{float32(0.25), float32(0.5)},
		(*[]any)(nil), []any{int32(1), "x"}}
	if got := rows[0].Values; !reflect.DeepEqual(got, want) {
		t.Fatalf("Apply: %#v\nwant %#v", got, want)
	}
	tbl := rows[0].Table
	key, err := tbl.DecodeKey(rows[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	if wantKey := tbl.KeyValues(want); !reflect.DeepEqual(key, wantKey) {
		t.Fatalf("DecodeKey: %#v, want %#v", key, wantKey)
	}
	for i, typ := range []string{"tinyint", "date", "time", "inet"} {
		if _, err := gocql.Marshal(gocql.NewNativeType(4, gocql.TypeCustom, typ), key[i]); err != nil {
			t.Errorf("decoded key %s %#v: gocql refuses it: %v", typ, key[i], err)
		}
	}
	expected, err := tbl.AppendCanonical(nil, rows[0].Values)
	if err != nil {
		t.Fatal(err)
	}
	// The same row as gocql scans it: tuples split into components, a null
	// tuple as zero components, IPv6 as 16 bytes, the vector as []float32.
	flat := []any{int8(-3), day, 8*time.Hour + 30*time.Minute, net.ParseIP("2001:db8::7"),
		gocql.Duration{Months: 1, Days: 2, Nanoseconds: 3e9}, int32(4), "four", []float32{0.25, 0.5},
		int32(0), int32(0), int32(1), "x"}
	scanned, err := tbl.RowFromScan(flat, nil)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]any{}
	names := []string{"k_tiny", "k_date", "k_time", "k_inet", "c_dur", "c_tuple[0]", "c_tuple[1]", "c_vec",
		"c_missing[0]", "c_missing[1]", "c_default[0]", "c_default[1]"}
	for i, n := range names {
		byName[n] = flat[i]
	}
	for _, got := range [][]any{scanned, tbl.RowFromMap(byName, nil)} {
		b, err := tbl.AppendCanonical(nil, got)
		if err != nil || !bytes.Equal(b, expected) {
			t.Fatalf("scanned row %#v: canonical %x, want %x (%v)", got, b, expected, err)
		}
	}
	// gocql binds a tuple component by component.
	if got := tbl.InsertMarks(rows[0].Values); got != "?, ?, ?, ?, ?, (?, ?), ?, null, (?, ?)" || !tbl.HasTuple() {
		t.Fatalf("insert marks %q", got)
	}
	bind := tbl.AppendBindValues(nil, rows[0].Values)
	wantBind := []any{int8(-3), day, 8*time.Hour + 30*time.Minute, net.ParseIP("2001:db8::7"),
		gocql.Duration{Months: 1, Days: 2, Nanoseconds: 3e9}, int32(4), "four", []any{float32(0.25), float32(0.5)},
		int32(1), "x"}
	if !reflect.DeepEqual(bind, wantBind) {
		t.Fatalf("bind values %#v\nwant %#v", bind, wantBind)
	}
	if _, err := tbl.RowFromScan(flat[1:], nil); err == nil {
		t.Fatal("RowFromScan took too few values")
	}
}

// FuzzParseDurationAndTime: the string decoders never panic, a time is
// always within a day, and a duration's parts never have mixed signs (what
// Cassandra requires).
func FuzzParseDurationAndTime(f *testing.F) {
	for _, s := range []string{"1y2mo3w4d5h6m7s8ms9us10ns", "P1Y2M3DT4H5M6S", "P2W", "P0001-02-03T04:05:06", "-PT1S",
		"23:59:59.999999999", "1:2:3", "9999999999999h", "P", "µs", "1µs"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := parseTimeOfDay(s); err == nil && (d < 0 || d >= nsPerDay) {
			t.Fatalf("time %q = %d", s, d)
		}
		d, err := parseDuration(s)
		if err != nil {
			return
		}
		neg := d.Months < 0 || d.Days < 0 || d.Nanoseconds < 0
		pos := d.Months > 0 || d.Days > 0 || d.Nanoseconds > 0
		if neg && pos {
			t.Fatalf("duration %q = %+v: mixed signs", s, d)
		}
	})
}

// TestInsertMarksOfNestedTuples: a tuple inside a tuple gets its own literal
// of markers, or null; the bind values follow the markers one to one.
func TestInsertMarksOfNestedTuples(t *testing.T) {
	m, err := Parse([]byte(`
version: v1
collections:
  - namespace: app.n
    tables:
      - keyspace: app
        table: n
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: tt, type: "tuple<int, tuple<text, int>>", from: tt}
`))
	if err != nil {
		t.Fatal(err)
	}
	tbl := m.Tables("app.n")[0]
	for _, c := range []struct {
		values []any
		marks  string
		bind   []any
	}{
		{[]any{"a", []any{int32(1), []any{"x", int32(2)}}}, "?, (?, (?, ?))", []any{"a", int32(1), "x", int32(2)}},
		{[]any{"a", []any{int32(1), nil}}, "?, (?, null)", []any{"a", int32(1)}},
		{[]any{"a", []any{nil, nil}}, "?, (?, null)", []any{"a", nil}},
		{[]any{"a", (*[]any)(nil)}, "?, null", []any{"a"}},
	} {
		if got := tbl.InsertMarks(c.values); got != c.marks {
			t.Errorf("%#v: marks %q, want %q", c.values, got, c.marks)
		}
		if got := tbl.AppendBindValues(nil, c.values); !reflect.DeepEqual(got, c.bind) {
			t.Errorf("%#v: bind %#v, want %#v", c.values, got, c.bind)
		}
	}
}

// TestConvertErrorNamesTheRuleOnce: a refused value's error says which rule
// refused it once, then why, and still matches its rule with errors.As.
func TestConvertErrorNamesTheRuleOnce(t *testing.T) {
	m, err := Parse([]byte(`
version: v1
collections:
  - namespace: app.t
    tables:
      - keyspace: app
        table: t
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id}
          - {name: n, type: tinyint, from: n}
`))
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: "a"}, {Key: "n", Value: "seven"}})
	_, err = m.Apply("app.t", doc)
	var ce *ConvertError
	if !errors.As(err, &ce) {
		t.Fatalf("Apply: %v, want a ConvertError", err)
	}
	if ce.Rule != "string->tinyint" || strings.Count(err.Error(), "string->tinyint") != 1 {
		t.Fatalf("rule %q, message %q: want the rule string->tinyint named once", ce.Rule, err)
	}
}
