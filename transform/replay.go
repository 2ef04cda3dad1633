package transform

import (
	"fmt"
	"strings"
)

// Replay safety of CQL column types.
//
// The sink writes every row USING TIMESTAMP of its source version, and relies
// on Cassandra keeping, cell by cell, the value with the highest timestamp: a
// record written twice leaves the row as it was. That holds for a type when
// writing the same value at the same timestamp twice produces the same cells:
//
//   - scalars, tuples, vectors and anything frozen are one cell;
//   - a non-frozen set keys its cells by element, a non-frozen map by key and a
//     non-frozen UDT by field name. Setting the whole value writes a collection
//     tombstone at timestamp-1 and the cells at timestamp: a replay writes the
//     same tombstone and the same cells, and an older version's cells fall
//     under a newer version's tombstone;
//   - a non-frozen list keys its cells by a timeuuid the server generates on
//     every write, so a replay appends a second copy of every element at the
//     same timestamp (["t5"] becomes ["t5","t5"]);
//   - a counter is an increment and cannot take USING TIMESTAMP at all.
//
// Cassandra only lets a collection or UDT nest inside another non-frozen one
// when it is frozen, so a non-frozen list anywhere but under frozen<>, a
// tuple or a vector is unsafe, and so is a counter anywhere.

// UnsafeTypeError names a column whose CQL type cannot be written
// idempotently with USING TIMESTAMP, and the type to use instead.
type UnsafeTypeError struct {
	// Table is "keyspace.table"; empty when only a type was checked.
	Table  string
	Column string
	// Type is the column's type, normalised as system_schema prints it.
	Type string
	// Reason says why a replay would change the row.
	Reason string
	// Alternatives are replay-safe types (or conversions) to use instead, best first.
	Alternatives []string
}

func (e *UnsafeTypeError) Error() string {
	where := e.Column
	if e.Table != "" {
		where = e.Table + "." + e.Column
	}
	if where != "" {
		where += ": "
	}
	return fmt.Sprintf("transform: %stype %s is not replay-safe (%s); use %s", where, e.Type, e.Reason,
		strings.Join(e.Alternatives, ", or "))
}

// ReplaySafe returns nil when a column of CQL type typ (as in CREATE TABLE or
// as system_schema prints it; case and spaces do not matter) can be written
// twice at the same timestamp without changing the row, and an
// *UnsafeTypeError naming the safe alternatives otherwise. A type it cannot
// read is not refused: only the shapes known to be unsafe are.
func ReplaySafe(typ string) error {
	toks := tokenizeType(typ)
	norm := joinTokens(toks)
	// stack holds the constructors enclosing the current token.
	var stack []string
	frozenDepth := 0
	for i, tk := range toks {
		switch tk {
		case "<":
			ctor := ""
			if i > 0 {
				ctor = toks[i-1]
			}
			stack = append(stack, ctor)
			if ctor == "frozen" || ctor == "tuple" || ctor == "vector" {
				frozenDepth++
			}
			continue
		case ">":
			if n := len(stack); n > 0 {
				if c := stack[n-1]; c == "frozen" || c == "tuple" || c == "vector" {
					frozenDepth--
				}
				stack = stack[:n-1]
			}
			continue
		}
		switch {
		case tk == "counter":
			return &UnsafeTypeError{Type: norm, Reason: "a counter is an increment and cannot be written USING TIMESTAMP",
				Alternatives: []string{"bigint (the document's value, written as it is)"}}
		case tk == "list" && frozenDepth == 0 && i+1 < len(toks) && toks[i+1] == "<":
			j := matching(toks, i+1)
			if j < 0 || j-1 <= i+2 {
				return nil // not a type Cassandra would print: leave it to the schema check
			}
			list := joinTokens(toks[i:j])
			elem := joinTokens(toks[i+2 : j-1])
			e := &UnsafeTypeError{Type: norm,
				Reason: "a non-frozen list appends every element again under new cell names on each replay"}
			if i == 0 && j == len(toks) {
				e.Alternatives = []string{"frozen<" + list + ">", "set<" + elem + "> (if order and duplicates do not matter)",
					"text with convert: json"}
			} else {
				fixed := joinTokens(toks[:i]) + "frozen<" + list + ">" + joinTokens(toks[j:])
				e.Alternatives = []string{fixed, "frozen<" + norm + ">", "text with convert: json"}
			}
			return e
		}
	}
	return nil
}

// CheckColumn is ReplaySafe for one column of table ("keyspace.table").
func CheckColumn(table, column, typ string) error {
	err := ReplaySafe(typ)
	if e, ok := err.(*UnsafeTypeError); ok {
		e.Table, e.Column = table, column
	}
	return err
}

// UnsafeColumns lists the columns of m whose spec type is not replay-safe,
// in spec order. The sink checks the live table's types too: they are what
// Cassandra actually does (see validate.UnsafeColumns).
func (m *Mapping) UnsafeColumns() []*UnsafeTypeError {
	var out []*UnsafeTypeError
	for _, ns := range m.namespaces {
		for _, t := range m.tables[ns] {
			for _, c := range t.Columns {
				if err := CheckColumn(t.QualifiedName(), c.Name, c.Type); err != nil {
					out = append(out, err.(*UnsafeTypeError))
				}
			}
		}
	}
	return out
}

// tokenizeType splits a CQL type into lower-case words, '<', '>' and ','.
// Quoted names ("MyType", 'custom.Class') are kept whole, case and all.
func tokenizeType(s string) []string {
	var out []string
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '<' || c == '>' || c == ',':
			out = append(out, string(c))
			i++
		case c == '"' || c == '\'':
			j := i + 1
			for j < len(s) && s[j] != c {
				j++
			}
			out = append(out, s[i:min(j+1, len(s))])
			i = j + 1
		default:
			j := i
			for j < len(s) && !strings.ContainsRune(" \t\n\r<>,\"'", rune(s[j])) {
				j++
			}
			out = append(out, strings.ToLower(s[i:j]))
			i = j
		}
	}
	return out
}

// joinTokens spells tokens as system_schema does: "map<text, frozen<list<int>>>".
func joinTokens(toks []string) string {
	var b strings.Builder
	for _, t := range toks {
		b.WriteString(t)
		if t == "," {
			b.WriteByte(' ')
		}
	}
	return b.String()
}

// matching returns the index after the '>' that closes the '<' at open, or -1.
func matching(toks []string, open int) int {
	depth := 0
	for i := open; i < len(toks); i++ {
		switch toks[i] {
		case "<":
			depth++
		case ">":
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return -1
}
