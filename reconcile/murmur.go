package reconcile

// murmur3H1 is the first 64 bits of the x64 128-bit MurmurHash3 with
// Cassandra's quirk of sign-extending tail bytes. It is gocql's
// internal/murmur.Murmur3H1 (Apache 2.0, Copyright The Gocql authors), copied
// because gocql keeps it in an internal package and exports no token function.

import "encoding/binary"

const (
	mmC1    int64 = -8663945395140668459 // 0x87c37b91114253d5
	mmC2    int64 = 5545529020109919103  // 0x4cf5ad432745937f
	mmFmix1 int64 = -49064778989728563   // 0xff51afd7ed558ccd
	mmFmix2 int64 = -4265267296055464877 // 0xc4ceb9fe1a85ec53
)

func mmFmix(n int64) int64 {
	n ^= int64(uint64(n) >> 33)
	n *= mmFmix1
	n ^= int64(uint64(n) >> 33)
	n *= mmFmix2
	n ^= int64(uint64(n) >> 33)
	return n
}

func mmRotl(x int64, r uint8) int64 { return (x << r) | int64(uint64(x)>>(64-r)) }

func murmur3H1(data []byte) int64 {
	length := len(data)
	var h1, h2, k1, k2 int64
	nBlocks := length / 16
	for i := 0; i < nBlocks; i++ {
		k1 = int64(binary.LittleEndian.Uint64(data[i*16:]))
		k2 = int64(binary.LittleEndian.Uint64(data[i*16+8:]))
		k1 *= mmC1
		k1 = mmRotl(k1, 31)
		k1 *= mmC2
		h1 ^= k1
		h1 = mmRotl(h1, 27)
		h1 += h2
		h1 = h1*5 + 0x52dce729
		k2 *= mmC2
		k2 = mmRotl(k2, 33)
		k2 *= mmC1
		h2 ^= k2
		h2 = mmRotl(h2, 31)
		h2 += h1
		h2 = h2*5 + 0x38495ab5
	}
	tail := data[nBlocks*16:]
	k1, k2 = 0, 0
	b := func(i int) int64 { return int64(int8(tail[i])) }
	switch length & 15 {
	case 15:
		k2 ^= b(14) << 48
		fallthrough
	case 14:
		k2 ^= b(13) << 40
		fallthrough
	case 13:
		k2 ^= b(12) << 32
		fallthrough
	case 12:
		k2 ^= b(11) << 24
		fallthrough
	case 11:
		k2 ^= b(10) << 16
		fallthrough
	case 10:
		k2 ^= b(9) << 8
		fallthrough
	case 9:
		k2 ^= b(8)
		k2 *= mmC2
		k2 = mmRotl(k2, 33)
		k2 *= mmC1
		h2 ^= k2
		fallthrough
	case 8:
		k1 ^= b(7) << 56
		fallthrough
	case 7:
		k1 ^= b(6) << 48
		fallthrough
	case 6:
		k1 ^= b(5) << 40
		fallthrough
	case 5:
		k1 ^= b(4) << 32
		fallthrough
	case 4:
		k1 ^= b(3) << 24
		fallthrough
	case 3:
		k1 ^= b(2) << 16
		fallthrough
	case 2:
		k1 ^= b(1) << 8
		fallthrough
	case 1:
		k1 ^= b(0)
		k1 *= mmC1
		k1 = mmRotl(k1, 31)
		k1 *= mmC2
		h1 ^= k1
	}
	h1 ^= int64(length)
	h2 ^= int64(length)
	h1 += h2
	h2 += h1
	h1 = mmFmix(h1)
	h2 = mmFmix(h2)
	h1 += h2
	return h1
}
