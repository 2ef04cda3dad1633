// Package trace follows one document through the pipeline: its state in
// MongoDB, every record of its key still in Kafka, the rows the sink wrote
// (with their write times), the sink's key map, and what the latest reconcile
// rounds said about it. It answers the questions an operator asks in an
// incident ("is this row wrong, late, or gone?") from the evidence itself
// rather than from counters.
//
// Each source of evidence is an interface, so the assembly (Follow) is tested
// with fakes and the daemon wires the real servers (mongo.go, kafka.go,
// cassandra.go).
package trace

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/reconcile"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
)

// Source reads a document as the pipeline's source holds it now.
type Source interface {
	// Find returns the document with this _id (nil when there is none) and
	// the cluster time the read observed (zero when the server gives none).
	// It must read from the primary with majority read concern, as capture's
	// stamped reads do, or the answer could be older than Kafka's records.
	Find(ctx context.Context, ns string, id bson.RawValue) (bson.Raw, envelope.Version, error)
}

// Log lists what Kafka still holds for one key.
type Log interface {
	// Scan reads the partition key lands on in topic, from the oldest retained
	// record to the end, keeping the records whose key is key. It stops
	// after limit records and says so (Complete false).
	Scan(ctx context.Context, topic string, key []byte, limit int64) (LogScan, error)
}

// Target reads what the sink wrote.
type Target interface {
	// Row reads t's row with these primary key values: every column, and the
	// write time (microseconds) of each column Cassandra keeps one for.
	Row(ctx context.Context, t *transform.Table, key []any) (TargetRow, bool, error)
	// KeyMap reads the key the sink last wrote to t for the document with
	// envelope key id, for tables whose key can change.
	KeyMap(ctx context.Context, t *transform.Table, id []byte) (key []byte, version int64, found bool, err error)
}

// Reports lists reconcile reports, newest first, at most n.
type Reports interface {
	Latest(n int) ([]*reconcile.Report, error)
}

// Deps are the evidence Follow reads.
type Deps struct {
	Mapping *transform.Mapping
	Source  Source
	Log     Log
	Target  Target
	Reports Reports // nil when no reconcile runs
	// Topic names the Kafka topic of a namespace.
	Topic func(ns string) string
	// ScanLimit bounds the records read from the key's partition. Default 1,000,000.
	ScanLimit int64
	// Rounds is how many recent reports to search for verdicts. Default 20.
	Rounds int
}

// Journey is one document's path through the pipeline: GET /v1/trace and
// `tidemark trace`.
type Journey struct {
	Namespace string `json:"namespace"`
	// ID is the _id in canonical extended JSON; Key the envelope key (hex),
	// which is the Kafka record key.
	ID  string `json:"id"`
	Key string `json:"key"`
	// State is a one-word verdict and Summary a sentence saying why.
	State   string      `json:"state"`
	Summary string      `json:"summary"`
	Source  SourceState `json:"source"`
	Kafka   LogScan     `json:"kafka"`
	Tables  []TableHop  `json:"tables"`
	// Verdicts are the recent rounds of this namespace that judged the document.
	Verdicts []Verdict `json:"verdicts"`
	// Problems lists evidence that could not be read; the rest is still shown.
	Problems []string  `json:"problems,omitempty"`
	At       time.Time `json:"at"`
}

// States of a journey.
const (
	StateInSync    = "in_sync"   // Cassandra holds exactly what the source maps to
	StateInFlight  = "in_flight" // records of this key are not yet applied by the sink
	StateDivergent = "divergent" // everything is applied, yet Cassandra differs from the source
	StateAbsent    = "absent"    // no document, no row: deleted (or never existed) everywhere
	StateUnknown   = "unknown"   // evidence is missing (see problems)
)

// SourceState is the document as MongoDB holds it now.
type SourceState struct {
	Found bool `json:"found"`
	// Document is the document in relaxed extended JSON.
	Document string `json:"document,omitempty"`
	// ReadAt is the cluster time the read observed.
	ReadAt string `json:"read_at,omitempty"`
}

// LogScan is what Kafka holds for the key.
type LogScan struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	// Start and End bound the partition's retained records (End exclusive).
	Start int64 `json:"start"`
	End   int64 `json:"end"`
	// Committed is the sink group's committed offset: records below it are
	// applied. -1 when the group has committed nothing.
	Committed int64    `json:"committed"`
	Scanned   int64    `json:"scanned"`
	Complete  bool     `json:"complete"`
	Records   []Record `json:"records"`
}

