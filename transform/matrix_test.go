package transform

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/internal/golden"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"gopkg.in/inf.v0"
)

// matrixInputs are values of every BSON type a document can hold, with the
// edge values each conversion rule tests (ranges, fractions, NaN, subtypes,
// empty and null-holding containers).
func matrixInputs(t testing.TB) []bson.RawValue {
	oid, _ := primitive.ObjectIDFromHex("5f1d7a3e9b1e8a1a2b3c4d5e")
	uuid16 := []byte{0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0x00}
	day := primitive.NewDateTimeFromTime(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC))
	vals := []any{
		1.25, 0.0, math.Copysign(0, -1), 1.5, 42.0, -3.0, 0.1, math.NaN(), math.Inf(1), math.Inf(-1), 1e300, 1e39,
		float64(1 << 62), 9.3e18, -9.3e18, 86399999999999.0, 86400e9,
		"x", "", "héllo ✓", "true", "123e4567-e89b-12d3-a456-426614174000", "2000-01-01", "1969-12-31", "10:00:00",
		"23:59:59.999999999", "25:00", "1h", "P1Y2M3DT4H", "-1h30m", "1.2.3.4", "::1", "nope",
		bson.D{{Key: "a", Value: int32(1)}}, bson.D{}, bson.D{{Key: "a", Value: nil}},
		bson.D{{Key: "b", Value: "y"}, {Key: "a", Value: bson.A{"x"}}},
		bson.D{{Key: "a", Value: bson.A{}}, {Key: "b", Value: bson.A{int32(1)}}},
		bson.D{{Key: "a", Value: bson.D{}}}, bson.D{{Key: "a", Value: bson.A{int32(1), int32(2)}}},
		bson.D{{Key: "street", Value: "s"}, {Key: "zip", Value: int64(7)}, {Key: "geo", Value: bson.D{{Key: "lat", Value: 1.5}}}},
		bson.D{{Key: "zip", Value: "7"}}, bson.D{{Key: "geo", Value: "x"}},
		bson.A{"x"}, bson.A{}, bson.A{nil}, bson.A{int32(3), int32(1), int32(3)}, bson.A{"b", "a", "b", "ccc"},
		bson.A{1.0, 2.0}, bson.A{int32(1), "a"}, bson.A{int32(1), "a", true}, bson.A{bson.A{int32(1)}, bson.A{}},
		bson.A{bson.D{}}, bson.A{bson.D{{Key: "k", Value: int32(1)}}}, bson.A{int32(1), bson.A{"x", int32(2)}},
		bson.A{int32(1), bson.A{nil, int32(2)}}, bson.A{bson.A{int32(1), int32(2)}}, bson.A{int64(1) << 40, int32(-1)},
		bson.A{1e300}, bson.A{"1"}, bson.A{oid, oid}, bson.A{day},
		primitive.Binary{Data: []byte{1, 255}}, primitive.Binary{Data: []byte{1, 2, 3, 4}}, primitive.Binary{Subtype: 4, Data: uuid16},
		primitive.Binary{Subtype: 3, Data: uuid16}, primitive.Binary{Subtype: 4, Data: []byte{1, 2, 3}},
		primitive.Binary{Subtype: 0x80, Data: []byte{1}}, primitive.Binary{Data: uuid16},
		oid, true, false,
		primitive.DateTime(1), day, primitive.NewDateTimeFromTime(time.Date(1950, 6, 1, 12, 0, 0, 0, time.UTC)),
		primitive.Regex{Pattern: "a", Options: "i"}, primitive.DBPointer{DB: "d", Pointer: oid}, primitive.JavaScript("f()"),
		primitive.Symbol("s"), primitive.CodeWithScope{Code: "f()", Scope: bson.D{}},
		int32(0), int32(1), int32(-1), int32(7), int32(300), int32(1000), int32(40000), int32(math.MaxInt32), int32(math.MinInt32),
		primitive.Timestamp{T: 1, I: 2},
		int64(1) << 62, int64(1<<53 + 1), -int64(1<<53) - 1, int64(math.MaxInt32) + 1, int64(-5), int64(12), int64(-1000),
		int64(math.MinInt64), int64(86400e9),
		primitive.MinKey{}, primitive.MaxKey{}, primitive.Undefined{}, nil,
	}
	for _, s := range []string{"0.5", "1", "-0", "1.0", "1234.5600", "1E+3", "-12.3400", "NaN", "-Infinity",
		"12345678901234567890123", "99999999999999999999", "1E-3"} {
		d, err := primitive.ParseDecimal128(s)
		if err != nil {
			t.Fatal(err)
		}
		vals = append(vals, d)
	}
	out := make([]bson.RawValue, len(vals))
	for i, v := range vals {
		if v == nil {
			out[i] = bson.RawValue{Type: bsontype.Null}
			continue
		}
		typ, data, err := bson.MarshalValue(v)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = bson.RawValue{Type: typ, Value: data}
	}
	// Containers whose only element is cut short.
	cut := []byte{10, 0, 0, 0, 0x10, '0', 0, 1, 0, 0}
	return append(out, bson.RawValue{Type: bsontype.Array, Value: cut}, bson.RawValue{Type: bsontype.EmbeddedDocument, Value: cut})
}

