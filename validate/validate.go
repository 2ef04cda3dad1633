// Package validate is the first verification gate for a mapping spec: it checks
// the spec against the live Cassandra schema (system_schema) and pushes a sample
// of live MongoDB documents through the transform, before anything is written.
//
// Check never writes to either database. Its Report says everything it found
// at once, so one run gives an operator the whole list to fix.
package validate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/mongo"
)

// Problem kinds. A Report fails when it holds any Problem.
const (
	KindSpec              = "spec"                // the spec does not parse or compile
	KindMissingKeyspace   = "missing_keyspace"    // the table's keyspace does not exist
	KindMissingTable      = "missing_table"       // no such table (or it is a materialized view)
	KindMissingColumn     = "missing_column"      // a spec column the table lacks
	KindTypeMismatch      = "type_mismatch"       // spec and table spell the column's type differently
	KindPartitionKey      = "partition_key"       // spec partition key differs from the table's
	KindClusteringKey     = "clustering_key"      // spec clustering key differs from the table's
	KindUnmappedKeyColumn = "unmapped_key_column" // a primary key column of the table the spec does not write
	KindMissingType       = "missing_type"        // a user-defined type the spec names does not exist
	KindUDTField          = "udt_field"           // a UDT field the spec writes is missing or differently typed
	KindMissingCollection = "missing_collection"  // the spec's source collection does not exist
	KindUnsafeType        = "unsafe_type"         // a column type a replay would change (non-frozen list, counter)
)

// Report is what one validation found. It is stable JSON (`tidemark validate --json`).
type Report struct {
	SpecVersion  string `json:"spec_version,omitempty"`
	SpecChecksum string `json:"spec_checksum,omitempty"`
	// Pass is true when there is no Problem and every namespace's failure rate
	// is within the allowed rate.
	Pass bool `json:"pass"`
	// MaxFailureRate is the share of sampled documents allowed to fail conversion.
	MaxFailureRate float64 `json:"max_failure_rate"`
	// Problems found in the spec, the Cassandra schema and the source collections.
	Problems   []Problem         `json:"problems"`
	Namespaces []NamespaceReport `json:"namespaces"`
}

// Problem is one thing to fix before the spec can be used.
type Problem struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	// Table is "keyspace.table".
	Table   string `json:"table,omitempty"`
	Column  string `json:"column,omitempty"`
	Message string `json:"message"`
}

// NamespaceReport is the outcome of converting a sample of one source collection.
type NamespaceReport struct {
	Namespace string `json:"namespace"`
	// Method is how documents were picked: MethodSample, MethodIDWindows or MethodAll.
	Method string `json:"method"`
	// Estimated is the collection's estimated document count.
	Estimated int64 `json:"estimated_documents"`
	Sampled   int   `json:"sampled"`
	// Clean documents converted without error; NoRows of them are admitted by
	// no table's filter (the sink would write nothing for them, which is fine).
	Clean  int `json:"clean"`
	NoRows int `json:"no_rows"`
	Failed int `json:"failed"`
	// Failures group the failed documents by table, column and rule, most frequent first.
	Failures []Failure `json:"failures"`
}

// Failure counts the sampled documents that failed one conversion rule.
type Failure struct {
	Table  string `json:"table,omitempty"`
	Column string `json:"column,omitempty"`
	// Rule is transform.ConvertError.Rule, e.g. "string->int" or "primary-key".
	Rule string `json:"rule"`
	// Path is the document path (or computed expression) the column reads.
	Path string `json:"path,omitempty"`
	// BSONTypes are the types found at Path among the failures, sorted.
	BSONTypes []string `json:"bson_types,omitempty"`
	Count     int      `json:"count"`
	// Examples are up to MaxExamples _ids in relaxed extended JSON, in sample order.
	Examples []json.RawMessage `json:"examples"`
	// Error is the first example's reason (ConvertError.Err without the rule).
	Error string `json:"error"`
}

// MaxExamples is how many _ids a Failure keeps.
const MaxExamples = 5

// Sampling methods, as NamespaceReport.Method.
const (
	// MethodSample is the server's {$sample: {size: N}} stage: a uniform random
	// sample (MongoDB may return a document twice; duplicates are dropped).
	MethodSample = "$sample"
	// MethodIDWindows is the fallback for servers without $sample: the _id order
	// is cut into up to 10 equal strata and a run of consecutive documents is
	// read at a random offset inside each (sort by _id, skip, limit). It is
	// spread across the key space but not uniform: documents next to each other
	// in _id order (for ObjectIds, inserted at the same time) come together.
	MethodIDWindows = "_id windows"
	// MethodAll means the collection held no more documents than the sample size
	// and all of them were read in _id order.
	MethodAll = "all"
)

