package validate

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/transform"
)

// schemaChecker compares the spec's tables with system_schema. It caches what
// it read so a keyspace or type shared by several tables is read once.
type schemaChecker struct {
	s    *gocql.Session
	spec *transform.Spec // optional, for UDT fields

	keyspaces map[string]bool
	types     map[string]*udt // "ks.type" -> nil when it does not exist
	// typeReported keeps one missing_type problem per type, however many columns use it.
	typeReported map[string]bool
}

func newSchemaChecker(s *gocql.Session, spec *transform.Spec) *schemaChecker {
	return &schemaChecker{s: s, spec: spec, keyspaces: map[string]bool{}, types: map[string]*udt{}, typeReported: map[string]bool{}}
}

type udt struct {
	fields []string
	types  []string
}

type schemaColumn struct {
	name     string
	kind     string // partition_key, clustering, regular, static
	position int
	typ      string
}

// tableProblems collects the problems found in one table of a namespace.
type tableProblems struct {
	ns, table string
	list      []Problem
}

func (tp *tableProblems) add(kind, column, format string, a ...any) {
	tp.list = append(tp.list, Problem{Kind: kind, Namespace: tp.ns, Table: tp.table, Column: column, Message: fmt.Sprintf(format, a...)})
}

// checkTable lists every way t differs from the live table. An error means
// system_schema could not be read.
func (c *schemaChecker) checkTable(ctx context.Context, ns string, t *transform.Table) ([]Problem, error) {
	qn := t.QualifiedName()
	tp := &tableProblems{ns: ns, table: qn}
	ok, err := c.keyspaceExists(ctx, t.Keyspace)
	if err != nil {
		return nil, err
	}
	if !ok {
		tp.add(KindMissingKeyspace, "", "keyspace %s does not exist; create it (and the table) before running the sink", t.Keyspace)
		return tp.list, nil
	}
	// UDTs are checked whether or not the table exists: the operator needs to
	// create them first either way.
	if err := c.checkTypesExist(ctx, t, tp); err != nil {
		return nil, err
	}
	cols, err := c.columns(ctx, t.Keyspace, t.Name)
	if err != nil {
		return nil, err
	}
	if cols == nil {
		msg, err := c.whyNoTable(ctx, t)
		if err != nil {
			return nil, err
		}
		tp.add(KindMissingTable, "", "%s", msg)
		return tp.list, nil
	}
	checkColumns(t, cols, tp)
	checkKeys(t, cols, tp)
	if err := c.checkUDTFields(ctx, ns, t, tp); err != nil {
		return nil, err
	}
	return tp.list, nil
}

// checkTypesExist reports each user-defined type the columns name that the
// keyspace lacks, once however many columns use it.
func (c *schemaChecker) checkTypesExist(ctx context.Context, t *transform.Table, tp *tableProblems) error {
	for _, col := range t.Columns {
		for _, name := range udtNames(col.Type) {
			key := t.Keyspace + "." + name
			u, err := c.udt(ctx, t.Keyspace, name)
			if err != nil {
				return err
			}
			if u == nil && !c.typeReported[key] {
				c.typeReported[key] = true
				tp.add(KindMissingType, col.Name, "user-defined type %s does not exist (CREATE TYPE %s (...))", key, key)
			}
		}
	}
	return nil
}

// whyNoTable says why the table has no columns: it does not exist, or it
// is a materialized view.
func (c *schemaChecker) whyNoTable(ctx context.Context, t *transform.Table) (string, error) {
	qn := t.QualifiedName()
	var view string
	err := c.s.Query(`SELECT view_name FROM system_schema.views WHERE keyspace_name = ? AND view_name = ?`,
		t.Keyspace, t.Name).ScanContext(ctx, &view)
	switch {
	case err == nil:
		return fmt.Sprintf("%s is a materialized view; the sink can only write to base tables", qn), nil
	case !errors.Is(err, gocql.ErrNotFound):
		return "", fmt.Errorf("validate: read system_schema.views for %s: %w", qn, err)
	}
	return fmt.Sprintf("table %s does not exist (see the spec's columns for its CREATE TABLE)", qn), nil
}

