package transform

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Spec is the YAML mapping spec an operator keeps in their own repository.
// See doc.go for the reference.
type Spec struct {
	// Version names this revision of the mapping; it travels with every row and report.
	Version     string           `yaml:"version" json:"version"`
	Collections []CollectionSpec `yaml:"collections" json:"collections"`
}

// CollectionSpec maps one source namespace to one or more tables.
type CollectionSpec struct {
	// Namespace is "db.collection".
	Namespace string      `yaml:"namespace" json:"namespace"`
	Tables    []TableSpec `yaml:"tables" json:"tables"`
}

// TableSpec is one target table.
type TableSpec struct {
	Keyspace string `yaml:"keyspace" json:"keyspace"`
	Table    string `yaml:"table" json:"table"`
	// PartitionKey and ClusteringKey name columns of Columns.
	PartitionKey  []string `yaml:"partition_key" json:"partition_key"`
	ClusteringKey []string `yaml:"clustering_key,omitempty" json:"clustering_key,omitempty"`
	// Consistency is the write consistency level, default LOCAL_QUORUM.
	Consistency string       `yaml:"consistency,omitempty" json:"consistency,omitempty"`
	Filter      *FilterSpec  `yaml:"filter,omitempty" json:"filter,omitempty"`
	Columns     []ColumnSpec `yaml:"columns" json:"columns"`
}

// FilterSpec admits a document to a table only when it holds.
type FilterSpec struct {
	Path string `yaml:"path" json:"path"`
	// Exists requires the path to be present (true) or absent (false).
	Exists *bool `yaml:"exists,omitempty" json:"exists,omitempty"`
	// Equals requires the value at path to equal this scalar.
	Equals any `yaml:"equals,omitempty" json:"equals,omitempty"`
}