// Record is one Kafka record of the key.
type Record struct {
	Offset    int64     `json:"offset"`
	Op        string    `json:"op"`
	Version   string    `json:"version"`
	Timestamp time.Time `json:"timestamp"`
	Applied   bool      `json:"applied"`
	// Error says why the record could not be decoded (the sink dead-letters it).
	Error string `json:"error,omitempty"`
}

// TableHop is one target table's part of the journey.
type TableHop struct {
	Table string `json:"table"`
	// Expected is the row the source document maps to now (nil: none).
	Expected map[string]any `json:"expected,omitempty"`
	// Row is what Cassandra holds under the expected key, or under the key
	// map's key when the source maps to no row.
	Row *TargetRow `json:"row,omitempty"`
	// KeyMap is the sink's record of the key it last wrote, for tables whose
	// key can change.
	KeyMap *KeyMapEntry `json:"key_map,omitempty"`
	// Stray is a row still held under the key map's key when that differs
	// from the expected key: the old row of a changed key.
	Stray *TargetRow `json:"stray,omitempty"`
	// Match reports whether Row equals Expected (both absent counts).
	Match bool `json:"match"`
	// Columns lists the columns that differ.
	Columns []string `json:"columns,omitempty"`
}

// TargetRow is one Cassandra row.
type TargetRow struct {
	PrimaryKey map[string]any   `json:"primary_key"`
	Values     map[string]any   `json:"values"`
	WriteTime  map[string]int64 `json:"writetime,omitempty"`
	// Version is the newest write time read as a source version.
	Version string `json:"version,omitempty"`

	values []any // in column order, for comparison
}

// KeyMapEntry is the sink's key map row.
type KeyMapEntry struct {
	PrimaryKey map[string]any `json:"primary_key"`
	Version    string         `json:"version"`
}

// Verdict is what one round said about the document.
type Verdict struct {
	Report string    `json:"report"`
	Start  time.Time `json:"start"`
	Status string    `json:"status"`
	// Slice is the rollout slice the round judged (empty: every document).
	Slice string `json:"slice,omitempty"`
	// Class is the divergence class, or in_flight when the round's sample
	// names the document in flight; "not_reported" when the round's complete
	// divergent list does not name it (it matched, was resolved, or lay
	// outside the slice); "unknown" when the list was cut short or the round
	// did not finish.
	Class string `json:"class"`
	Table string `json:"table,omitempty"`
}

// Follow assembles the journey of the document with this _id in ns.
func Follow(ctx context.Context, d Deps, ns string, id bson.RawValue) (*Journey, error) {
	tables := d.Mapping.Tables(ns)
	if len(tables) == 0 {
		return nil, fmt.Errorf("trace: namespace %s is not in the spec (it maps %v)", ns, d.Mapping.Namespaces())
	}
	key := envelope.Key(id)
	j := &Journey{Namespace: ns, ID: extJSON(id), Key: hex.EncodeToString(key), At: time.Now().UTC(),
		Verdicts: []Verdict{}, Tables: []TableHop{}}

	doc, at, err := d.Source.Find(ctx, ns, id)
	var expected map[*transform.Table]*transform.Row
	sourceKnown := err == nil
	if err != nil {
		j.Problems = append(j.Problems, "source: "+err.Error())
	} else {
		j.Source = SourceState{Found: doc != nil}
		if !at.IsZero() {
			j.Source.ReadAt = at.String()
		}
		if doc != nil {
			j.Source.Document = bson.Raw(doc).String()
			rows, err := d.Mapping.Apply(ns, doc)
			if err != nil {
				j.Problems = append(j.Problems, "transform: "+err.Error()+" (the sink dead-letters this document)")
				sourceKnown = false
			}
			expected = map[*transform.Table]*transform.Row{}
			for i := range rows {
				expected[rows[i].Table] = &rows[i]
			}
		}
	}

	topic := d.Topic(ns)
	limit := d.ScanLimit
	if limit <= 0 {
		limit = 1_000_000
	}
	logKnown := true
	if j.Kafka, err = d.Log.Scan(ctx, topic, key, limit); err != nil {
		j.Problems = append(j.Problems, "kafka: "+err.Error())
		j.Kafka.Topic = topic
		logKnown = false
	}
	if j.Kafka.Records == nil {
		j.Kafka.Records = []Record{}
	}

	targetKnown := true
	for _, t := range tables {
		hop, err := followTable(ctx, d.Target, t, id, key, expected[t])
		if err != nil {
			j.Problems = append(j.Problems, t.QualifiedName()+": "+err.Error())
			targetKnown = false
		}
		j.Tables = append(j.Tables, hop)
	}

	if d.Reports != nil {
		n := d.Rounds
		if n <= 0 {
			n = 20
		}
		reps, err := d.Reports.Latest(n)
		if err != nil {
			j.Problems = append(j.Problems, "reports: "+err.Error())
		}
		j.Verdicts = verdicts(reps, ns, id, key)
	}
	j.State, j.Summary = judge(j, sourceKnown && targetKnown, logKnown)
	return j, nil
}