// checkColumns reports each spec column the table lacks or types otherwise.
func checkColumns(t *transform.Table, cols []schemaColumn, tp *tableProblems) {
	qn := t.QualifiedName()
	byName := make(map[string]schemaColumn, len(cols))
	for _, sc := range cols {
		byName[sc.name] = sc
	}
	for _, col := range t.Columns {
		sc, ok := byName[col.Name]
		if !ok {
			tp.add(KindMissingColumn, col.Name, "%s has no column %s (ALTER TABLE %s ADD %s %s, or drop it from the spec)",
				qn, col.Name, qn, col.Name, col.Type)
			continue
		}
		if !Compatible(col.Type, sc.typ) {
			tp.add(KindTypeMismatch, col.Name, "spec type %s, table type %s", col.Type, sc.typ)
		}
	}
}

// checkKeys reports a partition or clustering key that differs from the
// table's, and a primary key column the spec does not write.
func checkKeys(t *transform.Table, cols []schemaColumn, tp *tableProblems) {
	names := func(idx []int) []string {
		out := make([]string, len(idx))
		for i, j := range idx {
			out[i] = t.Columns[j].Name
		}
		return out
	}
	for _, k := range []struct {
		kind, schemaKind, label string
		spec                    []string
	}{
		{KindPartitionKey, "partition_key", "partition key", names(t.PartitionKey)},
		{KindClusteringKey, "clustering", "clustering key", names(t.ClusteringKey)},
	} {
		live := keyColumns(cols, k.schemaKind)
		if strings.Join(live, ",") != strings.Join(k.spec, ",") {
			tp.add(k.kind, "", "spec %s (%s), table %s (%s)", k.label, listOrNone(k.spec), k.label, listOrNone(live))
		}
	}
	specCols := make(map[string]bool, len(t.Columns))
	for _, col := range t.Columns {
		specCols[col.Name] = true
	}
	for _, sc := range cols {
		if (sc.kind == "partition_key" || sc.kind == "clustering") && !specCols[sc.name] {
			tp.add(KindUnmappedKeyColumn, sc.name, "primary key column %s (%s) is not among the spec's columns; every write would fail",
				sc.name, sc.typ)
		}
	}
}

// checkUDTFields checks the fields the spec writes into each frozen UDT
// column against the type's (the spec is optional: without it, only types).
func (c *schemaChecker) checkUDTFields(ctx context.Context, ns string, t *transform.Table, tp *tableProblems) error {
	if c.spec == nil {
		return nil
	}
	ts := c.tableSpec(ns, t)
	if ts == nil {
		return nil
	}
	for i := range ts.Columns {
		cs := &ts.Columns[i]
		name, ok := frozenUDT(normType(cs.Type))
		if !ok || len(cs.Fields) == 0 {
			continue
		}
		fps, err := c.checkFields(ctx, t.Keyspace, name, cs.Fields, cs.Name)
		if err != nil {
			return err
		}
		for _, p := range fps {
			tp.add(KindUDTField, p.column, "%s", p.msg)
		}
	}
	return nil
}

type fieldProblem struct{ column, msg string }

