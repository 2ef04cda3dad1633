package transform

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"gopkg.in/inf.v0"
)

// Func is a custom conversion registered with RegisterFunc: it receives the raw
// value at the column's path and returns a value of a Go type gocql marshals
// for the column's CQL type. It is not called for a missing field, which gets
// the column's default or null.
type Func func(v bson.RawValue) (any, error)

var (
	funcsMu sync.RWMutex
	funcs   = map[string]Func{}
)

// RegisterFunc makes fn available as `convert: name` in specs. Register before
// Parse; the function must be pure and deterministic.
func RegisterFunc(name string, fn Func) {
	funcsMu.Lock()
	defer funcsMu.Unlock()
	funcs[name] = fn
}

// unconverted are CQL types the transform has no conversion to; the parser
// would otherwise read them as names of user-defined types.
var unconverted = map[string]bool{"counter": true}

var builtinConverts = map[string]uint8{"": convNone, "json": convJSON, "string": convString, "hex": convHex, "millis": convMillis}

var computeOps = map[string]uint8{"": opFrom, "const": opConst, "concat": opConcat, "lower": opLower, "hash_bucket": opHashBucket}

// column is a compiled ColumnSpec.
type column struct {
	Name    string
	typ     *cqlType
	path    []string
	convert string
	fn      Func
	compute string
	args    [][]string
	sep     string
	buckets int
	value   any // const value or default, already converted
	def     bool
	nullDef bool
	fields  []*column // UDT fields

	// Compiled for Apply (see eval.go and read.go).
	op       uint8 // opFrom, opConst, ...
	conv     uint8 // convNone, convJSON, ...
	slot     int   // where the value at path is read; -1 when there is no path
	argSlots []int // where compute args are read
	shared   int   // index of a value several columns share, or -1
}

func (c *column) fromIDOnly() bool {
	if c.compute == "const" {
		return true
	}
	if c.compute != "" {
		for _, a := range c.args {
			if len(a) != 1 || a[0] != "_id" {
				return false
			}
		}
		return true
	}
	return len(c.path) == 1 && c.path[0] == "_id"
}

func compileColumn(cs *ColumnSpec) (*column, error) {
	if !identRE.MatchString(cs.Name) {
		return nil, fmt.Errorf("name must be a lowercase CQL identifier")
	}
	typ, err := parseType(cs.Type)
	if err != nil {
		return nil, err
	}
	c := &column{Name: cs.Name, typ: typ, convert: cs.Convert, compute: cs.Compute, sep: cs.Sep,
		buckets: cs.Buckets, def: cs.Default || cs.NullAsDefault, nullDef: cs.NullAsDefault, slot: -1, shared: -1}
	c.op = computeOps[cs.Compute]
	if typ.kind == kUDT && unconverted[typ.udt] {
		if err := ReplaySafe(typ.udt); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("no conversion to %s yet (see docs/types.md)", typ.udt)
	}
	if typ.kind == kUDT {
		if !typ.frozen {
			return nil, fmt.Errorf("user-defined type %s must be frozen<%s>", typ.udt, typ.udt)
		}
		if len(cs.Fields) == 0 {
			return nil, fmt.Errorf("frozen<%s> needs fields", typ.udt)
		}
		for i := range cs.Fields {
			f, err := compileColumn(&cs.Fields[i])
			if err != nil {
				return nil, fmt.Errorf("field %q: %w", cs.Fields[i].Name, err)
			}
			c.fields = append(c.fields, f)
		}
	}
	if conv, ok := builtinConverts[cs.Convert]; ok {
		c.conv = conv
	} else {
		funcsMu.RLock()
		c.fn = funcs[cs.Convert]
		funcsMu.RUnlock()
		if c.fn == nil {
			return nil, fmt.Errorf("unknown convert %q (builtins: json, string, hex, millis; or RegisterFunc)", cs.Convert)
		}
		c.conv = convFunc
	}
	switch cs.Compute {
	case "":
		if cs.From == "" {
			return nil, errors.New("needs from or compute")
		}
		c.path = strings.Split(cs.From, ".")
	case "const":
		v, err := constValue(c, cs.Value)
		if err != nil {
			return nil, fmt.Errorf("const: %w", err)
		}
		c.value = v
		return c, nil
	case "concat", "lower", "hash_bucket":
		if len(cs.Args) == 0 {
			return nil, fmt.Errorf("%s needs args", cs.Compute)
		}
		if cs.Compute == "lower" && len(cs.Args) != 1 {
			return nil, errors.New("lower takes one arg")
		}
		if cs.Compute == "hash_bucket" && cs.Buckets <= 0 {
			return nil, errors.New("hash_bucket needs buckets > 0")
		}
		want := kText
		if cs.Compute == "hash_bucket" {
			if typ.kind != kInt && typ.kind != kBigint {
				return nil, errors.New("hash_bucket yields int or bigint")
			}
			want = typ.kind
		}
		if typ.kind != want {
			return nil, fmt.Errorf("%s yields text", cs.Compute)
		}
		for _, a := range cs.Args {
			c.args = append(c.args, strings.Split(a, "."))
		}
	default:
		return nil, fmt.Errorf("unknown compute %q (concat, lower, hash_bucket, const)", cs.Compute)
	}
	if c.def {
		v, err := constValue(c, cs.Value)
		if err != nil {
			return nil, fmt.Errorf("default: %w", err)
		}
		c.value = v
	}
	return c, nil
}

