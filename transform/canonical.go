package transform

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"net"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"gopkg.in/inf.v0"
)

// Canonical value tags. Empty collections share the null tag because Cassandra
// does not distinguish an empty collection from null.
const (
	tagNull byte = iota
	tagText
	tagInt
	tagFloat
	tagBool
	tagTime
	tagDecimal
	tagUUID
	tagBlob
	tagList
	tagMap
	tagUDT
	tagInet
	tagClock // CQL time: nanoseconds since midnight
	tagDuration
	tagTuple
)

// appendCanonical appends the canonical form of v, read as CQL type t. It takes
// both what convertValue produces and what gocql returns when scanning into
// `any`, so expected and actual rows hash alike.
//
// The types Apply produces are encoded here without reflection or allocation;
// everything else goes to appendCanonicalReflect, which defines the encoding.
func appendCanonical(dst []byte, t *cqlType, v any, fields []*column) ([]byte, error) {
	return appendFolded(dst, t, v, fields, false)
}

// appendFolded is appendCanonical, of null instead of v when fold is set and v
// is its type's zero value (see Table.AppendCanonical).
func appendFolded(dst []byte, t *cqlType, v any, fields []*column, fold bool) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(dst, tagNull), nil
	case string:
		if fold && x == "" {
			return append(dst, tagNull), nil
		}
		if t.kind == kText {
			dst = binary.BigEndian.AppendUint32(append(dst, tagText), uint32(len(x)))
			return append(dst, x...), nil
		}
	case int32:
		if fold && x == 0 {
			return append(dst, tagNull), nil
		}
		if isInteger(t.kind) {
			return binary.BigEndian.AppendUint64(append(dst, tagInt, 0), uint64(int64(x))), nil
		}
	case int64:
		if fold && x == 0 {
			return append(dst, tagNull), nil
		}
		if isInteger(t.kind) {
			return binary.BigEndian.AppendUint64(append(dst, tagInt, 0), uint64(x)), nil
		}
	case float64:
		if fold && x == 0 {
			return append(dst, tagNull), nil
		}
		if t.kind == kDouble || t.kind == kFloat {
			if math.IsNaN(x) {
				x = math.NaN() // one NaN bit pattern
			}
			return binary.BigEndian.AppendUint64(append(dst, tagFloat), math.Float64bits(x)), nil
		}
	case bool:
		if fold && !x {
			return append(dst, tagNull), nil
		}
		if t.kind == kBoolean {
			if x {
				return append(dst, tagBool, 1), nil
			}
			return append(dst, tagBool, 0), nil
		}
	case time.Time:
		if fold && x == (time.Time{}) {
			return append(dst, tagNull), nil
		}
		if t.kind == kTimestamp || t.kind == kDate {
			if x.IsZero() {
				// gocql scans a null timestamp or date into the zero time.
				return append(dst, tagNull), nil
			}
			return binary.BigEndian.AppendUint64(append(dst, tagTime), uint64(x.UnixMilli())), nil
		}
	case *inf.Dec:
		if t.kind == kDecimal && x != nil {
			return appendDecimal(append(dst, tagDecimal), x), nil
		}
	case gocql.UUID:
		if fold && x == (gocql.UUID{}) {
			return append(dst, tagNull), nil
		}
		if t.kind == kUUID {
			return append(append(dst, tagUUID), x[:]...), nil
		}
	case []any:
		if (t.kind == kList || t.kind == kSet || t.kind == kVector) && x != nil {
			return appendList(dst, t, x)
		}
		if t.kind == kTuple && x != nil {
			return appendTuple(dst, t, x)
		}
	case map[string]any:
		if t.kind == kMap && x != nil {
			return appendMap(dst, t, x)
		}
		if t.kind == kUDT && x != nil {
			return appendUDT(dst, x, fields)
		}
	}
	if fold && isZero(v) {
		return append(dst, tagNull), nil
	}
	return appendCanonicalReflect(dst, t, v, fields)
}

func isInteger(k kind) bool { return k == kInt || k == kBigint || k == kSmallint || k == kVarint }

