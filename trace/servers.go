package trace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/reconcile"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
	"go.mongodb.org/mongo-driver/mongo/readpref"
)

// MongoSource reads documents from MongoDB.
type MongoSource struct{ Client *mongo.Client }

var _ Source = MongoSource{}

// Find runs a find command on the primary with majority read concern; the
// reply's operationTime is the cluster time the read saw (replica sets and
// sharded clusters send it; a server that does not leaves it zero). A plain
// command rather than a session: it needs no session support.
func (m MongoSource) Find(ctx context.Context, ns string, id bson.RawValue) (bson.Raw, envelope.Version, error) {
	db, coll, ok := strings.Cut(ns, ".")
	if !ok {
		return nil, envelope.Version{}, fmt.Errorf("namespace %q is not db.collection", ns)
	}
	cmd := bson.D{{Key: "find", Value: coll}, {Key: "filter", Value: bson.D{{Key: "_id", Value: id}}},
		{Key: "limit", Value: 1}, {Key: "singleBatch", Value: true},
		{Key: "readConcern", Value: bson.D{{Key: "level", Value: "majority"}}}}
	reply, err := m.Client.Database(db).RunCommand(ctx, cmd, options.RunCmd().SetReadPreference(readpref.Primary())).Raw()
	if err != nil {
		return nil, envelope.Version{}, err
	}
	var at envelope.Version
	if t, i, ok := reply.Lookup("operationTime").TimestampOK(); ok {
		at = envelope.Version{T: t, I: i}
	}
	batch, ok := reply.Lookup("cursor", "firstBatch").ArrayOK()
	if !ok {
		return nil, at, fmt.Errorf("find %s: reply has no cursor.firstBatch", ns)
	}
	vals, err := batch.Values()
	if err != nil || len(vals) == 0 {
		return nil, at, err
	}
	doc, ok := vals[0].DocumentOK()
	if !ok {
		return nil, at, fmt.Errorf("find %s: first result is a %s, not a document", ns, vals[0].Type)
	}
	return doc, at, nil
}

// KafkaLog scans a topic partition with its own short-lived consumer.
type KafkaLog struct {
	Opts  []kgo.Opt // broker addresses, TLS, SASL: the daemon's Kafka options
	Admin *kadm.Client
	// Group is the sink's consumer group, whose committed offset says which
	// records are applied.
	Group string
	// Wait bounds the scan. Default 30 s.
	Wait time.Duration
}

var _ Log = KafkaLog{}

// Scan reads the key's partition from its oldest retained record to its end
// (read_committed: aborted capture transactions are not shown).
func (k KafkaLog) Scan(ctx context.Context, topic string, key []byte, limit int64) (LogScan, error) {
	out := LogScan{Topic: topic, Committed: -1, Records: []Record{}}
	td, err := k.Admin.ListTopics(ctx, topic)
	if err != nil {
		return out, err
	}
	t, ok := td[topic]
	if !ok || t.Err != nil || len(t.Partitions) == 0 {
		return out, fmt.Errorf("topic %s not found", topic)
	}
	p := reconcile.PartitionOf(topic, key, len(t.Partitions))
	out.Partition = p
	starts, err := k.Admin.ListStartOffsets(ctx, topic)
	if err != nil {
		return out, err
	}
	// The last stable offset, not the high watermark: a read_committed
	// consumer never sees past it.
	ends, err := k.Admin.ListCommittedOffsets(ctx, topic)
	if err != nil {
		return out, err
	}
	if o, ok := starts.Lookup(topic, p); ok {
		out.Start = o.Offset
	}
	if o, ok := ends.Lookup(topic, p); ok {
		out.End = o.Offset
	}
	if k.Group != "" {
		if cos, err := k.Admin.FetchOffsets(ctx, k.Group); err == nil {
			if o, ok := cos.Lookup(topic, p); ok && o.Err == nil {
				out.Committed = o.At
			}
		}
	}
	if out.End <= out.Start {
		out.Complete = true
		return out, nil
	}
	wait := k.Wait
	if wait <= 0 {
		wait = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	opts := append(k.Opts[:len(k.Opts):len(k.Opts)],
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {p: kgo.NewOffset().At(out.Start)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Transaction markers take offsets too; keeping them lets the scan
		// see the offset just below the last stable offset, whatever is there.
		kgo.KeepControlRecords())
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return out, err
	}
	defer cl.Close()
	for out.Scanned < limit {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return out, fmt.Errorf("scan of %s[%d] stopped at %d records: %w", topic, p, out.Scanned, err)
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return out, ferr
		}
		last := int64(-1)
		fs.EachRecord(func(r *kgo.Record) {
			last = r.Offset
			if r.Attrs.IsControl() {
				return
			}
			out.Scanned++
			if !bytes.Equal(r.Key, key) {
				return
			}
			out.Records = append(out.Records, record(r, out.Committed))
		})
		if last >= out.End-1 {
			out.Complete = true
			return out, nil
		}
	}
	return out, nil
}

func record(r *kgo.Record, committed int64) Record {
	rec := Record{Offset: r.Offset, Timestamp: r.Timestamp.UTC(), Applied: committed >= 0 && r.Offset < committed}
	ev, err := envelope.Decode(r.Value)
	if err != nil {
		rec.Error = err.Error()
		return rec
	}
	rec.Op, rec.Version = string(ev.Op), ev.Version.String()
	return rec
}