// constValue converts a YAML scalar to the column's type by way of BSON, so
// constants and defaults obey exactly the rules documents do.
func constValue(c *column, v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	typ, data, err := bson.MarshalValue(v)
	if err != nil {
		return nil, err
	}
	return convertValue(c.typ, "", bson.RawValue{Type: typ, Value: data}, c.fields)
}

// errRule is a conversion failure before it is given its location.
type errRule struct {
	rule string
	err  error
}

func (e *errRule) Error() string { return e.rule + ": " + e.err.Error() }

func fail(rule, format string, a ...any) error {
	return &errRule{rule: rule, err: fmt.Errorf(format, a...)}
}

// emptyNested is the value of an empty array or document inside a
// collection, where convertValue's nil (right for a column: Cassandra stores
// an empty collection as null) would read as a null element and refuse a
// valid document such as {scores: {art: []}}. Inside a collection the
// element is frozen, and an empty frozen collection is a value. It returns
// nil for anything else (a BSON null stays refused).
func emptyNested(t *cqlType, v bson.RawValue) any {
	switch {
	case (t.kind == kList || t.kind == kSet) && v.Type == bsontype.Array:
		return []any{}
	case t.kind == kMap && v.Type == bsontype.EmbeddedDocument:
		return map[string]any{}
	}
	return nil
}

// convertValue applies the type-driven conversion of v (never missing, may be
// an explicit null) into a value for t, unless convert names a builtin
// override. A convert naming a registered Func is not applied here: the
// column calls its Func itself.
func convertValue(t *cqlType, convert string, v bson.RawValue, fields []*column) (any, error) {
	if v.Type == bsontype.Null || v.Type == bsontype.Undefined {
		return nil, nil
	}
	if x, ok, err := convertOverride(t, convert, v); ok {
		return x, err
	}
	rule := v.Type.String() + "->" + t.name
	switch t.kind {
	case kText:
		return toText(t, v, rule)
	case kInt, kSmallint, kTinyint:
		return toBoundedInt(t, v, rule)
	case kBigint:
		return asInt64(v, rule)
	case kVarint:
		return toVarint(v, rule)
	case kDouble, kFloat:
		return toFloat(t, v, rule)
	case kBoolean:
		return toBoolean(t, v, rule)
	case kTimestamp:
		return toTimestamp(t, v, rule)
	case kDecimal:
		return toDecimal(t, v, rule)
	case kUUID:
		return toUUID(t, v, rule)
	case kBlob:
		return toBlob(t, v, rule)
	case kDate:
		return toDate(v, rule)
	case kTime:
		return toTime(v, rule)
	case kInet:
		return toInet(v, rule)
	case kDuration:
		return toDuration(v, rule)
	case kTuple:
		return toTuple(t, v, rule)
	case kVector:
		return toVector(t, v, rule)
	case kList, kSet:
		return toListOrSet(t, v, rule)
	case kMap:
		return toMap(t, v, rule)
	case kUDT:
		return toUDT(t, v, rule, fields)
	}
	return nil, noConversion(t, v, rule)
}

// noConversion is the refusal of a BSON type the CQL type has no rule for.
func noConversion(t *cqlType, v bson.RawValue, rule string) error {
	return fail(rule, "no conversion from %s to %s", v.Type, t.name)
}

