package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
)

// Writer makes the target tables reflect one event.
type Writer interface {
	// Apply returns once Cassandra acknowledged every write for ev. rows is the
	// transform of ev's document (empty for a delete). It must be idempotent:
	// applying the same event twice, or an older one after a newer, changes nothing.
	Apply(ctx context.Context, ev *envelope.Event, rows []transform.Row) error
}

// KeyMapTable is the table, per target keyspace, where the sink remembers the
// key it last wrote for each (table, _id) of tables whose key can change.
const KeyMapTable = "tidemark_keymap"

// CassandraWriter writes rows with USING TIMESTAMP = source version.
type CassandraWriter struct {
	s           *gocql.Session
	m           *transform.Mapping
	consistency string
	insert      map[*transform.Table]string
	del         map[*transform.Table]string
}

var _ Writer = (*CassandraWriter)(nil)

// NewCassandraWriter prepares statements for every table of m and creates the
// key map tables it needs. consistency, when set, overrides the tables' own.
func NewCassandraWriter(ctx context.Context, s *gocql.Session, m *transform.Mapping, consistency string) (*CassandraWriter, error) {
	w := &CassandraWriter{s: s, m: m, consistency: consistency, insert: map[*transform.Table]string{}, del: map[*transform.Table]string{}}
	keyspaces := map[string]bool{}
	for _, ns := range m.Namespaces() {
		for _, t := range m.Tables(ns) {
			names := make([]string, len(t.Columns))
			marks := make([]string, len(t.Columns))
			for i, c := range t.Columns {
				names[i], marks[i] = c.Name, "?"
			}
			w.insert[t] = fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) USING TIMESTAMP ?", t.QualifiedName(),
				strings.Join(names, ", "), strings.Join(marks, ", "))
			var where []string
			for _, i := range append(append([]int{}, t.PartitionKey...), t.ClusteringKey...) {
				where = append(where, t.Columns[i].Name+" = ?")
			}
			w.del[t] = fmt.Sprintf("DELETE FROM %s USING TIMESTAMP ? WHERE %s", t.QualifiedName(), strings.Join(where, " AND "))
			if t.NeedsKeyMap() {
				keyspaces[t.Keyspace] = true
			}
		}
	}
	for ks := range keyspaces {
		q := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s (tbl text, id blob, key blob, version bigint, PRIMARY KEY ((tbl, id)))", ks, KeyMapTable)
		if err := s.Query(q).WithContext(ctx).Exec(); err != nil {
			return nil, fmt.Errorf("sink: create key map in %s: %w", ks, err)
		}
	}
	return w, nil
}

func (w *CassandraWriter) query(t *transform.Table, stmt string, args ...any) *gocql.Query {
	q := w.s.Query(stmt, args...).Idempotent(true)
	c := t.Consistency
	if w.consistency != "" {
		c = w.consistency
	}
	if cl, err := gocql.ParseConsistencyWrapper(c); err == nil {
		q = q.Consistency(cl)
	}
	return q
}

// Apply writes ev's rows, deletes rows the document no longer has, and keeps
// the key map of mutable-key tables current.
func (w *CassandraWriter) Apply(ctx context.Context, ev *envelope.Event, rows []transform.Row) error {
	ts := ev.Version.Micros()
	byTable := make(map[*transform.Table]*transform.Row, len(rows))
	for i := range rows {
		byTable[rows[i].Table] = &rows[i]
	}
	for _, t := range w.m.Tables(ev.Namespace) {
		row := byTable[t]
		if !t.NeedsKeyMap() {
			if row != nil {
				if err := w.upsert(ctx, t, row, ts); err != nil {
					return err
				}
				continue
			}
			key, err := t.KeyForID(ev.ID)
			if err != nil {
				return err
			}
			if err := w.query(t, w.del[t], append([]any{ts}, key...)...).WithContext(ctx).Exec(); err != nil {
				return fmt.Errorf("sink: delete from %s: %w", t.QualifiedName(), err)
			}
			continue
		}
		if err := w.applyMapped(ctx, t, ev, row, ts); err != nil {
			return err
		}
	}
	return nil
}

func (w *CassandraWriter) upsert(ctx context.Context, t *transform.Table, row *transform.Row, ts int64) error {
	args := append(append(make([]any, 0, len(row.Values)+1), row.Values...), ts)
	if err := w.query(t, w.insert[t], args...).WithContext(ctx).Exec(); err != nil {
		return fmt.Errorf("sink: write %s: %w", t.QualifiedName(), err)
	}
	return nil
}

// applyMapped handles a table whose key can change: the key map says which
// key the row was last written under, and at which version.
func (w *CassandraWriter) applyMapped(ctx context.Context, t *transform.Table, ev *envelope.Event, row *transform.Row, ts int64) error {
	id := ev.Key()
	var oldKey []byte
	var oldVersion int64
	err := w.query(t, fmt.Sprintf("SELECT key, version FROM %s.%s WHERE tbl = ? AND id = ?", t.Keyspace, KeyMapTable),
		t.Name, id).WithContext(ctx).Scan(&oldKey, &oldVersion)
	if err != nil && !errors.Is(err, gocql.ErrNotFound) {
		return fmt.Errorf("sink: read key map of %s: %w", t.QualifiedName(), err)
	}
	if err == nil && oldVersion > ts {
		// A newer version already decided where this document's row lives;
		// writing this older one could leave a row under a stale key forever.
		return nil
	}
	var newKey []byte
	if row != nil {
		newKey = row.Key
	}
	if len(oldKey) > 0 && !bytes.Equal(oldKey, newKey) {
		key, err := t.DecodeKey(oldKey)
		if err != nil {
			return err
		}
		if err := w.query(t, w.del[t], append([]any{ts}, key...)...).WithContext(ctx).Exec(); err != nil {
			return fmt.Errorf("sink: delete old key from %s: %w", t.QualifiedName(), err)
		}
	}
	if row != nil {
		if err := w.upsert(ctx, t, row, ts); err != nil {
			return err
		}
	}
	q := fmt.Sprintf("INSERT INTO %s.%s (tbl, id, key, version) VALUES (?, ?, ?, ?) USING TIMESTAMP ?", t.Keyspace, KeyMapTable)
	if err := w.query(t, q, t.Name, id, newKey, ts, ts).WithContext(ctx).Exec(); err != nil {
		return fmt.Errorf("sink: write key map of %s: %w", t.QualifiedName(), err)
	}
	return nil
}
