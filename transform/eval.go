package transform

import (
	"encoding/binary"
	"encoding/hex"
	"math"
	"math/big"
	"math/bits"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/cespare/xxhash/v2"
	"github.com/tidemarkhq/tidemark/envelope"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"gopkg.in/inf.v0"
)

// How a column gets its value; computed from ColumnSpec.Compute.
const (
	opFrom uint8 = iota
	opConst
	opConcat
	opLower
	opHashBucket
)

// Conversion overrides; computed from ColumnSpec.Convert.
const (
	convNone uint8 = iota
	convJSON
	convString
	convHex
	convMillis
	convFunc
)

// eval computes column c from the values st.read found. Columns that several
// tables share (same spec, immutable result) are computed once per document.
func (st *applyState) eval(c *column) (any, error) {
	if c.shared >= 0 {
		if s := &st.shared[c.shared]; s.done {
			return s.v, nil
		}
	}
	v, err := st.evalColumn(c)
	if err == nil && c.shared >= 0 && immutable(v) {
		st.shared[c.shared] = sharedVal{v: v, done: true}
	}
	return v, err
}

// immutable reports whether v can be handed to several rows: a caller that
// changes one row must not change another.
func immutable(v any) bool {
	switch v.(type) {
	case nil, string, int32, int64, int16, int8, float64, float32, bool, time.Time, gocql.UUID,
		time.Duration, gocql.Duration:
		return true
	}
	return false
}

func (st *applyState) evalColumn(c *column) (any, error) {
	switch c.op {
	case opConst:
		return c.value, nil
	case opConcat, opLower:
		return st.text(c)
	case opHashBucket:
		// xxhash64 of the values' envelope keys, as hashing them one by one.
		buf := st.hashBuf[:0]
		for _, s := range c.argSlots {
			v := st.val(s)
			if v.typ == 0 {
				v = rawVal{typ: bsontype.Null}
			}
			buf = envelope.AppendKey(buf, v.raw())
		}
		st.hashBuf = buf
		b := xxhash.Sum64(buf) % uint64(c.buckets)
		if c.typ.kind == kInt {
			return st.mem.boxes.i32(int32(b)), nil
		}
		return st.mem.boxes.i64(int64(b)), nil
	}
	v := st.val(c.slot)
	if v.typ == 0 || v.typ == bsontype.Null && c.nullDef {
		if c.def {
			return c.value, nil
		}
		return nil, nil
	}
	if c.fn != nil {
		return c.fn(v.raw())
	}
	if x, ok := st.fast(c.typ, c.conv, v, c.fields); ok {
		return x, nil
	}
	return convertValue(c.typ, c.convert, v.raw(), c.fields)
}

// text computes concat and lower: a missing or null part makes the column
// its default, or null.
func (st *applyState) text(c *column) (any, error) {
	var small [4][]byte
	parts := small[:0]
	n := 0
	for i, s := range c.argSlots {
		v := st.val(s)
		if v.typ == 0 || v.typ == bsontype.Null {
			if c.def {
				return c.value, nil
			}
			return nil, nil // a computed text of a missing part is null, not a guess
		}
		b, ok := stringBytes(v)
		if !ok {
			p, err := asString(v.raw())
			if err != nil {
				return nil, err
			}
			b = []byte(p.(string))
		}
		if i > 0 {
			n += len(c.sep)
		}
		n += len(b)
		parts = append(parts, b)
	}
	var buf [arenaMax]byte
	out := buf[:0]
	if n > len(buf) {
		out = make([]byte, 0, n)
	}
	for i, b := range parts {
		if i > 0 {
			out = append(out, c.sep...)
		}
		out = append(out, b...)
	}
	if c.op == opLower {
		for _, ch := range out {
			if ch >= utf8.RuneSelf {
				return strings.ToLower(string(out)), nil
			}
		}
		for i, ch := range out {
			if 'A' <= ch && ch <= 'Z' {
				out[i] = ch + 'a' - 'A'
			}
		}
	}
	return st.mem.boxes.str(st.mem.text.bytes(out)), nil
}

// stringBytes is the content of a well-formed BSON string value.
func stringBytes(v rawVal) ([]byte, bool) {
	if v.typ != bsontype.String || len(v.data) < 4 {
		return nil, false
	}
	l := int32(binary.LittleEndian.Uint32(v.data))
	// bsoncore's readstring: a length of at least 1 that fits; the last byte
	// (normally the terminating NUL) is not part of the string.
	if l < 1 || int(l) > len(v.data)-4 {
		return nil, false
	}
	return v.data[4 : 4+l-1], true
}

// textValue is a string as itself and an ObjectId as its hex, the two text
// conversions that need no checks beyond the string's framing.
func (st *applyState) textValue(v rawVal) (any, bool) {
	switch v.typ {
	case bsontype.String:
		b, ok := stringBytes(v)
		if !ok {
			return nil, false
		}
		return st.mem.boxes.str(st.mem.text.bytes(b)), true
	case bsontype.ObjectID:
		return st.mem.boxes.str(st.hexString(v.data)), true
	}
	return nil, false
}