// convertOverride applies a builtin convert (json, hex, millis, string);
// ok is false for no convert or a registered Func's name.
func convertOverride(t *cqlType, convert string, v bson.RawValue) (x any, ok bool, err error) {
	switch convert {
	case "json":
		if t.kind != kText {
			return nil, true, fail("json", "json conversion needs a text column, not %s", t.name)
		}
		x, err = canonicalJSON(v)
	case "hex":
		x, err = hexText(v)
	case "millis":
		x, err = millisTimestamp(t, v)
	case "string":
		x, err = asString(v)
	default:
		return nil, false, nil
	}
	return x, true, err
}

func hexText(v bson.RawValue) (any, error) {
	switch v.Type {
	case bsontype.ObjectID:
		return v.ObjectID().Hex(), nil
	case bsontype.Binary:
		_, b := v.Binary()
		return hex.EncodeToString(b), nil
	}
	return nil, fail("hex", "cannot hex-encode %s", v.Type)
}

func millisTimestamp(t *cqlType, v bson.RawValue) (any, error) {
	if t.kind != kTimestamp {
		return nil, fail("millis", "needs a timestamp column")
	}
	n, err := asInt64(v, "millis")
	if err != nil {
		return nil, err
	}
	return time.UnixMilli(n).UTC(), nil
}

// toText takes strings and symbols as they are, an ObjectId as its hex, and
// a document or array as its JSON.
func toText(t *cqlType, v bson.RawValue, rule string) (any, error) {
	switch v.Type {
	case bsontype.String:
		return v.StringValue(), nil
	case bsontype.ObjectID:
		return v.ObjectID().Hex(), nil
	case bsontype.EmbeddedDocument, bsontype.Array:
		return canonicalJSON(v)
	case bsontype.Symbol:
		return v.Symbol(), nil
	}
	return nil, noConversion(t, v, rule)
}

// toBoundedInt converts an integral number to int, smallint or tinyint,
// refusing one out of the type's range.
func toBoundedInt(t *cqlType, v bson.RawValue, rule string) (any, error) {
	n, err := asInt64(v, rule)
	if err != nil {
		return nil, err
	}
	lo, hi := int64(math.MinInt32), int64(math.MaxInt32)
	switch t.kind {
	case kSmallint:
		lo, hi = math.MinInt16, math.MaxInt16
	case kTinyint:
		lo, hi = math.MinInt8, math.MaxInt8
	}
	if n < lo || n > hi {
		return nil, fail(rule, "%d overflows %s", n, t.name)
	}
	switch t.kind {
	case kSmallint:
		return int16(n), nil
	case kTinyint:
		return int8(n), nil
	}
	return int32(n), nil
}

// toVarint converts an integral number, and a Decimal128 of any size that
// has no fraction.
func toVarint(v bson.RawValue, rule string) (any, error) {
	if v.Type == bsontype.Decimal128 {
		d, err := decimal(v)
		if err != nil || d.Scale() > 0 && new(inf.Dec).Round(d, 0, inf.RoundExact) == nil {
			return nil, fail(rule, "%s is not an integer", v.Decimal128())
		}
		return new(big.Int).Set(new(inf.Dec).Round(d, 0, inf.RoundExact).UnscaledBig()), nil
	}
	n, err := asInt64(v, rule)
	if err != nil {
		return nil, err
	}
	return big.NewInt(n), nil
}

// toFloat converts a number to double or float, refusing what it would
// round: an int64 beyond 2^53, or a double beyond float's range.
func toFloat(t *cqlType, v bson.RawValue, rule string) (any, error) {
	var f float64
	switch v.Type {
	case bsontype.Double:
		f = v.Double()
	case bsontype.Int32:
		f = float64(v.Int32())
	case bsontype.Int64:
		n := v.Int64()
		// Beyond 2^53 a double cannot hold every integer: refuse rather than round.
		if n > 1<<53 || n < -(1<<53) {
			return nil, fail(rule, "%d loses precision as a double", n)
		}
		f = float64(n)
	default:
		return nil, fail(rule, "cannot convert %s to %s", v.Type, t.name)
	}
	if t.kind == kFloat {
		if !math.IsInf(f, 0) && !math.IsNaN(f) && math.Abs(f) > math.MaxFloat32 {
			return nil, fail(rule, "%g overflows float", f)
		}
		return float32(f), nil
	}
	return f, nil
}

func toBoolean(t *cqlType, v bson.RawValue, rule string) (any, error) {
	if v.Type == bsontype.Boolean {
		return v.Boolean(), nil
	}
	return nil, noConversion(t, v, rule)
}

