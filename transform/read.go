package transform

import (
	"encoding/binary"
	"math"
	"math/bits"
	"sync"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
)

// A readPlan is every document path the tables of one namespace read (column
// paths, compute arguments, UDT fields, filters), as a tree: Apply walks a
// document once along it instead of looking each path up from the top.
type readPlan struct {
	tables []*Table
	root   pathNode // its kids are the top-level fields
	nslots int
	// ncols is the number of columns of all tables, nshared the number of
	// values computed once and used by several columns (see column.shared).
	ncols   int
	nshared int
}

// pathNode is one path: key is its last component, slot where Apply records
// the value found there, kids the paths one level below it.
type pathNode struct {
	key  string
	slot int
	kids []*pathNode
	// sigs holds keySig of each kid's key, so that a document's keys are
	// matched by comparing integers.
	sigs []uint64
}

// index fills sigs for n and its descendants.
func (n *pathNode) index() {
	n.sigs = n.sigs[:0]
	for _, k := range n.kids {
		n.sigs = append(n.sigs, keySig([]byte(k.key)))
		k.index()
	}
}

// keySig is the length of key and its first 7 bytes: keys of up to 7 bytes
// are equal exactly when their signatures are.
func keySig(key []byte) uint64 {
	sig := uint64(len(key)) << 56
	for i := 0; i < len(key) && i < 7; i++ {
		sig |= uint64(key[i]) << (8 * i)
	}
	return sig
}

// slot returns the slot of path, adding it to the plan if it is new.
func (p *readPlan) slot(path []string) int {
	n := &p.root
	for _, k := range path {
		var next *pathNode
		for _, c := range n.kids {
			if c.key == k {
				next = c
				break
			}
		}
		if next == nil {
			next = &pathNode{key: k, slot: p.nslots}
			p.nslots++
			n.kids = append(n.kids, next)
		}
		n = next
	}
	return n.slot
}

// rawVal is a value found in the document; typ 0 means absent. data is the
// value's bytes inside the document, framed as bsoncore frames them.
type rawVal struct {
	typ  bsontype.Type
	data []byte
}

func (v rawVal) raw() bson.RawValue { return bson.RawValue{Type: v.typ, Value: v.data} }

// span is where a value or key lies in a document, without holding on to it:
// applyState keeps no pointers into documents between calls, and the garbage
// collector has less to do.
type span struct {
	typ        bsontype.Type
	start, end int32
}

// applyState is the scratch space of one Apply call. It is pooled; nothing in
// it may be referenced by what Apply returns, except the parts of its slabs
// that were handed out (see slab.go).
type applyState struct {
	doc     []byte
	vals    []span // by plan slot, in doc; typ 0 when absent
	shared  []sharedVal
	mem     slabs
	scratch []byte    // row keys
	hashBuf []byte    // hash_bucket input
	elems   []elemRef // array or document elements being converted (a stack)
	keyEnds []int
}

// val is the value found at a plan slot.
func (st *applyState) val(slot int) rawVal {
	s := st.vals[slot]
	return rawVal{typ: s.typ, data: st.doc[s.start:s.end]}
}

type sharedVal struct {
	v    any
	done bool
}

// elemRef is an element of an array or document, by offsets in it.
type elemRef struct {
	keyStart, keyEnd int32
	val              span
}

var statePool = sync.Pool{New: func() any { return new(applyState) }}

func getState(p *readPlan) *applyState {
	st := statePool.Get().(*applyState)
	st.vals = resize(st.vals, p.nslots)
	st.shared = resize(st.shared, p.nshared)
	return st
}

func putState(st *applyState) {
	st.doc = nil
	clear(st.shared) // values handed to the caller must not stay reachable from the pool
	st.elems = st.elems[:0]
	if cap(st.scratch) > 64<<10 {
		st.scratch = nil
	}
	statePool.Put(st)
}

func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// read records in st.vals the value of every path of the plan found in doc.
// It checks the document's framing exactly as bsoncore's Document.Validate
// does (every top-level element, not the inside of embedded documents) and
// reports false where Validate would fail.
func (st *applyState) read(root *pathNode, doc []byte) bool {
	st.doc = doc
	if len(doc) < 4 || len(doc) > math.MaxInt32 {
		return false // spans are int32; BSON documents are at most 2 GiB
	}
	length := int32(binary.LittleEndian.Uint32(doc))
	if length < 1 || int(length) > len(doc) || doc[length-1] != 0 {
		return false
	}
	pos := 4
	length -= 4
	left := len(root.kids)
	for length > 1 {
		typ, keyEnd, end, sig, ok := readElement(doc, pos)
		if !ok {
			return false
		}
		length -= int32(end - pos)
		if left > 0 && st.match(root, typ, doc[pos+1:keyEnd], sig, keyEnd+1, end) {
			left--
		}
		pos = end
	}
	return pos < len(doc) && doc[pos] == 0
}

// match records the value at st.doc[start:end] at the child of n named key,
// if there is one and it was not found before (a path names the first element
// with its key, as for bsoncore's LookupErr), and reports whether it did.
func (st *applyState) match(n *pathNode, typ bsontype.Type, key []byte, sig uint64, start, end int) bool {
	for i, s := range n.sigs {
		if s != sig {
			continue
		}
		k := n.kids[i]
		if len(key) > 7 && k.key != string(key) {
			continue
		}
		if st.vals[k.slot].typ != 0 {
			return false
		}
		st.vals[k.slot] = span{typ: typ, start: int32(start), end: int32(end)}
		if len(k.kids) > 0 && (typ == bsontype.EmbeddedDocument || typ == bsontype.Array) {
			st.readNested(k, start, end)
		}
		return true
	}
	return false
}