// fast converts v for t when it is one of the common, well-formed cases,
// without the intermediate values convertValue builds. It returns ok false
// for anything else, and the caller then uses convertValue, which remains the
// reference for every result and every error: fast never decides a failure.
func (st *applyState) fast(t *cqlType, conv uint8, v rawVal, fields []*column) (any, bool) {
	switch conv {
	case convNone:
	case convString:
		return st.textValue(v)
	case convHex:
		if v.typ == bsontype.ObjectID {
			return st.mem.boxes.str(st.hexString(v.data)), true
		}
		return nil, false
	case convMillis:
		if t.kind == kTimestamp && v.typ == bsontype.Int64 {
			return st.mem.boxes.timestamp(time.UnixMilli(int64(binary.LittleEndian.Uint64(v.data))).UTC()), true
		}
		return nil, false
	default:
		return nil, false
	}
	switch t.kind {
	case kText:
		if out, ok := st.textValue(v); ok {
			return out, true
		}
	case kInt:
		switch v.typ {
		case bsontype.Int32:
			return st.mem.boxes.i32(int32(binary.LittleEndian.Uint32(v.data))), true
		case bsontype.Int64:
			n := int64(binary.LittleEndian.Uint64(v.data))
			if n >= math.MinInt32 && n <= math.MaxInt32 {
				return st.mem.boxes.i32(int32(n)), true
			}
		}
	case kBigint:
		switch v.typ {
		case bsontype.Int32:
			return st.mem.boxes.i64(int64(int32(binary.LittleEndian.Uint32(v.data)))), true
		case bsontype.Int64:
			return st.mem.boxes.i64(int64(binary.LittleEndian.Uint64(v.data))), true
		}
	case kDouble:
		switch v.typ {
		case bsontype.Double:
			return st.mem.boxes.f64(math.Float64frombits(binary.LittleEndian.Uint64(v.data))), true
		case bsontype.Int32:
			return st.mem.boxes.f64(float64(int32(binary.LittleEndian.Uint32(v.data)))), true
		}
	case kBoolean:
		if v.typ == bsontype.Boolean {
			return v.data[0] == 1, true
		}
	case kTimestamp:
		if v.typ == bsontype.DateTime {
			return st.mem.boxes.timestamp(time.UnixMilli(int64(binary.LittleEndian.Uint64(v.data))).UTC()), true
		}
	case kDecimal:
		if v.typ == bsontype.Decimal128 {
			return st.decimal(v.data)
		}
	case kUUID:
		if v.typ == bsontype.ObjectID {
			var u gocql.UUID
			copy(u[4:], v.data)
			return u, true
		}
	case kList, kSet:
		if v.typ == bsontype.Array {
			return st.list(t, v.data)
		}
	case kMap:
		if v.typ == bsontype.EmbeddedDocument {
			return st.mapOf(t, v.data)
		}
	case kUDT:
		// The fields were read into their slots unless the document's length
		// is malformed, which convertValue reports.
		if v.typ == bsontype.EmbeddedDocument && fields != nil && len(v.data) >= 4 && int32(binary.LittleEndian.Uint32(v.data)) >= 4 {
			return st.udt(fields)
		}
	}
	return nil, false
}

func (st *applyState) hexString(oid []byte) string {
	var buf [24]byte
	hex.Encode(buf[:], oid[:12])
	return st.mem.text.bytes(buf[:])
}

// decBox holds a decimal and the words of its unscaled value (at most 113
// bits) in one allocation.
type decBox struct {
	d inf.Dec
	w [128 / bits.UintSize]big.Word
}

// decimal is decimal(v) for a finite Decimal128 (the bytes of the value),
// exactly as primitive.Decimal128.BigInt computes it.
func (st *applyState) decimal(b []byte) (any, bool) {
	low, high := binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])
	neg := high>>63&1 == 1
	if c := high >> 58 & (1<<5 - 1); c == 0x1F || c == 0x1E {
		return nil, false // NaN or infinity: convertValue says why
	}
	var exp int
	if high>>61&3 == 3 {
		exp = int(high >> 47 & (1<<14 - 1))
		high, low = 0, 0
	} else {
		exp = int(high >> 49 & (1<<14 - 1))
		high &= 1<<49 - 1
	}
	exp -= 6176 // primitive.MinDecimal128Exp
	box := new(decBox)
	words := [2]uint64{low, high}
	for i := range box.w {
		box.w[i] = big.Word(words[i*bits.UintSize/64] >> (i * bits.UintSize % 64))
	}
	u := box.d.UnscaledBig().SetBits(box.w[:])
	if neg {
		u.Neg(u)
	}
	box.d.SetScale(inf.Scale(-exp))
	return &box.d, true
}

func (st *applyState) popElems(base int) { st.elems = st.elems[:base] }

