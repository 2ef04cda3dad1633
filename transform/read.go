package transform

import (
	"encoding/binary"
	"strings"
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

// applyState is the scratch space of one Apply call. It is pooled; nothing in
// it may be referenced by what Apply returns except through the arena, which
// is dropped before the state is put back.
type applyState struct {
	vals    []rawVal
	shared  []sharedVal
	arena   strArena
	scratch []byte    // canonical bytes: row keys, set elements, hash input
	elems   []elemRef // array or document elements being converted (a stack)
	keyEnds []int
}

type sharedVal struct {
	v    any
	done bool
}

type elemRef struct {
	key []byte
	val rawVal
}

var statePool = sync.Pool{New: func() any { return new(applyState) }}

func getState(p *readPlan) *applyState {
	st := statePool.Get().(*applyState)
	st.vals = resize(st.vals, p.nslots)
	st.shared = resize(st.shared, p.nshared)
	return st
}

func putState(st *applyState) {
	st.arena = strArena{}
	clear(st.shared) // values handed to the caller must not stay reachable from the pool
	clear(st.elems[:cap(st.elems)])
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
	if len(doc) < 4 {
		return false
	}
	length := int32(binary.LittleEndian.Uint32(doc))
	if length < 1 || int(length) > len(doc) || doc[length-1] != 0 {
		return false
	}
	rem := doc[4:]
	length -= 4
	left := len(root.kids)
	for length > 1 {
		typ, key, val, n, ok := readElement(rem)
		if !ok {
			return false
		}
		length -= int32(n)
		rem = rem[n:]
		if left > 0 && st.match(root, typ, key, val) {
			left--
		}
	}
	return len(rem) >= 1 && rem[0] == 0
}

// match records val at the child of n named key, if there is one and it was
// not found before (a path names the first element with its key, as for
// bsoncore's LookupErr), and reports whether it recorded it.
func (st *applyState) match(n *pathNode, typ bsontype.Type, key, val []byte) bool {
	for _, k := range n.kids {
		if len(k.key) != len(key) || k.key != string(key) {
			continue
		}
		if st.vals[k.slot].typ != 0 {
			return false
		}
		st.vals[k.slot] = rawVal{typ: typ, data: val}
		if len(k.kids) > 0 && (typ == bsontype.EmbeddedDocument || typ == bsontype.Array) {
			st.readNested(k, val)
		}
		return true
	}
	return false
}

// readNested finds the children of n inside doc (an embedded document or an
// array) as bsoncore's LookupErr would: elements in order until a malformed
// one, after which the paths not yet found are absent.
func (st *applyState) readNested(n *pathNode, doc []byte) {
	if len(doc) < 4 {
		return
	}
	length := int32(binary.LittleEndian.Uint32(doc))
	if length < 4 {
		// LookupErr would fail (or bsoncore would panic) opening it.
		return
	}
	rem := doc[4:]
	length -= 4
	left := len(n.kids)
	for length > 1 && left > 0 {
		typ, key, val, sz, ok := readElement(rem)
		if !ok {
			return
		}
		length -= int32(sz)
		rem = rem[sz:]
		if st.match(n, typ, key, val) {
			left--
		}
	}
}

// readElement splits the element at the start of src into its type, key and
// value, and gives its size; ok is false where bsoncore's ReadElement fails.
func readElement(src []byte) (typ bsontype.Type, key, val []byte, n int, ok bool) {
	if len(src) < 1 {
		return 0, nil, nil, 0, false
	}
	typ = bsontype.Type(src[0])
	idx := -1
	for i := 1; i < len(src); i++ {
		if src[i] == 0 {
			idx = i - 1
			break
		}
	}
	if idx < 0 {
		return 0, nil, nil, 0, false
	}
	length, ok := valueLength(src[idx+2:], typ)
	if !ok {
		return 0, nil, nil, 0, false
	}
	n = 1 + idx + 1 + int(length)
	if n > len(src) || n < 0 {
		return 0, nil, nil, 0, false
	}
	return typ, src[1 : idx+1], src[idx+2 : n], n, true
}

// valueLength is bsoncore's valueLength: the size of a value of type t at the
// start of src, with the same int32 arithmetic.
func valueLength(src []byte, t bsontype.Type) (int32, bool) {
	readLength := func() (int32, bool) {
		if len(src) < 4 {
			return 0, false
		}
		l := int32(binary.LittleEndian.Uint32(src))
		return l, l >= 0
	}
	switch t {
	case bsontype.Array, bsontype.EmbeddedDocument, bsontype.CodeWithScope:
		return readLength()
	case bsontype.Binary:
		l, ok := readLength()
		return l + 4 + 1, ok
	case bsontype.Boolean:
		return 1, true
	case bsontype.DBPointer:
		l, ok := readLength()
		return l + 4 + 12, ok
	case bsontype.DateTime, bsontype.Double, bsontype.Int64, bsontype.Timestamp:
		return 8, true
	case bsontype.Decimal128:
		return 16, true
	case bsontype.Int32:
		return 4, true
	case bsontype.JavaScript, bsontype.String, bsontype.Symbol:
		l, ok := readLength()
		return l + 4, ok
	case bsontype.MaxKey, bsontype.MinKey, bsontype.Null, bsontype.Undefined:
		return 0, true
	case bsontype.ObjectID:
		return 12, true
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
	rem := doc[4:]
	length -= 4
	for length > 1 {
		typ, key, val, n, ok := readElement(rem)
		if !ok {
			return false
		}
		length -= int32(n)
		rem = rem[n:]
		st.elems = append(st.elems, elemRef{key: key, val: rawVal{typ: typ, data: val}})
	}
	return true
}

// strArena hands out the strings of one Apply call from shared buffers, so a
// row's dozen short strings cost one allocation instead of one each. Bytes are
// only ever appended to a strings.Builder, never rewritten, so a string once
// handed out stays valid and unchanged however the arena is used afterwards.
type strArena struct {
	b strings.Builder
}

const (
	arenaChunk = 512
	// arenaMax is the longest string carved from a chunk; longer ones are
	// allocated alone so that a chunk is never mostly one string.
	arenaMax = arenaChunk / 4
)

// reserve makes room for n more bytes in the current buffer.
func (a *strArena) reserve(n int) {
	if a.b.Cap()-a.b.Len() < n {
		a.b = strings.Builder{}
		a.b.Grow(max(n, arenaChunk))
	}
}

func (a *strArena) bytes(p []byte) string {
	if len(p) == 0 {
		return ""
	}
	if len(p) > arenaMax {
		return string(p)
	}
	a.reserve(len(p))
	start := a.b.Len()
	a.b.Write(p)
	return a.b.String()[start:]
}

func (a *strArena) string(s string) string {
	if len(s) == 0 || len(s) > arenaMax {
		return s
	}
	a.reserve(len(s))
	start := a.b.Len()
	a.b.WriteString(s)
	return a.b.String()[start:]
}