// ColumnSpec is one target column: where its value comes from and how it converts.
type ColumnSpec struct {
	Name string `yaml:"name" json:"name"`
	// Type is the CQL type, spelled as in CREATE TABLE: text, int, bigint,
	// double, float, boolean, timestamp, decimal, varint, uuid, blob,
	// list<T>, set<T>, map<text, T>, frozen<udt_name>.
	Type string `yaml:"type" json:"type"`
	// From is a dotted document path ("address.zip"). Exactly one of From and Compute.
	From string `yaml:"from,omitempty" json:"from,omitempty"`
	// Convert overrides the type-driven conversion: "json" (any value → JSON
	// text), "string" (scalar → its text form), "hex" (ObjectId/binary → hex
	// text), "millis" (int64 milliseconds → timestamp), or a name given to RegisterFunc.
	Convert string `yaml:"convert,omitempty" json:"convert,omitempty"`
	// Compute is a computed field: "concat", "lower", "hash_bucket", "const".
	Compute string `yaml:"compute,omitempty" json:"compute,omitempty"`
	// Args are the document paths a computed field reads.
	Args []string `yaml:"args,omitempty" json:"args,omitempty"`
	// Sep joins concat's parts.
	Sep string `yaml:"sep,omitempty" json:"sep,omitempty"`
	// Buckets is hash_bucket's modulus.
	Buckets int `yaml:"buckets,omitempty" json:"buckets,omitempty"`
	// Value is const's value, and the value used for a missing field when Default is set.
	Value any `yaml:"value,omitempty" json:"value,omitempty"`
	// Default replaces a missing field (not an explicit null) with Value.
	Default bool `yaml:"default,omitempty" json:"default,omitempty"`
	// NullAsDefault also replaces an explicit null with Value.
	NullAsDefault bool `yaml:"null_as_default,omitempty" json:"null_as_default,omitempty"`
	// Fields describes a frozen UDT's fields (name, type, from relative to the column's path).
	Fields []ColumnSpec `yaml:"fields,omitempty" json:"fields,omitempty"`
}

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,47}$`)

// Parse reads a YAML spec and compiles it.
func Parse(data []byte) (*Mapping, error) {
	var s Spec
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("transform: parse spec: %w", err)
	}
	return Compile(&s)
}

// Load reads and compiles the spec at path.
func Load(path string) (*Mapping, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("transform: %w", err)
	}
	m, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Checksum is the hex sha256 of the spec's canonical JSON form, so reformatting
// the YAML does not change it but any change of meaning does.
func (s *Spec) Checksum() string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Compile checks the whole spec, listing every problem at once.
func Compile(s *Spec) (*Mapping, error) {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if strings.TrimSpace(s.Version) == "" {
		bad("version is required")
	}
	if len(s.Collections) == 0 {
		bad("no collections")
	}
	m := &Mapping{version: s.Version, checksum: s.Checksum(), tables: map[string][]*Table{}}
	seenTable := map[string]bool{}
	specs := map[string][]*TableSpec{}
	for ci, cs := range s.Collections {
		if db, coll, ok := strings.Cut(cs.Namespace, "."); !ok || db == "" || coll == "" {
			bad("collections[%d]: namespace %q is not db.collection", ci, cs.Namespace)
		}
		if len(cs.Tables) == 0 {
			bad("%s: no tables", cs.Namespace)
		}
		for ti := range cs.Tables {
			ts := &cs.Tables[ti]
			where := fmt.Sprintf("%s -> %s.%s", cs.Namespace, ts.Keyspace, ts.Table)
			if !identRE.MatchString(ts.Keyspace) || !identRE.MatchString(ts.Table) {
				bad("%s: keyspace and table must be lowercase CQL identifiers", where)
			}
			if seenTable[ts.Keyspace+"."+ts.Table] {
				bad("%s: table mapped twice", where)
			}
			seenTable[ts.Keyspace+"."+ts.Table] = true
			t, terrs := compileTable(cs.Namespace, ts)
			for _, e := range terrs {
				bad("%s: %v", where, e)
			}
			if t != nil {
				m.tables[cs.Namespace] = append(m.tables[cs.Namespace], t)
				m.namespaces = append(m.namespaces, cs.Namespace)
				specs[cs.Namespace] = append(specs[cs.Namespace], ts)
			}
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("transform: invalid spec:\n  %w", joinIndented(errs))
	}
	sort.Strings(m.namespaces)
	m.namespaces = dedup(m.namespaces)
	m.plans = map[string]*readPlan{}
	for ns, tables := range m.tables {
		m.plans[ns] = newReadPlan(tables, specs[ns])
	}
	return m, nil
}

// newReadPlan gives every path the tables read a slot, and marks the columns
// whose value several tables can share.
func newReadPlan(tables []*Table, specs []*TableSpec) *readPlan {
	p := &readPlan{tables: tables}
	sigs := map[string][]*column{}
	for ti, t := range tables {
		t.plan = p
		p.ncols += len(t.cols)
		for ci, c := range t.cols {
			p.assign(c, nil)
			cs := specs[ti].Columns[ci]
			cs.Name = ""
			if b, err := json.Marshal(cs); err == nil {
				sigs[string(b)] = append(sigs[string(b)], c)
			}
		}
		if t.filter != nil {
			t.filterSlot = p.slot(t.filterPath)
		}
	}
	p.root.index()
	for _, cols := range sigs {
		if len(cols) > 1 {
			for _, c := range cols {
				c.shared = p.nshared
			}
			p.nshared++
		}
	}
	return p
}

// assign gives c, and the fields of a UDT, the slots of the paths they read;
// prefix is the path of the UDT a field belongs to.
func (p *readPlan) assign(c *column, prefix []string) {
	if prefix != nil {
		// A UDT field reads only its own path, inside the UDT's document.
		if len(c.path) > 0 {
			c.slot = p.slot(slices.Concat(prefix, c.path))
		}
		for _, f := range c.fields {
			if len(c.path) > 0 {
				p.assign(f, slices.Concat(prefix, c.path))
			}
		}
		return
	}
	switch c.op {
	case opFrom:
		c.slot = p.slot(c.path)
		for _, f := range c.fields {
			p.assign(f, c.path)
		}
	case opConcat, opLower, opHashBucket:
		for _, a := range c.args {
			c.argSlots = append(c.argSlots, p.slot(a))
		}
	}
}

func compileTable(ns string, ts *TableSpec) (*Table, []error) {
	var errs []error
	t := &Table{Keyspace: ts.Keyspace, Name: ts.Table, Consistency: strings.ToUpper(ts.Consistency), namespace: ns}
	if t.Consistency == "" {
		t.Consistency = "LOCAL_QUORUM"
	}
	if !validConsistency[t.Consistency] {
		errs = append(errs, fmt.Errorf("unknown consistency %q", ts.Consistency))
	}
	if len(ts.Columns) == 0 {
		errs = append(errs, errors.New("no columns"))
	}
	index := map[string]int{}
	for i := range ts.Columns {
		c, err := compileColumn(&ts.Columns[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("column %q: %w", ts.Columns[i].Name, err))
			continue
		}
		if _, dup := index[c.Name]; dup {
			errs = append(errs, fmt.Errorf("column %q defined twice", c.Name))
			continue
		}
		index[c.Name] = len(t.Columns)
		t.Columns = append(t.Columns, Column{Name: c.Name, Type: c.typ.String()})
		if c.typ.kind == kTuple {
			t.hasTuple = true
		}
		t.cols = append(t.cols, c)
	}
	if len(ts.PartitionKey) == 0 {
		errs = append(errs, errors.New("partition_key is required"))
	}
	t.KeyFromIDOnly = true
	for _, group := range []struct {
		names []string
		dst   *[]int
	}{{ts.PartitionKey, &t.PartitionKey}, {ts.ClusteringKey, &t.ClusteringKey}} {
		for _, n := range group.names {
			i, ok := index[n]
			if !ok {
				errs = append(errs, fmt.Errorf("key column %q is not among the columns", n))
				continue
			}
			*group.dst = append(*group.dst, i)
			if !t.cols[i].fromIDOnly() {
				t.KeyFromIDOnly = false
			}
			// Cassandra refuses duration in a key; the others have no key encoding here.
			if k := t.cols[i].typ.kind; k == kList || k == kSet || k == kMap || k == kUDT || k == kTuple || k == kVector || k == kDuration {
				errs = append(errs, fmt.Errorf("key column %q must have a scalar type", n))
			}
		}
	}
	t.keyCol = make([]bool, len(t.cols))
	for _, i := range t.PartitionKey {
		t.keyCol[i] = true
	}
	for _, i := range t.ClusteringKey {
		t.keyCol[i] = true
	}
	if ts.Filter != nil {
		if ts.Filter.Path == "" || (ts.Filter.Exists == nil && ts.Filter.Equals == nil) {
			errs = append(errs, errors.New("filter needs a path and one of exists/equals"))
		}
		f, err := compileFilter(ts.Filter)
		if err != nil {
			errs = append(errs, fmt.Errorf("filter equals: %w", err))
		}
		t.filter = f
		t.filterPath = strings.Split(ts.Filter.Path, ".")
		if ts.Filter.Path != "_id" {
			// A filter on a mutable field can drop the row later: the sink needs
			// to find it then, exactly as for a mutable key.
			t.filtered = true
		}
	}
	return t, errs
}

var validConsistency = map[string]bool{"ANY": true, "ONE": true, "TWO": true, "THREE": true, "QUORUM": true,
	"ALL": true, "LOCAL_QUORUM": true, "EACH_QUORUM": true, "LOCAL_ONE": true}

func dedup(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

type indentedErrs []error

func (e indentedErrs) Error() string {
	parts := make([]string, len(e))
	for i, err := range e {
		parts[i] = err.Error()
	}
	return strings.Join(parts, "\n  ")
}

func (e indentedErrs) Unwrap() []error { return e }

func joinIndented(errs []error) error { return indentedErrs(errs) }
