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

// Writer makes the target tables reflect events. Both methods must be
// idempotent: applying a change twice, or an older one after a newer, changes
// nothing.
type Writer interface {
	// Write applies changes to rows of t that all live in one Cassandra
	// partition, as one unlogged batch when there are several, and returns
	// once Cassandra acknowledged them. Only tables without a key map go
	// through Write: their rows can be written in any order.
	Write(ctx context.Context, t *transform.Table, cs []Change) error
	// ApplyMapped makes a table whose key can change reflect one event: row is
	// the event's row for t, nil when the document is gone or filtered out.
	// Events of one _id must be applied in order.
	ApplyMapped(ctx context.Context, t *transform.Table, ev *envelope.Event, row *transform.Row) error
}

// ErrRejected marks a write the target refused as invalid: retrying cannot
// help, so the record goes to the dead-letter topic at once. A batch refused
// so is split and its rows written one by one, so only the offending rows go.
var ErrRejected = errors.New("rejected by the target")

// ErrTargetBroken marks an error that no row causes and no retry fixes: a
// table, keyspace or column is gone, or the sink may not write. The sink stops
// with nothing past the failed write committed, rather than dead-letter every
// record; it resumes there once the target is fixed.
var ErrTargetBroken = errors.New("the target refuses every write")

// Change is one upsert or delete of one row, stamped with its source version.
type Change struct {
	// Row is the upserted row; nil for a delete.
	Row *transform.Row
	// Key holds the primary key values of a delete.
	Key []any
	// Version is the source version in microseconds, the write timestamp.
	Version int64
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
	// insertHead is, for a table with a tuple column, the INSERT up to its
	// VALUES list, which depends on the row (see transform.Table.InsertMarks).
	insertHead map[*transform.Table]string
	// goneTTL is, per table with a key map, the gc_grace_seconds read at
	// start: how long the key map keeps the entry of a document that has no
	// row in the table any more (see ApplyMapped). 0: kept for good.
	goneTTL map[*transform.Table]int
}

var _ Writer = (*CassandraWriter)(nil)

// NewCassandraWriter prepares statements for every table of m, creates the
// key map tables it needs and reads the gc_grace_seconds of the tables that
// use one. consistency, when set, overrides the tables' own.
func NewCassandraWriter(ctx context.Context, s *gocql.Session, m *transform.Mapping, consistency string) (*CassandraWriter, error) {
	w := &CassandraWriter{s: s, m: m, consistency: consistency, insert: map[*transform.Table]string{}, del: map[*transform.Table]string{},
		insertHead: map[*transform.Table]string{}, goneTTL: map[*transform.Table]int{}}
	keyspaces := map[string]bool{}
	for _, ns := range m.Namespaces() {
		for _, t := range m.Tables(ns) {
			st := newStatements(t)
			w.insert[t], w.del[t] = st.insert, st.del
			if t.HasTuple() {
				w.insertHead[t] = st.head
			}
			if t.NeedsKeyMap() {
				keyspaces[t.Keyspace] = true
				var grace int
				err := s.Query("SELECT gc_grace_seconds FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
					t.Keyspace, t.Name).ScanContext(ctx, &grace)
				if err != nil && !errors.Is(err, gocql.ErrNotFound) {
					return nil, fmt.Errorf("sink: read gc_grace_seconds of %s: %w", t.QualifiedName(), err)
				}
				// A missing table is reported by the first write, as for
				// tables without a key map; its entries are then kept.
				w.goneTTL[t] = grace
			}
		}
	}
	for ks := range keyspaces {
		q := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s (tbl text, id blob, key blob, version bigint, PRIMARY KEY ((tbl, id)))", ks, KeyMapTable)
		if err := s.Query(q).ExecContext(ctx); err != nil {
			return nil, fmt.Errorf("sink: create key map in %s: %w", ks, err)
		}
	}
	return w, nil
}

type statements struct{ insert, head, del string }

