package reconcile

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/mongoid"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
	"golang.org/x/sync/errgroup"
)

// A segmented round (reconcile.segments > 1) splits the hashing of both
// sides into segments that any daemon's Worker may take: segment k hashes
// the source documents whose _id lies in its range and the target rows of
// its share of the token ring. Trees merge by addition, so the round's trees
// are the sums of the segments' partial trees, whoever computed them; the
// coordinator then narrows and re-checks as a single-daemon round does. See
// docs/reconcile.md, "Rounds across daemons".

// Store keys of segmented rounds.
func runningKey(scope string) string { return checkpoints.PrefixReconcile + "running/" + scope }
func segmentKey(id string, k int) string {
	return fmt.Sprintf("%ssegment/%s/%03d", checkpoints.PrefixReconcile, id, k)
}
func resultPrefix(id string) string {
	return checkpoints.PrefixReconcile + "segment-result/" + id + "/"
}
func resultKey(id string, k, attempt, part int) string {
	return fmt.Sprintf("%s%03d/%d/%d", resultPrefix(id), k, attempt, part)
}

// resultPartBytes bounds one stored part of a segment's result: Kafka's
// default record limit is about 1 MB, and the Kafka store's frame adds a
// little.
const resultPartBytes = 512 << 10

// runningRound is the record under reconcile/running/<scope> while a tree
// round of the scope runs: the coordinator renews it (a lease), a second
// round of the scope is refused while it lives, and a round that finds it
// abandoned takes it over and finishes its segments.
type runningRound struct {
	Round   string    `json:"round"`
	Owner   string    `json:"owner"`
	Actor   string    `json:"actor,omitempty"`
	Started time.Time `json:"started"`
	Beat    int64     `json:"beat"`
	Renewed time.Time `json:"renewed"`
	// Released: the coordinator stopped (time box, cancel) and left its
	// segments for the next round of the scope to finish; free at once.
	Released bool      `json:"released,omitempty"`
	Manifest *manifest `json:"manifest,omitempty"`
}

// manifest is what workers need to take a segmented round's segments, and
// what a coordinator taking the round over needs to finish it as it began.
type manifest struct {
	// ID names the segments' keys: the report id of the round that split it.
	ID           string        `json:"id"`
	Scope        Scope         `json:"scope"`
	SpecChecksum string        `json:"spec_checksum"`
	Bits         int           `json:"bits"`
	Slice        string        `json:"slice,omitempty"`
	Start        time.Time     `json:"start"`
	Segments     []segmentSpec `json:"segments"`
}

// segmentSpec is one segment: the source _ids in (After, Through] (open
// ends when nil) and the target ranges [First, End) of the 2^segBits.
type segmentSpec struct {
	After   *idBound `json:"after,omitempty"`
	Through *idBound `json:"through,omitempty"`
	First   int      `json:"first"`
	End     int      `json:"end"`
	// NoSource marks a segment past the last source cut (a collection with
	// fewer documents than segments).
	NoSource bool `json:"no_source,omitempty"`
}

// idBound is a source _id as BSON type and value bytes.
type idBound struct {
	Type  byte   `json:"type"`
	Value []byte `json:"value"`
}

func (b *idBound) raw() *bson.RawValue {
	if b == nil {
		return nil
	}
	return &bson.RawValue{Type: bsontype.Type(b.Type), Value: b.Value}
}

// segmentLease is the record under reconcile/segment/<round>/<k>.
type segmentLease struct {
	Owner string `json:"owner"`
	// Attempt counts the workers that took the segment; results are stored
	// per attempt, so a late writer's parts never mix with the winner's.
	Attempt      int       `json:"attempt"`
	Beat         int64     `json:"beat"`
	Renewed      time.Time `json:"renewed"`
	TookOverFrom string    `json:"took_over_from,omitempty"`
	Done         bool      `json:"done,omitempty"`
	Parts        int       `json:"parts,omitempty"`
	// Released: the worker failed and gave the segment up; free at once.
	Released bool `json:"released,omitempty"`
}

