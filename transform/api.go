// Package transform turns a source document into rows of the target Cassandra
// tables, following a versioned, declarative mapping spec. It is pure: no I/O,
// and the same document and spec always give byte-identical rows.
//
// CONTRACT (shared with sink and reconcile; the transform owner fills in the
// bodies and may add to it, but must not change these signatures without
// updating every caller):
//
//   - Load/Parse read a spec; Compile checks it and returns a *Mapping.
//   - Mapping.Apply(namespace, doc) returns one Row per target table whose filter
//     admits the document. Tables of that namespace with no Row must have any
//     existing row for this _id deleted by the sink.
//   - Row.Values are aligned with Table.Columns; nil means CQL null. Every mapped
//     column is present on every row: absent fields become nil, never "unset".
//   - Row.Values use the Go types gocql v2 marshals for the column's CQL type, and
//     Table.AppendCanonical accepts both those and what gocql returns when a row
//     is scanned into `any` (MapScan), so reconcile can hash both sides alike.
//     gocql splits a tuple column into one scanned value per component:
//     Table.RowFromScan and Table.RowFromMap put a scanned row back together.
//   - A Table whose primary key is computed from _id alone has KeyFromIDOnly set,
//     and KeyForID gives its key values from the _id (used to delete). Otherwise
//     the sink keeps a key map (table, _id) -> Row.Key to delete the old row when
//     the key changes (e.g. users_by_email).
//   - Conversion failures are *ConvertError values, never panics.
package transform

import (
	"fmt"
	"strings"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"go.mongodb.org/mongo-driver/bson"
)

// Mapping is a compiled spec, safe for concurrent use.
type Mapping struct {
	version    string
	checksum   string
	tables     map[string][]*Table // by namespace "db.collection"
	namespaces []string
	plans      map[string]*readPlan // by namespace
}

// Version is the spec's declared version.
func (m *Mapping) Version() string { return m.version }

// Checksum is a hex digest of the spec's canonical content.
func (m *Mapping) Checksum() string { return m.checksum }

// Namespaces lists the source namespaces ("db.collection") the spec maps, sorted.
func (m *Mapping) Namespaces() []string { return append([]string(nil), m.namespaces...) }

// Tables returns the target tables fed by namespace, in spec order.
func (m *Mapping) Tables(namespace string) []*Table { return m.tables[namespace] }

// Table is one target Cassandra table.
type Table struct {
	Keyspace string
	Name     string
	// Columns in write order; the primary key columns are among them.
	Columns []Column
	// PartitionKey and ClusteringKey hold indexes into Columns.
	PartitionKey  []int
	ClusteringKey []int
	// KeyFromIDOnly is true when every primary key column derives from _id alone.
	KeyFromIDOnly bool
	// Consistency is the write consistency level name, default "LOCAL_QUORUM".
	Consistency string

	namespace string
	cols      []*column
	keyCol    []bool // by column: part of the primary key
	plan      *readPlan
	// filter admits a document by the value at filterPath (found false when absent).
	filter     func(v bson.RawValue, found bool) bool
	filterPath []string
	filterSlot int
	// filtered is true when a filter on a mutable field can drop the row.
	filtered bool
	// hasTuple is true when a column is a tuple (see Placeholder).
	hasTuple bool
}

// NeedsKeyMap reports whether the sink must remember the key it last wrote for
// each _id: when the key can change, or a filter can later exclude the document.
func (t *Table) NeedsKeyMap() bool { return !t.KeyFromIDOnly || t.filtered }

// Column is one target column.
type Column struct {
	Name string
	// Type is the CQL type as Cassandra's system_schema spells it, e.g. "text",
	// "bigint", "frozen<address>", "list<int>", "map<text, text>".
	Type string
}

// QualifiedName is "keyspace.table".
func (t *Table) QualifiedName() string { return t.Keyspace + "." + t.Name }

// KeyValues picks the primary key values (partition key then clustering key) out of row values.
func (t *Table) KeyValues(values []any) []any {
	out := make([]any, 0, len(t.PartitionKey)+len(t.ClusteringKey))
	for _, i := range t.PartitionKey {
		out = append(out, values[i])
	}
	for _, i := range t.ClusteringKey {
		out = append(out, values[i])
	}
	return out
}

// Row is one row of one table.
type Row struct {
	Table  *Table
	Values []any
	// Key is Table.EncodeKey of the row's primary key values.
	Key []byte
}

