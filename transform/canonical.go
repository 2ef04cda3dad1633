package transform

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"sort"
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
)

// appendCanonical appends the canonical form of v, read as CQL type t. It takes
// both what convertValue produces and what gocql returns when scanning into
// `any`, so expected and actual rows hash alike.
func appendCanonical(dst []byte, t *cqlType, v any, fields []*column) ([]byte, error) {
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
			return appendBytes(append(dst, tagText), []byte(x)), nil
		case []byte:
			return appendBytes(append(dst, tagText), x), nil
		}
	case kInt, kBigint, kSmallint, kVarint:
		if bi, ok := v.(*big.Int); ok {
			if bi.IsInt64() {
				return binary.BigEndian.AppendUint64(append(dst, tagInt, 0), uint64(bi.Int64())), nil
			}
			return appendBytes(append(dst, tagInt, 1), []byte(bi.String())), nil
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
			return appendBytes(append(dst, tagDecimal), []byte(x.String())), nil
		case inf.Dec:
			return appendBytes(append(dst, tagDecimal), []byte(x.String())), nil
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
			return appendBytes(append(dst, tagBlob), b), nil
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
		for i := 0; i < rv.Len(); i++ {
			var err error
			if dst, err = appendCanonical(dst, t.elem, rv.Index(i).Interface(), nil); err != nil {
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
			dst = appendBytes(dst, []byte(k.String()))
			var err error
			if dst, err = appendCanonical(dst, t.elem, rv.MapIndex(k).Interface(), nil); err != nil {
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
			if dst, err = appendCanonical(dst, f.typ, x, f.fields); err != nil {
				return dst, err
			}
		}
		return dst, nil
	}
	return dst, fmt.Errorf("transform: canonical %s: unexpected %T", t.name, v)
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
