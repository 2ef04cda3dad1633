package mongoid

import (
	"bytes"
	"fmt"
	"math"
	"sort"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

func mustRaw(d bson.D) bson.Raw {
	b, err := bson.Marshal(d)
	if err != nil {
		panic(err)
	}
	return b
}

func TestTokenTime(t *testing.T) {
	for _, tc := range []struct {
		data string
		want envelope.Version
		ok   bool
	}{
		{"8263F3A9C4000000022B022C0100296E5A1004", envelope.Version{T: 0x63F3A9C4, I: 2}, true},
		{"6b14ed8600000013", envelope.Version{T: 0x6b14ed86, I: 0x13}, true}, // the stand-in
		{"zz", envelope.Version{}, false},
	} {
		got, ok := TokenTime(mustRaw(bson.D{{Key: "_data", Value: tc.data}}))
		if ok != tc.ok || got != tc.want {
			t.Errorf("%s: %v %v", tc.data, got, ok)
		}
	}
}

func TestAfterFilterCoversLaterBrackets(t *testing.T) {
	// Every _id type, in BSON sort order. The filter after each one must
	// admit every later one (by $gt within the bracket or $type after it).
	ids := []any{primitive.MinKey{}, primitive.Null{}, int32(-3), 2.5, int64(7), "a", "b", bson.D{{Key: "x", Value: 1}},
		primitive.Binary{Subtype: 4, Data: bytes.Repeat([]byte{1}, 16)}, primitive.NewObjectID(), false, true,
		primitive.NewDateTimeFromTime(time.Unix(1, 0)), primitive.Timestamp{T: 1}, primitive.MaxKey{}}
	for i, id := range ids {
		t.Run(fmt.Sprintf("%T", id), func(t *testing.T) {
			typ, v, _ := bson.MarshalValue(id)
			last := bson.RawValue{Type: typ, Value: v}
			f := After(&last, false)
			var types []string
			if or, err := mustRaw(f).LookupErr("$or"); err == nil {
				vals, _ := or.Array().Values()
				tv, _ := vals[1].Document().LookupErr("_id", "$type")
				arr, _ := tv.Array().Values()
				for _, a := range arr {
					types = append(types, a.StringValue())
				}
			}
			for _, later := range ids[i+1:] {
				lt, _, _ := bson.MarshalValue(later)
				if Bracket(lt) == Bracket(typ) {
					continue // $gt covers its own bracket
				}
				if !containsType(types, lt) {
					t.Errorf("after %v, %T (%s) is not selected: %v", id, later, lt, types)
				}
			}
			for _, earlier := range ids[:i] {
				et, _, _ := bson.MarshalValue(earlier)
				if Bracket(et) != Bracket(typ) && containsType(types, et) {
					t.Errorf("after %v, earlier %T is selected again", id, earlier)
				}
			}
		})
	}
}

func containsType(aliases []string, t interface{ String() string }) bool {
	names := map[string]string{"min key": "minKey", "null": "null", "double": "double", "32-bit integer": "int",
		"64-bit integer": "long", "string": "string", "embedded document": "object", "binary": "binData",
		"objectID": "objectId", "boolean": "bool", "UTC datetime": "date", "timestamp": "timestamp", "max key": "maxKey"}
	sort.Strings(aliases)
	for _, a := range aliases {
		if a == names[t.String()] {
			return true
		}
	}
	return false
}

// After a NaN _id (lowest of the numbers in MongoDB's order) $gt: NaN would
// match nothing; the page asks for every number from -Infinity instead.
func TestAfterFilterAfterNaN(t *testing.T) {
	typ, v, _ := bson.MarshalValue(math.NaN())
	f := mustRaw(After(&bson.RawValue{Type: typ, Value: v}, false))
	vals, _ := f.Lookup("$or").Array().Values()
	gte, err := vals[0].Document().LookupErr("_id", "$gte")
	if err != nil || !math.IsInf(gte.Double(), -1) {
		t.Fatalf("filter after NaN: %v", f)
	}
}

func TestAtMostFilterCoversEarlierBrackets(t *testing.T) {
	// The mirror of After: at or before each _id type, every earlier
	// bracket is selected by $type and no later one.
	ids := []any{primitive.MinKey{}, primitive.Null{}, int32(-3), 2.5, int64(7), "a", "b", bson.D{{Key: "x", Value: 1}},
		primitive.Binary{Subtype: 4, Data: bytes.Repeat([]byte{1}, 16)}, primitive.NewObjectID(), false, true,
		primitive.NewDateTimeFromTime(time.Unix(1, 0)), primitive.Timestamp{T: 1}, primitive.MaxKey{}}
	for i, id := range ids {
		t.Run(fmt.Sprintf("%T", id), func(t *testing.T) {
			typ, v, _ := bson.MarshalValue(id)
			last := bson.RawValue{Type: typ, Value: v}
			var types []string
			if or, err := mustRaw(AtMost(&last, false)).LookupErr("$or"); err == nil {
				vals, _ := or.Array().Values()
				tv, _ := vals[1].Document().LookupErr("_id", "$type")
				arr, _ := tv.Array().Values()
				for _, a := range arr {
					types = append(types, a.StringValue())
				}
			}
			for _, earlier := range ids[:i] {
				et, _, _ := bson.MarshalValue(earlier)
				if Bracket(et) != Bracket(typ) && !containsType(types, et) {
					t.Errorf("at most %v, earlier %T (%s) is not selected: %v", id, earlier, et, types)
				}
			}
			for _, later := range ids[i+1:] {
				lt, _, _ := bson.MarshalValue(later)
				if Bracket(lt) != Bracket(typ) && containsType(types, lt) {
					t.Errorf("at most %v, later %T is selected", id, later)
				}
			}
		})
	}
}
