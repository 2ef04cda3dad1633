package capture

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/tidemarkhq/tidemark/envelope"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"
)

// decodeEvent reads the fields capture needs from one change event in a
// single pass over its bytes. The event is copied once (the stream's buffer
// is reused by the next TryNext) and every bson.Raw field points into that
// copy. The driver's struct decoding, which it replaces, walked the event
// once per field kind through reflection and copied each field again: it
// was about half of capture's CPU per event.
//
// Anything a MongoDB server does not send in these fields (an unexpected
// BSON type, a splitEvent fragment) falls back to the driver's decoding, so
// the result is always the driver's; FuzzDecodeEvent holds it to that.
func decodeEvent(raw bson.Raw) (changeEvent, error) {
	if err := validEvent(raw); err != nil {
		return changeEvent{}, err
	}
	return decodeOwn(raw)
}

// decodeOwn decodes a copy of raw, which is valid.
func decodeOwn(raw bson.Raw) (changeEvent, error) {
	own := bson.Raw(append([]byte(nil), raw...))
	ev, ok := decodeEventFast(own, "")
	if !ok {
		return decodeEventDriver(own)
	}
	ev.setID()
	return ev, nil
}

// validEvent checks that raw is one well-formed BSON document.
func validEvent(raw bson.Raw) error {
	// Validate panics on a document shorter than 5 bytes, or declaring
	// itself so, and ignores bytes past the declared length, which the
	// driver refuses.
	if len(raw) < 5 || int32(binary.LittleEndian.Uint32(raw)) < 5 || int(binary.LittleEndian.Uint32(raw)) != len(raw) {
		return bsoncore.NewInsufficientBytesError(raw, raw)
	}
	return bsoncore.Document(raw).Validate()
}

// prebuilt is an event's Kafka record made while it was decoded: the
// envelope e it encodes, its key and value.
type prebuilt struct {
	e          envelope.Event
	key, value []byte
}

// decodeEventFor is decodeEvent for a stream of namespace ns, which also
// builds the event's record (ev.pre) when the event changes a document.
// Instead of a copy of the event and then a copy of its document in the
// record, the document is copied once, straight into the record's value,
// and ev.Full points there; the token, documentKey and lsid are copied
// beside it in the same allocation. flush uses the record if the envelope
// it makes is still the same (a lookup can replace the document).
func decodeEventFor(raw bson.Raw, ns string) (changeEvent, error) {
	if err := validEvent(raw); err != nil {
		return changeEvent{}, err
	}
	ev, ok := decodeEventFast(raw, ns) // points into raw, which the driver reuses
	if !ok {
		return decodeOwn(raw)
	}
	ev.setID()
	e, skip := eventEnvelope(ns, &ev, ev.version())
	if skip != "" {
		return decodeOwn(raw)
	}
	var other bson.Raw // a fullDocument the envelope does not carry (a delete's)
	if e.Doc == nil {
		other = ev.Full
	}
	buf := make([]byte, 0, envelope.MaxRecordLen(&e)+len(ev.Token)+len(ev.Key)+len(ev.LSID)+len(other))
	key, val, err := envelope.AppendRecord(buf, &e)
	if err != nil {
		return decodeOwn(raw)
	}
	used := len(key) + len(val)
	rest := buf[used:used] // after them, in the room left
	take := func(b []byte) []byte {
		if b == nil {
			return nil
		}
		rest = append(rest, b...)
		out := rest[len(rest)-len(b) : len(rest) : len(rest)]
		rest = rest[len(rest):]
		return out
	}
	if e.Doc != nil {
		n := len(val)
		ev.Full = bson.Raw(val[n-1-len(e.Doc) : n-1 : n-1]) // the document is the value's last element
	} else {
		ev.Full = take(other)
	}
	// The key and value are copies already; the event's fields and the
	// envelope kept for comparison must point at copies too.
	ev.Token, ev.Key, ev.LSID = take(ev.Token), take(ev.Key), take(ev.LSID)
	ev.setID()
	e.ID = ev.id
	if e.Doc != nil {
		e.Doc = ev.Full
	}
	ev.pre = prebuilt{e: e, key: key, value: val}
	return ev, nil
}