// checkFields checks the fields a spec writes into UDT ks.name. gocql marshals
// a UDT from a map by the type's own field list, so a spec field the type does
// not have would be dropped without an error on every write.
func (c *schemaChecker) checkFields(ctx context.Context, ks, name string, fields []transform.ColumnSpec, at string) ([]fieldProblem, error) {
	u, err := c.udt(ctx, ks, name)
	if err != nil || u == nil {
		return nil, err // a missing type is reported once, by checkTable
	}
	var out []fieldProblem
	for i := range fields {
		f := &fields[i]
		path := at + "." + f.Name
		j := indexOf(u.fields, f.Name)
		if j < 0 {
			out = append(out, fieldProblem{path, fmt.Sprintf("type %s.%s has no field %s (fields: %s); its value would be dropped on every write",
				ks, name, f.Name, strings.Join(u.fields, ", "))})
			continue
		}
		// Inside a UDT, collections and UDTs are always frozen; system_schema
		// spells them so, the spec need not.
		if !Compatible(unfreeze(normType(f.Type)), unfreeze(normType(u.types[j]))) {
			out = append(out, fieldProblem{path, fmt.Sprintf("spec field type %s, type %s.%s has %s", f.Type, ks, name, u.types[j])})
			continue
		}
		if inner, ok := frozenUDT(normType(f.Type)); ok && len(f.Fields) > 0 {
			more, err := c.checkFields(ctx, ks, inner, f.Fields, path)
			if err != nil {
				return nil, err
			}
			out = append(out, more...)
		}
	}
	return out, nil
}

func (c *schemaChecker) tableSpec(ns string, t *transform.Table) *transform.TableSpec {
	for i := range c.spec.Collections {
		cs := &c.spec.Collections[i]
		if cs.Namespace != ns {
			continue
		}
		for j := range cs.Tables {
			if ts := &cs.Tables[j]; ts.Keyspace == t.Keyspace && ts.Table == t.Name {
				return ts
			}
		}
	}
	return nil
}

func (c *schemaChecker) keyspaceExists(ctx context.Context, ks string) (bool, error) {
	if ok, seen := c.keyspaces[ks]; seen {
		return ok, nil
	}
	var name string
	err := c.s.Query(`SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?`, ks).ScanContext(ctx, &name)
	if err != nil && !errors.Is(err, gocql.ErrNotFound) {
		return false, fmt.Errorf("validate: read system_schema.keyspaces: %w", err)
	}
	c.keyspaces[ks] = err == nil
	return err == nil, nil
}

// columns returns the table's columns, or nil when the table does not exist.
func (c *schemaChecker) columns(ctx context.Context, ks, table string) ([]schemaColumn, error) {
	iter := c.s.Query(`SELECT column_name, kind, position, type FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?`,
		ks, table).IterContext(ctx)
	var out []schemaColumn
	var sc schemaColumn
	for iter.Scan(&sc.name, &sc.kind, &sc.position, &sc.typ) {
		out = append(out, sc)
	}
	if err := iter.Close(); err != nil {
		return nil, fmt.Errorf("validate: read system_schema.columns for %s.%s: %w", ks, table, err)
	}
	return out, nil
}

// udt returns the type's fields, or nil when it does not exist.
func (c *schemaChecker) udt(ctx context.Context, ks, name string) (*udt, error) {
	key := ks + "." + name
	if u, seen := c.types[key]; seen {
		return u, nil
	}
	u := &udt{}
	err := c.s.Query(`SELECT field_names, field_types FROM system_schema.types WHERE keyspace_name = ? AND type_name = ?`,
		ks, name).ScanContext(ctx, &u.fields, &u.types)
	switch {
	case errors.Is(err, gocql.ErrNotFound):
		u = nil
	case err != nil:
		return nil, fmt.Errorf("validate: read system_schema.types for %s: %w", key, err)
	}
	c.types[key] = u
	return u, nil
}

// keyColumns are the names of the columns of one kind in key order.
func keyColumns(cols []schemaColumn, kind string) []string {
	var ks []schemaColumn
	for _, c := range cols {
		if c.kind == kind {
			ks = append(ks, c)
		}
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i].position < ks[j].position })
	out := make([]string, len(ks))
	for i, c := range ks {
		out[i] = c.name
	}
	return out
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// nativeTypes are CQL's built-in type names; any other bare name is a UDT.
var nativeTypes = map[string]bool{
	"ascii": true, "bigint": true, "blob": true, "boolean": true, "counter": true, "date": true,
	"decimal": true, "double": true, "duration": true, "float": true, "inet": true, "int": true,
	"smallint": true, "text": true, "time": true, "timestamp": true, "timeuuid": true, "tinyint": true,
	"uuid": true, "varchar": true, "varint": true,
	// Type constructors.
	"frozen": true, "list": true, "set": true, "map": true, "tuple": true, "vector": true,
}