// newStatements builds the upsert and delete of t: every mapped column on every
// upsert, and both timestamped with the source version.
func newStatements(t *transform.Table) statements {
	names := make([]string, len(t.Columns))
	marks := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		names[i], marks[i] = c.Name, "?"
	}
	var where []string
	for _, i := range append(append([]int{}, t.PartitionKey...), t.ClusteringKey...) {
		where = append(where, t.Columns[i].Name+" = ?")
	}
	head := fmt.Sprintf("INSERT INTO %s (%s) VALUES (", t.QualifiedName(), strings.Join(names, ", "))
	return statements{
		insert: head + strings.Join(marks, ", ") + insertTail,
		head:   head,
		del:    fmt.Sprintf("DELETE FROM %s USING TIMESTAMP ? WHERE %s", t.QualifiedName(), strings.Join(where, " AND ")),
	}
}

const insertTail = ") USING TIMESTAMP ?"

func (w *CassandraWriter) consistencyOf(t *transform.Table) gocql.Consistency {
	c := t.Consistency
	if w.consistency != "" {
		c = w.consistency
	}
	if cl, err := gocql.ParseConsistencyWrapper(c); err == nil {
		return cl
	}
	return gocql.LocalQuorum
}

// classify marks the errors Cassandra or gocql return for a write that can
// never succeed as it is. Everything else (timeouts, unavailable, overloaded
// or bootstrapping coordinators, no hosts, closed connections, failed
// heartbeats) is left as it is, and the sink retries it until it succeeds.
// Cassandra gives one code (invalid request) both to a row it refuses ("Key
// may not be empty") and to a table, keyspace or column that is gone, so the
// message tells those apart: a refused row is dead-lettered, a missing table
// would otherwise dead-letter every record.
func classify(err error) error {
	var re gocql.RequestError
	var me gocql.MarshalError
	switch {
	case errors.As(err, &re):
		switch re.Code() {
		case gocql.ErrCodeUnauthorized, gocql.ErrCodeCredentials, gocql.ErrCodeConfig:
			return fmt.Errorf("%w (code %#x): %w", ErrTargetBroken, re.Code(), err)
		case gocql.ErrCodeInvalid, gocql.ErrCodeSyntax:
			if schemaGone(re.Message()) {
				return fmt.Errorf("%w (code %#x): %w", ErrTargetBroken, re.Code(), err)
			}
			return fmt.Errorf("%w (code %#x): %w", ErrRejected, re.Code(), err)
		}
	case errors.As(err, &me):
		return fmt.Errorf("%w: %w", ErrRejected, err)
	}
	return err
}

// schemaGone recognises Cassandra's messages (4.x and 5.0) for a table,
// keyspace or column that does not exist.
func schemaGone(msg string) bool {
	for _, s := range []string{"does not exist", "Undefined column name", "unconfigured table", "Unknown identifier"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func (w *CassandraWriter) query(t *transform.Table, stmt string, args ...any) *gocql.Query {
	return w.s.Query(stmt, args...).Idempotent(true).Consistency(w.consistencyOf(t))
}

func (w *CassandraWriter) args(t *transform.Table, c Change) (string, []any) {
	if c.Row == nil {
		return w.del[t], append(append(make([]any, 0, len(c.Key)+1), c.Version), c.Key...)
	}
	if head, ok := w.insertHead[t]; ok {
		// A tuple is bound component by component, and a null one is written
		// as the literal null: gocql cannot bind a whole tuple. The statements
		// differ only by which tuples are null, so gocql prepares a few.
		return head + t.InsertMarks(c.Row.Values) + insertTail,
			append(t.AppendBindValues(make([]any, 0, len(c.Row.Values)+1), c.Row.Values), c.Version)
	}
	return w.insert[t], append(append(make([]any, 0, len(c.Row.Values)+1), c.Row.Values...), c.Version)
}

// Write applies cs, which share one partition of t. Every statement carries
// its own USING TIMESTAMP, so the batch's order does not matter.
//
// A write once sent is left to finish, or to time out after the session's
// request timeout, rather than abandoned when ctx ends: it is idempotent and
// nothing is committed past an unfinished poll either way. Tying it to ctx
// would make gocql register each request's own context with the poll's,
// which every writer shares, and contend for it on every write.
func (w *CassandraWriter) Write(ctx context.Context, t *transform.Table, cs []Change) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx)
	if len(cs) == 1 {
		stmt, args := w.args(t, cs[0])
		if err := w.query(t, stmt, args...).ExecContext(ctx); err != nil {
			return writeError(t, err)
		}
		return nil
	}
	b := w.s.Batch(gocql.UnloggedBatch).Consistency(w.consistencyOf(t))
	for _, c := range cs {
		stmt, args := w.args(t, c)
		b.Entries = append(b.Entries, gocql.BatchEntry{Stmt: stmt, Args: args, Idempotent: true})
	}
	if err := b.ExecContext(ctx); err != nil {
		return fmt.Errorf("sink: write batch of %d to %s: %w", len(cs), t.QualifiedName(), classify(err))
	}
	return nil
}

