package validate

import (
	"context"
	"fmt"
	"strings"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/transform"
)

// UnsafeColumns lists the mapped columns of m whose type cannot be written
// idempotently with USING TIMESTAMP (transform.ReplaySafe), in spec order.
// It judges the type the live table has, since that is what Cassandra does
// with a write (a spec's frozen<udt> may feed a non-frozen column, and the
// spec may be wrong); where the table or the column does not exist yet it
// judges the spec's type. The sink refuses to start while any is listed.
func UnsafeColumns(ctx context.Context, s *gocql.Session, m *transform.Mapping) ([]*transform.UnsafeTypeError, error) {
	c := newSchemaChecker(s, nil)
	var out []*transform.UnsafeTypeError
	for _, ns := range m.Namespaces() {
		for _, t := range m.Tables(ns) {
			cols, err := c.columns(ctx, t.Keyspace, t.Name)
			if err != nil {
				return nil, err
			}
			live := make(map[string]schemaColumn, len(cols))
			for _, sc := range cols {
				live[sc.name] = sc
			}
			for _, col := range t.Columns {
				typ := col.Type
				if sc, ok := live[col.Name]; ok {
					typ = sc.typ
				}
				if err := transform.CheckColumn(t.QualifiedName(), col.Name, typ); err != nil {
					out = append(out, err.(*transform.UnsafeTypeError))
				}
			}
		}
	}
	return out, nil
}

// unsafeProblem reports an unsafe column as a Problem of the namespace that feeds it.
func unsafeProblem(m *transform.Mapping, u *transform.UnsafeTypeError) Problem {
	p := Problem{Kind: KindUnsafeType, Table: u.Table, Column: u.Column,
		Message: fmt.Sprintf("type %s is not replay-safe (%s); use %s", u.Type, u.Reason, strings.Join(u.Alternatives, ", or "))}
	for _, ns := range m.Namespaces() {
		for _, t := range m.Tables(ns) {
			if t.QualifiedName() == u.Table {
				p.Namespace = ns
			}
		}
	}
	return p
}