// segmentResult is a finished segment's partial trees and counts.
type segmentResult struct {
	Docs    int64    `json:"docs"`
	Errors  int64    `json:"errors"`
	SrcRows []int64  `json:"src_rows"`
	TgtRows []int64  `json:"tgt_rows"`
	Exp     [][]byte `json:"exp"`
	Act     [][]byte `json:"act"`
}

// splitSegments cuts the source into about n _id ranges of equal size (by
// the documents' order, read with skip on the _id index) and the target
// ring into n runs of the 2^segBits ranges. Fewer documents than n give
// fewer source cuts; each segment still gets its target share.
func (rd *round) splitSegments(ctx context.Context, n int) ([]segmentSpec, error) {
	n = min(n, 1<<segBits)
	total, err := rd.src.coll.EstimatedDocumentCount(ctx)
	if err != nil {
		return nil, fmt.Errorf("reconcile: count %s: %w", rd.src.ns, err)
	}
	var cuts []*idBound
	for k := 1; k < n && total > 0; k++ {
		skip := total * int64(k) / int64(n)
		raw, err := rd.src.coll.FindOne(ctx, bson.D{}, options.FindOne().SetSort(bson.D{{Key: "_id", Value: 1}}).
			SetSkip(skip).SetProjection(bson.D{{Key: "_id", Value: 1}})).Raw()
		if err != nil {
			if errors.Is(err, mongo.ErrNoDocuments) {
				break
			}
			return nil, fmt.Errorf("reconcile: split %s: %w", rd.src.ns, err)
		}
		id := raw.Lookup("_id")
		if len(cuts) > 0 && cuts[len(cuts)-1].Type == byte(id.Type) && bytes.Equal(cuts[len(cuts)-1].Value, id.Value) {
			continue
		}
		cuts = append(cuts, &idBound{Type: byte(id.Type), Value: bytes.Clone(id.Value)})
	}
	return segmentSpecs(cuts, n), nil
}

// segmentSpecs pairs source cuts c1..cm with n target shares: segment 0 is
// (-inf, c1], k is (ck, ck+1], m is (cm, +inf), and any later one has
// target ranges only. Every _id and every target range is in one segment.
func segmentSpecs(cuts []*idBound, n int) []segmentSpec {
	specs := make([]segmentSpec, n)
	for k := range specs {
		specs[k].First, specs[k].End = k*(1<<segBits)/n, (k+1)*(1<<segBits)/n
		if k > len(cuts) {
			specs[k].NoSource = true
			continue
		}
		if k > 0 {
			specs[k].After = cuts[k-1]
		}
		if k < len(cuts) {
			specs[k].Through = cuts[k]
		}
	}
	return specs
}

// sourceRange is the segment's source part: nil filter and zero after for
// every document; ok false for a segment that has no source range.
func (s segmentSpec) sourceRange(rare bool) (filter bson.D, after bson.RawValue, ok bool) {
	if s.NoSource {
		return nil, bson.RawValue{}, false
	}
	if s.Through != nil {
		filter = mongoid.AtMost(s.Through.raw(), rare)
	}
	if s.After != nil {
		after = *s.After.raw()
	}
	return filter, after, true
}