// appendDecimal appends x.String() as canonical bytes (length, then text).
func appendDecimal(dst []byte, x *inf.Dec) []byte {
	u := x.UnscaledBig()
	if !u.IsInt64() {
		return appendBytes(dst, []byte(x.String()))
	}
	// inf.Dec.String, without its allocations.
	var buf [24]byte
	s := strconv.AppendInt(buf[:0], u.Int64(), 10)
	scale := int64(x.Scale())
	at := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	switch {
	case scale <= 0:
		dst = append(dst, s...)
		if scale != 0 && u.Sign() != 0 {
			for i := int64(0); i < -scale; i++ {
				dst = append(dst, '0')
			}
		}
	default:
		neg := 0
		if u.Sign() < 0 {
			neg = 1
		}
		if int64(len(s)-neg) <= scale {
			if neg == 1 {
				dst = append(dst, '-')
			}
			dst = append(dst, '0', '.')
			for i := int64(0); i < scale-int64(len(s)-neg); i++ {
				dst = append(dst, '0')
			}
			dst = append(dst, s[neg:]...)
		} else {
			cut := len(s) - int(scale)
			dst = append(append(append(dst, s[:cut]...), '.'), s[cut:]...)
		}
	}
	binary.BigEndian.PutUint32(dst[at:], uint32(len(dst)-at-4))
	return dst
}

func appendList(dst []byte, t *cqlType, x []any) ([]byte, error) {
	if len(x) == 0 {
		return append(dst, tagNull), nil
	}
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(append(dst, tagList), uint32(len(x)))
	prev := -1
	for _, e := range x {
		at := len(dst)
		var err error
		if dst, err = appendCanonical(dst, t.elem, e, nil); err != nil {
			return dst, err
		}
		if t.kind == kSet {
			// Sets are encoded in canonical order; Apply's already are, and
			// only a set in another order (as Cassandra returns some) is sorted.
			if prev >= 0 && bytes.Compare(dst[prev:at], dst[at:]) > 0 {
				return appendCanonicalReflect(dst[:start], t, x, nil)
			}
			prev = at
		}
	}
	return dst, nil
}

func appendMap(dst []byte, t *cqlType, x map[string]any) ([]byte, error) {
	if len(x) == 0 {
		return append(dst, tagNull), nil
	}
	type entry struct {
		k string
		v any
	}
	var small [8]entry
	entries := small[:0]
	for k, v := range x {
		entries = append(entries, entry{k, v})
	}
	if len(entries) <= len(small) {
		for i := 1; i < len(entries); i++ {
			for j := i; j > 0 && entries[j].k < entries[j-1].k; j-- {
				entries[j], entries[j-1] = entries[j-1], entries[j]
			}
		}
	} else {
		slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.k, b.k) })
	}
	dst = binary.BigEndian.AppendUint32(append(dst, tagMap), uint32(len(entries)))
	for _, e := range entries {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(e.k)))
		dst = append(dst, e.k...)
		var err error
		if dst, err = appendCanonical(dst, t.elem, e.v, nil); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// appendTuple encodes a tuple's components by their types. gocql scans a
// null tuple, and null components, as zero values, so, as for UDTs, both
// sides fold zero components to null, and an all-null tuple to null.
func appendTuple(dst []byte, t *cqlType, x []any) ([]byte, error) {
	if len(x) != len(t.elems) {
		return dst, fmt.Errorf("transform: canonical %s: %d components", t.name, len(x))
	}
	start := len(dst)
	dst = append(dst, tagTuple)
	allNull := true
	for i, e := range x {
		if e != nil && isZero(e) {
			e = nil
		}
		if e == nil {
			dst = append(dst, tagNull)
			continue
		}
		allNull = false
		var err error
		if dst, err = appendCanonical(dst, t.elems[i], e, nil); err != nil {
			return dst, err
		}
	}
	if allNull {
		return append(dst[:start], tagNull), nil
	}
	return dst, nil
}

func appendUDT(dst []byte, m map[string]any, fields []*column) ([]byte, error) {
	// gocql scans a null UDT, and null fields inside one, as zero values,
	// so zero and null cannot be told apart on the read side: both sides
	// fold them to null (and an all-null UDT to a null column) to compare alike.
	start := len(dst)
	dst = append(dst, tagUDT)
	allNull := true
	for _, f := range fields {
		x := m[f.Name]
		if x != nil && isZero(x) {
			x = nil
		}
		if x == nil {
			dst = append(dst, tagNull)
			continue
		}
		allNull = false
		var err error
		if dst, err = appendCanonical(dst, f.typ, x, f.fields); err != nil {
			return dst, err
		}
	}
	if allNull {
		return append(dst[:start], tagNull), nil
	}
	return dst, nil
}

// isZero is reflect.ValueOf(v).IsZero() for non-nil v, without reflection for
// the types Apply produces.
func isZero(v any) bool {
	switch x := v.(type) {
	case string:
		return x == ""
	case int32:
		return x == 0
	case int64:
		return x == 0
	case float64:
		return x == 0 // -0.0 too, as reflect
	case bool:
		return !x
	case time.Time:
		return x == time.Time{}
	case *inf.Dec:
		return x == nil
	case []any:
		return x == nil
	case map[string]any:
		return x == nil
	case gocql.UUID:
		return x == gocql.UUID{}
	}
	return reflect.ValueOf(v).IsZero()
}

