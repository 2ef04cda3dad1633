package transform

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"gopkg.in/inf.v0"
)

// Apply maps one document of namespace to rows: one per table of the namespace
// whose filter admits the document. It never panics; a document that cannot be
// converted yields a *ConvertError naming the first failing column.
func (m *Mapping) Apply(namespace string, doc bson.Raw) (rows []Row, err error) {
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
		if t.filter != nil && !t.filter(doc) {
			continue
		}
		row := Row{Table: t, Values: make([]any, len(t.cols))}
		for i, c := range t.cols {
			v, err := c.eval(doc)
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
		if row.Key, err = t.EncodeKey(key); err != nil {
			return nil, &ConvertError{Namespace: namespace, Table: t.QualifiedName(), Rule: "primary-key", BSONType: "key", Err: err}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func (t *Table) isKey(col int) bool {
	for _, k := range t.PartitionKey {
		if k == col {
			return true
		}
	}
	for _, k := range t.ClusteringKey {
		if k == col {
			return true
		}
	}
	return false
}

func (t *Table) keyIndex(i int) int {
	if i < len(t.PartitionKey) {
		return t.PartitionKey[i]
	}
	return t.ClusteringKey[i-len(t.PartitionKey)]
}

func (t *Table) convertError(c *column, doc bson.Raw, err error) *ConvertError {
	ce := &ConvertError{Namespace: t.namespace, Table: t.QualifiedName(), Column: c.Name, Path: strings.Join(c.path, "."), Err: err}
	if c.compute != "" {
		ce.Path = c.compute + "(" + joinPaths(c.args) + ")"
	}
	ce.BSONType = "missing"
	if len(c.path) > 0 {
		if v, lerr := doc.LookupErr(c.path...); lerr == nil {
			ce.BSONType = v.Type.String()
		}
	}
	var r *errRule
	if errors.As(err, &r) {
		ce.Rule = r.rule
	} else {
		ce.Rule = c.typ.name
	}
	return ce
}

func joinPaths(ps [][]string) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strings.Join(p, ".")
	}
	return strings.Join(s, ",")
}

// eval computes the column's value for doc.
func (c *column) eval(doc bson.Raw) (any, error) {
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
			s, err := asString(v)
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
		b := hashBucket(vals, c.buckets)
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
	return convertValue(c.typ, c.convert, v, c.fields)
}

// KeyForID returns the primary key values for a document _id. Only valid when
// KeyFromIDOnly is true.
func (t *Table) KeyForID(id bson.RawValue) ([]any, error) {
	if !t.KeyFromIDOnly {
		return nil, fmt.Errorf("transform: %s: key is not computed from _id alone", t.QualifiedName())
	}
	doc, err := bson.Marshal(bson.D{{Key: "_id", Value: id}})
	if err != nil {
		return nil, fmt.Errorf("transform: key for _id: %w", err)
	}
	key := make([]any, 0, len(t.PartitionKey)+len(t.ClusteringKey))
	for i := 0; i < len(t.PartitionKey)+len(t.ClusteringKey); i++ {
		c := t.cols[t.keyIndex(i)]
		v, err := c.eval(doc)
		if err != nil {
			return nil, t.convertError(c, doc, err)
		}
		key = append(key, v)
	}
	return key, nil
}

// EncodeKey returns canonical bytes for primary key values (as KeyValues orders
// them); DecodeKey reverses it into values gocql can bind.
func (t *Table) EncodeKey(key []any) ([]byte, error) {
	var dst []byte
	var err error
	for i, v := range key {
		c := t.cols[t.keyIndex(i)]
		if dst, err = appendCanonical(dst, c.typ, v, c.fields); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

// DecodeKey is the inverse of EncodeKey.
func (t *Table) DecodeKey(b []byte) ([]any, error) {
	n := len(t.PartitionKey) + len(t.ClusteringKey)
	out := make([]any, 0, n)
	for i := 0; i < n; i++ {
		c := t.cols[t.keyIndex(i)]
		v, rest, err := decodeScalar(c.typ, b)
		if err != nil {
			return nil, fmt.Errorf("transform: decode key of %s: column %s: %w", t.QualifiedName(), c.Name, err)
		}
		out = append(out, v)
		b = rest
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("transform: decode key of %s: %d trailing bytes", t.QualifiedName(), len(b))
	}
	return out, nil
}

var errShort = errors.New("short key")

func decodeScalar(t *cqlType, b []byte) (any, []byte, error) {
	if len(b) < 1 {
		return nil, nil, errShort
	}
	tag, b := b[0], b[1:]
	readBytes := func() ([]byte, error) {
		if len(b) < 4 {
			return nil, errShort
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(len(b)-4) < uint64(n) {
			return nil, errShort
		}
		v := b[4 : 4+n]
		b = b[4+n:]
		return v, nil
	}
	switch tag {
	case tagText:
		v, err := readBytes()
		return string(v), b, err
	case tagBlob:
		v, err := readBytes()
		return append([]byte{}, v...), b, err
	case tagInt:
		if len(b) < 1 {
			return nil, nil, errShort
		}
		if b[0] == 1 {
			b = b[1:]
			s, err := readBytes()
			if err != nil {
				return nil, nil, err
			}
			bi, ok := new(big.Int).SetString(string(s), 10)
			if !ok {
				return nil, nil, fmt.Errorf("bad varint %q", s)
			}
			return bi, b, nil
		}
		if len(b) < 9 {
			return nil, nil, errShort
		}
		n := int64(binary.BigEndian.Uint64(b[1:9]))
		b = b[9:]
		switch t.kind {
		case kInt:
			return int32(n), b, nil
		case kSmallint:
			return int16(n), b, nil
		case kVarint:
			return big.NewInt(n), b, nil
		}
		return n, b, nil
	case tagFloat:
		if len(b) < 8 {
			return nil, nil, errShort
		}
		f := math.Float64frombits(binary.BigEndian.Uint64(b))
		if t.kind == kFloat {
			return float32(f), b[8:], nil
		}
		return f, b[8:], nil
	case tagBool:
		if len(b) < 1 {
			return nil, nil, errShort
		}
		return b[0] == 1, b[1:], nil
	case tagTime:
		if len(b) < 8 {
			return nil, nil, errShort
		}
		return time.UnixMilli(int64(binary.BigEndian.Uint64(b))).UTC(), b[8:], nil
	case tagDecimal:
		s, err := readBytes()
		if err != nil {
			return nil, nil, err
		}
		d, ok := new(inf.Dec).SetString(string(s))
		if !ok {
			return nil, nil, fmt.Errorf("bad decimal %q", s)
		}
		return d, b, nil
	case tagUUID:
		if len(b) < 16 {
			return nil, nil, errShort
		}
		var u gocql.UUID
		copy(u[:], b)
		return u, b[16:], nil
	}
	return nil, nil, fmt.Errorf("tag %d cannot be a key value", tag)
}

// AppendCanonical appends a canonical, type-aware encoding of a full row's values
// (aligned with Columns) to dst. Equal rows give equal bytes whether the values
// came from Apply or from scanning Cassandra.
func (t *Table) AppendCanonical(dst []byte, values []any) ([]byte, error) {
	if len(values) != len(t.cols) {
		return dst, fmt.Errorf("transform: %s has %d columns, got %d values", t.QualifiedName(), len(t.cols), len(values))
	}
	var err error
	for i, c := range t.cols {
		v := values[i]
		if v != nil && !t.isKey(i) && c.typ.kind != kUDT && reflect.ValueOf(v).IsZero() {
			// gocql's generic scan (MapScan) returns "", 0 or false for a null
			// cell, so a scanned row cannot tell them apart: both sides fold
			// zero to null. Key columns are never null, so they keep zero.
			v = nil
		}
		if dst, err = appendCanonical(dst, c.typ, v, c.fields); err != nil {
			return dst, fmt.Errorf("%s.%s: %w", t.QualifiedName(), c.Name, err)
		}
	}
	return dst, nil
}

// compileFilter turns a FilterSpec into a predicate on raw documents.
func compileFilter(f *FilterSpec) (func(bson.Raw) bool, error) {
	path := strings.Split(f.Path, ".")
	if f.Exists != nil {
		want := *f.Exists
		return func(doc bson.Raw) bool {
			v, err := doc.LookupErr(path...)
			return (err == nil && v.Type != bsontype.Null) == want
		}, nil
	}
	typ, data, err := bson.MarshalValue(f.Equals)
	if err != nil {
		return nil, fmt.Errorf("filter equals: %w", err)
	}
	want := bson.RawValue{Type: typ, Value: data}
	return func(doc bson.Raw) bool {
		v, err := doc.LookupErr(path...)
		if err != nil {
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

func number(v bson.RawValue) (float64, bool) {
	switch v.Type {
	case bsontype.Int32:
		return float64(v.Int32()), true
	case bsontype.Int64:
		return float64(v.Int64()), true
	case bsontype.Double:
		return v.Double(), true
	}
	return 0, false
}
