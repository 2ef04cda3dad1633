package transform

import (
	"strings"
	"time"
	"unsafe"
)

// The values Apply returns are many and small: a document of twenty fields
// gives a dozen strings, each also boxed into an interface. Allocated one by
// one they cost more than reading the document. slabs hands out their memory
// from chunks instead, which consecutive Apply calls share (slabs lives in the
// pooled applyState).
//
// A chunk is only ever appended to: every element is handed out once, is
// written before it is handed out and never again, so what Apply returned is
// never changed by later calls. A chunk is freed once nothing handed out from
// it is referenced; the memory a row keeps alive is its own values plus at
// most the rest of a few chunks (2 KiB of text, 64 boxes of each type).
type slabs struct {
	text  strArena
	boxes boxSlabs
}

// boxChunk is the number of elements of a box slab.
const boxChunk = 64

// strArena hands out strings from shared buffers. Bytes are only ever
// appended to a strings.Builder, never rewritten, so a string once handed out
// stays valid and unchanged however the arena is used afterwards.
type strArena struct {
	b strings.Builder
}

const (
	arenaChunk = 2048
	// arenaMax is the longest string carved from a buffer; longer ones are
	// allocated alone.
	arenaMax = 128
)

func (a *strArena) bytes(p []byte) string {
	if len(p) == 0 {
		return ""
	}
	if len(p) > arenaMax {
		return string(p)
	}
	if a.b.Cap()-a.b.Len() < len(p) {
		a.b = strings.Builder{}
		a.b.Grow(arenaChunk)
	}
	start := a.b.Len()
	a.b.Write(p)
	return a.b.String()[start:]
}

// Putting a string, time, slice or number into an interface copies it to a
// new heap allocation that the interface points to. boxSlabs makes the copy
// in a slab instead, and builds the interface pointing at it: the same value,
// only its memory is shared with other boxes.
//
// This needs the layout of an empty interface, which is the runtime's
// (internal/abi.EmptyInterface: the type word, then for every type that is not
// pointer-shaped a pointer to the value); init checks it, and if it ever
// differs, boxes are allocated the ordinary way.
type boxSlabs struct {
	strs  []string
	times []time.Time
	lists [][]any
	f64s  []float64
	i64s  []int64
	i32s  []int32
}

type eface struct {
	typ, data unsafe.Pointer
}

func typeWord(v any) unsafe.Pointer { return (*eface)(unsafe.Pointer(&v)).typ }

var (
	stringType = typeWord("")
	timeType   = typeWord(time.Time{})
	listType   = typeWord([]any(nil))
	f64Type    = typeWord(float64(0))
	i64Type    = typeWord(int64(0))
	i32Type    = typeWord(int32(0))
	slabBoxing = boxingWorks()
)

// box returns x as an interface pointing at a copy of x in *slab; typ must be
// the type word of T, and T must not be pointer-shaped.
func box[T any](slab *[]T, typ unsafe.Pointer, x T) any {
	if !slabBoxing {
		return x
	}
	return slabBox(slab, typ, x)
}

func slabBox[T any](slab *[]T, typ unsafe.Pointer, x T) any {
	s := *slab
	if len(s) == cap(s) {
		s = make([]T, 0, boxChunk)
	}
	s = append(s, x)
	*slab = s
	var v any
	*(*eface)(unsafe.Pointer(&v)) = eface{typ: typ, data: unsafe.Pointer(&s[len(s)-1])}
	return v
}

func (b *boxSlabs) str(s string) any {
	if s == "" {
		return "" // no allocation either way
	}
	return box(&b.strs, stringType, s)
}

func (b *boxSlabs) timestamp(t time.Time) any { return box(&b.times, timeType, t) }
func (b *boxSlabs) list(l []any) any          { return box(&b.lists, listType, l) }
func (b *boxSlabs) f64(f float64) any         { return box(&b.f64s, f64Type, f) }
func (b *boxSlabs) i64(n int64) any           { return box(&b.i64s, i64Type, n) }
func (b *boxSlabs) i32(n int32) any           { return box(&b.i32s, i32Type, n) }

// boxingWorks checks that an interface built by slabBox is indistinguishable
// from one Go built: same dynamic type, same value.
func boxingWorks() bool {
	var b boxSlabs
	s, tm, l := "slab", time.UnixMilli(1234567).UTC(), []any{"x"}
	checks := []struct{ got, want any }{
		{slabBox(&b.strs, stringType, s), any(s)},
		{slabBox(&b.times, timeType, tm), any(tm)},
		{slabBox(&b.f64s, f64Type, 2.5), any(2.5)},
		{slabBox(&b.i64s, i64Type, 1<<40), any(int64(1 << 40))},
		{slabBox(&b.i32s, i32Type, 1<<20), any(int32(1 << 20))},
	}
	for _, c := range checks {
		if c.got != c.want || typeWord(c.got) != typeWord(c.want) {
			return false
		}
	}
	got, ok := slabBox(&b.lists, listType, l).([]any)
	return ok && len(got) == 1 && &got[0] == &l[0]
}