// workSegment hashes one segment into partial trees: its source documents
// (in _id order, read ahead) and its target ranges, side by side.
func (rd *round) workSegment(ctx context.Context, s segmentSpec) (*segmentResult, error) {
	res := &segmentResult{SrcRows: make([]int64, len(rd.tables)), TgtRows: make([]int64, len(rd.tables))}
	exp, act := make([]*tree, len(rd.tables)), make([]*tree, len(rd.tables))
	for i := range rd.tables {
		exp[i], act[i] = newTree(rd.st.Bits), newTree(rd.st.Bits)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		filter, after, ok := s.sourceRange(rd.src.acceptsRare(gctx))
		if !ok {
			return nil
		}
		h := rd.newRowHasher()
		docs := rd.docThrottle(gctx)
		return readAhead(gctx, rd.src, filter, after, func(doc bson.Raw) error {
			if err := docs(); err != nil {
				return err
			}
			res.Docs++
			rd.docs.Add(1)
			return h.hash(doc, func(i int, tok int64, sum uint64) {
				exp[i].add(tok, sum)
				res.SrcRows[i]++
			}, func() { res.Errors++ })
		})
	})
	g.Go(func() error {
		var mu sync.Mutex
		rg, rctx := errgroup.WithContext(gctx)
		rg.SetLimit(rd.r.cfg.Concurrency)
		for seg := s.First; seg < s.End; seg++ {
			rg.Go(func() error {
				local, counts, err := rd.hashTargetRange(rctx, seg)
				if err != nil || local == nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				for i := range rd.tables {
					act[i].merge(local[i])
					res.TgtRows[i] += counts[i]
				}
				return nil
			})
		}
		return rg.Wait()
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for i := range rd.tables {
		e, _ := exp[i].MarshalBinary()
		a, _ := act[i].MarshalBinary()
		res.Exp, res.Act = append(res.Exp, e), append(res.Act, a)
	}
	return res, nil
}

// putResult stores a segment's result compressed, in parts that each fit a
// Kafka record, and returns how many.
func putResult(ctx context.Context, st checkpoints.Store, id string, k, attempt int, res *segmentResult) (int, error) {
	js, err := json.Marshal(res)
	if err != nil {
		return 0, err
	}
	var buf bytes.Buffer
	zw, _ := flate.NewWriter(&buf, flate.BestSpeed)
	zw.Write(js)
	if err := zw.Close(); err != nil {
		return 0, err
	}
	b := buf.Bytes()
	parts := 0
	for len(b) > 0 || parts == 0 {
		n := min(len(b), resultPartBytes)
		if err := st.Put(ctx, resultKey(id, k, attempt, parts), b[:n]); err != nil {
			return 0, fmt.Errorf("reconcile: store segment %d of %s: %w", k, id, err)
		}
		b, parts = b[n:], parts+1
	}
	return parts, nil
}

// getResult reads back what putResult stored.
func getResult(ctx context.Context, st checkpoints.Store, id string, k, attempt, parts int) (*segmentResult, error) {
	var buf bytes.Buffer
	for p := range parts {
		b, err := st.Get(ctx, resultKey(id, k, attempt, p))
		if err != nil {
			return nil, fmt.Errorf("reconcile: read segment %d of %s: %w", k, id, err)
		}
		buf.Write(b)
	}
	js, err := io.ReadAll(flate.NewReader(&buf))
	if err != nil {
		return nil, fmt.Errorf("reconcile: segment %d of %s: %w", k, id, err)
	}
	var res segmentResult
	if err := json.Unmarshal(js, &res); err != nil {
		return nil, fmt.Errorf("reconcile: segment %d of %s: %w", k, id, err)
	}
	return &res, nil
}

// deleteSegments removes a round's segment leases and results.
func deleteSegments(ctx context.Context, st checkpoints.Store, id string) error {
	var errs []error
	for _, prefix := range []string{checkpoints.PrefixReconcile + "segment/" + id + "/", resultPrefix(id)} {
		keys, err := st.List(ctx, prefix)
		if err != nil {
			return err
		}
		for k := range keys {
			errs = append(errs, st.Delete(ctx, k))
		}
	}
	return errors.Join(errs...)
}

// errLeaseLost ends a segment whose lease another worker took.
var errLeaseLost = errors.New("reconcile: the segment's lease was taken by another worker")

// segmentWorker claims and works the segments of one manifest.
type segmentWorker struct {
	rd  *round
	m   *manifest
	obs *observer
	// live says whether the round is still running; a worker stops taking
	// segments of a round that ended or was abandoned.
	live func(ctx context.Context) bool
	// done counts the segments found done in the last pass.
	done func(n int)
	// hash works one segment; nil is rd.workSegment (tests replace it).
	hash func(ctx context.Context, s segmentSpec) (*segmentResult, error)
}

// run takes segments until every one is done (nil), the round stops being
// live (nil), ctx ends, or working a segment fails.
func (w *segmentWorker) run(ctx context.Context) error {
	r := w.rd.r
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !w.live(ctx) {
			return nil
		}
		all, took, err := w.pass(ctx)
		if err != nil || all {
			return err
		}
		if took {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.cfg.Lease / 20):
		}
	}
}

