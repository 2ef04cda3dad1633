package envelope

import (
	"bytes"
	"errors"
	"math"
	"testing"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

func rawValue(t testing.TB, v any) bson.RawValue {
	t.Helper()
	typ, data, err := bson.MarshalValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return bson.RawValue{Type: typ, Value: data}
}

func TestRoundTrip(t *testing.T) {
	oid := primitive.NewObjectID()
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: oid}, {Key: "name", Value: "ada"}, {Key: "n", Value: 3.5}})
	cases := []Event{
		{Op: OpInsert, Namespace: "app.users", ID: rawValue(t, oid), Version: Version{T: 1700000000, I: 7}, Doc: doc},
		{Op: OpUpdate, Namespace: "app.users", ID: rawValue(t, "k"), Version: Version{T: 1, I: 0}, Doc: nil},
		{Op: OpDelete, Namespace: "app.users", ID: rawValue(t, int64(42)), Version: Version{T: 2, I: 1}},
		{Op: OpBackfill, Namespace: "a.b", ID: rawValue(t, bson.D{{Key: "a", Value: 1}}), Version: Below(Version{T: 10}), Doc: doc},
	}
	for _, want := range cases {
		b, err := Encode(nil, &want)
		if err != nil {
			t.Fatalf("%s: %v", want.Op, err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: decode: %v", want.Op, err)
		}
		if got.Op != want.Op || got.Namespace != want.Namespace || got.Version != want.Version ||
			!got.ID.Equal(want.ID) || !bytes.Equal(got.Doc, want.Doc) || (got.Doc == nil) != (want.Doc == nil) {
			t.Fatalf("round trip: got %+v, want %+v", got, want)
		}
		if !bytes.Equal(got.Key(), want.Key()) {
			t.Fatalf("key changed in round trip")
		}
	}
}

// Encode sizes the value once: every op, with the longest and shortest _id
// types and with and without a document, allocates once and fits the room
// it asked for; AppendRecord makes key and value in one allocation.
func TestEncodeAllocatesOnce(t *testing.T) {
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: "k"}, {Key: "bio", Value: string(make([]byte, 900))}})
	ids := []bson.RawValue{rawValue(t, primitive.NewObjectID()), rawValue(t, "a string _id of some length"),
		rawValue(t, int32(1)), rawValue(t, bson.D{{Key: "a", Value: 1}, {Key: "b", Value: "two"}}), {Type: bsontype.MinKey}}
	for _, op := range []Op{OpInsert, OpUpdate, OpReplace, OpDelete, OpBackfill} {
		for _, id := range ids {
			for _, d := range []bson.Raw{nil, doc} {
				if op == OpDelete && d != nil {
					continue
				}
				e := Event{Op: op, Namespace: "shop.a_longer_collection_name", ID: id, Version: Version{T: math.MaxUint32, I: math.MaxUint32}, Doc: d}
				b, err := Encode(nil, &e)
				if err != nil {
					t.Fatal(err)
				}
				if room := MaxLen(&e); len(b) > room {
					t.Errorf("%s, %s _id, doc %v: value of %d bytes, Encode made room for %d", op, id.Type, d != nil, len(b), room)
				}
				if n := testing.AllocsPerRun(20, func() { _, _ = Encode(nil, &e) }); n != 1 && !raceEnabled {
					t.Errorf("%s, %s _id, doc %v: %v allocations, want 1", op, id.Type, d != nil, n)
				}
				key, val, err := AppendRecord(nil, &e)
				if err != nil || !bytes.Equal(key, Key(id)) || !bytes.Equal(val, b) {
					t.Fatalf("%s, %s _id: AppendRecord %x %x %v, want the key and Encode's value", op, id.Type, key, val, err)
				}
				if n := testing.AllocsPerRun(20, func() { _, _, _ = AppendRecord(nil, &e) }); n != 1 && !raceEnabled {
					t.Errorf("%s, %s _id, doc %v: AppendRecord made %v allocations, want 1", op, id.Type, d != nil, n)
				}
				_ = append(key, 0xff) // capped: appending to the key must not write into the value
				if !bytes.Equal(val, b) {
					t.Fatalf("%s, %s _id: appending to the key changed the value", op, id.Type)
				}
			}
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: 1}})
	for name, e := range map[string]Event{
		"unknown op":     {Op: "upsert", ID: rawValue(t, 1)},
		"missing id":     {Op: OpInsert, Doc: doc},
		"delete and doc": {Op: OpDelete, ID: rawValue(t, 1), Doc: doc},
	} {
		if _, err := Encode(nil, &e); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}