// ConvertError says why a document could not be converted.
type ConvertError struct {
	Namespace string
	Table     string
	Column    string
	// Path is the document path the column reads, e.g. "address.zip".
	Path string
	// BSONType is the type found at Path ("missing" when absent).
	BSONType string
	// Rule is the conversion that failed, e.g. "int64->int".
	Rule string
	Err  error
}

func (e *ConvertError) Error() string {
	return "transform: " + e.Namespace + " -> " + e.Table + "." + e.Column + ": " + e.Path +
		" (" + e.BSONType + ") by " + e.Rule + ": " + e.Err.Error()
}

func (e *ConvertError) Unwrap() error { return e.Err }

// TupleWidth is how many values gocql's Scan and MapScan give for column i:
// a tuple column is split into one per component, any other is one.
func (t *Table) TupleWidth(i int) int {
	if c := t.cols[i]; c.typ.kind == kTuple {
		return len(c.typ.elems)
	}
	return 1
}

// RowFromScan puts the values gocql's Scan gave for every column selected in
// Columns order (each tuple column split into its components) back into one
// value per column, in dst (grown as needed): what AppendCanonical takes.
func (t *Table) RowFromScan(flat, dst []any) ([]any, error) {
	dst = dst[:0]
	for i := range t.cols {
		n := t.TupleWidth(i)
		if len(flat) < n {
			return dst, fmt.Errorf("transform: %s: %d scanned values are too few for its columns", t.QualifiedName(), len(flat))
		}
		if t.cols[i].typ.kind == kTuple {
			dst = append(dst, append([]any(nil), flat[:n]...))
		} else {
			dst = append(dst, flat[0])
		}
		flat = flat[n:]
	}
	if len(flat) != 0 {
		return dst, fmt.Errorf("transform: %s: %d scanned values left over", t.QualifiedName(), len(flat))
	}
	return dst, nil
}

// RowFromMap is RowFromScan for a row gocql's MapScan read: a tuple column
// comes as one entry per component, named by gocql.TupleColumnName.
func (t *Table) RowFromMap(m map[string]any, dst []any) []any {
	dst = dst[:0]
	for i, c := range t.cols {
		if c.typ.kind != kTuple {
			dst = append(dst, m[c.Name])
			continue
		}
		v := make([]any, t.TupleWidth(i))
		for j := range v {
			v[j] = m[gocql.TupleColumnName(c.Name, j)]
		}
		dst = append(dst, v)
	}
	return dst
}

// HasTuple reports whether a column is a tuple: its INSERT then depends on
// the row (see InsertMarks).
func (t *Table) HasTuple() bool { return t.hasTuple }

// InsertMarks is the VALUES list of an INSERT of these row values (aligned
// with Columns): a bind marker per column, but for a tuple a tuple literal of
// one marker per component, "(?, (?, ?))", or the literal null for a null
// one. gocql v2.1.2 cannot bind a whole tuple to one marker: it expects one
// value per component of a tuple marker, then marshals them against the
// statement's columns by position and fails. AppendBindValues gives the
// values to match.
func (t *Table) InsertMarks(values []any) string {
	var b strings.Builder
	for i, c := range t.cols {
		if i > 0 {
			b.WriteString(", ")
		}
		var v any
		if i < len(values) {
			v = values[i]
		}
		writeMarks(&b, c.typ, v)
	}
	return b.String()
}

func writeMarks(b *strings.Builder, t *cqlType, v any) {
	if t.kind != kTuple {
		b.WriteByte('?')
		return
	}
	c, _ := v.([]any)
	if c == nil {
		b.WriteString("null")
		return
	}
	b.WriteByte('(')
	for i, e := range t.elems {
		if i > 0 {
			b.WriteString(", ")
		}
		var x any
		if i < len(c) {
			x = c[i]
		}
		writeMarks(b, e, x)
	}
	b.WriteByte(')')
}

// AppendBindValues appends row values (aligned with Columns) to dst as
// InsertMarks takes them: a tuple's components one by one, nothing for a
// null tuple.
func (t *Table) AppendBindValues(dst, values []any) []any {
	if !t.hasTuple {
		return append(dst, values...)
	}
	for i, v := range values {
		dst = appendBind(dst, t.cols[i].typ, v)
	}
	return dst
}

func appendBind(dst []any, t *cqlType, v any) []any {
	if t.kind != kTuple {
		return append(dst, v)
	}
	c, _ := v.([]any)
	for i, e := range t.elems {
		if c == nil {
			break
		}
		var x any
		if i < len(c) {
			x = c[i]
		}
		dst = appendBind(dst, e, x)
	}
	return dst
}