// matrixColumns are columns of every CQL type a spec can name, with each
// convert override, compiled as Parse compiles them.
var matrixColumns = []ColumnSpec{
	{Type: "text"}, {Type: "ascii"}, {Type: "varchar"}, {Type: "int"}, {Type: "smallint"}, {Type: "tinyint"},
	{Type: "bigint"}, {Type: "varint"}, {Type: "double"}, {Type: "float"}, {Type: "boolean"}, {Type: "timestamp"},
	{Type: "date"}, {Type: "time"}, {Type: "decimal"}, {Type: "uuid"}, {Type: "timeuuid"}, {Type: "blob"},
	{Type: "inet"}, {Type: "duration"},
	{Type: "list<int>"}, {Type: "list<text>"}, {Type: "frozen<list<blob>>"}, {Type: "set<text>"}, {Type: "set<int>"},
	{Type: "set<double>"}, {Type: "set<uuid>"}, {Type: "set<timestamp>"}, {Type: "map<text, int>"}, {Type: "map<text, text>"},
	{Type: "map<text, frozen<list<int>>>"}, {Type: "set<frozen<list<int>>>"}, {Type: "frozen<list<frozen<map<text, int>>>>"},
	{Type: "list<frozen<tuple<int, int>>>"}, {Type: "map<text, frozen<tuple<int, int>>>"},
	{Type: "tuple<int, text>"}, {Type: "tuple<int, text, boolean>"}, {Type: "tuple<int, tuple<text, int>>"},
	{Type: "vector<float, 2>"}, {Type: "vector<double, 2>"}, {Type: "vector<int, 2>"},
	{Type: "frozen<address>", Fields: []ColumnSpec{
		{Name: "street", Type: "text", From: "street"}, {Name: "zip", Type: "int", From: "zip"},
		{Name: "geo", Type: "frozen<geo>", From: "geo", Fields: []ColumnSpec{{Name: "lat", Type: "double", From: "lat"}}},
		{Name: "t", Type: "tuple<int, int>", From: "t"}, {Name: "tag", Type: "text", From: "tag", Default: true, Value: "x"},
		{Name: "hx", Type: "text", From: "street", Convert: "string"}}},
	{Type: "text", Convert: "json"}, {Type: "int", Convert: "json"}, {Type: "text", Convert: "string"},
	{Type: "int", Convert: "string"}, {Type: "text", Convert: "hex"}, {Type: "timestamp", Convert: "millis"},
	{Type: "text", Convert: "millis"},
}

// describe is a converted value's Go types, value and canonical bytes: two
// results that describe alike are the same to every consumer of Apply.
func describe(typ *cqlType, fields []*column, v any) string {
	b, err := appendCanonical(nil, typ, v, fields)
	return fmt.Sprintf("%s %v = %x %v", typeSig(v), v, b, err)
}

