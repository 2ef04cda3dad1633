package reconcile

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/transform"
	"gopkg.in/inf.v0"
)

// Buckets are Cassandra token ranges, not prefixes of a hash of the key.
//
// Why: with token-range leaves the target side is read range by range with
// `token(pk) >= ? AND token(pk) <= ?`, a query Cassandra answers from its
// on-disk order without a filter, so one leaf (or a run of leaves) is one
// bounded, restartable read, and narrowing a differing leaf down to keys is a
// single query over just that range. Hash-prefix buckets would force every
// narrowing step to re-read the whole table. The price is on the source side:
// the token of each expected row's partition key is computed here (Murmur3,
// exactly as Cassandra's default partitioner), which is cheap next to the
// transform itself.

// tokenOf is Cassandra's Murmur3Partitioner token of the serialized partition key.
func tokenOf(pk []byte) int64 {
	h := murmur3H1(pk)
	if h == math.MinInt64 {
		// Cassandra never assigns the minimum token: it is the ring's start.
		return math.MaxInt64
	}
	return h
}

// partitionKeyBytes serializes partition key values the way Cassandra hashes
// them: one column is its value's bytes; several are each a 2-byte length,
// the bytes and a zero byte.
func partitionKeyBytes(dst []byte, t *transform.Table, values []any) ([]byte, error) {
	if len(t.PartitionKey) == 1 {
		i := t.PartitionKey[0]
		return appendCQL(dst, t.Columns[i].Type, values[i])
	}
	for _, i := range t.PartitionKey {
		at := len(dst)
		dst = append(dst, 0, 0)
		var err error
		if dst, err = appendCQL(dst, t.Columns[i].Type, values[i]); err != nil {
			return dst, err
		}
		n := len(dst) - at - 2
		if n > math.MaxUint16 {
			return dst, fmt.Errorf("partition key component of %d bytes", n)
		}
		binary.BigEndian.PutUint16(dst[at:], uint16(n))
		dst = append(dst, 0)
	}
	return dst, nil
}

// appendCQL appends the CQL wire form of a key value. Key columns are scalars;
// the common ones are encoded here without allocation, the rest by gocql.
func appendCQL(dst []byte, typ string, v any) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return append(dst, x...), nil
	case []byte:
		return append(dst, x...), nil
	case int32:
		return binary.BigEndian.AppendUint32(dst, uint32(x)), nil
	case int64:
		if typ == "int" {
			return binary.BigEndian.AppendUint32(dst, uint32(int32(x))), nil
		}
		return binary.BigEndian.AppendUint64(dst, uint64(x)), nil
	case int16:
		return binary.BigEndian.AppendUint16(dst, uint16(x)), nil
	case bool:
		if x {
			return append(dst, 1), nil
		}
		return append(dst, 0), nil
	case float64:
		if typ == "float" {
			return binary.BigEndian.AppendUint32(dst, math.Float32bits(float32(x))), nil
		}
		return binary.BigEndian.AppendUint64(dst, math.Float64bits(x)), nil
	case float32:
		return binary.BigEndian.AppendUint32(dst, math.Float32bits(x)), nil
	case time.Time:
		return binary.BigEndian.AppendUint64(dst, uint64(x.UnixMilli())), nil
	case gocql.UUID:
		return append(dst, x[:]...), nil
	case *big.Int, *inf.Dec:
		ti := gocql.NewNativeType(4, nativeType(typ), "")
		b, err := gocql.Marshal(ti, v)
		return append(dst, b...), err
	}
	return dst, fmt.Errorf("reconcile: cannot compute the token of a %T key value (%s)", v, typ)
}

func nativeType(typ string) gocql.Type {
	switch typ {
	case "varint":
		return gocql.TypeVarint
	case "decimal":
		return gocql.TypeDecimal
	}
	return gocql.TypeBlob
}

// The ring is split into 2^bits equal token ranges; leaf b holds tokens
// [first(b), last(b)]. Flipping the sign bit maps tokens to unsigned order.
func bucketOf(token int64, bits int) uint32 {
	return uint32((uint64(token) ^ (1 << 63)) >> (64 - bits))
}

func bucketFirst(b uint32, bits int) int64 {
	return int64((uint64(b) << (64 - bits)) ^ (1 << 63))
}

func bucketLast(b uint32, bits int) int64 {
	return int64(((uint64(b)+1)<<(64-bits) - 1) ^ (1 << 63))
}

// bucketBitsFor picks leaves of about 64 rows, within [8, 20] bits.
func bucketBitsFor(rows int64) int {
	bits := 8
	for bits < 20 && rows/(int64(1)<<bits) > 64 {
		bits++
	}
	return bits
}
