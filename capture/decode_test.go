package capture

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"
)

// FuzzDecodeEvent holds the single-pass decoder to the driver's full
// unmarshal: whatever the driver decodes, decodeEvent decodes to the same
// fields; whatever the driver refuses, decodeEvent refuses too.
func FuzzDecodeEvent(f *testing.F) {
	for _, e := range []ev{
		{op: "insert", t: 10, i: 1, id: 7, doc: doc(7, "a", 1)},
		{op: "update", t: 10, i: 2, id: "k", doc: doc("k", "b", "x"), updDesc: true},
		{op: "delete", t: 11, i: 1, id: primitive.NewObjectID()},
		{op: "insert", t: 12, i: 1, id: int64(3), doc: doc(int64(3)), txn: 5},
		{op: "rename", t: 13, i: 1, to: "shop.other"},
		{op: "invalidate", t: 13, i: 2},
	} {
		f.Add([]byte(e.raw()))
	}
	odd, _ := bson.Marshal(bson.D{{Key: "_id", Value: nil}, {Key: "operationType", Value: 5},
		{Key: "ns", Value: bson.D{{Key: "db", Value: "a"}}}, {Key: "ns", Value: bson.D{{Key: "coll", Value: "b"}}},
		{Key: "txnNumber", Value: int32(4)}, {Key: "splitEvent", Value: bson.D{{Key: "fragment", Value: 1}, {Key: "of", Value: 2}}}})
	f.Add(odd)
	nulls, _ := bson.Marshal(bson.D{{Key: "clusterTime", Value: nil}, {Key: "txnNumber", Value: int64(2)}, {Key: "txnNumber", Value: nil},
		{Key: "fullDocument", Value: nil}, {Key: "to", Value: nil}, {Key: "operationType", Value: "x"}, {Key: "operationType", Value: nil}})
	f.Add(nulls)
	f.Fuzz(func(t *testing.T, b []byte) {
		in := append([]byte(nil), b...)
		got, gerr := decodeEvent(bson.Raw(b))
		if !bytes.Equal(in, b) {
			t.Fatal("decodeEvent changed its input")
		}
		// The stream's decoder agrees with it, and its prebuilt record is
		// the envelope's encoding.
		scratch := append([]byte(nil), b...)
		gotFor, ferr := decodeEventFor(bson.Raw(scratch), rns)
		if !bytes.Equal(in, scratch) {
			t.Fatal("decodeEventFor changed its input")
		}
		for i := range scratch {
			scratch[i] = 0 // the next TryNext overwrites the stream's buffer
		}
		if (ferr == nil) != (gerr == nil) || ferr == nil && !sameEvent(gotFor, got) {
			t.Fatalf("decodeEventFor %+v, %v; decodeEvent %+v, %v", gotFor, ferr, got, gerr)
		}
		if env, skip := eventEnvelope(rns, &gotFor, gotFor.version()); ferr == nil && skip == "" {
			_, val, ok := gotFor.record(&env)
			if want, err := envelope.Encode(nil, &env); ok && (err != nil || !bytes.Equal(val, want)) {
				t.Fatalf("prebuilt value differs from the envelope's encoding (%v)", err)
			}
		}
		// The driver's unmarshal can panic on malformed bytes (an index out
		// of range was found here), so it is only the reference for BSON the
		// driver can decode as a whole; decodeEvent must refuse what fails
		// validation, and must not panic on anything.
		if len(in) < 5 || int32(binary.LittleEndian.Uint32(in)) < 5 || bsoncore.Document(in).Validate() != nil {
			if gerr == nil {
				t.Fatalf("decodeEvent accepts malformed BSON: %+v", got)
			}
			return
		}
		if !wellFormed(in) {
			return
		}
		want, werr := decodeEventDriver(bson.Raw(in))
		if werr != nil {
			if gerr == nil {
				t.Fatalf("driver refuses (%v), decodeEvent accepts %+v", werr, got)
			}
			return
		}
		if gerr != nil {
			t.Fatalf("driver decodes %+v, decodeEvent refuses: %v", want, gerr)
		}
		if !sameEvent(got, want) {
			t.Fatalf("decodeEvent\n%+v\ndriver\n%+v", got, want)
		}
	})
}

// wellFormed reports whether the driver decodes b as a whole document.
// bsoncore's Validate passes some bytes the driver's decoder refuses (a
// string without its null byte in a nested document, a terminator before a
// nested document's end); no server sends those.
func wellFormed(b []byte) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	var d bson.D
	return bson.Unmarshal(b, &d) == nil
}

func sameEvent(a, b changeEvent) bool {
	raw := func(x, y bson.Raw) bool { return len(x) == 0 && len(y) == 0 || bytes.Equal(x, y) }
	return raw(a.Token, b.Token) && a.Op == b.Op && a.ClusterTime == b.ClusterTime && raw(a.Key, b.Key) &&
		raw(a.Full, b.Full) && a.NS == b.NS && a.To == b.To && raw(a.LSID, b.LSID) &&
		reflect.DeepEqual(a.TxnNumber, b.TxnNumber) && reflect.DeepEqual(a.Split, b.Split) &&
		a.id.Type == b.id.Type && bytes.Equal(a.id.Value, b.id.Value)
}