// TestConversionMatrix converts every matrix input to every matrix column
// and compares each result (the value, or the error and its rule) with
// testdata/conversions.golden, so that any change of behaviour shows as a
// changed line.
func TestConversionMatrix(t *testing.T) {
	var out bytes.Buffer
	for _, cs := range matrixColumns {
		cs.Name, cs.From = "c", "c"
		c, err := compileColumn(&cs)
		if err != nil {
			t.Fatalf("%s: %v", cs.Type, err)
		}
		for _, in := range matrixInputs(t) {
			js, err := bson.MarshalExtJSON(bson.D{{Key: "v", Value: in}}, true, false)
			if err != nil {
				js = fmt.Appendf(nil, "malformed %s %x", in.Type, in.Value)
			}
			fmt.Fprintf(&out, "%s|%s <- %s: ", cs.Type, cs.Convert, js)
			v, err := convertValue(c.typ, c.convert, in, c.fields)
			var rule *errRule
			switch {
			case errors.As(err, &rule):
				fmt.Fprintf(&out, "error %q rule %q\n", err, rule.rule)
			case err != nil:
				fmt.Fprintf(&out, "error %q\n", err)
			default:
				fmt.Fprintln(&out, describe(c.typ, c.fields, v))
			}
		}
	}
	golden.Check(t, "conversions.golden", out.Bytes())
}

type readBackCase struct {
	typ string
	v   any
}

// readBackForms are the Go values gocql may return for each CQL type (and a
// few it must not), which canonical encoding takes by reflection.
func readBackForms() []readBackCase {
	u := gocql.UUID{1, 2, 3}
	big1 := new(big.Int).Lsh(big.NewInt(1), 70)
	return []readBackCase{
		{"text", nil}, {"text", "a"}, {"text", []byte("a")}, {"text", 1}, {"text", (*string)(nil)},
		{"int", int8(-1)}, {"int", int16(2)}, {"int", 3}, {"int", uint8(4)}, {"int", uint16(5)}, {"int", uint32(6)},
		{"int", "7"}, {"tinyint", int8(8)}, {"smallint", int16(-9)}, {"varint", big.NewInt(-10)}, {"varint", big1},
		{"varint", (*big.Int)(nil)}, {"bigint", int64(11)},
		{"double", float32(1.5)}, {"double", float64(2.5)}, {"float", float32(math.NaN())}, {"float", math.Inf(-1)},
		{"double", 3}, {"boolean", true}, {"boolean", false}, {"boolean", "true"},
		{"timestamp", time.Time{}}, {"timestamp", time.UnixMilli(5).In(time.FixedZone("x", 3600))}, {"timestamp", int64(6)},
		{"date", time.UnixMilli(86400000).UTC()}, {"date", int64(-1)}, {"timestamp", "now"},
		{"decimal", inf.NewDec(12345, 2)}, {"decimal", *inf.NewDec(-1, -3)}, {"decimal", (*inf.Dec)(nil)}, {"decimal", 1.5},
		{"uuid", u}, {"timeuuid", [16]byte(u)}, {"uuid", u[:]},
		{"blob", []byte{1, 2}}, {"blob", []byte{}}, {"blob", "ab"},
		{"time", time.Duration(3600e9)}, {"time", int64(7)}, {"time", int32(7)},
		{"inet", net.ParseIP("1.2.3.4")}, {"inet", net.IP{1, 2, 3, 4}}, {"inet", net.ParseIP("::1")}, {"inet", "1.2.3.4"},
		{"duration", gocql.Duration{Months: 1, Days: -2, Nanoseconds: 3}}, {"duration", time.Second},
		{"tuple<int, text>", []any{int32(1), "a"}}, {"tuple<int, text>", []any{int32(0), ""}}, {"tuple<int, text>", []any{1}},
		{"tuple<int, text>", [2]any{1, "a"}},
		{"list<int>", []int{3, 1}}, {"list<int>", []int32{}}, {"list<int>", [2]int16{1, 2}}, {"list<int>", []any{int32(1), "x"}},
		{"list<text>", []string{"b", "a"}}, {"set<text>", []string{"b", "a", "ccc"}}, {"set<int>", []int64{3, -1, 2}},
		{"set<text>", []any{"b", "a"}}, {"set<int>", []any{int32(1), "x"}}, {"set<text>", []string{}},
		{"vector<float, 2>", []float32{1, 2}}, {"vector<float, 2>", []any{float32(1), float32(2)}}, {"list<int>", 5},
		{"map<text, int>", map[string]int{"b": 2, "a": 1}}, {"map<text, int>", map[string]int{}},
		{"map<text, int>", map[string]any{"a": "x"}}, {"map<text, int>", []int{1}},
		{"map<text, frozen<list<int>>>", map[string][]int{"a": {1}, "b": nil}},
		{"frozen<address>", map[string]any{"street": "s", "zip": int32(0)}}, {"frozen<address>", map[string]any{"street": ""}},
		{"frozen<address>", map[string]any{}}, {"frozen<address>", map[string]string{"street": "s"}},
		{"frozen<address>", map[string]any{"street": "s", "zip": "bad"}},
	}
}

