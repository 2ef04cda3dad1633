// Package envelope is the change-event record format every tidemark stage shares.
//
// A Kafka record's key is the canonical bytes of the document _id (Key), so one
// document always lands on one partition. Its value is a small BSON document that
// carries the operation, the namespace, the _id, the source version and the full
// document as raw BSON: capture never decodes and re-encodes a document, and the
// envelope does not depend on any transform spec.
package envelope

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"
)

// FormatVersion is written into every record so that a future layout can be told apart.
const FormatVersion = 1

// Op is what happened to the document.
type Op string

// The operations a record can carry. Backfill is a full document read by a scan,
// stamped just below the cluster time of the change stream that covers it.
const (
	OpInsert   Op = "insert"
	OpUpdate   Op = "update"
	OpReplace  Op = "replace"
	OpDelete   Op = "delete"
	OpBackfill Op = "backfill"
)

// Valid reports whether op is one of the known operations.
func (op Op) Valid() bool {
	switch op {
	case OpInsert, OpUpdate, OpReplace, OpDelete, OpBackfill:
		return true
	}
	return false
}

// Event is one change of one document.
type Event struct {
	Op Op
	// Namespace is "db.collection".
	Namespace string
	// ID is the document's _id exactly as the source holds it.
	ID bson.RawValue
	// Version is the source cluster time of the state this event carries.
	Version Version
	// Doc is the full document; nil for a delete, and for an update whose lookup
	// found the document already gone (the delete event follows).
	Doc bson.Raw
}

// Key is the Kafka record key of the event: the canonical bytes of its _id.
func (e *Event) Key() []byte { return Key(e.ID) }

// ErrMalformed wraps every decoding failure.
var ErrMalformed = errors.New("envelope: malformed record")

// MaxLen is the most bytes Encode appends for e: names, types, lengths, op
// and version take 60 at most beside the namespace, the _id and the
// document.
func MaxLen(e *Event) int { return 64 + len(e.Namespace) + len(e.ID.Value) + len(e.Doc) }

// MaxRecordLen is the most bytes AppendRecord appends for e.
func MaxRecordLen(e *Event) int { return 9 + len(e.ID.Value) + MaxLen(e) }

// AppendRecord appends e's record key and then its value to dst, growing it
// once, and returns both; each is capped at its length, so appending to one
// never writes into the other or into what follows them in dst.
func AppendRecord(dst []byte, e *Event) (key, value []byte, err error) {
	dst = slices.Grow(dst, MaxRecordLen(e))
	n := len(dst)
	dst = AppendKey(dst, e.ID)
	key = dst[n:len(dst):len(dst)]
	n = len(dst)
	dst, err = Encode(dst, e)
	return key, dst[n:len(dst):len(dst)], err
}

// Encode appends the record value of e to dst.
func Encode(dst []byte, e *Event) ([]byte, error) {
	if !e.Op.Valid() {
		return dst, fmt.Errorf("envelope: encode: unknown op %q", e.Op)
	}
	if e.ID.Type == 0 || len(e.ID.Value) == 0 && !emptyValueType(e.ID.Type) {
		return dst, errors.New("envelope: encode: missing _id")
	}
	if e.Op == OpDelete && e.Doc != nil {
		return dst, errors.New("envelope: encode: a delete carries no document")
	}
	dst = slices.Grow(dst, MaxLen(e)) // one allocation when dst has no room
	idx, dst := bsoncore.AppendDocumentStart(dst)
	dst = bsoncore.AppendInt32Element(dst, "v", FormatVersion)
	dst = bsoncore.AppendStringElement(dst, "op", string(e.Op))
	dst = bsoncore.AppendStringElement(dst, "ns", e.Namespace)
	dst = bsoncore.AppendValueElement(dst, "id", bsoncore.Value{Type: e.ID.Type, Data: e.ID.Value})
	dst = bsoncore.AppendTimestampElement(dst, "ver", e.Version.T, e.Version.I)
	if e.Doc != nil {
		dst = bsoncore.AppendDocumentElement(dst, "doc", e.Doc)
	}
	return bsoncore.AppendDocumentEnd(dst, idx)
}