// Option changes how Check works.
type Option func(*config)

type config struct {
	sampleSize     int
	maxFailureRate float64
	spec           *transform.Spec
	seed           uint64
	// forceWindows skips $sample (tests exercise the fallback with it).
	forceWindows bool
}

// SampleSize is how many documents to sample per namespace (default 1000).
func SampleSize(n int) Option { return func(c *config) { c.sampleSize = n } }

// MaxFailureRate is the share of sampled documents per namespace allowed to fail
// conversion while the gate still passes (default 0: any failure fails the gate).
func MaxFailureRate(r float64) Option { return func(c *config) { c.maxFailureRate = r } }

// WithSpec gives Check the spec the Mapping was compiled from, so that the fields
// of frozen UDT columns are checked against system_schema.types too (a Mapping
// does not expose them). A UDT field the type lacks would otherwise be dropped
// silently by the driver on every write.
func WithSpec(s *transform.Spec) Option { return func(c *config) { c.spec = s } }

// Seed makes the _id-window fallback pick the same offsets every run (0: random).
func Seed(s uint64) Option { return func(c *config) { c.seed = s } }

func (c *config) validate() error {
	var errs []error
	for _, lim := range []struct {
		ok   bool
		what string
	}{
		{c.sampleSize >= 1 && c.sampleSize <= 1_000_000, fmt.Sprintf("sample size %d is not within 1..1000000", c.sampleSize)},
		{c.maxFailureRate >= 0 && c.maxFailureRate <= 1, fmt.Sprintf("max failure rate %g is not within 0..1", c.maxFailureRate)},
	} {
		if !lim.ok {
			errs = append(errs, errors.New(lim.what))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("validate: %w", errors.Join(errs...))
	}
	return nil
}

// TargetProblems is the Cassandra half of Check: every way the spec's
// tables differ from the live schema (missing keyspace, table, column or
// type, keys, types) and every column a replay would change. The sink
// refuses to start while it lists anything: it would otherwise stop or
// dead-letter on its first write, or let a replay corrupt a row.
func TargetProblems(ctx context.Context, cass *gocql.Session, m *transform.Mapping) ([]Problem, error) {
	return targetProblems(ctx, cass, m, nil)
}

func targetProblems(ctx context.Context, cass *gocql.Session, m *transform.Mapping, spec *transform.Spec) ([]Problem, error) {
	var out []Problem
	sc := newSchemaChecker(cass, spec)
	for _, ns := range m.Namespaces() {
		for _, t := range m.Tables(ns) {
			ps, err := sc.checkTable(ctx, ns, t)
			if err != nil {
				return nil, err
			}
			out = append(out, ps...)
		}
	}
	unsafe, err := UnsafeColumns(ctx, cass, m)
	if err != nil {
		return nil, err
	}
	for _, u := range unsafe {
		out = append(out, unsafeProblem(m, u))
	}
	return out, nil
}

// Check validates m against the live schema that cass sees and against a
// sample of the live documents of each of m's namespaces that mc sees.
//
// A returned error means the check could not be done (a server did not answer
// or refused a query); what the check found is in the Report, whose Pass says
// whether the gate passes. Check only reads.
func Check(ctx context.Context, m *transform.Mapping, cass *gocql.Session, mc *mongo.Client, opts ...Option) (*Report, error) {
	cfg := config{sampleSize: 1000}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Report{SpecVersion: m.Version(), SpecChecksum: m.Checksum(), MaxFailureRate: cfg.maxFailureRate,
		Problems: []Problem{}, Namespaces: []NamespaceReport{}}
	ps, err := targetProblems(ctx, cass, m, cfg.spec)
	if err != nil {
		return nil, err
	}
	r.Problems = append(r.Problems, ps...)
	smp := newSampler(mc, &cfg)
	for _, ns := range m.Namespaces() {
		nr, p, err := smp.check(ctx, m, ns)
		if err != nil {
			return nil, err
		}
		if p != nil {
			r.Problems = append(r.Problems, *p)
		}
		r.Namespaces = append(r.Namespaces, nr)
	}
	r.decide()
	return r, nil
}

// decide sets Pass.
func (r *Report) decide() {
	r.Pass = len(r.Problems) == 0
	for _, n := range r.Namespaces {
		if n.failureRateExceeds(r.MaxFailureRate) {
			r.Pass = false
		}
	}
}

func (n *NamespaceReport) failureRateExceeds(max float64) bool {
	return n.Sampled > 0 && float64(n.Failed)/float64(n.Sampled) > max
}

// SpecError is the Report of a spec that does not parse or compile: a failed
// gate with one Problem per error transform listed.
func SpecError(err error) *Report {
	r := &Report{Problems: []Problem{}, Namespaces: []NamespaceReport{}}
	var list interface{ Unwrap() []error }
	if errors.As(err, &list) {
		for _, e := range list.Unwrap() {
			r.Problems = append(r.Problems, Problem{Kind: KindSpec, Message: e.Error()})
		}
	} else {
		r.Problems = append(r.Problems, Problem{Kind: KindSpec, Message: err.Error()})
	}
	r.decide()
	return r
}

// WriteText prints the report for people: the problems, then one line per
// namespace with its failures under it, then the verdict.
func (r *Report) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	if r.SpecVersion != "" {
		fmt.Fprintf(ew, "spec %s (checksum %.12s)\n", r.SpecVersion, r.SpecChecksum)
	}
	if len(r.Problems) == 0 {
		fmt.Fprintln(ew, "\nschema: every table, column, type and key matches system_schema")
	} else {
		fmt.Fprintf(ew, "\n%d problem(s):\n", len(r.Problems))
		tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  KIND\tWHERE\tPROBLEM")
		for _, p := range r.Problems {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", p.Kind, p.where(), strings.ReplaceAll(p.Message, "\n", " "))
		}
		tw.Flush()
	}
	if len(r.Namespaces) > 0 {
		fmt.Fprintln(ew, "\ndocuments:")
		tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  NAMESPACE\tESTIMATED\tSAMPLED\tCLEAN\tFAILED\tMETHOD")
		for _, n := range r.Namespaces {
			if n.Method == "" {
				fmt.Fprintf(tw, "  %s\t-\t-\t-\t-\tnot sampled\n", n.Namespace)
				continue
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%s\n", n.Namespace, n.Estimated, n.Sampled, n.Clean, n.Failed, n.Method)
		}
		tw.Flush()
		for _, n := range r.Namespaces {
			switch {
			case n.Method == "":
				continue
			case n.Method == MethodIDWindows:
				fmt.Fprintf(ew, "  %s: the server has no $sample; read runs of documents at random offsets in _id order\n", n.Namespace)
			case n.Sampled == 0:
				fmt.Fprintf(ew, "  %s: no documents to sample; only the schema was checked\n", n.Namespace)
			}
			if n.NoRows > 0 {
				fmt.Fprintf(ew, "  %s: %d clean document(s) are admitted by no table's filter\n", n.Namespace, n.NoRows)
			}
			if len(n.Failures) == 0 {
				continue
			}
			fmt.Fprintf(ew, "\n  %s failures by rule:\n", n.Namespace)
			tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "    COLUMN\tFROM\tRULE\tCOUNT\tEXAMPLE _IDS\tFIRST ERROR")
			for _, f := range n.Failures {
				col := f.Table + "." + f.Column
				if f.Column == "" {
					col = orDash(f.Table)
				}
				from := orDash(f.Path)
				if len(f.BSONTypes) > 0 {
					from += " (" + strings.Join(f.BSONTypes, ", ") + ")"
				}
				ids := make([]string, len(f.Examples))
				for i, e := range f.Examples {
					ids[i] = string(e)
				}
				fmt.Fprintf(tw, "    %s\t%s\t%s\t%d\t%s\t%s\n", col, from, f.Rule, f.Count, strings.Join(ids, " "), f.Error)
			}
			tw.Flush()
		}
	}
	switch {
	case r.Pass:
		fmt.Fprintln(ew, "\nPASS")
	default:
		var why []string
		if len(r.Problems) > 0 {
			why = append(why, fmt.Sprintf("%d problem(s)", len(r.Problems)))
		}
		for _, n := range r.Namespaces {
			if n.failureRateExceeds(r.MaxFailureRate) {
				why = append(why, fmt.Sprintf("%s: %d of %d sampled documents fail (%.2f%% > %.2f%% allowed)",
					n.Namespace, n.Failed, n.Sampled, 100*float64(n.Failed)/float64(n.Sampled), 100*r.MaxFailureRate))
			}
		}
		fmt.Fprintf(ew, "\nFAIL: %s\n", strings.Join(why, "; "))
	}
	return ew.err
}

func (p Problem) where() string {
	switch {
	case p.Table != "" && p.Column != "":
		return p.Table + "." + p.Column
	case p.Table != "":
		return p.Table
	case p.Namespace != "":
		return p.Namespace
	}
	return "-"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// errWriter keeps the first write error so WriteText can print without checking each line.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

// sortFailures orders failures most frequent first, then by location and rule.
func sortFailures(fs []Failure) {
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		if a.Table != b.Table {
			return a.Table < b.Table
		}
		if a.Column != b.Column {
			return a.Column < b.Column
		}
		return a.Rule < b.Rule
	})
}
