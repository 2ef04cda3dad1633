package validate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// sampler reads a sample of each namespace and pushes it through the transform.
//
// How documents are picked, in order of preference:
//   - a collection with no more documents (by its estimated count) than the
//     sample size is read whole, in _id order (MethodAll);
//   - otherwise the server's $sample stage (MethodSample). MongoDB has it since
//     3.2, and the local stack's stand-in (mongo-java-server) implements it too;
//   - a server that answers $sample with "unrecognised stage" gets _id windows
//     (MethodIDWindows, see its comment): runs at random offsets in _id order.
type sampler struct {
	mc  *mongo.Client
	cfg *config
	rng *rand.Rand
}

func newSampler(mc *mongo.Client, cfg *config) *sampler {
	seed := cfg.seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &sampler{mc: mc, cfg: cfg, rng: rand.New(rand.NewPCG(seed, seed))}
}

// failureKey groups failures: one Failure per table, column and rule.
type failureKey struct{ table, column, rule string }

// check samples ns and converts every document. The Problem is set when the
// collection does not exist.
func (s *sampler) check(ctx context.Context, m *transform.Mapping, ns string) (NamespaceReport, *Problem, error) {
	nr := NamespaceReport{Namespace: ns, Failures: []Failure{}}
	dbName, collName, _ := strings.Cut(ns, ".")
	db := s.mc.Database(dbName)
	// No name filter: the stand-in server ignores listCollections filters and
	// returns every collection, so filter here.
	names, err := db.ListCollectionNames(ctx, bson.D{})
	switch {
	case err != nil && !isCode(err, 13): // 13 Unauthorized: a find-only user may still sample
		return nr, nil, fmt.Errorf("validate: list collections of %s: %w", dbName, err)
	case err == nil && !slices.Contains(names, collName):
		return nr, &Problem{Kind: KindMissingCollection, Namespace: ns,
			Message: fmt.Sprintf("collection %s does not exist in database %s; is the spec's namespace spelled right?", collName, dbName)}, nil
	}
	coll := db.Collection(collName)
	if nr.Estimated, err = coll.EstimatedDocumentCount(ctx); err != nil {
		return nr, nil, fmt.Errorf("validate: count %s: %w", ns, err)
	}
	docs, method, err := s.sample(ctx, coll, nr.Estimated)
	if err != nil {
		return nr, nil, fmt.Errorf("validate: sample %s: %w", ns, err)
	}
	nr.Method, nr.Sampled = method, len(docs)

	index := map[failureKey]int{}
	for _, doc := range docs {
		rows, err := m.Apply(ns, doc)
		if err == nil {
			nr.Clean++
			if len(rows) == 0 {
				nr.NoRows++
			}
			continue
		}
		nr.Failed++
		k := failureKey{rule: "error"}
		var path, btype string
		msg := err.Error()
		var ce *transform.ConvertError
		if errors.As(err, &ce) {
			k = failureKey{ce.Table, ce.Column, ce.Rule}
			path, btype = ce.Path, ce.BSONType
			// The location is in the Failure's fields; keep the reason.
			msg = strings.TrimPrefix(ce.Err.Error(), ce.Rule+": ")
		}
		i, ok := index[k]
		if !ok {
			i = len(nr.Failures)
			index[k] = i
			nr.Failures = append(nr.Failures, Failure{Table: k.table, Column: k.column, Rule: k.rule, Path: path,
				Examples: []json.RawMessage{}, Error: msg})
		}
		f := &nr.Failures[i]
		f.Count++
		if len(f.Examples) < MaxExamples {
			f.Examples = append(f.Examples, idJSON(doc))
		}
		if btype != "" && !slices.Contains(f.BSONTypes, btype) {
			f.BSONTypes = append(f.BSONTypes, btype)
			slices.Sort(f.BSONTypes)
		}
	}
	sortFailures(nr.Failures)
	return nr, nil, nil
}