// record is ev.pre's record if e, the envelope flush made, is the one it
// encodes: the same document, _id, version and op.
func (ev *changeEvent) record(e *envelope.Event) (key, value []byte, ok bool) {
	p := &ev.pre
	if p.value == nil || e.Op != p.e.Op || e.Version != p.e.Version || e.Namespace != p.e.Namespace ||
		!same(e.Doc, p.e.Doc) || e.ID.Type != p.e.ID.Type || !same(e.ID.Value, p.e.ID.Value) {
		return nil, nil, false
	}
	return p.key, p.value, true
}

// same reports whether a and b are the same bytes in memory (not only equal).
func same(a, b []byte) bool {
	return len(a) == len(b) && (a == nil) == (b == nil) && (len(a) == 0 || &a[0] == &b[0])
}

// decodeEventDriver is the driver's full unmarshal of raw, which must not be
// reused by the caller afterwards (the result points into it). The driver
// (v1.17.10) can index out of range on a document that passes Validate
// (FuzzDecodeEvent found one, testdata/fuzz/FuzzDecodeEvent/da6d608b3a4a8de6):
// that is an error here, not a panic that would stop the daemon.
func decodeEventDriver(raw bson.Raw) (ev changeEvent, err error) {
	defer func() {
		if r := recover(); r != nil {
			ev, err = changeEvent{}, fmt.Errorf("malformed change event: %v", r)
		}
	}()
	if err := bson.Unmarshal(raw, &ev); err != nil {
		return changeEvent{}, err
	}
	ev.setID()
	return ev, nil
}

func (ev *changeEvent) setID() {
	ev.id = bson.RawValue{}
	if ev.Key != nil {
		if id, err := ev.Key.LookupErr("_id"); err == nil {
			ev.id = id
		}
	}
}

// decodeEventFast decodes a validated event; ok is false when a field has a
// type it leaves to the driver. ns, the stream's namespace or "", gives the
// strings of an ns or to field that names it, instead of new ones.
func decodeEventFast(raw bson.Raw, ns string) (ev changeEvent, ok bool) {
	db, coll, _ := strings.Cut(ns, ".")
	rest := raw[4 : len(raw)-1]
	for len(rest) > 0 {
		if rest[0] == 0 {
			return ev, false // a terminator before the end: Validate lets it pass, the driver does not
		}
		el, r, ok := bsoncore.ReadElement(rest)
		if !ok {
			return ev, false
		}
		rest = r
		key, v := keyValue(el)
		switch string(key) { // compared without a conversion
		case "_id", "documentKey", "fullDocument", "lsid":
			var d bson.Raw
			switch v.Type {
			case bsontype.EmbeddedDocument:
				d = bson.Raw(v.Data)
			case bsontype.Null:
			default:
				return ev, false
			}
			switch string(key) {
			case "_id":
				ev.Token = d
			case "documentKey":
				ev.Key = d
			case "fullDocument":
				ev.Full = d
			case "lsid":
				ev.LSID = d
			}
		case "operationType":
			switch v.Type {
			case bsontype.String:
				if !terminated(v) {
					return ev, false
				}
				ev.Op = opName(v)
			case bsontype.Null:
				ev.Op = ""
			default:
				return ev, false
			}
		case "clusterTime":
			switch v.Type {
			case bsontype.Timestamp:
				t, i := v.Timestamp()
				ev.ClusterTime = primitive.Timestamp{T: t, I: i}
			case bsontype.Null:
				ev.ClusterTime = primitive.Timestamp{}
			default:
				return ev, false
			}
		case "ns", "to":
			p := &ev.NS
			if string(key) == "to" {
				p = &ev.To
			}
			switch v.Type {
			case bsontype.EmbeddedDocument:
				if !decodeNS(v.Data, p, db, coll) {
					return ev, false
				}
			case bsontype.Null:
				p.DB, p.Coll = "", ""
			default:
				return ev, false
			}
		case "txnNumber":
			switch v.Type {
			case bsontype.Int64:
				n := v.Int64()
				ev.TxnNumber = &n
			case bsontype.Int32:
				n := int64(v.Int32())
				ev.TxnNumber = &n
			case bsontype.Null:
				ev.TxnNumber = nil
			default:
				return ev, false
			}
		case "splitEvent":
			return ev, false
		default:
			if foldsTo(key, eventFields...) {
				return ev, false // the driver matches struct fields case-insensitively
			}
		}
	}
	return ev, true
}

