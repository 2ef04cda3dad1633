package transform

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net"
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
//
// The document is read once: every path the namespace's tables use is found in
// a single walk (read.go), then each column converts the value found for it.
// The rows' values do not share memory with doc; values of different calls may
// share memory (slab.go), but nothing is written to it after Apply returns.
func (m *Mapping) Apply(namespace string, doc bson.Raw) (rows []Row, err error) {
	p := m.plans[namespace]
	if p == nil {
		return nil, fmt.Errorf("transform: namespace %s is not in spec %s", namespace, m.version)
	}
	st := getState(p)
	defer func() {
		// Validated documents cannot reach a panic, but a bug here must cost one
		// dead-lettered document, not the pipeline.
		if r := recover(); r != nil {
			rows, err = nil, &ConvertError{Namespace: namespace, BSONType: "unknown", Rule: "internal", Err: fmt.Errorf("panic: %v", r)}
		}
		putState(st)
	}()
	if !st.read(&p.root, doc) {
		err := bson.Raw(doc).Validate()
		if err == nil {
			err = errors.New("malformed document")
		}
		return nil, &ConvertError{Namespace: namespace, Path: "", BSONType: "malformed", Rule: "bson", Err: err}
	}
	values := make([]any, p.ncols)
	rows = make([]Row, 0, len(p.tables))
	st.scratch = st.scratch[:0]
	st.keyEnds = st.keyEnds[:0]
	for _, t := range p.tables {
		if t.filter != nil {
			v := st.val(t.filterSlot)
			if !t.filter(v.raw(), v.typ != 0) {
				values = values[len(t.cols):]
				continue
			}
		}
		row := Row{Table: t, Values: values[:len(t.cols):len(t.cols)]}
		values = values[len(t.cols):]
		for i, c := range t.cols {
			v, err := st.eval(c)
			if err != nil {
				return nil, t.convertError(c, doc, err)
			}
			if v == nil && c.typ.kind == kUDT {
				// gocql writes a typed nil map as null but refuses an untyped nil for a UDT.
				v = map[string]any(nil)
			}
			row.Values[i] = typedNull(c.typ, v)
		}
		if st.scratch, err = t.appendKey(st.scratch, row.Values, doc); err != nil {
			return nil, err
		}
		st.keyEnds = append(st.keyEnds, len(st.scratch))
		rows = append(rows, row)
	}
	// One allocation for the keys of all rows.
	keys := append([]byte(nil), st.scratch...)
	start := 0
	for i, end := range st.keyEnds {
		rows[i].Key = keys[start:end:end]
		start = end
	}
	return rows, nil
}