// readNested finds the children of n inside the embedded document or array at
// st.doc[start:end] as bsoncore's LookupErr would: elements in order until a
// malformed one, after which the paths not yet found are absent.
func (st *applyState) readNested(n *pathNode, start, end int) {
	doc := st.doc[:end]
	if end-start < 4 {
		return
	}
	length := int32(binary.LittleEndian.Uint32(doc[start:]))
	if length < 4 {
		// LookupErr would fail (or bsoncore would panic) opening it.
		return
	}
	pos := start + 4
	length -= 4
	left := len(n.kids)
	for length > 1 && left > 0 {
		typ, keyEnd, next, sig, ok := readElement(doc, pos)
		if !ok {
			return
		}
		length -= int32(next - pos)
		if st.match(n, typ, doc[pos+1:keyEnd], sig, keyEnd+1, next) {
			left--
		}
		pos = next
	}
}

// readElement reads the element at doc[pos:] as bsoncore's ReadElement does:
// its key is doc[pos+1:keyEnd], its value doc[keyEnd+1:end], sig the keySig
// of its key; ok is false where ReadElement fails.
func readElement(doc []byte, pos int) (typ bsontype.Type, keyEnd, end int, sig uint64, ok bool) {
	if pos >= len(doc) {
		return 0, 0, 0, 0, false
	}
	typ = bsontype.Type(doc[pos])
	k := pos + 1
	keyEnd = -1
	if len(doc)-k >= 8 {
		// Find the key's terminating NUL in its first 8 bytes at once: the
		// lowest byte of x that is zero sets the lowest bit of z.
		x := binary.LittleEndian.Uint64(doc[k:])
		if z := (x - 0x0101010101010101) & ^x & 0x8080808080808080; z != 0 {
			n := bits.TrailingZeros64(z) / 8
			keyEnd = k + n
			sig = x&(1<<(8*n)-1) | uint64(n)<<56
		}
	}
	if keyEnd < 0 {
		for i := k; i < len(doc); i++ {
			if doc[i] == 0 {
				keyEnd = i
				break
			}
		}
		if keyEnd < 0 {
			return 0, 0, 0, 0, false
		}
		sig = keySig(doc[k:keyEnd])
	}
	var length int32
	switch sz := valueSizes[typ]; {
	case sz > 0:
		length = int32(sz)
	case sz < 0:
		if len(doc)-keyEnd-1 < 4 {
			return 0, 0, 0, 0, false
		}
		l := int32(binary.LittleEndian.Uint32(doc[keyEnd+1:]))
		if l < 0 {
			return 0, 0, 0, 0, false
		}
		length = l + int32(-1-sz)
	default:
		if length, ok = valueLength(doc[keyEnd+1:], typ); !ok {
			return 0, 0, 0, 0, false
		}
	}
	n := keyEnd + 1 - pos + int(length)
	if n > len(doc)-pos || n < 0 {
		return 0, 0, 0, 0, false
	}
	return typ, keyEnd, pos + n, sig, true
}

// valueSizes gives, by BSON type, the size of a value of fixed size, or for a
// value that starts with its int32 length, what is added to that length
// (negative: -1 for none, -1-k for k).
var valueSizes = [256]int8{
	bsontype.Boolean: 1, bsontype.DateTime: 8, bsontype.Double: 8, bsontype.Int64: 8, bsontype.Timestamp: 8,
	bsontype.Decimal128: 16, bsontype.Int32: 4, bsontype.ObjectID: 12,
	bsontype.MaxKey: 0, bsontype.MinKey: 0, bsontype.Null: 0, bsontype.Undefined: 0,
	bsontype.Array: -1, bsontype.EmbeddedDocument: -1, bsontype.CodeWithScope: -1,
	bsontype.Binary: -1 - (4 + 1), bsontype.DBPointer: -1 - (4 + 12),
	bsontype.JavaScript: -1 - 4, bsontype.String: -1 - 4, bsontype.Symbol: -1 - 4,
	bsontype.Regex: 0, // computed below
}

// valueLength is bsoncore's valueLength: the size of a value of type t at the
// start of src, with the same int32 arithmetic.
func valueLength(src []byte, t bsontype.Type) (int32, bool) {
	switch sz := valueSizes[t]; {
	case sz > 0:
		return int32(sz), true
	case sz < 0:
		if len(src) < 4 {
			return 0, false
		}
		l := int32(binary.LittleEndian.Uint32(src))
		return l + int32(-1-sz), l >= 0
	}
	switch t {
	case bsontype.MaxKey, bsontype.MinKey, bsontype.Null, bsontype.Undefined:
		return 0, true
	case bsontype.Regex:
		regex := indexZero(src)
		if regex < 0 {
			return 0, false
		}
		pattern := indexZero(src[regex+1:])
		if pattern < 0 {
			return 0, false
		}
		return int32(int64(regex) + 1 + int64(pattern) + 1), true
	}
	return 0, false
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// elements appends the elements of doc (an embedded document or array value)
// to st.elems, as bsoncore's Document.Values reads them, and reports false if
// any is malformed.
func (st *applyState) elements(doc []byte) bool {
	if len(doc) < 4 {
		return false
	}
	length := int32(binary.LittleEndian.Uint32(doc))
	if length < 4 || int(length) > len(doc) {
		return false
	}
	pos := 4
	length -= 4
	for length > 1 {
		typ, keyEnd, end, _, ok := readElement(doc, pos)
		if !ok {
			return false
		}
		length -= int32(end - pos)
		st.elems = append(st.elems, elemRef{keyStart: int32(pos + 1), keyEnd: int32(keyEnd),
			val: span{typ: typ, start: int32(keyEnd + 1), end: int32(end)}})
		pos = end
	}
	return true
}
