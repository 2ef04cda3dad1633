package transform

// The straightforward implementation Apply had before it read each document in
// one pass: every column looks its path up with bson.Raw.LookupErr and converts
// with reflection-based canonical encoding. It is kept as the oracle the fast
// path is fuzzed against (FuzzApplyMatchesReference).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/cespare/xxhash/v2"
	"github.com/tidemarkhq/tidemark/envelope"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"gopkg.in/inf.v0"
)

func refApply(m *Mapping, namespace string, doc bson.Raw) (rows []Row, err error) {
	tables := m.tables[namespace]
	if len(tables) == 0 {
		return nil, fmt.Errorf("transform: namespace %s is not in spec %s", namespace, m.version)
	}
	defer func() {
		// Validated documents cannot reach a panic, but a bug here must cost one
		// dead-lettered document, not the pipeline.
		if r := recover(); r != nil {
			rows, err = nil, &ConvertError{Namespace: namespace, BSONType: "unknown", Rule: "internal", Err: fmt.Errorf("panic: %v", r)}
		}
	}()
	if err := bson.Raw(doc).Validate(); err != nil {
		return nil, &ConvertError{Namespace: namespace, Path: "", BSONType: "malformed", Rule: "bson", Err: err}
	}
	rows = make([]Row, 0, len(tables))
	for _, t := range tables {
		if t.filter != nil && !refFilter(t, doc) {
			continue
		}
		row := Row{Table: t, Values: make([]any, len(t.cols))}
		for i, c := range t.cols {
			v, err := refEval(c, doc)
			if err != nil {
				return nil, t.convertError(c, doc, err)
			}
			if v == nil && c.typ.kind == kUDT {
				// gocql writes a typed nil map as null but refuses an untyped nil for a UDT.
				v = map[string]any(nil)
			}
			row.Values[i] = v
		}
		key := t.KeyValues(row.Values)
		for i, k := range key {
			if k == nil {
				c := t.cols[t.keyIndex(i)]
				return nil, t.convertError(c, doc, fail("primary-key", "key column %s is null", c.Name))
			}
		}
		if row.Key, err = refEncodeKey(t, key); err != nil {
			return nil, &ConvertError{Namespace: namespace, Table: t.QualifiedName(), Rule: "primary-key", BSONType: "key", Err: err}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func refEval(c *column, doc bson.Raw) (any, error) {
	switch c.compute {
	case "const":
		return c.value, nil
	case "lower", "concat":
		parts := make([]string, 0, len(c.args))
		for _, a := range c.args {
			v, err := doc.LookupErr(a...)
			if err != nil || v.Type == bsontype.Null {
				if c.def {
					return c.value, nil
				}
				return nil, nil // a computed text of a missing part is null, not a guess
			}
			s, err := refAsString(v)
			if err != nil {
				return nil, err
			}
			parts = append(parts, s.(string))
		}
		s := strings.Join(parts, c.sep)
		if c.compute == "lower" {
			s = strings.ToLower(s)
		}
		return s, nil
	case "hash_bucket":
		vals := make([]bson.RawValue, len(c.args))
		for i, a := range c.args {
			v, err := doc.LookupErr(a...)
			if err != nil {
				v = bson.RawValue{Type: bsontype.Null}
			}
			vals[i] = v
		}
		b := refHashBucket(vals, c.buckets)
		if c.typ.kind == kInt {
			return int32(b), nil
		}
		return int64(b), nil
	}
	v, err := doc.LookupErr(c.path...)
	missing := err != nil
	if missing || v.Type == bsontype.Null && c.nullDef {
		if c.def {
			return c.value, nil
		}
		return nil, nil
	}
	if c.fn != nil {
		return c.fn(v)
	}
	return refConvertValue(c.typ, c.convert, v, c.fields)
}

func refEncodeKey(t *Table, key []any) ([]byte, error) {
	var dst []byte
	var err error
	for i, v := range key {
		c := t.cols[t.keyIndex(i)]
		if dst, err = refAppendCanonical(dst, c.typ, v, c.fields); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

func refTableCanonical(t *Table, dst []byte, values []any) ([]byte, error) {
	if len(values) != len(t.cols) {
		return dst, fmt.Errorf("transform: %s has %d columns, got %d values", t.QualifiedName(), len(t.cols), len(values))
	}
	var err error
	for i, c := range t.cols {
		v := values[i]
		if v != nil && !t.keyCol[i] && c.typ.kind != kUDT && reflect.ValueOf(v).IsZero() {
			// gocql's generic scan (MapScan) returns "", 0 or false for a null
			// cell, so a scanned row cannot tell them apart: both sides fold
			// zero to null. Key columns are never null, so they keep zero.
			v = nil
		}
		if dst, err = refAppendCanonical(dst, c.typ, v, c.fields); err != nil {
			return dst, fmt.Errorf("%s.%s: %w", t.QualifiedName(), c.Name, err)
		}
	}
	return dst, nil
}

// convertValue is unchanged by the single-pass reader: it is both the
// fallback of the fast paths and, here, the reference they must agree with.
var (
	refConvertValue = convertValue
	refAsString     = asString
)

// refAppendCanonical is the reflection-based canonical encoding as it was
// before the type switch; it accepts both what refConvertValue produces and what gocql returns when scanning into
// `any`, so expected and actual rows hash alike.
func refAppendCanonical(dst []byte, t *cqlType, v any, fields []*column) ([]byte, error) {
	if v == nil {
		return append(dst, tagNull), nil
	}
	rv := reflect.ValueOf(v)
	if (rv.Kind() == reflect.Pointer || rv.Kind() == reflect.Map || rv.Kind() == reflect.Slice) && rv.IsNil() {
		return append(dst, tagNull), nil
	}
	switch t.kind {
	case kText:
		switch x := v.(type) {
		case string:
			return refAppendBytes(append(dst, tagText), []byte(x)), nil
		case []byte:
			return refAppendBytes(append(dst, tagText), x), nil
		}
	case kInt, kBigint, kSmallint, kVarint:
		if bi, ok := v.(*big.Int); ok {
			if bi.IsInt64() {
				return binary.BigEndian.AppendUint64(append(dst, tagInt, 0), uint64(bi.Int64())), nil
			}
			return refAppendBytes(append(dst, tagInt, 1), []byte(bi.String())), nil
		}
		if n, ok := toInt64(v); ok {
			return binary.BigEndian.AppendUint64(append(dst, tagInt, 0), uint64(n)), nil
		}
	case kDouble, kFloat:
		var f float64
		switch x := v.(type) {
		case float64:
			f = x
		case float32:
			f = float64(x)
		default:
			return dst, fmt.Errorf("transform: canonical %s: unexpected %T", t.name, v)
		}
		if math.IsNaN(f) {
			f = math.NaN() // one NaN bit pattern
		}
		return binary.BigEndian.AppendUint64(append(dst, tagFloat), math.Float64bits(f)), nil
	case kBoolean:
		if b, ok := v.(bool); ok {
			if b {
				return append(dst, tagBool, 1), nil
			}
			return append(dst, tagBool, 0), nil
		}
	case kTimestamp:
		switch x := v.(type) {
		case time.Time:
			if x.IsZero() {
				// gocql scans a null timestamp into the zero time.
				return append(dst, tagNull), nil
			}
			return binary.BigEndian.AppendUint64(append(dst, tagTime), uint64(x.UnixMilli())), nil
		case int64:
			return binary.BigEndian.AppendUint64(append(dst, tagTime), uint64(x)), nil
		}
	case kDecimal:
		switch x := v.(type) {
		case *inf.Dec:
			return refAppendBytes(append(dst, tagDecimal), []byte(x.String())), nil
		case inf.Dec:
			return refAppendBytes(append(dst, tagDecimal), []byte(x.String())), nil
		}
	case kUUID:
		switch x := v.(type) {
		case gocql.UUID:
			return append(append(dst, tagUUID), x[:]...), nil
		case [16]byte:
			return append(append(dst, tagUUID), x[:]...), nil
		}
	case kBlob:
		if b, ok := v.([]byte); ok {
			return refAppendBytes(append(dst, tagBlob), b), nil
		}
	case kList, kSet:
		if rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array {
			break
		}
		if rv.Len() == 0 {
			return append(dst, tagNull), nil
		}
		dst = binary.BigEndian.AppendUint32(append(dst, tagList), uint32(rv.Len()))
		if t.kind == kSet {
			// Sets come back from Cassandra in its own order; sort canonically.
			elems := make([][]byte, rv.Len())
			for i := range elems {
				b, err := refAppendCanonical(nil, t.elem, rv.Index(i).Interface(), nil)
				if err != nil {
					return dst, err
				}
				elems[i] = b
			}
			sort.Slice(elems, func(i, j int) bool { return bytes.Compare(elems[i], elems[j]) < 0 })
			for _, e := range elems {
				dst = append(dst, e...)
			}
			return dst, nil
		}
		for i := 0; i < rv.Len(); i++ {
			var err error
			if dst, err = refAppendCanonical(dst, t.elem, rv.Index(i).Interface(), nil); err != nil {
				return dst, err
			}
		}
		return dst, nil
	case kMap:
		if rv.Kind() != reflect.Map {
			break
		}
		if rv.Len() == 0 {
			return append(dst, tagNull), nil
		}
		keys := rv.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
		dst = binary.BigEndian.AppendUint32(append(dst, tagMap), uint32(len(keys)))
		for _, k := range keys {
			dst = refAppendBytes(dst, []byte(k.String()))
			var err error
			if dst, err = refAppendCanonical(dst, t.elem, rv.MapIndex(k).Interface(), nil); err != nil {
				return dst, err
			}
		}
		return dst, nil
	case kUDT:
		m, ok := v.(map[string]any)
		if !ok {
			break
		}
		// gocql scans a null UDT, and null fields inside one, as zero values,
		// so zero and null cannot be told apart on the read side: both sides
		// fold them to null (and an all-null UDT to a null column) to compare alike.
		allNull := true
		for _, f := range fields {
			if x := m[f.Name]; x != nil && !reflect.ValueOf(x).IsZero() {
				allNull = false
			}
		}
		if allNull {
			return append(dst, tagNull), nil
		}
		dst = append(dst, tagUDT)
		for _, f := range fields {
			x := m[f.Name]
			if x != nil && reflect.ValueOf(x).IsZero() {
				x = nil
			}
			var err error
			if dst, err = refAppendCanonical(dst, f.typ, x, f.fields); err != nil {
				return dst, err
			}
		}
		return dst, nil
	}
	return dst, fmt.Errorf("transform: canonical %s: unexpected %T", t.name, v)
}

func refAppendBytes(dst, b []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b)))
	return append(dst, b...)
}

// refSortedSet sorts and de-duplicates set elements by their canonical bytes, so a
// set's value does not depend on the array order in the document.
func refSortedSet(t *cqlType, vals []any) ([]any, error) {
	type kv struct {
		k []byte
		v any
	}
	items := make([]kv, len(vals))
	for i, v := range vals {
		b, err := refAppendCanonical(nil, t, v, nil)
		if err != nil {
			return nil, err
		}
		items[i] = kv{b, v}
	}
	sort.SliceStable(items, func(i, j int) bool { return bytes.Compare(items[i].k, items[j].k) < 0 })
	out := vals[:0]
	for i, it := range items {
		if i > 0 && bytes.Equal(it.k, items[i-1].k) {
			continue
		}
		out = append(out, it.v)
	}
	return out, nil
}

func refFilter(t *Table, doc bson.Raw) bool {
	v, err := doc.LookupErr(t.filterPath...)
	return t.filter(v, err == nil)
}

func refHashBucket(vals []bson.RawValue, n int) uint64 {
	h := xxhash.New()
	var buf []byte
	for _, v := range vals {
		buf = envelope.AppendKey(buf[:0], v)
		h.Write(buf)
	}
	return h.Sum64() % uint64(n)
}

// wideColumns cover every conversion, override and compute. The fuzzer maps
// each in a namespace of its own, so that one column's conversion error does
// not hide the others.
var wideColumns = []string{
	`{name: s, type: text, from: s}`,
	`{name: i, type: int, from: i}`,
	`{name: sm, type: smallint, from: i}`,
	`{name: bi, type: bigint, from: b}`,
	`{name: vi, type: varint, from: b}`,
	`{name: d, type: double, from: d}`,
	`{name: f, type: float, from: d}`,
	`{name: ok, type: boolean, from: ok}`,
	`{name: ts, type: timestamp, from: ts}`,
	`{name: ms, type: timestamp, from: b, convert: millis}`,
	`{name: dec, type: decimal, from: dec}`,
	`{name: u, type: uuid, from: u}`,
	`{name: bl, type: blob, from: u}`,
	`{name: js, type: text, from: doc, convert: json}`,
	`{name: str, type: text, from: i, convert: string}`,
	`{name: hx, type: text, from: _id, convert: hex}`,
	`{name: nested, type: text, from: doc.a.b}`,
	`{name: first, type: int, from: arr.0}`,
	`{name: dflt, type: text, from: s, default: true, value: "none"}`,
	`{name: nulldflt, type: int, from: i, null_as_default: true, value: 7}`,
	`{name: c, type: text, compute: concat, args: [s, i, doc.a.b, ok], sep: "-"}`,
	`{name: c2, type: text, compute: concat, args: [s, b], default: true, value: "?"}`,
	`{name: lo, type: text, compute: lower, args: [s]}`,
	`{name: hb, type: bigint, compute: hash_bucket, args: [_id, s, nope], buckets: 7}`,
	`{name: hb2, type: int, compute: hash_bucket, args: [d], buckets: 1000}`,
	`{name: cents, type: bigint, from: d, convert: fuzzcents}`,
	`{name: li, type: "list<int>", from: arr}`,
	`{name: lt, type: "list<text>", from: tags}`,
	`{name: st, type: "set<text>", from: tags}`,
	`{name: si, type: "set<bigint>", from: arr}`,
	`{name: sd, type: "set<double>", from: arr}`,
	`{name: su, type: "set<uuid>", from: arr}`,
	`{name: mt, type: "map<text, text>", from: m}`,
	`{name: mi, type: "map<text, int>", from: m}`,
	`{name: ml, type: "map<text, frozen<list<int>>>", from: m}`,
	`{name: addr, type: "frozen<address>", from: doc, fields: [
	    {name: street, type: text, from: s}, {name: zip, type: int, from: a.i},
	    {name: geo, type: "frozen<geo>", from: a, fields: [{name: lat, type: double, from: d}, {name: lon, type: text, from: s}]},
	    {name: tag, type: text, from: t, default: true, value: "x"}, {name: k, type: int, compute: const, value: 1}]}`,
}

// wideSpec maps every wide column alone (namespace w.<name>), and all of them
// together in tables that share columns and have filters (namespace w.all).
func wideSpec() string {
	s := "version: wide-v1\ncollections:\n"
	for _, c := range wideColumns {
		name := strings.TrimSuffix(strings.Fields(c)[1], ",")
		s += "  - namespace: w." + name + "\n    tables:\n      - keyspace: w\n        table: t_" + name + "\n        partition_key: [id]\n" +
			"        columns:\n          - {name: id, type: text, compute: const, value: k}\n          - " + c + "\n"
	}
	s += `  - namespace: w.all
    tables:
      - keyspace: w
        table: a
        partition_key: [id]
        clustering_key: [n]
        columns:
          - {name: id, type: text, from: _id, convert: json}
          - {name: n, type: bigint, from: n, default: true, value: 0}
          - {name: lo, type: text, compute: lower, args: [s]}
          - {name: c, type: text, compute: concat, args: [s, i], sep: "-"}
      - keyspace: w
        table: b
        partition_key: [lo]
        filter: {path: kind, equals: 2}
        columns:
          - {name: lo, type: text, compute: lower, args: [s]}
          - {name: id, type: text, from: _id, convert: json}
          - {name: c, type: text, compute: concat, args: [s, i], sep: "-"}
          - {name: st, type: "set<text>", from: tags}
      - keyspace: w
        table: c
        partition_key: [id]
        filter: {path: doc.a, exists: false}
        columns:
          - {name: id, type: text, from: _id, convert: json}
          - {name: st, type: "set<text>", from: tags}
`
	return s
}

func fuzzMappings(t testing.TB) map[string]*Mapping {
	RegisterFunc("fuzzcents", func(v bson.RawValue) (any, error) {
		f, ok := v.DoubleOK()
		if !ok {
			return nil, fmt.Errorf("not a double")
		}
		return int64(f * 100), nil
	})
	users, err := Load("../examples/specs/users.yaml")
	if err != nil {
		t.Fatal(err)
	}
	wide, err := Parse([]byte(wideSpec()))
	if err != nil {
		t.Fatal(err)
	}
	ms := map[string]*Mapping{"app.users": users}
	for _, ns := range wide.Namespaces() {
		ms[ns] = wide
	}
	return ms
}

// genDoc builds a document from fuzz bytes: the fields the specs read, with
// types and values chosen by the bytes, in an order and with duplicates
// chosen by them too.
func genDoc(data []byte) []byte {
	g := &docGen{data: data}
	return g.doc(0)
}

type docGen struct {
	data []byte
}

func (g *docGen) byte() byte {
	if len(g.data) == 0 {
		return 0
	}
	b := g.data[0]
	g.data = g.data[1:]
	return b
}

func (g *docGen) u64() uint64 {
	var b [8]byte
	for i := range b {
		b[i] = g.byte()
	}
	return binary.LittleEndian.Uint64(b[:])
}

var genKeys = []string{"_id", "email", "name", "first", "last", "age", "balance", "created", "tags", "address",
	"street", "city", "zip", "prefs", "status", "score", "n", "s", "i", "b", "d", "ok", "ts", "dec", "u", "doc",
	"a", "geo", "lat", "lon", "t", "arr", "0", "1", "s2", "i2", "kind", "m", "nope", ""}

var genStrings = []string{"", "a", "Ada", "ADA@EXAMPLE.COM", "ÄDA", "x y", "b", "123e4567-e89b-12d3-a456-426614174000", "\xff\xfe", "lang", "0"}

func (g *docGen) doc(depth int) []byte {
	n := int(g.byte() % 12)
	if depth == 0 {
		n += 4
	}
	b := []byte{0, 0, 0, 0} // length, set below
	for i := 0; i < n && len(g.data) > 0; i++ {
		key := genKeys[int(g.byte())%len(genKeys)]
		b = g.value(b, key, depth)
	}
	b = append(b, 0)
	binary.LittleEndian.PutUint32(b, uint32(len(b)))
	return b
}

func (g *docGen) value(b []byte, key string, depth int) []byte {
	elem := func(t bsontype.Type) []byte {
		b = append(b, byte(t))
		b = append(b, key...)
		return append(b, 0)
	}
	switch c := g.byte() % 17; c {
	case 0:
		b = elem(bsontype.Null)
	case 1:
		s := genStrings[int(g.byte())%len(genStrings)]
		b = elem(bsontype.String)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)+1))
		b = append(append(b, s...), 0)
	case 2:
		b = binary.LittleEndian.AppendUint32(elem(bsontype.Int32), uint32(int32(int8(g.byte()))))
	case 3:
		vals := []int64{0, 1, -1, 1 << 40, math.MaxInt32 + 1, 1<<53 + 1, math.MinInt64, int64(g.u64())}
		b = binary.LittleEndian.AppendUint64(elem(bsontype.Int64), uint64(vals[int(g.byte())%len(vals)]))
	case 4:
		vals := []float64{0, math.Copysign(0, -1), 1.5, 2, -3, math.NaN(), math.Inf(1), 1e300, 0.1, float64(int8(g.byte()))}
		b = binary.LittleEndian.AppendUint64(elem(bsontype.Double), math.Float64bits(vals[int(g.byte())%len(vals)]))
	case 5:
		b = append(elem(bsontype.Boolean), g.byte()%2)
	case 6:
		b = binary.LittleEndian.AppendUint64(elem(bsontype.DateTime), uint64(int64(int16(g.u64()))*1e9))
	case 7:
		decs := []string{"0", "1234.56", "-0.001", "1E+3", "NaN", "-Infinity", "12345678901234567890123", "1.0", "-0"}
		d, _ := primitive.ParseDecimal128(decs[int(g.byte())%len(decs)])
		if g.byte()%4 == 0 {
			d = primitive.NewDecimal128(g.u64(), g.u64())
		}
		h, l := d.GetBytes()
		b = binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(elem(bsontype.Decimal128), l), h)
	case 8:
		b = elem(bsontype.ObjectID)
		for i := 0; i < 12; i++ {
			b = append(b, g.byte())
		}
	case 9:
		sub := []byte{0, 3, 4, 5}[g.byte()%4]
		n := []int{16, 3, 0}[g.byte()%3]
		b = binary.LittleEndian.AppendUint32(elem(bsontype.Binary), uint32(n))
		b = append(b, sub)
		for i := 0; i < n; i++ {
			b = append(b, g.byte())
		}
	case 10, 11:
		if depth < 3 {
			b = append(elem(bsontype.EmbeddedDocument), g.doc(depth+1)...)
		} else {
			b = elem(bsontype.MinKey)
		}
	case 12, 13:
		if depth < 3 {
			// Array keys are usually 0, 1, ...; generated ones are whatever the bytes chose.
			b = append(elem(bsontype.Array), g.doc(depth+1)...)
		} else {
			b = elem(bsontype.MaxKey)
		}
	case 14:
		b = binary.LittleEndian.AppendUint64(elem(bsontype.Timestamp), g.u64())
	case 15:
		b = append(elem(bsontype.Regex), 'a', 0, 'i', 0)
	case 16:
		b = elem(bsontype.Undefined)
	}
	return b
}