// appendCanonicalReflect is appendCanonical for any type gocql may return.
func appendCanonicalReflect(dst []byte, t *cqlType, v any, fields []*column) ([]byte, error) {
	if v == nil {
		return append(dst, tagNull), nil
	}
	rv := reflect.ValueOf(v)
	if (rv.Kind() == reflect.Pointer || rv.Kind() == reflect.Map || rv.Kind() == reflect.Slice) && rv.IsNil() {
		return append(dst, tagNull), nil
	}
	switch t.kind {
	case kText:
		return canonicalText(dst, t, v)
	case kInt, kBigint, kSmallint, kVarint, kTinyint:
		return canonicalInt(dst, t, v)
	case kDouble, kFloat:
		return canonicalFloat(dst, t, v)
	case kBoolean:
		return canonicalBool(dst, t, v)
	case kTimestamp, kDate:
		return canonicalTime(dst, t, v)
	case kDecimal:
		return canonicalDecimal(dst, t, v)
	case kUUID:
		return canonicalUUID(dst, t, v)
	case kBlob:
		return canonicalBlob(dst, t, v)
	case kTime:
		return canonicalClock(dst, t, v)
	case kInet:
		return canonicalInet(dst, t, v)
	case kDuration:
		return canonicalDuration(dst, t, v)
	case kTuple:
		if x, ok := v.([]any); ok {
			return appendTuple(dst, t, x)
		}
	case kList, kSet, kVector:
		return canonicalSequence(dst, t, rv)
	case kMap:
		return canonicalMap(dst, t, rv)
	case kUDT:
		if m, ok := v.(map[string]any); ok {
			return appendUDT(dst, m, fields)
		}
	}
	return unexpected(dst, t, v)
}

// unexpected refuses a Go value that is no form of a value of t.
func unexpected(dst []byte, t *cqlType, v any) ([]byte, error) {
	return dst, fmt.Errorf("transform: canonical %s: unexpected %T", t.name, v)
}

func canonicalText(dst []byte, t *cqlType, v any) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return appendBytes(append(dst, tagText), []byte(x)), nil
	case []byte:
		return appendBytes(append(dst, tagText), x), nil
	}
	return unexpected(dst, t, v)
}

// canonicalInt encodes every integer type as a 64-bit value, and a varint
// beyond 64 bits as its decimal text.
func canonicalInt(dst []byte, t *cqlType, v any) ([]byte, error) {
	if bi, ok := v.(*big.Int); ok {
		if bi.IsInt64() {
			return binary.BigEndian.AppendUint64(append(dst, tagInt, 0), uint64(bi.Int64())), nil
		}
		return appendBytes(append(dst, tagInt, 1), []byte(bi.String())), nil
	}
	if n, ok := toInt64(v); ok {
		return binary.BigEndian.AppendUint64(append(dst, tagInt, 0), uint64(n)), nil
	}
	return unexpected(dst, t, v)
}

// canonicalFloat encodes a float as the double it widens to, so a float
// column compares alike whether read as float32 or written as float64.
func canonicalFloat(dst []byte, t *cqlType, v any) ([]byte, error) {
	var f float64
	switch x := v.(type) {
	case float64:
		f = x
	case float32:
		f = float64(x)
	default:
		return unexpected(dst, t, v)
	}
	if math.IsNaN(f) {
		f = math.NaN() // one NaN bit pattern
	}
	return binary.BigEndian.AppendUint64(append(dst, tagFloat), math.Float64bits(f)), nil
}

func canonicalBool(dst []byte, t *cqlType, v any) ([]byte, error) {
	b, ok := v.(bool)
	if !ok {
		return unexpected(dst, t, v)
	}
	if b {
		return append(dst, tagBool, 1), nil
	}
	return append(dst, tagBool, 0), nil
}

// canonicalTime encodes a timestamp or date as milliseconds since 1970.
func canonicalTime(dst []byte, t *cqlType, v any) ([]byte, error) {
	switch x := v.(type) {
	case time.Time:
		if x.IsZero() {
			// gocql scans a null timestamp or date into the zero time.
			return append(dst, tagNull), nil
		}
		return binary.BigEndian.AppendUint64(append(dst, tagTime), uint64(x.UnixMilli())), nil
	case int64:
		return binary.BigEndian.AppendUint64(append(dst, tagTime), uint64(x)), nil
	}
	return unexpected(dst, t, v)
}

