// Package reconcile compares what Cassandra holds with what it should hold —
// every source document pushed through the same transform spec the sink uses —
// and says, key by key, where they differ and why.
//
// A round (round.go) hashes expected and actual rows into a Merkle tree of
// token-range leaves per table (tree.go, token.go), narrows differing leaves
// down to keys, and re-checks each key with point reads on both sides
// (recheck.go). It is lag-aware (lag.go): a key whose source change the sink
// has not applied yet is in flight, never divergent. Reports (report.go) are
// JSON files, served by the daemon's admin API; metrics are in metrics.go.
// Repair (repair.go) re-emits divergent keys through capture's targeted backfill.
//
// A round holds its scope's running record, a lease in the checkpoints store
// (lease.go, coordinate.go), so a scope has one round at a time across
// daemons. With Config.Segments > 1 its hashing is split into segments
// (segments.go) that every daemon's Worker (worker.go) claims by lease; a
// segment whose worker died is hashed again by another.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
)

// Deps are what rounds read and write.
type Deps struct {
	Mongo     *mongo.Client
	Cassandra *gocql.Session
	// Mapping must be the spec version the sink applies.
	Mapping *transform.Mapping
	Store   checkpoints.Store
	// Lag tells in-flight keys from divergent ones; Quiescent when no pipeline runs.
	Lag Lag
	// Slice, when set, is asked at the start of each round which source
	// documents the pipeline migrates now (a rollout plan's current slice): the
	// others have no expected rows, since the sink does not write them. It
	// returns the filter (nil: every document) and a description for the
	// report. The round keeps the filter it started with; it asks again at
	// the end only to record whether the slice changed meanwhile. The filter
	// must be a snapshot, not a view of the plan's current slice.
	Slice func(ctx context.Context) (in func(namespace string, idKey []byte) bool, desc string, err error)
	// Name identifies this daemon in leases, audit entries and segment
	// reports; default the host name and a random suffix.
	Name       string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Scope selects what a round compares.
type Scope struct {
	// Namespace is the source collection "db.collection"; required.
	Namespace string `json:"namespace"`
	// Table limits the round to one target table "keyspace.table".
	Table string `json:"table,omitempty"`
	// MinToken and MaxToken limit the round to partition key tokens in
	// [MinToken, MaxToken] (Cassandra's Murmur3 ring), on both sides.
	MinToken *int64 `json:"min_token,omitempty"`
	MaxToken *int64 `json:"max_token,omitempty"`
	// IDs limits the round to these source documents, each _id in relaxed
	// extended JSON (`42`, `"abc"`, `{"$oid": "..."}`); no tree is built, each
	// key is re-checked directly.
	IDs []string `json:"ids,omitempty"`
}

// Key names the scope in checkpoints: the namespace or table, plus the range.
func (s Scope) Key() string {
	k := s.Namespace
	if s.Table != "" {
		k = s.Table
	}
	if s.MinToken != nil || s.MaxToken != nil {
		lo, hi := s.tokenRange()
		k += fmt.Sprintf("[%d,%d]", lo, hi)
	}
	if len(s.IDs) > 0 {
		k += fmt.Sprintf("(%d ids)", len(s.IDs))
	}
	return k
}

func (s Scope) tokenRange() (int64, int64) {
	lo, hi := int64(-1<<63), int64(1<<63-1)
	if s.MinToken != nil {
		lo = *s.MinToken
	}
	if s.MaxToken != nil {
		hi = *s.MaxToken
	}
	return lo, hi
}

func (s Scope) inRange(tok int64) bool {
	lo, hi := s.tokenRange()
	return tok >= lo && tok <= hi
}

// Reconciler runs rounds, one at a time per process.
type Reconciler struct {
	cfg     Config
	d       Deps
	log     *slog.Logger
	met     *metrics
	reports Reports
	owner   string // Deps.Name
	obs     *observer

	run      sync.Mutex // held by the running round
	mu       sync.Mutex
	progress *Progress
}

// New checks cfg and returns a Reconciler.
func New(cfg Config, d Deps) (*Reconciler, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Mongo == nil || d.Cassandra == nil || d.Mapping == nil || d.Store == nil {
		return nil, errors.New("reconcile: MongoDB, Cassandra, a mapping and a checkpoints store are required")
	}
	if d.Lag == nil {
		return nil, errors.New("reconcile: a Lag is required (Quiescent when no pipeline runs)")
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Name == "" {
		host, _ := os.Hostname()
		d.Name = fmt.Sprintf("%s-%06x", host, rand.Uint32()&0xffffff)
	}
	return &Reconciler{cfg: cfg, d: d, log: d.Logger.With("stage", "reconcile"), met: newMetrics(d.Registerer),
		reports: Reports{Dir: cfg.ReportDir}, owner: d.Name, obs: newObserver()}, nil
}

// Reports is the folder this reconciler writes to.
func (r *Reconciler) Reports() Reports { return r.reports }

// ErrBusy is returned when a round is already running in this process.
var ErrBusy = errors.New("reconcile: a round is already running")

// Progress is a running round's advance, for the CLI and the API.
type Progress struct {
	ID    string `json:"id"`
	Scope string `json:"scope"`
	// Phase is scan, narrow or recheck.
	Phase     string    `json:"phase"`
	Started   time.Time `json:"started"`
	DocsDone  int64     `json:"docs_done"`
	DocsTotal int64     `json:"docs_total"`
	RowsDone  int64     `json:"rows_done"`
	// Percent of the scan done (source and target sides averaged).
	Percent float64 `json:"percent"`
	// RowsPerSecond counts expected plus actual rows hashed.
	RowsPerSecond float64 `json:"rows_per_second"`
	ETASeconds    float64 `json:"eta_seconds"`
	// CandidatesDone and Candidates count re-checked keys.
	CandidatesDone int64 `json:"candidates_done"`
	Candidates     int64 `json:"candidates"`
}

// Current returns the running round's progress.
func (r *Reconciler) Current() (Progress, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.progress == nil {
		return Progress{}, false
	}
	return *r.progress, true
}

func (r *Reconciler) tables(s Scope) ([]*transform.Table, error) {
	all := r.d.Mapping.Tables(s.Namespace)
	if len(all) == 0 {
		return nil, fmt.Errorf("reconcile: namespace %q is not in spec %s (namespaces: %s)", s.Namespace,
			r.d.Mapping.Version(), strings.Join(r.d.Mapping.Namespaces(), ", "))
	}
	if s.Table == "" {
		return all, nil
	}
	for _, t := range all {
		if t.QualifiedName() == s.Table {
			return []*transform.Table{t}, nil
		}
	}
	return nil, fmt.Errorf("reconcile: table %s is not fed by %s", s.Table, s.Namespace)
}

// parseIDs reads _ids in relaxed extended JSON.
func parseIDs(ids []string) ([]bson.RawValue, error) {
	out := make([]bson.RawValue, 0, len(ids))
	for _, s := range ids {
		var d bson.Raw
		if err := bson.UnmarshalExtJSON([]byte(`{"_id":`+s+`}`), false, &d); err != nil {
			return nil, fmt.Errorf("reconcile: _id %s: %w", s, err)
		}
		out = append(out, d.Lookup("_id"))
	}
	return out, nil
}