// opNames are the operation types of change events, so that decoding one
// does not allocate its name again for every event.
var opNames = []string{"insert", "update", "replace", "delete", "invalidate", "drop", "rename", "dropDatabase"}

// opName is the string of v, an operationType: a shared one when it is a
// known name. v is terminated (see terminated): its data is a length, the
// bytes and a NUL.
func opName(v bsoncore.Value) string {
	if len(v.Data) > 4 {
		b := v.Data[4 : len(v.Data)-1]
		for _, n := range opNames {
			if string(b) == n { // compared without a conversion
				return n
			}
		}
	}
	return v.StringValue()
}

// decodeNS reads {db, coll} into p, keeping fields the document lacks (as
// the driver's struct decoding does).
func decodeNS(doc []byte, p *struct {
	DB   string `bson:"db"`
	Coll string `bson:"coll"`
}, db, coll string) bool {
	rest := doc[4 : len(doc)-1]
	for len(rest) > 0 {
		if rest[0] == 0 {
			return false
		}
		el, r, ok := bsoncore.ReadElement(rest)
		if !ok {
			return false
		}
		rest = r
		k, v := keyValue(el)
		if string(k) != "db" && string(k) != "coll" {
			if foldsTo(k, "db", "coll") {
				return false
			}
			continue
		}
		var s string
		switch v.Type {
		case bsontype.String:
			if !terminated(v) {
				return false
			}
			switch b := v.Data[4 : len(v.Data)-1]; {
			case string(b) == db: // compared without a conversion
				s = db
			case string(b) == coll:
				s = coll
			default:
				s = string(b)
			}
		case bsontype.Null:
		default:
			return false
		}
		if string(k) == "db" {
			p.DB = s
		} else {
			p.Coll = s
		}
	}
	return true
}

// keyValue is the key and value of el, an element ReadElement returned:
// the key's bytes up to its NUL, the value after it (el.Key and el.Value
// each search for the NUL, and Key allocates).
func keyValue(el bsoncore.Element) ([]byte, bsoncore.Value) {
	k := el.KeyBytes()
	return k, bsoncore.Value{Type: bsontype.Type(el[0]), Data: el[len(k)+2:]}
}

// terminated reports whether a string value ends with its null byte, which
// Validate does not check and the driver refuses without.
func terminated(v bsoncore.Value) bool {
	return len(v.Data) > 4 && v.Data[len(v.Data)-1] == 0
}

var eventFields = []string{"_id", "operationType", "clusterTime", "documentKey", "fullDocument", "ns", "to", "lsid",
	"txnNumber", "splitEvent"}

// foldsTo reports whether key equals one of names up to case.
func foldsTo(key []byte, names ...string) bool {
	// Two ASCII strings fold to each other only at equal lengths; the
	// names are ASCII. Unicode folding can match other lengths ("ſ" is
	// "s"), so a key with other bytes is compared with each name.
	ascii := true
	for i := 0; i < len(key) && ascii; i++ {
		ascii = key[i] < utf8.RuneSelf
	}
	for _, n := range names {
		if ascii && len(key) != len(n) {
			continue
		}
		if bytes.EqualFold(key, []byte(n)) {
			return true
		}
	}
	return false
}