// deepValid reports whether doc decodes completely.
func deepValid(doc []byte) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false // Validate panics on a zero length
		}
	}()
	var d bson.D
	return bson.Raw(doc).Validate() == nil && bson.Unmarshal(doc, &d) == nil
}

// typeSig is the dynamic types of v, recursively.
func typeSig(v any) string {
	switch x := v.(type) {
	case []any:
		s := "[]any{"
		for _, e := range x {
			s += typeSig(e) + ","
		}
		return s + "}"
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		s := "map{"
		for _, k := range keys {
			s += k + ":" + typeSig(x[k]) + ","
		}
		return s + "}"
	}
	return fmt.Sprintf("%T", v)
}

func checkSameAsReference(t *testing.T, m *Mapping, ns string, doc []byte) {
	rows, err := m.Apply(ns, doc)
	ref, refErr := refApply(m, ns, doc)
	if err == nil {
		for _, r := range rows {
			if _, err := r.Table.AppendCanonical(nil, r.Values); err != nil {
				t.Fatalf("row from Apply does not encode: %v", err)
			}
			if _, err := r.Table.DecodeKey(r.Key); err != nil {
				t.Fatalf("key from Apply does not decode: %v", err)
			}
		}
	}
	if !deepValid(doc) {
		return
	}
	if (err == nil) != (refErr == nil) {
		t.Fatalf("Apply: %v\nreference: %v", err, refErr)
	}
	if err != nil {
		var a, b *ConvertError
		if !errors.As(err, &a) || !errors.As(refErr, &b) {
			t.Fatalf("not ConvertErrors: %v / %v", err, refErr)
		}
		if a.Error() != b.Error() || a.Namespace != b.Namespace || a.Table != b.Table || a.Column != b.Column ||
			a.Path != b.Path || a.BSONType != b.BSONType || a.Rule != b.Rule {
			t.Fatalf("Apply: %+v\nreference: %+v", a, b)
		}
		return
	}
	if len(rows) != len(ref) {
		t.Fatalf("%d rows, reference %d", len(rows), len(ref))
	}
	for i := range rows {
		r, w := rows[i], ref[i]
		if r.Table != w.Table || !bytes.Equal(r.Key, w.Key) {
			t.Fatalf("row %d: table %s key %x, reference %s %x", i, r.Table.Name, r.Key, w.Table.Name, w.Key)
		}
		got, err1 := r.Table.AppendCanonical(nil, r.Values)
		want, err2 := refTableCanonical(w.Table, nil, w.Values)
		slow, err3 := refTableCanonical(r.Table, nil, r.Values)
		if err1 != nil || err2 != nil || err3 != nil || !bytes.Equal(got, want) || !bytes.Equal(slow, want) {
			t.Fatalf("row %d of %s: canonical\n%x (%v)\nreference\n%x (%v)\nreference of Apply's\n%x (%v)", i, r.Table.Name, got, err1, want, err2, slow, err3)
		}
		for j := range r.Values {
			if a, b := typeSig(r.Values[j]), typeSig(w.Values[j]); a != b {
				t.Fatalf("%s.%s: %s, reference %s", r.Table.Name, r.Table.Columns[j].Name, a, b)
			}
		}
	}
}