// list converts an array to list or set elements.
func (st *applyState) list(t *cqlType, doc []byte) (any, bool) {
	base := len(st.elems)
	defer st.popElems(base)
	if !st.elements(doc) {
		return nil, false
	}
	// Nested collections push their elements above these.
	elems := st.elems[base:]
	if len(elems) == 0 {
		return nil, true // Cassandra stores an empty collection as null
	}
	out := make([]any, len(elems))
	for i, e := range elems {
		x, ok := st.fast(t.elem, convNone, rawVal{typ: e.val.typ, data: doc[e.val.start:e.val.end]}, nil)
		if !ok || x == nil {
			return nil, false
		}
		out[i] = x
	}
	if t.kind == kSet {
		var ok bool
		if out, ok = sortSet(t.elem, out); !ok {
			return nil, false
		}
	}
	return st.mem.boxes.list(out), true
}

func (st *applyState) mapOf(t *cqlType, doc []byte) (any, bool) {
	base := len(st.elems)
	defer st.popElems(base)
	if !st.elements(doc) {
		return nil, false
	}
	elems := st.elems[base:]
	if len(elems) == 0 {
		return nil, true
	}
	out := make(map[string]any, len(elems))
	for _, e := range elems {
		x, ok := st.fast(t.elem, convNone, rawVal{typ: e.val.typ, data: doc[e.val.start:e.val.end]}, nil)
		if !ok || x == nil {
			return nil, false
		}
		out[st.mem.text.bytes(doc[e.keyStart:e.keyEnd])] = x
	}
	return out, true
}

// udt converts a UDT column whose document was read into the fields' slots.
func (st *applyState) udt(fields []*column) (any, bool) {
	out := make(map[string]any, len(fields))
	for _, f := range fields {
		if f.slot < 0 || st.vals[f.slot].typ == 0 {
			out[f.Name] = typedNull(f.typ, f.value)
			continue
		}
		v := st.val(f.slot)
		if v.typ == bsontype.Null || v.typ == bsontype.Undefined {
			out[f.Name] = typedNull(f.typ, nil)
			continue
		}
		x, ok := st.fast(f.typ, f.conv, v, f.fields)
		if !ok {
			return nil, false
		}
		out[f.Name] = x
	}
	return out, true
}

// sortSet is sortedSet for the element types whose canonical order is cheap to
// compare directly; ok is false for the others.
func sortSet(elem *cqlType, vals []any) ([]any, bool) {
	var cmp func(a, b any) int
	switch elem.kind {
	case kText:
		if len(vals) <= 16 {
			return sortTextSet(vals)
		}
		for _, v := range vals {
			if _, ok := v.(string); !ok {
				return nil, false
			}
		}
		// Canonical text is its length, then its bytes.
		cmp = func(a, b any) int {
			x, y := a.(string), b.(string)
			if len(x) != len(y) {
				if len(x) < len(y) {
					return -1
				}
				return 1
			}
			return strings.Compare(x, y)
		}
	case kInt, kBigint:
		for _, v := range vals {
			if _, ok := toInt64(v); !ok {
				return nil, false
			}
		}
		// Canonical integers are big-endian two's complement, compared unsigned.
		cmp = func(a, b any) int {
			x, _ := toInt64(a)
			y, _ := toInt64(b)
			switch {
			case uint64(x) < uint64(y):
				return -1
			case uint64(x) > uint64(y):
				return 1
			}
			return 0
		}
	default:
		out, err := sortedSet(elem, vals)
		return out, err == nil
	}
	slices.SortStableFunc(vals, cmp)
	out := vals[:1]
	for _, v := range vals[1:] {
		if cmp(v, out[len(out)-1]) != 0 {
			out = append(out, v)
		}
	}
	return out, true
}

// sortTextSet is sortSet of a few texts, by insertion (stable, as sortedSet).
func sortTextSet(vals []any) ([]any, bool) {
	var small [16]string
	strs := small[:len(vals)]
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			return nil, false
		}
		strs[i] = s
	}
	less := func(x, y string) bool { return len(x) < len(y) || len(x) == len(y) && x < y }
	for i := 1; i < len(strs); i++ {
		for j := i; j > 0 && less(strs[j], strs[j-1]); j-- {
			strs[j], strs[j-1] = strs[j-1], strs[j]
			vals[j], vals[j-1] = vals[j-1], vals[j]
		}
	}
	out := vals[:1]
	for i := 1; i < len(strs); i++ {
		if strs[i] != strs[i-1] {
			out = append(out, vals[i])
		}
	}
	return out, true
}

// compileFilter turns a FilterSpec into a predicate on the value at its path
// (found false when the path is absent).
func compileFilter(f *FilterSpec) (func(v bson.RawValue, found bool) bool, error) {
	if f.Exists != nil {
		want := *f.Exists
		return func(v bson.RawValue, found bool) bool {
			return (found && v.Type != bsontype.Null) == want
		}, nil
	}
	typ, data, err := bson.MarshalValue(f.Equals)
	if err != nil {
		return nil, err
	}
	want := bson.RawValue{Type: typ, Value: data}
	return func(v bson.RawValue, found bool) bool {
		if !found {
			return false
		}
		if v.Equal(want) {
			return true
		}
		// YAML numbers arrive as int or float64; compare numbers by value.
		a, aok := number(v)
		b, bok := number(want)
		return aok && bok && a == b
	}, nil
}