// Decode parses a record value. The returned event's ID and Doc alias b.
// Garbage yields an error wrapping ErrMalformed, never a panic.
func Decode(b []byte) (Event, error) {
	var e Event
	raw := bson.Raw(b)
	if err := Validate(raw); err != nil {
		return e, err
	}
	// One pass over the top-level elements: a lookup per field walked the
	// envelope six times, which cost the sink more than validating it.
	const (
		fv = iota
		fop
		fns
		fid
		fver
		fdoc
	)
	var f [6]bsoncore.Value
	var has [6]bool
	rest := b[4 : len(b)-1]
	for len(rest) > 0 {
		el, r, ok := bsoncore.ReadElement(rest)
		if !ok {
			return e, fmt.Errorf("%w: unreadable element", ErrMalformed)
		}
		rest = r
		var i int
		switch string(el.KeyBytes()) {
		case "v":
			i = fv
		case "op":
			i = fop
		case "ns":
			i = fns
		case "id":
			i = fid
		case "ver":
			i = fver
		case "doc":
			i = fdoc
		default:
			continue
		}
		// The first of a repeated key wins, as a lookup would have it.
		if !has[i] {
			has[i], f[i] = true, el.Value()
		}
	}
	v, op, ns, id, ver, doc := f[fv], f[fop], f[fns], f[fid], f[fver], f[fdoc]
	if !has[fv] || v.Type != bsontype.Int32 || v.Int32() != FormatVersion {
		return e, fmt.Errorf("%w: missing or unsupported format version", ErrMalformed)
	}
	ops, ok := op.StringValueOK()
	if !ok || !Op(ops).Valid() {
		return e, fmt.Errorf("%w: op %q", ErrMalformed, ops)
	}
	e.Op = Op(ops)
	if e.Namespace, ok = ns.StringValueOK(); !ok {
		return e, fmt.Errorf("%w: missing ns", ErrMalformed)
	}
	if !has[fid] {
		return e, fmt.Errorf("%w: missing id", ErrMalformed)
	}
	if id.Type == bsontype.Array || id.Type == bsontype.Undefined {
		// MongoDB forbids both as _id; refusing them keeps Key total and canonical.
		return e, fmt.Errorf("%w: _id of type %s", ErrMalformed, id.Type)
	}
	e.ID = bson.RawValue{Type: id.Type, Value: id.Data}
	t, i, ok := ver.TimestampOK()
	if !ok {
		return e, fmt.Errorf("%w: missing ver", ErrMalformed)
	}
	e.Version = Version{T: t, I: i}
	if has[fdoc] {
		d, ok := doc.DocumentOK()
		if !ok {
			return e, fmt.Errorf("%w: doc is %s, not a document", ErrMalformed, doc.Type)
		}
		e.Doc = bson.Raw(d)
	}
	if e.Op == OpDelete && e.Doc != nil {
		return e, fmt.Errorf("%w: a delete carries a document", ErrMalformed)
	}
	if (e.Op == OpInsert || e.Op == OpReplace || e.Op == OpBackfill) && e.Doc == nil {
		return e, fmt.Errorf("%w: %s without a document", ErrMalformed, e.Op)
	}
	return e, nil
}

func emptyValueType(t bsontype.Type) bool {
	return t == bsontype.Null || t == bsontype.MinKey || t == bsontype.MaxKey
}

// Validate checks that b is one well-formed BSON document. The driver's own
// validation indexes out of range on a length prefix below 5 (seen with
// mongo-driver v1.17.10, found by FuzzDecode), so the prefix is checked first
// and any panic left in nested validation becomes an error.
func Validate(b []byte) (err error) {
	if len(b) < 5 {
		return fmt.Errorf("%w: %d bytes is shorter than any BSON document", ErrMalformed, len(b))
	}
	if n := int32(binary.LittleEndian.Uint32(b)); n < 5 || int(n) != len(b) {
		return fmt.Errorf("%w: length prefix %d for %d bytes", ErrMalformed, n, len(b))
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrMalformed, r)
		}
	}()
	if err := bson.Raw(b).Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}