func FuzzApplyMatchesReference(f *testing.F) {
	ms := fuzzMappings(f)
	f.Add([]byte(userDoc(f, "Ada@Example.com")), false)
	f.Add([]byte(benchDoc(f)), false)
	f.Add([]byte{5, 0, 0, 0, 0}, false)
	f.Add([]byte("\x01\x00\x01\x0a\x01\x03\x02\x01\x0b\x02\x13\x04\x1a\x0c\x00\x02\x03"), true)
	f.Add(bytes.Repeat([]byte{7, 3, 11, 9, 200, 1, 0, 13, 2}, 20), true)
	f.Fuzz(func(t *testing.T, data []byte, generate bool) {
		doc := data
		if generate {
			doc = genDoc(data)
		}
		for ns, m := range ms {
			checkSameAsReference(t, m, ns, doc)
		}
	})
}

// TestApplyMatchesReference checks hand-written documents that reach the
// corners of the fast path (nested collections, sets out of order, UDTs in
// UDTs, shared and filtered columns) against the reference.
func TestApplyMatchesReference(t *testing.T) {
	ms := fuzzMappings(t)
	oid := mustOID("65a000000000000000000009")
	dec, _ := primitive.ParseDecimal128("-12.3400")
	docs := []bson.D{
		{{Key: "_id", Value: oid}, {Key: "m", Value: bson.D{{Key: "a", Value: bson.A{int32(2), int32(1)}}, {Key: "b", Value: bson.A{int32(3)}}, {Key: "a", Value: bson.A{}}}}},
		{{Key: "_id", Value: "x"}, {Key: "tags", Value: bson.A{"b", "a", "ccc", "a", "B"}}, {Key: "arr", Value: bson.A{int32(-1), int64(5), int32(-1), 2.0}}},
		{{Key: "_id", Value: int32(7)}, {Key: "doc", Value: bson.D{{Key: "s", Value: "st"}, {Key: "a", Value: bson.D{{Key: "i", Value: int64(9)}, {Key: "d", Value: 2.5}, {Key: "s", Value: "lon"}, {Key: "b", Value: "deep"}}}, {Key: "t", Value: nil}}}},
		{{Key: "_id", Value: oid}, {Key: "s", Value: "MiXeD Case"}, {Key: "i", Value: int32(4)}, {Key: "kind", Value: 2.0}, {Key: "tags", Value: bson.A{"z", "y"}}, {Key: "s", Value: "second"}},
		{{Key: "_id", Value: oid}, {Key: "s", Value: "ÀÉ"}, {Key: "i", Value: nil}, {Key: "dec", Value: dec}, {Key: "b", Value: int64(1) << 60}, {Key: "d", Value: math.Copysign(0, -1)}},
		{{Key: "_id", Value: oid}, {Key: "doc", Value: bson.D{{Key: "a", Value: bson.D{}}}}, {Key: "arr", Value: bson.A{bson.A{int32(1)}}}},
	}
	for i, d := range docs {
		doc, err := bson.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		for ns, m := range ms {
			t.Run(fmt.Sprintf("%d/%s", i, ns), func(t *testing.T) { checkSameAsReference(t, m, ns, doc) })
		}
	}
}