// toTimestamp converts a Date, and a BSON Timestamp by its seconds.
func toTimestamp(t *cqlType, v bson.RawValue, rule string) (any, error) {
	switch v.Type {
	case bsontype.DateTime:
		return time.UnixMilli(v.DateTime()).UTC(), nil
	case bsontype.Timestamp:
		ts, _ := v.Timestamp()
		return time.Unix(int64(ts), 0).UTC(), nil
	}
	return nil, noConversion(t, v, rule)
}

// toDecimal converts a Decimal128 or an integer exactly, and a finite double
// by its shortest decimal form.
func toDecimal(t *cqlType, v bson.RawValue, rule string) (any, error) {
	switch v.Type {
	case bsontype.Decimal128:
		return decimal(v)
	case bsontype.Int32, bsontype.Int64:
		n, _ := asInt64(v, rule)
		return inf.NewDec(n, 0), nil
	case bsontype.Double:
		f := v.Double()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fail(rule, "%g has no decimal form", f)
		}
		d, ok := new(inf.Dec).SetString(strconv.FormatFloat(f, 'f', -1, 64))
		if !ok {
			return nil, fail(rule, "cannot parse %g", f)
		}
		return d, nil
	}
	return nil, noConversion(t, v, rule)
}

// toUUID converts a UUID string, a UUID binary (subtype 3 or 4), and an
// ObjectId.
func toUUID(t *cqlType, v bson.RawValue, rule string) (any, error) {
	switch v.Type {
	case bsontype.String:
		u, err := gocql.ParseUUID(v.StringValue())
		if err != nil {
			return nil, fail(rule, "%q is not a UUID", v.StringValue())
		}
		return u, nil
	case bsontype.Binary:
		sub, b := v.Binary()
		if (sub == 3 || sub == 4) && len(b) == 16 {
			var u gocql.UUID
			copy(u[:], b)
			return u, nil
		}
		return nil, fail(rule, "binary subtype %d of %d bytes is not a UUID", sub, len(b))
	case bsontype.ObjectID:
		// Four zero bytes then the 12 ObjectId bytes: deterministic and reversible.
		var u gocql.UUID
		oid := v.ObjectID()
		copy(u[4:], oid[:])
		return u, nil
	}
	return nil, noConversion(t, v, rule)
}

// toBlob copies the bytes of a binary, an ObjectId or a string: the value
// must not share the document's memory.
func toBlob(t *cqlType, v bson.RawValue, rule string) (any, error) {
	switch v.Type {
	case bsontype.Binary:
		_, b := v.Binary()
		return append([]byte{}, b...), nil
	case bsontype.ObjectID:
		oid := v.ObjectID()
		return append([]byte{}, oid[:]...), nil
	case bsontype.String:
		return []byte(v.StringValue()), nil
	}
	return nil, noConversion(t, v, rule)
}

// convertInner converts a value inside a collection, tuple or UDT, where a
// tuple may not hold nulls (see innerTuple).
func convertInner(t *cqlType, convert string, v bson.RawValue, fields []*column) (any, error) {
	x, err := convertValue(t, convert, v, fields)
	if err == nil {
		err = innerTuple(t, x)
	}
	return x, err
}

// element converts a list, set or map element; nil is a null element, which
// the caller refuses.
func element(t *cqlType, v bson.RawValue) (any, error) {
	x, err := convertInner(t, "", v, nil)
	if err != nil || x != nil {
		return x, err
	}
	return emptyNested(t, v), nil
}

// toListOrSet converts an array element by element; a set is sorted and
// rid of duplicates, and an empty one is null.
func toListOrSet(t *cqlType, v bson.RawValue, rule string) (any, error) {
	if v.Type != bsontype.Array {
		return nil, noConversion(t, v, rule)
	}
	vals, err := v.Array().Values()
	if err != nil {
		return nil, fail(rule, "%v", err)
	}
	out := make([]any, 0, len(vals))
	for i, e := range vals {
		x, err := element(t.elem, e)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		if x == nil {
			return nil, fail(rule, "[%d] is null; CQL collections cannot hold nulls", i)
		}
		out = append(out, x)
	}
	if len(out) == 0 {
		// Cassandra stores an empty collection as null; say so explicitly.
		return nil, nil
	}
	if t.kind == kSet {
		return sortedSet(t.elem, out)
	}
	return out, nil
}

