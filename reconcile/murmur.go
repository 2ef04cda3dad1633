package reconcile

import (
	"encoding/binary"
	"math/bits"
)

// Cassandra's Murmur3Partitioner places a row by the first 64 bits of
// MurmurHash3 x64/128 (seed 0) of its serialized partition key. gocql computes
// the same hash for token-aware routing but keeps it in an internal package,
// so reconcile has its own. One quirk makes it Cassandra's and not the
// reference hash: the 1-15 trailing bytes are read as Java's signed bytes, so
// a byte of 0x80 or more is sign-extended before it is shifted into place.
// TestIntegrationTokensMatchCassandra checks it against Cassandra's own
// token(), TestTokenOfKnownKeys against known values.
const (
	mmC1 = 0x87c37b91114253d5
	mmC2 = 0x4cf5ad432745937f
)

func mmMix1(k uint64) uint64 { return bits.RotateLeft64(k*mmC1, 31) * mmC2 }
func mmMix2(k uint64) uint64 { return bits.RotateLeft64(k*mmC2, 33) * mmC1 }

func mmFinal(h uint64) uint64 {
	h = (h ^ h>>33) * 0xff51afd7ed558ccd
	h = (h ^ h>>33) * 0xc4ceb9fe1a85ec53
	return h ^ h>>33
}

// murmur3H1 is the partitioner's 64-bit hash of data.
func murmur3H1(data []byte) int64 {
	var h1, h2 uint64
	body := len(data) &^ 15
	for i := 0; i < body; i += 16 {
		h1 ^= mmMix1(binary.LittleEndian.Uint64(data[i:]))
		h1 = (bits.RotateLeft64(h1, 27)+h2)*5 + 0x52dce729
		h2 ^= mmMix2(binary.LittleEndian.Uint64(data[i+8:]))
		h2 = (bits.RotateLeft64(h2, 31)+h1)*5 + 0x38495ab5
	}
	// The tail: bytes 8-14 go into the second lane, 0-7 into the first,
	// each sign-extended (see above) and placed at 8 bits per position.
	var k1, k2 uint64
	tail := data[body:]
	for i := len(tail) - 1; i >= 0; i-- {
		v := uint64(int64(int8(tail[i])))
		if i >= 8 {
			k2 ^= v << (8 * (i - 8))
		} else {
			k1 ^= v << (8 * i)
		}
	}
	if len(tail) > 8 {
		h2 ^= mmMix2(k2)
	}
	if len(tail) > 0 {
		h1 ^= mmMix1(k1)
	}
	n := uint64(len(data))
	h1 ^= n
	h2 ^= n
	h1 += h2
	h2 += h1
	h1, h2 = mmFinal(h1), mmFinal(h2)
	h1 += h2
	return int64(h1)
}
