package reconcile

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"gopkg.in/inf.v0"
)

// SchemaVersion is the version of the report's JSON schema. It changes only
// when a field changes meaning or goes away; new fields keep it.
const SchemaVersion = 1

// Divergence classes.
const (
	ClassMissing   = "missing"   // the source has the row, the target does not
	ClassExtra     = "extra"     // the target has a row no source document maps to
	ClassDifferent = "different" // both have it, with different values (Columns says which)
	ClassStale     = "stale"     // the target row carries a version older than the source's newest change
)

// Report is one round's result: the JSON written to the report folder and
// served by the admin API. docs/reconcile.md describes the schema.
type Report struct {
	SchemaVersion int    `json:"schema_version"`
	ID            string `json:"id"`
	// Status is clean, divergent (some key is divergent) or incomplete (the
	// time box or a cancel ended the round before it compared everything; its
	// progress is kept and the next round of the scope resumes it).
	Status string `json:"status"`
	Scope  Scope  `json:"scope"`
	// Slice describes the rollout slice the round compared (empty: every
	// document); documents outside it have no expected rows.
	Slice string `json:"slice,omitempty"`
	// SliceEnd is the plan's slice when the round ended and SliceChanged
	// says it differs from Slice: the round still judged Slice, the slice
	// it started with.
	SliceEnd     string    `json:"slice_end,omitempty"`
	SliceChanged bool      `json:"slice_changed,omitempty"`
	SpecVersion  string    `json:"spec_version"`
	SpecChecksum string    `json:"spec_checksum"`
	Actor        string    `json:"actor,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	Start        time.Time `json:"start"`
	End          time.Time `json:"end"`
	// ResumedFrom names the incomplete round this one continued.
	ResumedFrom     string  `json:"resumed_from,omitempty"`
	DurationSeconds float64 `json:"duration_seconds"`
	// SourceSeconds and TargetSeconds are how long the two full scans took
	// (they run side by side); the rest is narrowing and re-checks.
	SourceSeconds float64 `json:"source_scan_seconds"`
	TargetSeconds float64 `json:"target_scan_seconds"`
	// SourceVersionStart/End bound the source cluster times the round read at.
	SourceVersionStart string `json:"source_version_start"`
	SourceVersionEnd   string `json:"source_version_end"`
	// LagStart and LagEnd are every partition's offsets and applied versions
	// when the round started and ended: the target state covered.
	LagStart []Position `json:"lag_start"`
	LagEnd   []Position `json:"lag_end"`
	// SinkStart and SinkEnd are the sink group's committed offsets per
	// partition when the round started (before it read either side) and
	// ended: records below SinkStart were in the target the round read.
	SinkStart []checkpoints.SinkOffset `json:"sink_start,omitempty"`
	SinkEnd   []checkpoints.SinkOffset `json:"sink_end,omitempty"`
	// BucketBits is log2 of the tree's leaves (token ranges) per table.
	BucketBits int `json:"bucket_bits"`
	// DocsScanned is source documents read; RowsCompared the expected plus
	// actual rows hashed and compared.
	DocsScanned  int64 `json:"docs_scanned"`
	RowsCompared int64 `json:"rows_compared"`
	// SourceErrors counts documents the transform rejects (the sink
	// dead-letters them, so they have no expected rows).
	SourceErrors int64 `json:"source_errors"`
	// Candidates are keys in differing leaves re-checked by point reads.
	Candidates int64 `json:"candidates"`
	// Truncated is set when more candidates existed than max_candidates.
	Truncated bool `json:"truncated,omitempty"`
	// Counts per class across tables, plus in_flight (still on their way at
	// the end of the round, never divergence) and resolved (differed in the
	// scan, matched when re-checked: changes that were in flight then).
	Counts map[string]int64 `json:"counts"`
	// InFlightWaiting splits counts.in_flight by what each key was last
	// waiting for: backfill, capture, sink, changing or unreadable.
	InFlightWaiting map[string]int64 `json:"in_flight_waiting,omitempty"`
	Tables          []TableReport    `json:"tables"`
	// Rates are rows (expected plus actual) and documents per second.
	RowsPerSecond float64 `json:"rows_per_second"`
	DocsPerSecond float64 `json:"docs_per_second"`
	// Sample is a capped list of divergent and in-flight keys with both sides' values.
	Sample []KeySample `json:"sample"`
	// Divergent lists every divergent key (up to max_candidates): what
	// `tidemark repair --report` re-emits.
	Divergent []KeyRef `json:"divergent,omitempty"`
	Error     string   `json:"error,omitempty"`
	// Segments lists who hashed each segment of a round split across
	// daemons (reconcile.segments > 1).
	Segments []SegmentReport `json:"segments,omitempty"`
}

// SegmentReport is one segment of a segmented round: the worker whose
// result the round used, its attempt (above 1 when it was taken over from
// a worker that stopped renewing its lease), and what it hashed.
type SegmentReport struct {
	Segment      int    `json:"segment"`
	Owner        string `json:"owner"`
	Attempt      int    `json:"attempt"`
	TookOverFrom string `json:"took_over_from,omitempty"`
	Docs         int64  `json:"docs"`
	RowsSource   int64  `json:"rows_source"`
	RowsTarget   int64  `json:"rows_target"`
}

// TableReport is one table's part of a round.
type TableReport struct {
	Table            string `json:"table"`
	RowsSource       int64  `json:"rows_source"`
	RowsTarget       int64  `json:"rows_target"`
	BucketMismatches int64  `json:"bucket_mismatches"`
	Missing          int64  `json:"missing"`
	Extra            int64  `json:"extra"`
	Different        int64  `json:"different"`
	Stale            int64  `json:"stale"`
	InFlight         int64  `json:"in_flight"`
	Resolved         int64  `json:"resolved"`
	// RootSource and RootTarget are the trees' roots, "<sum>/<rows>" in hex
	// and decimal: equal exactly when no leaf differs.
	RootSource string `json:"root_source,omitempty"`
	RootTarget string `json:"root_target,omitempty"`
	// Buckets lists the tree leaves (token ranges, 2^bucket_bits of them)
	// holding divergent keys, by leaf number: the status page's heat-map.
	Buckets []BucketCount `json:"buckets,omitempty"`
}

// BucketCount is the number of divergent keys in one tree leaf.
type BucketCount struct {
	ID        uint32 `json:"id"`
	Divergent int64  `json:"divergent"`
}

// KeyRef names one row: its table, primary key (transform's canonical key
// bytes) and the source document's envelope key when known.
type KeyRef struct {
	Table string `json:"table"`
	Key   []byte `json:"key"`
	ID    []byte `json:"id,omitempty"`
	Class string `json:"class"`
}

// KeySample is one key with what each side holds.
type KeySample struct {
	Table string `json:"table"`
	Class string `json:"class"` // a divergence class, or in_flight
	// PrimaryKey maps key column names to values.
	PrimaryKey map[string]any `json:"primary_key"`
	// SourceID is the document's _id in relaxed extended JSON.
	SourceID string `json:"source_id,omitempty"`
	// Columns lists the differing columns (class different).
	Columns []string       `json:"columns,omitempty"`
	Source  map[string]any `json:"source,omitempty"`
	Target  map[string]any `json:"target,omitempty"`
	// TargetVersion is the target row's newest write time as a source version.
	TargetVersion string `json:"target_version,omitempty"`
	// SourceVersion is the source's newest change after the target's version (class stale).
	SourceVersion string `json:"source_version,omitempty"`
	// Waiting is what an in-flight key was last waiting for (see
	// Report.InFlightWaiting).
	Waiting string `json:"waiting,omitempty"`
}

// What an in-flight key waits for, by the caught-up rule's clauses.
const (
	WaitBackfill   = "backfill"   // (a) a backfill of the namespace is pending
	WaitCapture    = "capture"    // (b) capture has not produced every change up to the version read
	WaitSink       = "sink"       // (c) the sink has not committed past the pinned end offsets
	WaitChanging   = "changing"   // caught up, but the document changed again before the verdict
	WaitUnreadable = "unreadable" // a side or the pipeline's progress could not be read
)

// newID names a round: sortable by time, unique across daemons. The
// suffix's top 10 bits are the millisecond within the second and the other
// 14 random: rounds of small namespaces finish within a second of each
// other, and with a wholly random suffix "latest" (the last id in order)
// was as often the older of two such rounds as the newer.
func newID(at time.Time) string {
	var b [2]byte
	rand.Read(b[:])
	ms := uint32(at.Nanosecond() / int(time.Millisecond))
	return at.UTC().Format("20060102T150405Z") + "-" + fmt.Sprintf("%06x", ms<<14|uint32(binary.BigEndian.Uint16(b[:]))&0x3fff)
}

var idRE = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$`)