// sample picks up to sampleSize documents of coll, without duplicates.
func (s *sampler) sample(ctx context.Context, coll *mongo.Collection, estimated int64) ([]bson.Raw, string, error) {
	size := s.cfg.sampleSize
	if estimated <= int64(size) {
		// One more than the sample size tells a stale estimate from a small collection.
		docs, err := s.find(ctx, coll, nil, 0, int64(size)+1)
		if err != nil {
			return nil, "", err
		}
		if len(docs) <= size {
			return docs, MethodAll, nil
		}
		estimated = int64(size) + 1
	}
	if !s.cfg.forceWindows {
		docs, err := s.bySample(ctx, coll)
		if err == nil {
			return docs, MethodSample, nil
		}
		// 40324 unrecognised pipeline stage; 59/115 no aggregate command at all.
		if !isCode(err, 40324, 59, 115) {
			return nil, "", err
		}
	}
	docs, err := s.byIDWindows(ctx, coll, estimated)
	return docs, MethodIDWindows, err
}

func (s *sampler) bySample(ctx context.Context, coll *mongo.Collection) ([]bson.Raw, error) {
	cur, err := coll.Aggregate(ctx, mongo.Pipeline{{{Key: "$sample", Value: bson.D{{Key: "size", Value: s.cfg.sampleSize}}}}})
	if err != nil {
		return nil, err
	}
	return collect(ctx, cur, nil)
}

// byIDWindows cuts the _id order into up to 10 strata of equal size and reads a
// run of consecutive documents at a random offset inside each, so the sample
// spans old and new documents. skip costs the server O(offset) per window.
func (s *sampler) byIDWindows(ctx context.Context, coll *mongo.Collection, estimated int64) ([]bson.Raw, error) {
	size := s.cfg.sampleSize
	w := min(10, size)
	stratum := estimated / int64(w)
	seen := map[string]bool{}
	var out []bson.Raw
	for i := range w {
		k := int64(size / w)
		if i < size%w {
			k++
		}
		span := max(stratum-k, 0)
		off := int64(i)*stratum + s.rng.Int64N(span+1)
		docs, err := s.find(ctx, coll, seen, off, k)
		if err != nil {
			return nil, err
		}
		out = append(out, docs...)
	}
	return out, nil
}

// find reads limit documents in _id order after skipping skip, leaving out _ids in seen.
func (s *sampler) find(ctx context.Context, coll *mongo.Collection, seen map[string]bool, skip, limit int64) ([]bson.Raw, error) {
	opts := options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetSkip(skip).SetLimit(limit)
	cur, err := coll.Find(ctx, bson.D{}, opts)
	if err != nil {
		return nil, err
	}
	return collect(ctx, cur, seen)
}

// collect copies the cursor's documents, dropping _ids already in seen ($sample
// on MongoDB may return a document twice).
func collect(ctx context.Context, cur *mongo.Cursor, seen map[string]bool) ([]bson.Raw, error) {
	defer cur.Close(context.WithoutCancel(ctx))
	if seen == nil {
		seen = map[string]bool{}
	}
	var out []bson.Raw
	for cur.Next(ctx) {
		id := cur.Current.Lookup("_id")
		key := string(append([]byte{byte(id.Type)}, id.Value...))
		if seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, append(bson.Raw(nil), cur.Current...))
	}
	return out, cur.Err()
}

// idJSON is the document's _id in relaxed extended JSON, e.g. {"$oid":"…"}, "u1" or 7.
func idJSON(doc bson.Raw) json.RawMessage {
	id, err := doc.LookupErr("_id")
	if err != nil {
		return json.RawMessage("null")
	}
	b, err := bson.MarshalExtJSON(bson.D{{Key: "_id", Value: id}}, false, false)
	var m map[string]json.RawMessage
	if err == nil && json.Unmarshal(b, &m) == nil && m["_id"] != nil {
		return m["_id"]
	}
	return json.RawMessage(strconv.Quote(id.String()))
}

// isCode reports whether err is a server error with one of codes.
func isCode(err error, codes ...int) bool {
	var se mongo.ServerError
	if !errors.As(err, &se) {
		return false
	}
	for _, c := range codes {
		if se.HasErrorCode(c) {
			return true
		}
	}
	return false
}