// appendKey appends the row's key (EncodeKey of its primary key values) to dst.
func (t *Table) appendKey(dst []byte, values []any, doc bson.Raw) ([]byte, error) {
	n := len(t.PartitionKey) + len(t.ClusteringKey)
	for i := 0; i < n; i++ {
		if c := t.cols[t.keyIndex(i)]; values[t.keyIndex(i)] == nil {
			return dst, t.convertError(c, doc, fail("primary-key", "key column %s is null", c.Name))
		}
	}
	var err error
	for i := 0; i < n; i++ {
		c := t.cols[t.keyIndex(i)]
		if dst, err = appendCanonical(dst, c.typ, values[t.keyIndex(i)], c.fields); err != nil {
			return dst, &ConvertError{Namespace: t.namespace, Table: t.QualifiedName(), Rule: "primary-key", BSONType: "key", Err: err}
		}
	}
	return dst, nil
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
		if err == error(r) {
			// The message names the rule once: "by string->int: …", not
			// "by string->int: string->int: …".
			ce.Err = r.err
		}
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

// typedNull is v, or for a null tuple the typed nil gocql writes as null: its
// tuple marshaller panics on an untyped nil and refuses a nil slice (wrong
// length), but writes a nil pointer as null.
func typedNull(t *cqlType, v any) any {
	if v == nil && t.kind == kTuple {
		return (*[]any)(nil)
	}
	return v
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
	st := getState(t.plan)
	defer putState(st)
	if !st.read(&t.plan.root, doc) {
		return nil, fmt.Errorf("transform: key for _id: malformed %s", id.Type)
	}
	key := make([]any, 0, len(t.PartitionKey)+len(t.ClusteringKey))
	for i := 0; i < len(t.PartitionKey)+len(t.ClusteringKey); i++ {
		c := t.cols[t.keyIndex(i)]
		v, err := st.evalColumn(c)
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

// decodeScalar reads one key value that appendCanonical encoded, as the Go
// type gocql binds for t, and returns the bytes after it.
func decodeScalar(t *cqlType, b []byte) (any, []byte, error) {
	if len(b) < 1 {
		return nil, nil, errShort
	}
	tag, b := b[0], b[1:]
	switch tag {
	case tagText, tagBlob, tagInet:
		return decodeBytes(tag, b)
	case tagDecimal:
		return decodeDecimal(b)
	case tagInt:
		return decodeInt(t, b)
	case tagFloat, tagTime, tagClock:
		return decodeFixed64(t, tag, b)
	case tagBool:
		if len(b) < 1 {
			return nil, nil, errShort
		}
		return b[0] == 1, b[1:], nil
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

// lengthPrefixed splits b after a 32-bit length and that many bytes; a
// short b is returned whole with errShort.
func lengthPrefixed(b []byte) (v, rest []byte, err error) {
	if len(b) < 4 {
		return nil, b, errShort
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(len(b)-4) < uint64(n) {
		return nil, b, errShort
	}
	return b[4 : 4+n], b[4+n:], nil
}

// decodeBytes decodes text, blob and inet, copying what the key's bytes
// must not share.
func decodeBytes(tag byte, b []byte) (any, []byte, error) {
	v, rest, err := lengthPrefixed(b)
	switch tag {
	case tagText:
		return string(v), rest, err
	case tagBlob:
		return append([]byte{}, v...), rest, err
	}
	return net.IP(append([]byte{}, v...)), rest, err
}

func decodeDecimal(b []byte) (any, []byte, error) {
	s, rest, err := lengthPrefixed(b)
	if err != nil {
		return nil, nil, err
	}
	d, ok := new(inf.Dec).SetString(string(s))
	if !ok {
		return nil, nil, fmt.Errorf("bad decimal %q", s)
	}
	return d, rest, nil
}

// decodeInt decodes a 64-bit integer as t's Go type, or a varint beyond 64
// bits from its decimal text.
func decodeInt(t *cqlType, b []byte) (any, []byte, error) {
	if len(b) < 1 {
		return nil, nil, errShort
	}
	if b[0] == 1 {
		s, rest, err := lengthPrefixed(b[1:])
		if err != nil {
			return nil, nil, err
		}
		bi, ok := new(big.Int).SetString(string(s), 10)
		if !ok {
			return nil, nil, fmt.Errorf("bad varint %q", s)
		}
		return bi, rest, nil
	}
	if len(b) < 9 {
		return nil, nil, errShort
	}
	n, rest := int64(binary.BigEndian.Uint64(b[1:9])), b[9:]
	switch t.kind {
	case kInt:
		return int32(n), rest, nil
	case kSmallint:
		return int16(n), rest, nil
	case kTinyint:
		return int8(n), rest, nil
	case kVarint:
		return big.NewInt(n), rest, nil
	}
	return n, rest, nil
}

// decodeFixed64 decodes the 8-byte values: a double (a float for a float
// column), a timestamp in milliseconds, a time in nanoseconds.
func decodeFixed64(t *cqlType, tag byte, b []byte) (any, []byte, error) {
	if len(b) < 8 {
		return nil, nil, errShort
	}
	n, rest := binary.BigEndian.Uint64(b), b[8:]
	switch {
	case tag == tagTime:
		return time.UnixMilli(int64(n)).UTC(), rest, nil
	case tag == tagClock:
		return time.Duration(n), rest, nil
	case t.kind == kFloat:
		return float32(math.Float64frombits(n)), rest, nil
	}
	return math.Float64frombits(n), rest, nil
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
		// gocql's generic scan (MapScan) returns "", 0 or false for a null
		// cell, so a scanned row cannot tell them apart: both sides fold zero
		// to null. Key columns are never null, so they keep zero.
		fold := !t.keyCol[i] && c.typ.kind != kUDT
		if dst, err = appendFolded(dst, c.typ, values[i], c.fields, fold); err != nil {
			return dst, fmt.Errorf("%s.%s: %w", t.QualifiedName(), c.Name, err)
		}
	}
	return dst, nil
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