// toMap converts a document field by field; an empty one is null.
func toMap(t *cqlType, v bson.RawValue, rule string) (any, error) {
	if v.Type != bsontype.EmbeddedDocument {
		return nil, noConversion(t, v, rule)
	}
	elems, err := v.Document().Elements()
	if err != nil {
		return nil, fail(rule, "%v", err)
	}
	out := make(map[string]any, len(elems))
	for _, e := range elems {
		x, err := element(t.elem, e.Value())
		if err != nil {
			return nil, fmt.Errorf(".%s: %w", e.Key(), err)
		}
		if x == nil {
			return nil, fail(rule, "%s is null; CQL maps cannot hold nulls", e.Key())
		}
		out[e.Key()] = x
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// toUDT converts a document by the UDT's fields, each looked up at its path
// with its own conversion; a missing field is its default or null.
func toUDT(t *cqlType, v bson.RawValue, rule string, fields []*column) (any, error) {
	if v.Type != bsontype.EmbeddedDocument {
		return nil, noConversion(t, v, rule)
	}
	doc := v.Document()
	out := make(map[string]any, len(fields))
	for _, f := range fields {
		fv, err := doc.LookupErr(f.path...)
		if err != nil {
			out[f.Name] = typedNull(f.typ, f.value)
			continue
		}
		x, err := convertInner(f.typ, f.convert, fv, f.fields)
		if err != nil {
			return nil, fmt.Errorf(".%s: %w", f.Name, err)
		}
		out[f.Name] = typedNull(f.typ, x)
	}
	return out, nil
}

func asInt64(v bson.RawValue, rule string) (int64, error) {
	switch v.Type {
	case bsontype.Int32:
		return int64(v.Int32()), nil
	case bsontype.Int64:
		return v.Int64(), nil
	case bsontype.Double:
		f := v.Double()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, fail(rule, "%g is not an integer", f)
		}
		if f != math.Trunc(f) {
			return 0, fail(rule, "%g has a fraction", f)
		}
		if f < -(1<<63) || f >= 1<<63 {
			return 0, fail(rule, "%g overflows bigint", f)
		}
		return int64(f), nil
	case bsontype.Decimal128:
		d, err := decimal(v)
		if err != nil {
			return 0, err
		}
		r := new(inf.Dec).Round(d, 0, inf.RoundExact)
		if r == nil || !r.UnscaledBig().IsInt64() {
			return 0, fail(rule, "%s is not an int64", v.Decimal128())
		}
		return r.UnscaledBig().Int64(), nil
	}
	return 0, fail(rule, "cannot convert %s to an integer", v.Type)
}

func decimal(v bson.RawValue) (*inf.Dec, error) {
	d := v.Decimal128()
	bi, exp, err := d.BigInt()
	if err != nil {
		return nil, fail("decimal128->decimal", "%s has no decimal form: %v", d, err)
	}
	return inf.NewDecBig(bi, inf.Scale(-exp)), nil
}

func asString(v bson.RawValue) (any, error) {
	switch v.Type {
	case bsontype.String:
		return v.StringValue(), nil
	case bsontype.ObjectID:
		return v.ObjectID().Hex(), nil
	case bsontype.Int32:
		return strconv.FormatInt(int64(v.Int32()), 10), nil
	case bsontype.Int64:
		return strconv.FormatInt(v.Int64(), 10), nil
	case bsontype.Double:
		return strconv.FormatFloat(v.Double(), 'g', -1, 64), nil
	case bsontype.Boolean:
		return strconv.FormatBool(v.Boolean()), nil
	case bsontype.Decimal128:
		return v.Decimal128().String(), nil
	case bsontype.DateTime:
		return time.UnixMilli(v.DateTime()).UTC().Format(time.RFC3339Nano), nil
	}
	return nil, fail("string", "cannot render %s as text", v.Type)
}

// canonicalJSON renders a value as relaxed extended JSON; the driver keeps
// document field order, so the text is deterministic.
func canonicalJSON(v bson.RawValue) (any, error) {
	doc := bson.D{{Key: "v", Value: v}}
	b, err := bson.MarshalExtJSON(doc, false, false)
	if err != nil {
		return nil, fail("json", "%v", err)
	}
	// Strip the {"v": ...} wrapper that lets scalars and arrays be rendered.
	s := string(b)
	s = strings.TrimPrefix(s, `{"v":`)
	s = strings.TrimSuffix(s, "}")
	return s, nil
}