func TestKeyIsTypeAware(t *testing.T) {
	oid := primitive.NewObjectID()
	if bytes.Equal(Key(rawValue(t, oid)), Key(rawValue(t, oid.Hex()))) {
		t.Fatal("ObjectId and its hex string share a key")
	}
	if bytes.Equal(Key(rawValue(t, "1")), Key(rawValue(t, int32(1)))) {
		t.Fatal("string and number share a key")
	}
	// MongoDB's _id index treats these as one key, so tidemark must too.
	same := []any{int32(7), int64(7), 7.0}
	for _, v := range same[1:] {
		if !bytes.Equal(Key(rawValue(t, same[0])), Key(rawValue(t, v))) {
			t.Fatalf("%T 7 and int32 7 differ", v)
		}
	}
	if !bytes.Equal(Key(rawValue(t, 0.0)), Key(rawValue(t, math.Copysign(0, -1)))) {
		t.Fatal("-0.0 and 0.0 differ")
	}
	if bytes.Equal(Key(rawValue(t, 7.5)), Key(rawValue(t, int64(7)))) {
		t.Fatal("7.5 and 7 share a key")
	}
	if bytes.Equal(Key(rawValue(t, 1e300)), Key(rawValue(t, math.MaxInt64))) {
		t.Fatal("out-of-range double folded into int64")
	}
	back, err := ParseKey(Key(rawValue(t, oid)))
	if err != nil || back.ObjectID() != oid {
		t.Fatalf("ParseKey: %v %v", back, err)
	}
}

func TestVersionOrderMatchesMicros(t *testing.T) {
	vs := []Version{{0, 1}, {1, 0}, {1, 1}, {1, 999_999}, {2, 0}, {1700000000, 5}}
	for i := 1; i < len(vs); i++ {
		if !vs[i-1].Before(vs[i]) || vs[i-1].Micros() >= vs[i].Micros() {
			t.Fatalf("%v vs %v out of order", vs[i-1], vs[i])
		}
	}
	for _, t0 := range vs {
		b := Below(t0)
		if !b.Before(t0) || b.Micros() >= t0.Micros() {
			t.Fatalf("Below(%v) = %v is not below", t0, b)
		}
		if VersionFromMicros(t0.Micros()) != t0 {
			t.Fatalf("micros round trip of %v", t0)
		}
	}
}

func TestDecodeGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, {}, {5, 0, 0, 0, 0}, []byte("not bson at all"), {0xff, 0xff, 0xff, 0x7f, 0}} {
		if _, err := Decode(b); !errors.Is(err, ErrMalformed) {
			t.Fatalf("Decode(%x) = %v, want ErrMalformed", b, err)
		}
	}
	// Valid BSON, wrong shape.
	b, _ := bson.Marshal(bson.D{{Key: "v", Value: int32(1)}, {Key: "op", Value: "insert"}, {Key: "ns", Value: "a.b"},
		{Key: "id", Value: 1}, {Key: "ver", Value: primitive.Timestamp{T: 1}}})
	if _, err := Decode(b); !errors.Is(err, ErrMalformed) {
		t.Fatalf("insert without document decoded: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: 1}, {Key: "x", Value: bson.A{1, "a"}}})
	e := Event{Op: OpInsert, Namespace: "a.b", ID: bson.RawValue{Type: 0x10, Value: []byte{1, 0, 0, 0}}, Version: Version{T: 1, I: 2}, Doc: doc}
	seed, _ := Encode(nil, &e)
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := Decode(b)
		ref, refErr := decodeByLookup(b)
		if (err == nil) != (refErr == nil) {
			t.Fatalf("Decode: %v; decoding by lookups: %v", err, refErr)
		}
		if err != nil {
			return
		}
		if ev.Op != ref.Op || ev.Namespace != ref.Namespace || ev.ID.Type != ref.ID.Type || !bytes.Equal(ev.ID.Value, ref.ID.Value) ||
			ev.Version != ref.Version || !bytes.Equal(ev.Doc, ref.Doc) {
			t.Fatalf("Decode gives %+v, decoding by lookups %+v", ev, ref)
		}
		// Whatever decodes must re-encode to a record that decodes to the same event.
		out, err := Encode(nil, &ev)
		if err != nil {
			t.Fatalf("decoded event does not re-encode: %v", err)
		}
		again, err := Decode(out)
		if err != nil || again.Op != ev.Op || again.Version != ev.Version || !bytes.Equal(again.Key(), ev.Key()) {
			t.Fatalf("re-decode differs: %v", err)
		}
		_ = ev.Key()
	})
}