// The decoder's result must not alias the stream's buffer, which the next
// TryNext overwrites.
func TestDecodeEventCopies(t *testing.T) {
	raw := ev{op: "insert", t: 10, i: 1, id: 7, doc: doc(7, "a", 1)}.raw()
	got, err := decodeEvent(raw)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := decodeEventDriver(append(bson.Raw(nil), raw...))
	for i := range raw {
		raw[i] = 0
	}
	if !sameEvent(got, want) {
		t.Fatalf("decoded event changed with the buffer: %+v", got)
	}
}

// decodeEventFor decodes what decodeEvent does, aliases nothing of the
// stream's buffer, and its prebuilt record is the one flush would encode:
// every op, every _id type, in and out of a transaction, with and without a
// document.
func TestDecodeEventForPrebuildsTheRecord(t *testing.T) {
	ids := []any{int32(7), int64(-3), 2.5, "k", primitive.NewObjectID(), bson.D{{Key: "a", Value: 1}},
		primitive.Binary{Subtype: 4, Data: make([]byte, 16)}, true, primitive.NewDateTimeFromTime(time.Unix(5, 0)),
		primitive.Decimal128{}, primitive.MinKey{}, primitive.MaxKey{}} // MongoDB refuses array, regex and undefined _ids
	var events []ev
	for _, id := range ids {
		for _, txn := range []int64{0, 9} {
			d := doc(id, "name", "n", "bio", "b")
			events = append(events,
				ev{op: "insert", t: 10, i: 1, id: id, doc: d, txn: txn},
				ev{op: "update", t: 10, i: 2, id: id, doc: d, txn: txn, updDesc: true},
				ev{op: "update", t: 10, i: 3, id: id, txn: txn, updDesc: true}, // no fullDocument
				ev{op: "replace", t: 10, i: 4, id: id, doc: d, txn: txn},
				ev{op: "replace", t: 10, i: 5, id: id, txn: txn}, // the document is gone
				ev{op: "delete", t: 11, i: 1, id: id, txn: txn},
				ev{op: "delete", t: 11, i: 2, id: id, doc: d, txn: txn}, // a fullDocument no server sends with a delete
				ev{op: "insert", t: 12, i: 1, id: id, doc: d, docKey: bson.D{{Key: "region", Value: "eu"}, {Key: "_id", Value: id}}})
		}
	}
	events = append(events, ev{op: "rename", t: 13, i: 1, to: "shop.other"}, ev{op: "drop", t: 13, i: 2},
		ev{op: "invalidate", t: 13, i: 3}, ev{op: "update", t: 14, i: 1, updDesc: true}) // no documentKey
	for _, e := range events {
		raw := e.raw()
		want, err := decodeEvent(raw)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeEventFor(raw, rns)
		if err != nil {
			t.Fatalf("%+v: %v", e, err)
		}
		for i := range raw {
			raw[i] = 0 // the next TryNext overwrites the buffer
		}
		if !sameEvent(got, want) {
			t.Fatalf("%+v: decodeEventFor\n%+v\ndecodeEvent\n%+v", e, got, want)
		}
		env, skip := eventEnvelope(rns, &got, got.version())
		key, val, ok := got.record(&env)
		if ok != (skip == "") {
			t.Fatalf("%+v: prebuilt record %v, envelope skipped for %q", e, ok, skip)
		}
		if !ok {
			continue
		}
		wantVal, err := envelope.Encode(nil, &env)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(val, wantVal) || !bytes.Equal(key, envelope.Key(env.ID)) {
			t.Fatalf("%+v: prebuilt record differs from the encoded one", e)
		}
		if dec, err := envelope.Decode(val); err != nil || !bytes.Equal(dec.Doc, env.Doc) || dec.Op != env.Op {
			t.Fatalf("%+v: prebuilt value decodes to %+v, %v", e, dec, err)
		}
		// A lookup that replaced the document makes flush encode anew.
		env.Doc = append(bson.Raw(nil), env.Doc...)
		if _, _, ok := got.record(&env); ok && env.Doc != nil {
			t.Fatalf("%+v: prebuilt record used for another document", e)
		}
	}
}

// BenchmarkDecodeEvent times decodeEvent on a ~1 KB insert event against the
// baseline of the driver's struct unmarshal of the same event (what capture
// did before), in the same run; of-baseline is events/s over the baseline's.
func BenchmarkDecodeEvent(b *testing.B) {
	raw := ev{op: "insert", t: 10, i: 1, id: primitive.NewObjectID(), doc: doc(1, "name", "user", "bio", string(make([]byte, 900)))}.raw()
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		decodeEvent(raw)
	}
	fast := time.Since(start)
	b.StopTimer()
	start = time.Now()
	for i := 0; i < b.N; i++ {
		decodeEventDriver(append(bson.Raw(nil), raw...))
	}
	driver := time.Since(start)
	b.ReportMetric(float64(b.N)/fast.Seconds(), "events/s")
	b.ReportMetric(float64(b.N)/driver.Seconds(), "baseline_driver_events/s")
	b.ReportMetric(driver.Seconds()/fast.Seconds(), "of-baseline")
}