// Reports is the folder of round reports.
type Reports struct{ Dir string }

// Prune removes the oldest reports (ids sort by time) until keep remain. A
// report it cannot remove is left for the next call.
func (rs Reports) Prune(keep int) error {
	ids, err := rs.List()
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids[:max(len(ids)-keep, 0)] {
		if err := os.Remove(filepath.Join(rs.Dir, id+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Write stores r as <dir>/<id>.json, atomically.
func (rs Reports) Write(r *Report) error {
	if err := os.MkdirAll(rs.Dir, 0o755); err != nil {
		return fmt.Errorf("reconcile: report folder: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("reconcile: encode report: %w", err)
	}
	tmp := filepath.Join(rs.Dir, "."+r.ID+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("reconcile: write report: %w", err)
	}
	return os.Rename(tmp, filepath.Join(rs.Dir, r.ID+".json"))
}

// ErrNoReport is returned for an unknown report id.
var ErrNoReport = errors.New("reconcile: no such report")

// Get reads report id; "latest" is the newest.
func (rs Reports) Get(id string) (*Report, error) {
	if id == "latest" {
		ids, err := rs.List()
		if err != nil {
			return nil, err
		}
		if len(ids) == 0 {
			return nil, ErrNoReport
		}
		id = ids[len(ids)-1]
	}
	if !idRE.MatchString(id) {
		return nil, fmt.Errorf("%w: %q is not a report id", ErrNoReport, id)
	}
	b, err := os.ReadFile(filepath.Join(rs.Dir, id+".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNoReport, id)
	}
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("reconcile: report %s: %w", id, err)
	}
	return &r, nil
}

// List returns the report ids, oldest first.
func (rs Reports) List() ([]string, error) {
	es, err := os.ReadDir(rs.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range es {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && idRE.MatchString(id) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// jsonValue makes a scanned or converted value readable in a report.
func jsonValue(v any) any {
	switch x := v.(type) {
	case nil, string, bool, int16, int32, int64, int, float32, float64:
		return x
	case time.Time:
		if x.IsZero() {
			return nil
		}
		return x.UTC().Format(time.RFC3339Nano)
	case *inf.Dec:
		if x == nil {
			return nil
		}
		return x.String()
	case *big.Int:
		if x == nil {
			return nil
		}
		return x.String()
	case gocql.UUID:
		return x.String()
	case []byte:
		return hex.EncodeToString(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonValue(e)
		}
		return out
	case []string:
		return x
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonValue(e)
		}
		return out
	case map[string]string:
		return x
	}
	return fmt.Sprint(v)
}

// sinkOffsets are the committed offsets among positions (none yet: 0).
func sinkOffsets(ps []Position) []checkpoints.SinkOffset {
	var out []checkpoints.SinkOffset
	for _, p := range ps {
		out = append(out, checkpoints.SinkOffset{Topic: p.Topic, Partition: p.Partition, Offset: max(p.Committed, 0)})
	}
	return out
}
