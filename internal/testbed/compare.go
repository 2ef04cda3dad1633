package testbed

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
)

// T is the part of testing.TB the comparison helpers use, so that the demo
// can run them outside a test.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// RepoRoot is the repository's top folder.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// UsersMapping loads examples/specs/users.yaml for namespace ns into keyspace
// ks, creating the keyspace (dropped at cleanup) and its tables.
func UsersMapping(t testing.TB, s *gocql.Session, ns, ks string) (*transform.Mapping, string) {
	t.Helper()
	spec, err := os.ReadFile(filepath.Join(RepoRoot(), "examples/specs/users.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(strings.ReplaceAll(string(spec), "keyspace: app", "keyspace: "+ks), "app.users", ns)
	m, err := transform.Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	UsersSchema(t, s, ks)
	return m, text
}

// UsersSchema creates keyspace ks (dropped at cleanup) with the tables and
// type of examples/specs/users.cql.
func UsersSchema(t testing.TB, s *gocql.Session, ks string) {
	t.Helper()
	CreateKeyspace(t, s, ks)
	cql, err := os.ReadFile(filepath.Join(RepoRoot(), "examples/specs/users.cql"))
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range strings.Split(string(cql), ";") {
		var lines []string
		for _, l := range strings.Split(stmt, "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "--") {
				lines = append(lines, l)
			}
		}
		stmt = strings.TrimSpace(strings.Join(lines, "\n"))
		if stmt == "" || strings.HasPrefix(stmt, "CREATE KEYSPACE") {
			continue
		}
		if err := s.Query(strings.ReplaceAll(stmt, "app.", ks+".")).Exec(); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
}

// Snapshot reads every row of the tables mapped from ns in a canonical,
// sorted form: equal snapshots mean identical tables.
func Snapshot(t T, s *gocql.Session, m *transform.Mapping, ns string) []byte {
	t.Helper()
	var rows [][]byte
	eachTargetRow(t, s, m, ns, func(tbl *transform.Table, vals []any) {
		rows = append(rows, canonical(t, tbl, vals))
	})
	return sortJoin(rows)
}

// Expected is what the tables must hold for these source documents.
func Expected(t T, m *transform.Mapping, ns string, docs []bson.Raw) []byte {
	t.Helper()
	var rows [][]byte
	eachExpectedRow(t, m, ns, docs, func(tbl *transform.Table, vals []any) {
		rows = append(rows, canonical(t, tbl, vals))
	})
	return sortJoin(rows)
}

// Rows are canonical rows (as Snapshot and Expected write them) by table and
// primary key, so that two sets can be told apart row by row.
type Rows map[string][]byte

// SnapshotRows reads every row of the tables mapped from ns, by key.
func SnapshotRows(t T, s *gocql.Session, m *transform.Mapping, ns string) Rows {
	t.Helper()
	out := Rows{}
	eachTargetRow(t, s, m, ns, func(tbl *transform.Table, vals []any) {
		out[rowKey(t, tbl, vals)] = canonical(t, tbl, vals)
	})
	return out
}

// ExpectedRows is what the tables must hold for docs, by key. Two documents
// mapping to one key is a failure: the tables could hold only one of them.
func ExpectedRows(t T, m *transform.Mapping, ns string, docs []bson.Raw) Rows {
	t.Helper()
	out := Rows{}
	eachExpectedRow(t, m, ns, docs, func(tbl *transform.Table, vals []any) {
		k := rowKey(t, tbl, vals)
		if _, dup := out[k]; dup {
			t.Fatalf("two source documents map to the key %q", k)
		}
		out[k] = canonical(t, tbl, vals)
	})
	return out
}

// RowDiff counts how actual rows differ from expected ones.
type RowDiff struct {
	// Compared is the number of keys in either set.
	Compared, Missing, Extra, Different int
	// Sample holds up to five differing rows, for failure messages.
	Sample []string
}

// Clean reports whether nothing is missing, extra or different.
func (d RowDiff) Clean() bool { return d.Missing+d.Extra+d.Different == 0 }

// Add sums two diffs (of different namespaces).
func (d RowDiff) Add(o RowDiff) RowDiff {
	d.Compared += o.Compared
	d.Missing += o.Missing
	d.Extra += o.Extra
	d.Different += o.Different
	d.Sample = append(d.Sample, o.Sample...)
	if len(d.Sample) > 5 {
		d.Sample = d.Sample[:5]
	}
	return d
}

// DiffRows compares every key of want and got.
func DiffRows(want, got Rows) RowDiff {
	var d RowDiff
	note := func(kind, k string, row []byte) {
		if len(d.Sample) < 5 {
			d.Sample = append(d.Sample, fmt.Sprintf("%s %q: %q", kind, k, row))
		}
	}
	for k, w := range want {
		d.Compared++
		g, ok := got[k]
		switch {
		case !ok:
			d.Missing++
			note("missing", k, w)
		case !bytes.Equal(g, w):
			d.Different++
			note("different", k, g)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			d.Compared++
			d.Extra++
			note("extra", k, g)
		}
	}
	return d
}

// eachTargetRow calls fn with every row of the tables mapped from ns, its
// values aligned with the table's columns.
func eachTargetRow(t T, s *gocql.Session, m *transform.Mapping, ns string, fn func(*transform.Table, []any)) {
	t.Helper()
	for _, tbl := range m.Tables(ns) {
		iter := s.Query("SELECT * FROM " + tbl.QualifiedName()).Iter()
		for {
			row := map[string]any{}
			if !iter.MapScan(row) {
				break
			}
			// RowFromMap puts a tuple column, which gocql splits into one
			// entry per component, back together.
			fn(tbl, tbl.RowFromMap(row, nil))
		}
		if err := iter.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// eachExpectedRow calls fn with every row the transform makes of docs.
func eachExpectedRow(t T, m *transform.Mapping, ns string, docs []bson.Raw, fn func(*transform.Table, []any)) {
	t.Helper()
	for _, d := range docs {
		out, err := m.Apply(ns, d)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range out {
			fn(r.Table, r.Values)
		}
	}
}

func canonical(t T, tbl *transform.Table, vals []any) []byte {
	b, err := tbl.AppendCanonical([]byte(tbl.Name+"|"), vals)
	if err != nil {
		t.Fatalf("canonical %s: %v", tbl.Name, err)
	}
	return b
}

func rowKey(t T, tbl *transform.Table, vals []any) string {
	k, err := tbl.EncodeKey(tbl.KeyValues(vals))
	if err != nil {
		t.Fatalf("key of %s: %v", tbl.Name, err)
	}
	return tbl.QualifiedName() + "|" + string(k)
}

// SourceDocs reads every document of a collection.
func SourceDocs(t T, ctx context.Context, coll *mongo.Collection) []bson.Raw {
	t.Helper()
	cur, err := coll.Find(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	var out []bson.Raw
	for cur.Next(ctx) {
		out = append(out, append(bson.Raw(nil), cur.Current...))
	}
	if err := cur.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func sortJoin(rows [][]byte) []byte {
	sort.Slice(rows, func(i, j int) bool { return bytes.Compare(rows[i], rows[j]) < 0 })
	return bytes.Join(rows, []byte{'\n'})
}

// FirstDiff is the first line of a that b lacks, for failure messages.
func FirstDiff(a, b []byte) []byte {
	bl := map[string]bool{}
	for _, l := range bytes.Split(b, []byte{'\n'}) {
		bl[string(l)] = true
	}
	for _, l := range bytes.Split(a, []byte{'\n'}) {
		if !bl[string(l)] {
			return l
		}
	}
	return nil
}