var addressFields = []ColumnSpec{{Name: "street", Type: "text", From: "street"}, {Name: "zip", Type: "int", From: "zip"}}

// TestCanonicalReadBackMatrix encodes every read-back form, as a key column
// (no folding), as a value column (zero folded to null) and by reflection
// alone (which defines the encoding the others must match), and compares
// the bytes or the error with testdata/canonical.golden.
func TestCanonicalReadBackMatrix(t *testing.T) {
	var out bytes.Buffer
	for _, c := range readBackForms() {
		cs := ColumnSpec{Name: "c", From: "c", Type: c.typ}
		if strings.HasPrefix(c.typ, "frozen<address") {
			cs.Fields = addressFields
		}
		col, err := compileColumn(&cs)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&out, "%s <- %T %v:", c.typ, c.v, c.v)
		for _, fold := range []bool{false, true} {
			b, err := appendFolded(nil, col.typ, c.v, col.fields, fold)
			fmt.Fprintf(&out, " %x %v;", b, err)
		}
		b, err := appendCanonicalReflect(nil, col.typ, c.v, col.fields)
		fmt.Fprintf(&out, " reflect %x %v\n", b, err)
	}
	golden.Check(t, "canonical.golden", out.Bytes())
}

// TestDecodeKeyMatrix decodes canonical key bytes of every tag, whole,
// truncated at every length, and malformed, for each key type, and compares
// the values or errors with testdata/decode.golden.
func TestDecodeKeyMatrix(t *testing.T) {
	u := gocql.UUID{1, 2, 3}
	be64 := func(tag byte, n uint64, pre ...byte) []byte {
		return binary.BigEndian.AppendUint64(append([]byte{tag}, pre...), n)
	}
	withBytes := func(tag byte, s string, pre ...byte) []byte {
		return append(binary.BigEndian.AppendUint32(append([]byte{tag}, pre...), uint32(len(s))), s...)
	}
	encodings := [][]byte{
		withBytes(tagText, "héllo"), withBytes(tagBlob, "\x00\x01"), be64(tagInt, uint64(1)<<63|5, 0), be64(tagInt, 300, 0),
		withBytes(tagInt, "1180591620717411303424", 1), withBytes(tagInt, "x1", 1), {tagInt, 2},
		be64(tagFloat, math.Float64bits(1.5)), {tagBool, 1}, {tagBool, 0}, be64(tagTime, uint64(86400000)),
		withBytes(tagDecimal, "-123.45"), withBytes(tagDecimal, "1e"), withBytes(tagInet, "\x01\x02\x03\x04"),
		be64(tagClock, 3600e9), append([]byte{tagUUID}, u[:]...),
		{tagNull}, {tagList, 0, 0, 0, 0}, {tagDuration}, {99}, {},
		append(withBytes(tagText, "a"), 7), withBytes(tagText, "abc")[:6], {tagText, 255, 255, 255, 255},
	}
	types := []string{"text", "blob", "int", "smallint", "tinyint", "bigint", "varint", "double", "float", "boolean",
		"timestamp", "date", "decimal", "inet", "time", "uuid", "timeuuid", "ascii"}
	var out bytes.Buffer
	for _, ts := range types {
		typ, err := parseType(ts)
		if err != nil {
			t.Fatal(err)
		}
		for _, enc := range encodings {
			for cut := len(enc); cut >= 0; cut-- {
				if cut < len(enc) && cut < len(enc)-1 && cut != 0 && cut != 1 && cut != 5 {
					continue // whole, one byte short, and the tag and length boundaries
				}
				v, rest, err := decodeScalar(typ, enc[:cut])
				fmt.Fprintf(&out, "%s <- %x: %s %v rest %x err %v\n", ts, enc[:cut], typeSig(v), v, rest, err)
			}
		}
	}
	golden.Check(t, "decode.golden", out.Bytes())
}