// writeError is how Write reports a failed write of one statement.
func writeError(t *transform.Table, err error) error {
	return fmt.Errorf("sink: write %s: %w", t.QualifiedName(), classify(err))
}

// keyMapReadError is how ApplyMapped reports a failed read of the key map. The
// read goes through classify like every write: a timeout, an unavailable
// coordinator, no hosts or a dropped connection stay unclassified, so the
// sink retries them, and only a refusal of the request itself is final.
func keyMapReadError(t *transform.Table, err error) error {
	return fmt.Errorf("sink: read key map of %s: %w", t.QualifiedName(), classify(err))
}

// ApplyMapped handles a table whose key can change: the key map says which
// key the row was last written under, and at which version.
func (w *CassandraWriter) ApplyMapped(ctx context.Context, t *transform.Table, ev *envelope.Event, row *transform.Row) error {
	id, ts := ev.Key(), ev.Version.Micros()
	var oldKey []byte
	var oldVersion int64
	err := w.query(t, fmt.Sprintf("SELECT key, version FROM %s.%s WHERE tbl = ? AND id = ?", t.Keyspace, KeyMapTable),
		t.Name, id).ScanContext(ctx, &oldKey, &oldVersion)
	if err != nil && !errors.Is(err, gocql.ErrNotFound) {
		return keyMapReadError(t, err)
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
			// No retry can read this entry; the record cannot be applied.
			return fmt.Errorf("sink: key map of %s: %w: %w", t.QualifiedName(), ErrRejected, err)
		}
		if err := w.Write(ctx, t, []Change{{Key: key, Version: ts}}); err != nil {
			return fmt.Errorf("sink: delete old key: %w", err)
		}
	}
	if row != nil {
		if err := w.Write(ctx, t, []Change{{Row: row, Version: ts}}); err != nil {
			return err
		}
	}
	// Retention: the entry of a document with no row here (deleted, or
	// filtered out) expires after the table's gc_grace_seconds; otherwise every
	// _id ever deleted would keep a key-map row for good. Past that, dropping
	// the entry is safe: a replay of an older version of the document would
	// only write rows the tombstones this delete left behind shadow, and those
	// live for gc_grace_seconds, the same bound past which rewinds are refused.
	// A later write of the document writes the entry again, without a TTL.
	q := fmt.Sprintf("INSERT INTO %s.%s (tbl, id, key, version) VALUES (?, ?, ?, ?) USING TIMESTAMP ?", t.Keyspace, KeyMapTable)
	args := []any{t.Name, id, newKey, ts, ts}
	if ttl := w.goneTTL[t]; row == nil && ttl > 0 {
		q += " AND TTL ?"
		args = append(args, ttl)
	}
	if err := w.query(t, q, args...).ExecContext(ctx); err != nil {
		return fmt.Errorf("sink: write key map of %s: %w", t.QualifiedName(), classify(err))
	}
	return nil
}