// pass looks at every segment once and works the first one it can take.
// all is true when every segment is done.
func (w *segmentWorker) pass(ctx context.Context) (all, took bool, err error) {
	r := w.rd.r
	done := 0
	for k := range w.m.Segments {
		key := segmentKey(w.m.ID, k)
		l, ver, found, err := getVersioned[segmentLease](ctx, r.d.Store, key)
		if err != nil {
			return false, false, err
		}
		if found && l.Done {
			done++
			continue
		}
		if found && !l.Released && !w.obs.stale(key, ver, r.cfg.Lease) {
			continue
		}
		next := segmentLease{Owner: r.owner, Attempt: l.Attempt + 1, Renewed: time.Now().UTC()}
		if found && !l.Released {
			next.TookOverFrom = l.Owner
		}
		nver, err := putVersioned(ctx, r.d.Store, key, ver, next)
		if errors.Is(err, checkpoints.ErrConflict) {
			continue // another worker was first
		}
		if err != nil {
			return false, false, err
		}
		w.obs.forget(key)
		// The round may have ended between the look at its record and the
		// claim: its coordinator deletes the record, then the segments. A
		// claim it did not see must not stay behind.
		if err := checkpoints.Sync(ctx, r.d.Store); err != nil {
			return false, false, err // the claim expires like a dead worker's
		}
		if !w.live(ctx) {
			r.d.Store.CompareAndSwap(ctx, key, nver, nil)
			return false, false, nil
		}
		r.met.segmentsTaken.Inc()
		if next.TookOverFrom != "" {
			w.tookOver(ctx, k, l)
		}
		if err := w.work(ctx, k, nver, next); err != nil && !errors.Is(err, errLeaseLost) {
			return false, true, err
		}
		return false, true, nil
	}
	if w.done != nil {
		w.done(done)
	}
	return done == len(w.m.Segments), false, nil
}

// tookOver records a segment taken from a worker that stopped renewing it.
func (w *segmentWorker) tookOver(ctx context.Context, k int, from segmentLease) {
	r := w.rd.r
	r.met.segmentsRedone.Inc()
	r.log.Warn("took over a segment whose worker stopped renewing its lease", "round", w.m.ID, "segment", k,
		"from", from.Owner, "attempt", from.Attempt+1)
	err := r.d.Store.Append(ctx, checkpoints.AuditEntry{Actor: "auto:reconcile", Action: "reconcile.segment.takeover",
		Target: fmt.Sprintf("%s segment %d", w.m.ID, k), Result: "ok",
		Reason:  fmt.Sprintf("the lease of %s was not renewed for %s", from.Owner, r.cfg.Lease),
		Details: map[string]any{"round": w.m.ID, "segment": k, "from": from.Owner, "to": r.owner, "attempt": from.Attempt + 1}})
	if err != nil {
		r.log.Warn("cannot audit a segment takeover", "err", err)
	}
}

