package reconcile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// leaf summarises the rows of one token range: how many, and the sum of their
// row hashes. A sum (not an XOR) so that two identical rows do not cancel out,
// and so that rows can be added in any order and from several goroutines.
type leaf struct {
	Sum uint64
	N   uint32
}

// tree is a Merkle tree over 2^bits token-range leaves of one table. Inner
// nodes combine their two children the same way, so comparing two trees top
// down visits only the subtrees that differ. Its size depends on bits, never
// on the number of rows: that is what bounds a round's memory.
type tree struct {
	bits   int
	mu     sync.Mutex
	leaves []leaf
}

func newTree(bits int) *tree { return &tree{bits: bits, leaves: make([]leaf, 1<<bits)} }

// add records one row: its token and its hash.
func (t *tree) add(token int64, h uint64) {
	b := bucketOf(token, t.bits)
	t.mu.Lock()
	t.leaves[b].Sum += h
	t.leaves[b].N++
	t.mu.Unlock()
}

// merge adds another tree's leaves (a shard filled by one worker).
func (t *tree) merge(o *tree) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, l := range o.leaves {
		t.leaves[i].Sum += l.Sum
		t.leaves[i].N += l.N
	}
}

// root is the sum of every leaf, "<sum hex>/<rows>": two trees of one
// round have equal roots exactly when the round found no differing leaf
// (but for a sum collision).
func (t *tree) root() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var r leaf
	for _, l := range t.leaves {
		r.Sum += l.Sum
		r.N += l.N
	}
	return fmt.Sprintf("%016x/%d", r.Sum, r.N)
}

// levels returns the tree from the leaves up to the root.
func (t *tree) levels() [][]leaf {
	out := [][]leaf{t.leaves}
	for cur := t.leaves; len(cur) > 1; {
		next := make([]leaf, len(cur)/2)
		for i := range next {
			next[i] = leaf{Sum: cur[2*i].Sum + cur[2*i+1].Sum, N: cur[2*i].N + cur[2*i+1].N}
		}
		out = append(out, next)
		cur = next
	}
	return out
}

// diff returns the leaves where a and b differ, in token order, and how many
// nodes were compared (the work a top-down walk does).
func diff(a, b *tree) (leaves []uint32, visited int, err error) {
	if a.bits != b.bits {
		return nil, 0, fmt.Errorf("reconcile: trees of %d and %d bits", a.bits, b.bits)
	}
	la, lb := a.levels(), b.levels()
	top := len(la) - 1
	var walk func(level int, i uint32)
	walk = func(level int, i uint32) {
		visited++
		if la[level][i] == lb[level][i] {
			return
		}
		if level == 0 {
			leaves = append(leaves, i)
			return
		}
		walk(level-1, 2*i)
		walk(level-1, 2*i+1)
	}
	walk(top, 0)
	return leaves, visited, nil
}

// MarshalBinary encodes the leaves for resumable progress.
func (t *tree) MarshalBinary() ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := make([]byte, 1, 1+12*len(t.leaves))
	b[0] = byte(t.bits)
	for _, l := range t.leaves {
		b = binary.BigEndian.AppendUint64(b, l.Sum)
		b = binary.BigEndian.AppendUint32(b, l.N)
	}
	return b, nil
}

// UnmarshalBinary is the inverse of MarshalBinary.
func (t *tree) UnmarshalBinary(b []byte) error {
	if len(b) < 1 || b[0] > 24 || len(b) != 1+12*(1<<b[0]) {
		return errors.New("reconcile: malformed tree")
	}
	t.bits = int(b[0])
	t.leaves = make([]leaf, 1<<t.bits)
	for i := range t.leaves {
		o := 1 + 12*i
		t.leaves[i] = leaf{Sum: binary.BigEndian.Uint64(b[o:]), N: binary.BigEndian.Uint32(b[o+8:])}
	}
	return nil
}
