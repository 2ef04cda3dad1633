package reconcile

import (
	"context"
	"fmt"
	"reflect"
	"strings"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/transform"
)

// target reads one Cassandra table.
type target struct {
	s *gocql.Session
	t *transform.Table
	// scan selects the partition key's token, then every column.
	scan string
	// get selects every column and the newest write time of the cells that
	// have one, by primary key.
	get    string
	nWT    int
	del    string
	keyIdx []int
}

func newTarget(s *gocql.Session, t *transform.Table) *target {
	cols := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = c.Name
	}
	var pk, where, wts []string
	for _, i := range t.PartitionKey {
		pk = append(pk, t.Columns[i].Name)
	}
	keyIdx := append(append([]int{}, t.PartitionKey...), t.ClusteringKey...)
	isKey := map[int]bool{}
	for _, i := range keyIdx {
		where = append(where, t.Columns[i].Name+" = ?")
		isKey[i] = true
	}
	for i, c := range t.Columns {
		// Multi-cell collections have one write time per element; every
		// write sets every column, so the scalar cells tell the row's version.
		typ := strings.ToLower(c.Type)
		if isKey[i] || strings.HasPrefix(typ, "set<") || strings.HasPrefix(typ, "list<") || strings.HasPrefix(typ, "map<") {
			continue
		}
		wts = append(wts, "WRITETIME("+c.Name+")")
	}
	tk := "token(" + strings.Join(pk, ", ") + ")"
	tg := &target{s: s, t: t, keyIdx: keyIdx, nWT: len(wts),
		scan: fmt.Sprintf("SELECT %s, %s FROM %s WHERE %s >= ? AND %s <= ?", tk, strings.Join(cols, ", "), t.QualifiedName(), tk, tk),
		del:  fmt.Sprintf("DELETE FROM %s USING TIMESTAMP ? WHERE %s", t.QualifiedName(), strings.Join(where, " AND "))}
	sel := strings.Join(append(cols, wts...), ", ")
	tg.get = fmt.Sprintf("SELECT %s FROM %s WHERE %s", sel, t.QualifiedName(), strings.Join(where, " AND "))
	return tg
}

// scanRange calls fn for each row whose token lies in [lo, hi], with the
// values as gocql returns them for `any` (what Table.AppendCanonical takes).
// values is reused between calls.
func (tg *target) scanRange(ctx context.Context, lo, hi int64, fn func(token int64, values []any) error) error {
	iter := tg.s.Query(tg.scan, lo, hi).PageSize(5000).Idempotent(true).IterContext(ctx)
	rd, err := iter.RowData()
	if err != nil {
		iter.Close()
		return fmt.Errorf("reconcile: read %s: %w", tg.t.QualifiedName(), err)
	}
	flat := make([]any, len(rd.Values)-1)
	values := make([]any, 0, len(tg.t.Columns))
	for iter.Scan(rd.Values...) {
		tok := *(rd.Values[0].(*int64))
		for i, p := range rd.Values[1:] {
			flat[i] = reflect.ValueOf(p).Elem().Interface()
		}
		// A tuple column comes as one value per component.
		if values, err = tg.t.RowFromScan(flat, values); err != nil {
			iter.Close()
			return err
		}
		if err := fn(tok, values); err != nil {
			iter.Close()
			return err
		}
	}
	if err := iter.Close(); err != nil {
		return fmt.Errorf("reconcile: read %s [%d, %d]: %w", tg.t.QualifiedName(), lo, hi, err)
	}
	return nil
}

// read returns the row with primary key values key (KeyValues order), and the
// newest write time of its cells in microseconds (0 when unknown).
func (tg *target) read(ctx context.Context, key []any) (values []any, writetime int64, found bool, err error) {
	m := map[string]any{}
	iter := tg.s.Query(tg.get, key...).Idempotent(true).IterContext(ctx)
	found = iter.MapScan(m)
	if err := iter.Close(); err != nil {
		return nil, 0, false, fmt.Errorf("reconcile: read %s: %w", tg.t.QualifiedName(), err)
	}
	if !found {
		return nil, 0, false, nil
	}
	values = tg.t.RowFromMap(m, nil)
	for k, v := range m {
		if strings.HasPrefix(strings.ToLower(k), "writetime(") {
			if w, ok := v.(int64); ok && w > writetime {
				writetime = w
			}
		}
	}
	return values, writetime, true, nil
}

// deleteAt removes the row with a tombstone at timestamp ts: a write of the
// pipeline with a newer version still wins over it.
func (tg *target) deleteAt(ctx context.Context, key []any, ts int64) error {
	return tg.s.Query(tg.del, append([]any{ts}, key...)...).ExecContext(ctx)
}