// work hashes segment k under its lease, stores the result, and marks the
// segment done, unless the lease was lost meanwhile: then the result is
// dropped and another worker's counts.
func (w *segmentWorker) work(ctx context.Context, k int, ver int64, l segmentLease) error {
	r := w.rd.r
	key := segmentKey(w.m.ID, k)
	base := l // the renewals' own copy: l changes below
	render := func(beat int64, now time.Time) any { c := base; c.Beat, c.Renewed = beat, now; return c }
	ls := hold(ctx, r.d.Store, key, ver, r.cfg.Lease/3, render)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-ls.Lost():
			cancel()
		case <-sctx.Done():
		}
	}()
	hash := w.hash
	if hash == nil {
		hash = w.rd.workSegment
	}
	res, err := hash(sctx, w.m.Segments[k])
	select {
	case <-ls.Lost():
		ls.end(context.WithoutCancel(ctx), nil) // stops the renewals; the CAS fails
		return errLeaseLost
	default:
	}
	if err == nil {
		l.Parts, err = putResult(ctx, r.d.Store, w.m.ID, k, l.Attempt, res)
	}
	if err != nil {
		// Give the segment up so that another worker takes it at once
		// rather than after a lease. A worker whose context was cancelled
		// gives nothing up: it stands for a daemon that died (tests cancel
		// to kill). One stopped by a deadline (the time box) lets go.
		if !errors.Is(ctx.Err(), context.Canceled) {
			rel := l
			rel.Released = true
			ls.end(context.WithoutCancel(ctx), rel)
		}
		return fmt.Errorf("reconcile: segment %d of %s: %w", k, w.m.ID, err)
	}
	l.Done = true
	if err := ls.end(ctx, l); err != nil {
		if errors.Is(err, checkpoints.ErrConflict) {
			return errLeaseLost
		}
		return err
	}
	r.log.Info("segment done", "round", w.m.ID, "segment", k, "attempt", l.Attempt, "docs", res.Docs)
	return nil
}

// mergeSegments adds every segment's stored result into the round's trees
// and counts, and lists who did which segment.
func (rd *round) mergeSegments(ctx context.Context, m *manifest) error {
	r := rd.r
	var docs, errs int64
	for k := range m.Segments {
		l, _, found, err := getVersioned[segmentLease](ctx, r.d.Store, segmentKey(m.ID, k))
		if err != nil {
			return err
		}
		if !found || !l.Done {
			return fmt.Errorf("reconcile: segment %d of %s is not done", k, m.ID)
		}
		res, err := getResult(ctx, r.d.Store, m.ID, k, l.Attempt, l.Parts)
		if err != nil {
			return err
		}
		if len(res.Exp) != len(rd.tables) || len(res.Act) != len(rd.tables) {
			return fmt.Errorf("reconcile: segment %d of %s has %d tables, the round %d", k, m.ID, len(res.Exp), len(rd.tables))
		}
		sr := SegmentReport{Segment: k, Owner: l.Owner, Attempt: l.Attempt, TookOverFrom: l.TookOverFrom, Docs: res.Docs}
		for i := range rd.tables {
			e, a := &tree{}, &tree{}
			if err := e.UnmarshalBinary(res.Exp[i]); err != nil {
				return err
			}
			if err := a.UnmarshalBinary(res.Act[i]); err != nil {
				return err
			}
			if e.bits != rd.st.Bits || a.bits != rd.st.Bits {
				return fmt.Errorf("reconcile: segment %d of %s has %d-bit trees, the round %d", k, m.ID, e.bits, rd.st.Bits)
			}
			rd.exp[i].merge(e)
			rd.act[i].merge(a)
			rd.srcRows[i].Add(res.SrcRows[i])
			rd.tgtRows[i].Add(res.TgtRows[i])
			sr.RowsSource += res.SrcRows[i]
			sr.RowsTarget += res.TgtRows[i]
		}
		docs, errs = docs+res.Docs, errs+res.Errors
		rd.rep.Segments = append(rd.rep.Segments, sr)
	}
	rd.docs.Store(docs)
	rd.st.Docs, rd.st.Errors = docs, errs
	return nil
}

// sameRound reports whether a stored manifest can be finished by a round
// of this scope now: same spec and slice, and not asked to start over.
func (rd *round) sameRound(m *manifest, fresh bool) bool {
	return m != nil && !fresh && m.SpecChecksum == rd.r.d.Mapping.Checksum() && m.Slice == rd.rep.Slice &&
		m.Scope.Key() == rd.scope.Key() && m.Bits >= segBits
}
