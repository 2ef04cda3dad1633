package rollout

import (
	"fmt"
	"sort"

	"github.com/cespare/xxhash/v2"
	"go.mongodb.org/mongo-driver/bson"

	"github.com/tidemarkhq/tidemark/envelope"
)

// Buckets is the size of the hash space a share is cut from: 10000 basis points.
const Buckets = 10000

// Bucket places a key (envelope.Key bytes of an _id) in the hash space. It is
// xxhash64 of the canonical key, so it is the same in every process, across
// restarts and in clients, and int32 1, int64 1 and 1.0 share a bucket, as
// they share a document.
func Bucket(key []byte) int { return int(xxhash.Sum64(key) % Buckets) }

// BucketOfID is Bucket of an _id value.
func BucketOfID(id bson.RawValue) int { return Bucket(envelope.Key(id)) }

// Slice is a set of keys: per namespace, the keys whose bucket is below its
// basis points. Because membership is "bucket < share", widening a share only
// adds keys: a key in 1% is in 10%.
type Slice map[string]int

// Slice is the set of keys the spec selects.
func (s SliceSpec) Slice() Slice {
	out := Slice{}
	for _, ns := range s.Collections {
		out[ns] = int(s.Share)
	}
	return out
}

// Contains reports whether the key of namespace ns is in the slice.
func (s Slice) Contains(ns string, key []byte) bool {
	bp, ok := s[ns]
	return ok && (bp >= Buckets || Bucket(key) < bp)
}

// Namespaces are the slice's collections, sorted.
func (s Slice) Namespaces() []string {
	out := make([]string, 0, len(s))
	for ns, bp := range s {
		if bp > 0 {
			out = append(out, ns)
		}
	}
	sort.Strings(out)
	return out
}

// Widened lists the namespaces of to that hold keys from is not hold: the
// ones whose newly included keys must be backfilled.
func (s Slice) Widened(to Slice) []string {
	var out []string
	for _, ns := range to.Namespaces() {
		if to[ns] > s[ns] {
			out = append(out, ns)
		}
	}
	return out
}

// within reports why s is not a subset of o.
func (s Slice) within(o Slice) error {
	for _, ns := range s.Namespaces() {
		if o[ns] < s[ns] {
			return fmt.Errorf("%s goes from %v to %v", ns, Share(s[ns]), Share(o[ns]))
		}
	}
	return nil
}

// Equal reports whether both slices hold the same keys.
func (s Slice) Equal(o Slice) bool {
	return s.within(o) == nil && o.within(s) == nil
}

func (s Share) String() string { b, _ := s.MarshalText(); return string(b) }
