// Package mongoid pages MongoDB collections in _id order across every BSON
// type an _id can have, and reads the cluster time a change stream's resume
// token encodes. Capture's backfill and reconcile's resumable scan share it.
//
// {_id: {$gt: last}} is not enough to page: comparison operators only match
// values of the operand's BSON type bracket, while sort orders across brackets
// (MongoDB manual, "Comparison Query Operators" and "BSON Types /
// Comparison/Sort Order"). A collection whose _ids mix ObjectId, string and
// numbers would lose every document of the other brackets after a page ending
// on one. After therefore asks for {$or: [{_id: {$gt: last}}, {_id: {$type:
// [every later bracket]}}]}, to be sorted by _id. Index bounds (hint {_id: 1}
// with min) would do the same on a real server, but the mongo-java-server
// stand-in silently ignores min and would return the first page forever; the
// $or form is correct on both.
package mongoid

import (
	"context"
	"encoding/hex"
	"errors"
	"math"
	"strings"

	"github.com/tidemarkhq/tidemark/envelope"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/mongo"
)

// bracket is one BSON comparison bracket's $type aliases.
type bracket struct {
	aliases []string
	rare    []string
}

// brackets lists the $type aliases of each BSON comparison bracket in sort
// order. Arrays, regular expressions and undefined cannot be an _id and are
// left out. rare marks aliases some servers do not know (the stand-in rejects
// them with BadValue); they are only used when the server accepts them.
var brackets = []bracket{
	{aliases: []string{"minKey"}},
	{aliases: []string{"null"}},
	{aliases: []string{"double", "int", "long", "decimal"}},
	{aliases: []string{"string"}, rare: []string{"symbol"}},
	{aliases: []string{"object"}},
	{aliases: []string{"binData"}},
	{aliases: []string{"objectId"}},
	{aliases: []string{"bool"}},
	{aliases: []string{"date"}},
	{aliases: []string{"timestamp"}},
	{rare: []string{"dbPointer"}},
	{rare: []string{"javascript"}},
	{rare: []string{"javascriptWithScope"}},
	{aliases: []string{"maxKey"}},
}

// Bracket is the index of a BSON type's comparison bracket in sort order:
// values of one bracket compare with each other, brackets sort by index.
func Bracket(t bsontype.Type) int {
	switch t {
	case bsontype.MinKey:
		return 0
	case bsontype.Null, bsontype.Undefined:
		return 1
	case bsontype.Double, bsontype.Int32, bsontype.Int64, bsontype.Decimal128:
		return 2
	case bsontype.String, bsontype.Symbol:
		return 3
	case bsontype.EmbeddedDocument, bsontype.Array:
		return 4
	case bsontype.Binary:
		return 5
	case bsontype.ObjectID:
		return 6
	case bsontype.Boolean:
		return 7
	case bsontype.DateTime:
		return 8
	case bsontype.Timestamp, bsontype.Regex:
		return 9
	case bsontype.DBPointer:
		return 10
	case bsontype.JavaScript:
		return 11
	case bsontype.CodeWithScope:
		return 12
	case bsontype.MaxKey:
		return 13
	}
	return 13
}

// After selects every _id that sorts after last; nil last selects all. rare
// says the server knows the rare $type aliases (see AcceptsRare).
func After(last *bson.RawValue, rare bool) bson.D {
	if last == nil {
		return bson.D{}
	}
	gt := bson.D{{Key: "_id", Value: bson.D{{Key: "$gt", Value: *last}}}}
	if f, ok := last.DoubleOK(); ok && math.IsNaN(f) {
		// NaN sorts below every number but $gt: NaN matches nothing; every
		// other number is at least -Infinity.
		gt = bson.D{{Key: "_id", Value: bson.D{{Key: "$gte", Value: math.Inf(-1)}}}}
	}
	later := typeAliases(brackets[Bracket(last.Type)+1:], rare)
	if len(later) == 0 {
		return gt
	}
	return bson.D{{Key: "$or", Value: bson.A{gt, bson.D{{Key: "_id", Value: bson.D{{Key: "$type", Value: later}}}}}}}
}

// typeAliases are the $type aliases of every type in bs, with the rare
// ones when rare is set: a $type match for whole brackets.
func typeAliases(bs []bracket, rare bool) bson.A {
	var out bson.A
	for _, b := range bs {
		for _, a := range b.aliases {
			out = append(out, a)
		}
		if rare {
			for _, a := range b.rare {
				out = append(out, a)
			}
		}
	}
	return out
}

// AtMost selects every _id that sorts at or before last, across brackets:
// the inclusive upper bound of a range whose lower bound is After. NaN, the
// lowest number, needs no special case: $lte NaN matches NaN alone, and the
// numbers above it sort after it.
func AtMost(last *bson.RawValue, rare bool) bson.D {
	if last == nil {
		return bson.D{}
	}
	lte := bson.D{{Key: "_id", Value: bson.D{{Key: "$lte", Value: *last}}}}
	earlier := typeAliases(brackets[:Bracket(last.Type)], rare)
	if len(earlier) == 0 {
		return lte
	}
	return bson.D{{Key: "$or", Value: bson.A{lte, bson.D{{Key: "_id", Value: bson.D{{Key: "$type", Value: earlier}}}}}}}
}

// AcceptsRare reports whether the server knows the rare $type aliases.
// Servers that do not know one reject it with BadValue; such a server cannot
// hold an _id of that type either.
func AcceptsRare(ctx context.Context, col *mongo.Collection) bool {
	err := col.FindOne(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$type", Value: "symbol"}}}}).Err()
	return err == nil || errors.Is(err, mongo.ErrNoDocuments)
}

// TokenTime reads the cluster time a resume token encodes. MongoDB 4.2+
// tokens are {_data: hex KeyString} whose first value is the cluster time:
// type byte 0x82 then T and I as big-endian uint32s. The stand-in's tokens
// are the 16 hex digits of T and I. ok is false for anything else.
func TokenTime(tok bson.Raw) (envelope.Version, bool) {
	if tok == nil {
		return envelope.Version{}, false
	}
	data, ok := tok.Lookup("_data").StringValueOK()
	if !ok {
		return envelope.Version{}, false
	}
	if len(data) == 16 {
		data = "82" + data
	}
	if len(data) < 18 || !strings.EqualFold(data[:2], "82") {
		return envelope.Version{}, false
	}
	b, err := hex.DecodeString(data[2:18])
	if err != nil {
		return envelope.Version{}, false
	}
	return envelope.Version{T: uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]),
		I: uint32(b[4])<<24 | uint32(b[5])<<16 | uint32(b[6])<<8 | uint32(b[7])}, true
}