var (
	wordRE  = regexp.MustCompile(`[a-z_][a-z0-9_]*`)
	identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
)

// normType spells a CQL type the way system_schema does for comparison: lower
// case, no spaces, varchar as text (its alias).
func normType(s string) string {
	s = strings.ToLower(strings.Join(strings.Fields(s), ""))
	return wordRE.ReplaceAllStringFunc(s, func(w string) string {
		if w == "varchar" {
			return "text"
		}
		return w
	})
}

// frozenUDT returns name when s (normalised) is frozen<name> of a UDT.
func frozenUDT(s string) (string, bool) {
	inner, ok := strings.CutPrefix(s, "frozen<")
	if !ok || !strings.HasSuffix(inner, ">") {
		return "", false
	}
	inner = inner[:len(inner)-1]
	return inner, identRE.MatchString(inner) && !nativeTypes[inner]
}

// unfreeze strips one top-level frozen<...> from a normalised type.
func unfreeze(s string) string {
	if inner, ok := strings.CutPrefix(s, "frozen<"); ok && strings.HasSuffix(inner, ">") {
		return inner[:len(inner)-1]
	}
	return s
}

// udtNames lists the user-defined types a CQL type refers to.
func udtNames(typ string) []string {
	var out []string
	for _, w := range wordRE.FindAllString(normType(typ), -1) {
		if !nativeTypes[w] && indexOf(out, w) < 0 {
			out = append(out, w)
		}
	}
	return out
}

// Compatible reports whether a column the spec types specType can be written to
// a column system_schema types schemaType: the same type once spaces, case and
// the varchar alias are normalised, or frozen<udt> against a non-frozen column
// of the same UDT (system_schema spells that plain "udt"; the driver writes a
// whole value to either the same way).
func Compatible(specType, schemaType string) bool {
	a, b := normType(specType), normType(schemaType)
	if a == b {
		return true
	}
	if strings.Contains(a, "tuple<") || strings.Contains(b, "tuple<") {
		// A tuple is always frozen, and so is everything in it: system_schema
		// spells tuple<int, list<text>> frozen<tuple<int, frozen<list<text>>>>.
		if tupleForm(a) == tupleForm(b) {
			return true
		}
	}
	if inner, ok := frozenUDT(a); ok && inner == b {
		return true
	}
	if inner, ok := frozenUDT(b); ok && inner == a {
		return true
	}
	return false
}

// tupleForm drops the frozen<…> around a tuple and around anything inside
// one, from a normalised type: the frozen-ness Cassandra implies there.
func tupleForm(s string) string {
	var b strings.Builder
	var walk func(inTuple bool)
	i := 0
	name := func() string {
		start := i
		for i < len(s) && s[i] != '<' && s[i] != '>' && s[i] != ',' {
			i++
		}
		return s[start:i]
	}
	walk = func(inTuple bool) {
		n := name()
		if i >= len(s) || s[i] != '<' {
			b.WriteString(n)
			return
		}
		if n == "frozen" && (inTuple || strings.HasPrefix(s[i+1:], "tuple<")) {
			i++ // '<'
			walk(inTuple)
			if i < len(s) && s[i] == '>' {
				i++
			}
			return
		}
		b.WriteString(n)
		b.WriteByte('<')
		i++
		for {
			walk(inTuple || n == "tuple")
			if i < len(s) && s[i] == ',' {
				b.WriteByte(',')
				i++
				continue
			}
			break
		}
		if i < len(s) && s[i] == '>' {
			b.WriteByte('>')
			i++
		}
	}
	for i < len(s) {
		before := i
		walk(false)
		if i == before { // a stray '>' or ','
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String()
}