// CassandraTarget reads rows and the sink's key map.
type CassandraTarget struct{ Session *gocql.Session }

var _ Target = CassandraTarget{}

// Row reads every column of t's row and the write time of each column whose
// type has one cell (not the key, not a non-frozen collection or UDT).
func (c CassandraTarget) Row(ctx context.Context, t *transform.Table, key []any) (TargetRow, bool, error) {
	sel := make([]string, 0, 2*len(t.Columns))
	var timed []int
	isKey := map[int]bool{}
	for _, i := range append(append([]int{}, t.PartitionKey...), t.ClusteringKey...) {
		isKey[i] = true
	}
	for i, col := range t.Columns {
		sel = append(sel, col.Name)
		if !isKey[i] && oneCell(col.Type) {
			timed = append(timed, i)
		}
	}
	for _, i := range timed {
		sel = append(sel, "WRITETIME("+t.Columns[i].Name+")")
	}
	var where []string
	for _, i := range append(append([]int{}, t.PartitionKey...), t.ClusteringKey...) {
		where = append(where, t.Columns[i].Name+" = ?")
	}
	q := fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(sel, ", "), t.QualifiedName(), strings.Join(where, " AND "))
	// RowData gives each column the Go type gocql returns for it, which
	// is what Table.AppendCanonical compares (a null scans as that type's
	// zero or nil, as reconcile reads it).
	iter := c.Session.Query(q, key...).Consistency(gocql.LocalQuorum).Idempotent(true).IterContext(ctx)
	rd, err := iter.RowData()
	if err != nil {
		iter.Close()
		return TargetRow{}, false, fmt.Errorf("read %s: %w", t.QualifiedName(), err)
	}
	found := iter.Scan(rd.Values...)
	if err := iter.Close(); err != nil {
		return TargetRow{}, false, fmt.Errorf("read %s: %w", t.QualifiedName(), err)
	}
	if !found {
		return TargetRow{}, false, nil
	}
	// gocql gives a tuple column as one value per component.
	flat := make([]any, len(rd.Values)-len(timed))
	for i := range flat {
		flat[i] = reflect.ValueOf(rd.Values[i]).Elem().Interface()
	}
	vals, err := t.RowFromScan(flat, nil)
	if err != nil {
		return TargetRow{}, false, fmt.Errorf("read %s: %w", t.QualifiedName(), err)
	}
	wts := make([]int64, len(timed))
	for i := range timed {
		wts[i], _ = reflect.ValueOf(rd.Values[len(flat)+i]).Elem().Interface().(int64)
	}
	row := TargetRow{PrimaryKey: keyNamed(t, t.KeyValues(vals)), Values: named(t, vals), WriteTime: map[string]int64{}, values: vals}
	var newest int64
	for i, ci := range timed {
		if wts[i] != 0 { // a null cell has no write time
			row.WriteTime[t.Columns[ci].Name] = wts[i]
			newest = max(newest, wts[i])
		}
	}
	if newest > 0 {
		row.Version = envelope.VersionFromMicros(newest).String()
	}
	return row, true, nil
}

// KeyMap reads the sink's key map row of (t, id).
func (c CassandraTarget) KeyMap(ctx context.Context, t *transform.Table, id []byte) ([]byte, int64, bool, error) {
	var key []byte
	var version int64
	q := fmt.Sprintf("SELECT key, version FROM %s.%s WHERE tbl = ? AND id = ?", t.Keyspace, sink.KeyMapTable)
	// The sink keys its map by the bare table name (the map lives in the
	// table's own keyspace).
	err := c.Session.Query(q, t.Name, id).Consistency(gocql.LocalQuorum).ScanContext(ctx, &key, &version)
	if errors.Is(err, gocql.ErrNotFound) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, err
	}
	return key, version, true, nil
}

// oneCell reports whether a column of this CQL type is stored as one cell,
// so WRITETIME applies to it: scalars and frozen values. Non-frozen
// collections and UDTs are several cells.
func oneCell(typ string) bool {
	typ = strings.ToLower(strings.TrimSpace(typ))
	if strings.HasPrefix(typ, "frozen<") {
		return true
	}
	if strings.Contains(typ, "<") {
		return false
	}
	_, ok := scalarTypes[typ]
	return ok
}

var scalarTypes = map[string]struct{}{
	"ascii": {}, "bigint": {}, "blob": {}, "boolean": {}, "date": {}, "decimal": {}, "double": {},
	"duration": {}, "float": {}, "inet": {}, "int": {}, "smallint": {}, "text": {}, "time": {},
	"timestamp": {}, "timeuuid": {}, "tinyint": {}, "uuid": {}, "varchar": {}, "varint": {},
}

// DirReports reads reconcile's report folder.
type DirReports struct{ Reports reconcile.Reports }

// Latest returns up to n reports, newest first.
func (d DirReports) Latest(n int) ([]*reconcile.Report, error) {
	ids, err := d.Reports.List()
	if err != nil {
		return nil, err
	}
	var out []*reconcile.Report
	for i := len(ids) - 1; i >= 0 && len(out) < n; i-- {
		r, err := d.Reports.Get(ids[i])
		if err != nil {
			continue // a report being written; the next call sees it
		}
		out = append(out, r)
	}
	return out, nil
}