func followTable(ctx context.Context, tg Target, t *transform.Table, id bson.RawValue, key []byte, want *transform.Row) (TableHop, error) {
	hop := TableHop{Table: t.QualifiedName()}
	var wantKey []any
	if want != nil {
		hop.Expected = named(t, want.Values)
		wantKey = t.KeyValues(want.Values)
	}
	if t.NeedsKeyMap() {
		mk, v, found, err := tg.KeyMap(ctx, t, key)
		if err != nil {
			return hop, fmt.Errorf("key map: %w", err)
		}
		if found && len(mk) > 0 {
			vals, err := t.DecodeKey(mk)
			if err != nil {
				return hop, fmt.Errorf("key map: %w", err)
			}
			hop.KeyMap = &KeyMapEntry{PrimaryKey: keyNamed(t, vals), Version: envelope.VersionFromMicros(v).String()}
			if want == nil || !bytes.Equal(mk, want.Key) {
				row, ok, err := tg.Row(ctx, t, vals)
				if err != nil {
					return hop, err
				}
				if ok {
					if want == nil {
						hop.Row = &row
					} else {
						hop.Stray = &row
					}
				}
			}
		}
	} else if want == nil {
		k, err := t.KeyForID(id)
		if err != nil {
			return hop, err
		}
		wantKey = k
	}
	if wantKey != nil {
		row, ok, err := tg.Row(ctx, t, wantKey)
		if err != nil {
			return hop, err
		}
		if ok && (want != nil || hop.Row == nil) {
			hop.Row = &row
		}
	}
	hop.Match, hop.Columns = compare(t, want, hop.Row)
	if hop.Stray != nil {
		hop.Match = false
	}
	return hop, nil
}

// compare reports whether the target row equals the expected one, byte for
// byte in transform's canonical encoding (the one reconcile hashes).
func compare(t *transform.Table, want *transform.Row, got *TargetRow) (bool, []string) {
	switch {
	case want == nil && got == nil:
		return true, nil
	case want == nil || got == nil:
		return false, nil
	}
	var diff []string
	for i, c := range t.Columns {
		a, errA := t.AppendCanonical(nil, oneColumn(t, i, want.Values[i]))
		b, errB := t.AppendCanonical(nil, oneColumn(t, i, got.values[i]))
		if errA != nil || errB != nil || !bytes.Equal(a, b) {
			diff = append(diff, c.Name)
		}
	}
	return len(diff) == 0, diff
}

// oneColumn is a value slice with only column i set, so AppendCanonical
// encodes one column at a time.
func oneColumn(t *transform.Table, i int, v any) []any {
	vals := make([]any, len(t.Columns))
	vals[i] = v
	return vals
}

func verdicts(reps []*reconcile.Report, ns string, id bson.RawValue, key []byte) []Verdict {
	out := []Verdict{}
	idJSON := extJSON(id)
	for _, r := range reps {
		if r.Scope.Namespace != ns {
			continue
		}
		if len(r.Scope.IDs) > 0 && !scopeNames(r.Scope.IDs, key) {
			continue // a round of other documents
		}
		v := Verdict{Report: r.ID, Start: r.Start, Status: r.Status, Slice: r.Slice, Class: "not_reported"}
		for _, k := range r.Divergent {
			if bytes.Equal(k.ID, key) {
				v.Class, v.Table = k.Class, k.Table
				break
			}
		}
		if v.Class == "not_reported" {
			for _, s := range r.Sample {
				if s.SourceID == idJSON && s.Class == "in_flight" {
					v.Class, v.Table = s.Class, s.Table
					break
				}
			}
		}
		if v.Class == "not_reported" && (r.Truncated || r.Status == "incomplete") {
			v.Class = "unknown"
		}
		out = append(out, v)
	}
	return out
}