func TestDeadLetterRoundTrip(t *testing.T) {
	d := DeadLetter{Stage: "sink", Reason: "invalid", Key: []byte{2, 1}, Version: Version{T: 3, I: 4}, Topic: "t", Partition: 2, Offset: 9, Record: make([]byte, MaxDeadLetterRecord+10)}
	b, err := EncodeDeadLetter(d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeDeadLetter(b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Truncated || len(got.Record) != MaxDeadLetterRecord || got.Offset != 9 || got.Version != d.Version || got.Time.IsZero() {
		t.Fatalf("dead letter round trip: %+v", got)
	}
}

// decodeByLookup is Decode as it was written first, one lookup per field:
// slower, and plainly right, so the fuzzer compares the two.
func decodeByLookup(b []byte) (Event, error) {
	var e Event
	raw := bson.Raw(b)
	if err := Validate(raw); err != nil {
		return e, err
	}
	v, err := raw.LookupErr("v")
	if err != nil || v.Type != bsontype.Int32 || v.Int32() != FormatVersion {
		return e, ErrMalformed
	}
	op, ok := raw.Lookup("op").StringValueOK()
	if !ok || !Op(op).Valid() {
		return e, ErrMalformed
	}
	e.Op = Op(op)
	if e.Namespace, ok = raw.Lookup("ns").StringValueOK(); !ok {
		return e, ErrMalformed
	}
	id, err := raw.LookupErr("id")
	if err != nil || id.Type == bsontype.Array || id.Type == bsontype.Undefined {
		return e, ErrMalformed
	}
	e.ID = id
	t, i, ok := raw.Lookup("ver").TimestampOK()
	if !ok {
		return e, ErrMalformed
	}
	e.Version = Version{T: t, I: i}
	if d, err := raw.LookupErr("doc"); err == nil {
		doc, ok := d.DocumentOK()
		if !ok {
			return e, ErrMalformed
		}
		e.Doc = doc
	}
	if e.Op == OpDelete && e.Doc != nil || (e.Op == OpInsert || e.Op == OpReplace || e.Op == OpBackfill) && e.Doc == nil {
		return e, ErrMalformed
	}
	return e, nil
}

// BenchmarkDecode decodes the envelope of a small user document, as the sink
// does for every record, next to decodeByLookup.
func BenchmarkDecode(b *testing.B) {
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: int64(42)}, {Key: "email", Value: "u42@x.org"},
		{Key: "name", Value: bson.D{{Key: "first", Value: "U"}, {Key: "last", Value: "42"}}}, {Key: "age", Value: int32(20)},
		{Key: "tags", Value: bson.A{"a", "b"}}, {Key: "address", Value: bson.D{{Key: "city", Value: "Paris"}}}})
	ev := Event{Op: OpInsert, Namespace: "app.users", ID: bson.Raw(doc).Lookup("_id"), Version: Version{T: 1, I: 2}, Doc: doc}
	rec, err := Encode(nil, &ev)
	if err != nil {
		b.Fatal(err)
	}
	for name, decode := range map[string]func([]byte) (Event, error){"one pass": Decode, "by lookup": decodeByLookup} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decode(rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
