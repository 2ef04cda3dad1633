package envelope

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
)

// Key returns the canonical bytes of a document _id: one BSON type byte followed by
// the value's BSON bytes. The type byte keeps an ObjectId apart from the string of
// its hex. Numbers are the exception: MongoDB's _id index treats int32 1, int64 1
// and double 1.0 as the same key, so every integral number within int64 range is
// written as an int64; other doubles keep their own type.
func Key(id bson.RawValue) []byte {
	return AppendKey(make([]byte, 0, 1+len(id.Value)), id)
}

// AppendKey appends Key(id) to dst.
func AppendKey(dst []byte, id bson.RawValue) []byte {
	if n, ok := integral(id); ok {
		dst = append(dst, byte(bsontype.Int64))
		return binary.LittleEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, byte(id.Type))
	return append(dst, id.Value...)
}

// ParseKey returns the _id a key was made from. For numbers it returns the int64
// form Key chose.
func ParseKey(key []byte) (bson.RawValue, error) {
	if len(key) < 1 {
		return bson.RawValue{}, errors.New("envelope: empty key")
	}
	v := bson.RawValue{Type: bsontype.Type(key[0]), Value: key[1:]}
	if err := v.Validate(); err != nil {
		return bson.RawValue{}, fmt.Errorf("%w: key: %v", ErrMalformed, err)
	}
	return v, nil
}

func integral(id bson.RawValue) (int64, bool) {
	switch id.Type {
	case bsontype.Int32:
		n, ok := id.Int32OK()
		return int64(n), ok
	case bsontype.Int64:
		return id.Int64OK()
	case bsontype.Double:
		f, ok := id.DoubleOK()
		// 2^63 itself is not representable as int64; the range is half-open.
		if !ok || f != math.Trunc(f) || f < -(1<<63) || f >= 1<<63 || (f == 0 && math.Signbit(f)) {
			if ok && f == 0 {
				return 0, true // -0.0 and 0.0 are the same _id
			}
			return 0, false
		}
		return int64(f), true
	}
	return 0, false
}