// scopeNames reports whether a round scoped to these _ids (relaxed extended
// JSON) included the document with envelope key key.
func scopeNames(ids []string, key []byte) bool {
	for _, s := range ids {
		if id, err := ParseID(s); err == nil && bytes.Equal(envelope.Key(id), key) {
			return true
		}
	}
	return false
}

// judge names the document's state from the evidence.
func judge(j *Journey, known, logKnown bool) (string, string) {
	if !known {
		return StateUnknown, "some evidence could not be read: " + fmt.Sprint(j.Problems)
	}
	pending := 0
	for _, r := range j.Kafka.Records {
		if !r.Applied {
			pending++
		}
	}
	var differ []string
	anyRow := false
	for _, h := range j.Tables {
		if h.Row != nil || h.Stray != nil {
			anyRow = true
		}
		if !h.Match {
			differ = append(differ, h.Table)
		}
	}
	sort.Strings(differ)
	switch {
	case pending > 0:
		return StateInFlight, fmt.Sprintf("%d of the key's %d records in %s[%d] are past the sink's committed offset %d: not applied yet",
			pending, len(j.Kafka.Records), j.Kafka.Topic, j.Kafka.Partition, j.Kafka.Committed)
	case len(differ) > 0:
		why := "every record of the key in Kafka is applied"
		if !logKnown {
			why = "Kafka could not be read"
		} else if !j.Kafka.Complete {
			why = "the records scanned are applied (the scan stopped early)"
		}
		return StateDivergent, fmt.Sprintf("%s, yet %v differ from the source through the transform; `tidemark repair --ids` re-emits it", why, differ)
	case !j.Source.Found && !anyRow:
		return StateAbsent, "no document in the source and no row in the target"
	default:
		return StateInSync, "Cassandra holds exactly what the source document maps to"
	}
}

var jsonValue = reconcile.JSONValue

func named(t *transform.Table, values []any) map[string]any {
	m := make(map[string]any, len(values))
	for i, c := range t.Columns {
		m[c.Name] = jsonValue(values[i])
	}
	return m
}

func keyNamed(t *transform.Table, key []any) map[string]any {
	m := make(map[string]any, len(key))
	idx := append(append([]int{}, t.PartitionKey...), t.ClusteringKey...)
	for i, ci := range idx {
		if i < len(key) {
			m[t.Columns[ci].Name] = jsonValue(key[i])
		}
	}
	return m
}

func extJSON(id bson.RawValue) string {
	b, err := bson.MarshalExtJSON(bson.D{{Key: "_id", Value: id}}, true, false)
	if err != nil {
		return id.String()
	}
	// {"_id":X} → X
	s := string(b)
	const prefix = `{"_id":`
	if len(s) > len(prefix)+1 && s[:len(prefix)] == prefix {
		return s[len(prefix) : len(s)-1]
	}
	return s
}

// ParseID reads an _id as an operator types it: relaxed or canonical
// extended JSON (`{"$oid":"…"}`, `"abc"`, `42`, `{"$numberLong":"7"}`,
// `{"$uuid":"…"}`). A bare word that is not JSON is taken as a string, so
// `tidemark trace app.users alice` works; an ObjectId must be written as
// `{"$oid":"…"}`, since a 24-hex string _id is also possible.
func ParseID(s string) (bson.RawValue, error) {
	var doc bson.Raw
	if err := bson.UnmarshalExtJSON([]byte(`{"_id":`+s+`}`), false, &doc); err != nil {
		if len(s) == 0 || s[0] == '{' || s[0] == '[' || s[0] == '"' {
			return bson.RawValue{}, fmt.Errorf("trace: _id %s is not extended JSON: %w", s, err)
		}
		_, v, err := bson.MarshalValue(s)
		if err != nil {
			return bson.RawValue{}, err
		}
		return bson.RawValue{Type: bson.TypeString, Value: v}, nil
	}
	v := doc.Lookup("_id")
	if v.Type == bson.TypeArray {
		return bson.RawValue{}, fmt.Errorf("trace: an _id cannot be an array: %s", s)
	}
	return v, nil
}