// TestApplyConcurrentAndAfterGC applies documents from several goroutines and
// checks every row, kept across garbage collections, against the reference:
// the pooled state, its arena and its box slabs must not leak between calls.
func TestApplyConcurrentAndAfterGC(t *testing.T) {
	m := loadUsers(t)
	docs := make([][]byte, 50)
	want := make([][]byte, len(docs))
	for i := range docs {
		docs[i] = userDoc(t, fmt.Sprintf("User%d@Example.com", i))
		rows, err := refApply(m, "app.users", docs[i])
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			want[i], _ = refTableCanonical(r.Table, want[i], r.Values)
		}
	}
	var wg sync.WaitGroup
	kept := make([][][]Row, 4)
	for g := range kept {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 20; n++ {
				for _, doc := range docs {
					rows, err := m.Apply("app.users", doc)
					if err != nil {
						t.Error(err)
						return
					}
					kept[g] = append(kept[g], rows)
				}
			}
		}()
	}
	wg.Wait()
	runtime.GC()
	runtime.GC()
	for g := range kept {
		for i, rows := range kept[g] {
			var got []byte
			for _, r := range rows {
				got, _ = r.Table.AppendCanonical(got, r.Values)
			}
			if !bytes.Equal(got, want[i%len(docs)]) {
				t.Fatalf("goroutine %d row set %d differs from the reference", g, i)
			}
		}
	}
}

// TestSlabBoxing fails if the interface layout check in slab.go stopped
// passing: Apply would still be correct, but allocate a box per value again.
func TestSlabBoxing(t *testing.T) {
	if !slabBoxing {
		t.Fatal("boxing values in slabs is disabled: the empty interface layout is not the one slab.go expects")
	}
	var b boxSlabs
	var kept []any
	for i := 0; i < 3*boxChunk; i++ {
		kept = append(kept, b.str(strconv.Itoa(i)), b.i64(int64(i)<<33))
	}
	runtime.GC()
	for i := 0; i < 3*boxChunk; i++ {
		if kept[2*i] != strconv.Itoa(i) || kept[2*i+1] != int64(i)<<33 {
			t.Fatalf("box %d changed: %v %v", i, kept[2*i], kept[2*i+1])
		}
	}
}