func canonicalDecimal(dst []byte, t *cqlType, v any) ([]byte, error) {
	switch x := v.(type) {
	case *inf.Dec:
		return appendBytes(append(dst, tagDecimal), []byte(x.String())), nil
	case inf.Dec:
		return appendBytes(append(dst, tagDecimal), []byte(x.String())), nil
	}
	return unexpected(dst, t, v)
}

func canonicalUUID(dst []byte, t *cqlType, v any) ([]byte, error) {
	switch x := v.(type) {
	case gocql.UUID:
		return append(append(dst, tagUUID), x[:]...), nil
	case [16]byte:
		return append(append(dst, tagUUID), x[:]...), nil
	}
	return unexpected(dst, t, v)
}

func canonicalBlob(dst []byte, t *cqlType, v any) ([]byte, error) {
	if b, ok := v.([]byte); ok {
		return appendBytes(append(dst, tagBlob), b), nil
	}
	return unexpected(dst, t, v)
}

// canonicalClock encodes a CQL time as nanoseconds since midnight.
func canonicalClock(dst []byte, t *cqlType, v any) ([]byte, error) {
	switch x := v.(type) {
	case time.Duration:
		return binary.BigEndian.AppendUint64(append(dst, tagClock), uint64(x)), nil
	case int64:
		return binary.BigEndian.AppendUint64(append(dst, tagClock), uint64(x)), nil
	}
	return unexpected(dst, t, v)
}

func canonicalInet(dst []byte, t *cqlType, v any) ([]byte, error) {
	ip, ok := v.(net.IP)
	if !ok {
		return unexpected(dst, t, v)
	}
	// gocql reads an IPv4 address as 4 bytes, but net.ParseIP
	// and others make 16: compare the 4-byte form.
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return appendBytes(append(dst, tagInet), ip), nil
}

func canonicalDuration(dst []byte, t *cqlType, v any) ([]byte, error) {
	d, ok := v.(gocql.Duration)
	if !ok {
		return unexpected(dst, t, v)
	}
	dst = append(dst, tagDuration)
	dst = binary.BigEndian.AppendUint32(dst, uint32(d.Months))
	dst = binary.BigEndian.AppendUint32(dst, uint32(d.Days))
	return binary.BigEndian.AppendUint64(dst, uint64(d.Nanoseconds)), nil
}

// canonicalSequence encodes a list, set or vector held in a slice or array
// of any element type; an empty one is null.
func canonicalSequence(dst []byte, t *cqlType, rv reflect.Value) ([]byte, error) {
	if rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array {
		return unexpected(dst, t, rv.Interface())
	}
	if rv.Len() == 0 {
		return append(dst, tagNull), nil
	}
	dst = binary.BigEndian.AppendUint32(append(dst, tagList), uint32(rv.Len()))
	if t.kind == kSet {
		return appendSortedElems(dst, t, rv)
	}
	for i := 0; i < rv.Len(); i++ {
		var err error
		if dst, err = appendCanonical(dst, t.elem, rv.Index(i).Interface(), nil); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// appendSortedElems appends a set's elements in canonical order: sets come
// back from Cassandra in its own order.
func appendSortedElems(dst []byte, t *cqlType, rv reflect.Value) ([]byte, error) {
	elems := make([][]byte, rv.Len())
	for i := range elems {
		b, err := appendCanonical(nil, t.elem, rv.Index(i).Interface(), nil)
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

// canonicalMap encodes a map of any value type, entries in key order; an
// empty one is null.
func canonicalMap(dst []byte, t *cqlType, rv reflect.Value) ([]byte, error) {
	if rv.Kind() != reflect.Map {
		return unexpected(dst, t, rv.Interface())
	}
	if rv.Len() == 0 {
		return append(dst, tagNull), nil
	}
	keys := rv.MapKeys()
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	dst = binary.BigEndian.AppendUint32(append(dst, tagMap), uint32(len(keys)))
	for _, k := range keys {
		dst = appendBytes(dst, []byte(k.String()))
		var err error
		if dst, err = appendCanonical(dst, t.elem, rv.MapIndex(k).Interface(), nil); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b)))
	return append(dst, b...)
}

func toInt64(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	}
	return 0, false
}

// sortedSet sorts and de-duplicates set elements by their canonical bytes, so a
// set's value does not depend on the array order in the document.
func sortedSet(t *cqlType, vals []any) ([]any, error) {
	type kv struct {
		k []byte
		v any
	}
	items := make([]kv, len(vals))
	for i, v := range vals {
		b, err := appendCanonical(nil, t, v, nil)
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
