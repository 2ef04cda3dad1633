package reconcile

import (
	"bytes"
	"context"
	"encoding/hex"
	"math"
	"sort"
	"strconv"
	"sync"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"golang.org/x/sync/errgroup"
)

// outcome is what re-checking one candidate concluded.
type outcome struct {
	// class is a divergence class, "in_flight", "resolved" (matched after
	// differing) or "match" (matched at the first point read).
	class  string
	sample KeySample
	ref    KeyRef
	// src and tgt say which sides hold the row at the end (ID rounds count them).
	src, tgt bool
}

// recheckAll re-checks candidates in parallel and tallies the report.
// fromTree says the candidates come from differing leaves, so a key that
// matches at once had changed during the scan ("resolved"); in an _id round
// it simply matches.
func (rd *round) recheckAll(ctx context.Context, cands []candidate, fromTree bool) error {
	rd.cands.Store(int64(len(cands)))
	rd.rep.Candidates = int64(len(cands))
	out := make([]outcome, len(cands))
	matched, err := rd.quickMatch(ctx, cands)
	if err != nil {
		return err
	}
	// Keys still differing are re-checked together, pass after pass, until
	// each is decided or InFlightWait has passed since the first pass: the
	// wait is shared, not paid per key.
	var pending []int
	for i := range cands {
		if matched[i] {
			out[i] = outcome{class: "match", src: true, tgt: true}
			rd.candsDone.Add(1)
		} else {
			pending = append(pending, i)
		}
	}
	if err := rd.decide(ctx, cands, pending, out); err != nil {
		return err
	}
	rd.outcomes = out
	rd.tally(cands, out, fromTree)
	return nil
}

// decide re-checks the pending candidates together, pass after pass, until
// each is decided or InFlightWait has passed since the first pass, and leaves
// each one's outcome in out: a key still undecided then is in flight.
func (rd *round) decide(ctx context.Context, cands []candidate, pending []int, out []outcome) error {
	deadline := time.Now().Add(rd.r.cfg.InFlightWait)
	pins := make([]pin, len(cands))
	for first := true; len(pending) > 0; first = false {
		var mu sync.Mutex
		var next []int
		pre := rd.prefetch(ctx, cands, pending)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(rd.r.cfg.Concurrency)
		for _, i := range pending {
			c := cands[i]
			if !first && time.Now().After(deadline) {
				// Out of time for this pass: the key stays as the last pass left it.
				mu.Lock()
				next = append(next, i)
				mu.Unlock()
				continue
			}
			g.Go(func() error {
				o, decided, err := rd.recheckOnce(gctx, c, first, pre, &pins[i])
				if err != nil && gctx.Err() == nil {
					// A key that cannot be read now cannot be called divergent:
					// it stays undecided, like a key in flight, and keeps the
					// round from recording verified marks.
					rd.r.log.Warn("cannot re-check a key; counting it in flight", "table", rd.tables[c.table].QualifiedName(), "err", err)
					o, decided, err = outcome{class: "in_flight", sample: KeySample{Table: rd.tables[c.table].QualifiedName(), Class: "in_flight",
						Waiting: WaitUnreadable}}, false, nil
					if c.id != nil {
						o.sample.SourceID = idJSON(c.id)
					}
				}
				if err != nil {
					return err
				}
				out[i] = o
				if decided {
					rd.candsDone.Add(1)
				} else {
					mu.Lock()
					next = append(next, i)
					mu.Unlock()
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		if first {
			// The wait starts once every key has been looked at once: a
			// first pass over thousands of candidates can itself take
			// longer than the wait, and a key must get at least one later
			// look after the pipeline had time to pass it.
			deadline = time.Now().Add(rd.r.cfg.InFlightWait)
		}
		if len(next) == 0 || time.Now().After(deadline) {
			for _, i := range next {
				out[i].class, out[i].sample.Class = "in_flight", "in_flight"
				rd.candsDone.Add(1)
			}
			break
		}
		sort.Ints(next)
		pending = next
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil
}

// tally counts the outcomes into the report: per table and class, the
// divergent keys and their tree leaves (the report's buckets), and a sample,
// divergent keys first.
func (rd *round) tally(cands []candidate, out []outcome, fromTree bool) {
	var inFlight []KeySample
	hot := map[int]map[uint32]int64{} // by table: divergent keys per tree leaf
	for i, o := range out {
		tr := &rd.rep.Tables[cands[i].table]
		if !fromTree {
			if o.src {
				tr.RowsSource++
			}
			if o.tgt {
				tr.RowsTarget++
			}
		}
		switch o.class {
		case "match":
			if fromTree {
				tr.Resolved++
				rd.rep.Counts["resolved"]++
			}
			continue
		case "resolved":
			tr.Resolved++
		case "in_flight":
			tr.InFlight++
			inFlight = append(inFlight, o.sample)
			if rd.rep.InFlightWaiting == nil {
				rd.rep.InFlightWaiting = map[string]int64{}
			}
			rd.rep.InFlightWaiting[o.sample.Waiting]++
		case ClassMissing:
			tr.Missing++
		case ClassExtra:
			tr.Extra++
		case ClassDifferent:
			tr.Different++
		case ClassStale:
			tr.Stale++
		}
		rd.rep.Counts[o.class]++
		if o.class != "resolved" && o.class != "in_flight" {
			if b, ok := rd.leafOf(cands[i]); ok {
				if hot[cands[i].table] == nil {
					hot[cands[i].table] = map[uint32]int64{}
				}
				hot[cands[i].table][b]++
			}
			rd.rep.Divergent = append(rd.rep.Divergent, o.ref)
			if len(rd.rep.Sample) < rd.r.cfg.SampleSize {
				rd.rep.Sample = append(rd.rep.Sample, o.sample)
			}
		}
	}
	for ti, m := range hot {
		tr := &rd.rep.Tables[ti]
		for b, n := range m {
			tr.Buckets = append(tr.Buckets, BucketCount{ID: b, Divergent: n})
		}
		sort.Slice(tr.Buckets, func(i, j int) bool { return tr.Buckets[i].ID < tr.Buckets[j].ID })
	}
	for _, s := range inFlight {
		if len(rd.rep.Sample) >= rd.r.cfg.SampleSize {
			break
		}
		rd.rep.Sample = append(rd.rep.Sample, s)
	}
}

// quickMatch settles, in bulk, the candidates whose document (read in
// batches of 500 by _id) and target row (read concurrently) now agree: under
// a live load most candidates are keys that changed while the scan ran, and
// one query per key would make the re-check slower than the scan.
func (rd *round) quickMatch(ctx context.Context, cands []candidate) ([]bool, error) {
	matched := make([]bool, len(cands))
	const batch = 500
	for lo := 0; lo < len(cands); lo += batch {
		part := cands[lo:min(len(cands), lo+batch)]
		var ids []bson.RawValue
		for _, c := range part {
			if c.id != nil {
				if v, err := envelope.ParseKey(c.id); err == nil {
					ids = append(ids, v)
				}
			}
		}
		docs, err := rd.src.find(ctx, ids)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			continue // these keys take the one-by-one path
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(rd.r.cfg.Concurrency)
		for j, c := range part {
			if c.id == nil {
				continue
			}
			exp := expected(rd, docs[string(c.id)], rd.tables[c.table], c.key)
			if exp == nil {
				continue
			}
			g.Go(func() error {
				tg := rd.tgts[c.table]
				kv, err := tg.t.DecodeKey(c.key)
				if err != nil {
					return err
				}
				act, _, found, err := tg.read(gctx, kv)
				matched[lo+j] = err == nil && found && sameRow(tg.t, exp, act)
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
	}
	return matched, nil
}

// recheckOnce tries to decide one key by point reads on both sides.
//
// The source document is read first, then the source's clock (ts): the
// document's version is at most ts. If the target differs, the key is
// divergent only once the pipeline has applied everything up to ts on the
// key's partition and the document has not changed meanwhile (read again
// after the target). Otherwise it is undecided (in flight) for now.
// first says whether this is the key's first point read.
// passDocs are the documents of one re-check pass, read in bulk, and the
// source's clock read after them: every document's version is at most ts.
type passDocs struct {
	docs map[string]bson.Raw
	ts   envelope.Version
}

// prefetch reads the documents of the pending keys that name one, 500 per
// query, then the clock; nil when that fails (each key then reads its own).
func (rd *round) prefetch(ctx context.Context, cands []candidate, pending []int) *passDocs {
	p := &passDocs{docs: map[string]bson.Raw{}}
	var ids []bson.RawValue
	flush := func() bool {
		docs, err := rd.src.find(ctx, ids)
		if err != nil {
			return false
		}
		for k, d := range docs {
			p.docs[k] = d
		}
		ids = ids[:0]
		return true
	}
	for _, i := range pending {
		if cands[i].id == nil {
			continue
		}
		if v, err := envelope.ParseKey(cands[i].id); err == nil {
			ids = append(ids, v)
		}
		if len(ids) == 500 && !flush() {
			return nil
		}
	}
	if len(ids) > 0 && !flush() {
		return nil
	}
	ts, err := rd.src.now(ctx)
	if err != nil {
		return nil
	}
	p.ts = ts
	return p
}

// pin is the source document a key was first found differing with, the
// source version read after it, and what the caught-up rule pinned for that
// version. While the document stays the same (an absent one included), later
// passes wait for the pipeline to pass that version, not a fresh one: under a
// steady load the sink is always a moment behind "now", so a target moving
// with every pass would keep a truly divergent key in flight for ever.
type pin struct {
	doc bson.Raw
	ts  envelope.Version
	set bool
	w   Watermark
}

func (rd *round) recheckOnce(ctx context.Context, c candidate, first bool, pre *passDocs, p *pin) (o outcome, decided bool, err error) {
	t, tg := rd.tables[c.table], rd.tgts[c.table]
	keyVals, err := t.DecodeKey(c.key)
	if err != nil {
		return outcome{}, false, err
	}
	act, _, found, err := tg.read(ctx, keyVals)
	if err != nil {
		return outcome{}, false, err
	}
	if !found {
		act = nil
	}
	id, lagKeys := c.id, [][]byte{c.id}
	if id == nil {
		if id, lagKeys, err = rd.owner(ctx, t, c.key, act); err != nil {
			return outcome{}, false, err
		}
	}
	var doc bson.Raw
	var ts envelope.Version
	if pre != nil && c.id != nil {
		doc, ts = pre.docs[string(c.id)], pre.ts
	} else {
		if doc, err = rd.readDoc(ctx, id); err != nil {
			return outcome{}, false, err
		}
		if ts, err = rd.src.now(ctx); err != nil {
			return outcome{}, false, err
		}
	}
	// An absent document is pinned too: it was absent when read, before ts,
	// so once every change up to ts is applied the target must not hold its
	// row either (a derived row's owner is searched among lagKeys, whose
	// partitions the rule waits for).
	if p.set && bytes.Equal(p.doc, doc) {
		ts = p.ts
	} else {
		*p = pin{doc: doc, ts: ts, set: true}
	}
	exp := expected(rd, doc, t, c.key)
	if sameRow(t, exp, act) {
		o := outcome{class: "resolved", src: exp != nil, tgt: act != nil}
		if first {
			o.class = "match"
		}
		return o, true, nil
	}
	caught, err := rd.r.d.Lag.Caught(ctx, rd.scope.Namespace, lagKeys, ts, &p.w)
	if err != nil {
		rd.r.log.Warn("cannot tell the pipeline's progress; keeping the key in flight", "err", err)
	}
	if caught {
		act2, wt, found2, err := tg.read(ctx, keyVals)
		if err != nil {
			return outcome{}, false, err
		}
		doc2, err := rd.readDoc(ctx, id)
		if err != nil {
			return outcome{}, false, err
		}
		if !found2 {
			act2 = nil
		}
		if bytes.Equal(doc, doc2) {
			if sameRow(t, exp, act2) {
				return outcome{class: "resolved", src: exp != nil, tgt: act2 != nil}, true, nil
			}
			return rd.divergent(ctx, t, c.key, keyVals, id, exp, act2, wt), true, nil
		}
	}
	o = rd.describe(t, keyVals, id, exp, act)
	o.class, o.sample.Class = "in_flight", "in_flight"
	o.sample.Waiting = p.w.Waiting
	if caught {
		o.sample.Waiting = WaitChanging
	} else if err != nil || o.sample.Waiting == "" {
		o.sample.Waiting = WaitUnreadable
	}
	return o, false, nil
}

func (rd *round) readDoc(ctx context.Context, id []byte) (bson.Raw, error) {
	if id == nil {
		return nil, nil
	}
	v, err := envelope.ParseKey(id)
	if err != nil {
		return nil, err
	}
	docs, err := rd.src.find(ctx, []bson.RawValue{v})
	if err != nil {
		return nil, err
	}
	return docs[string(id)], nil
}

// expected is the row doc maps to in t under key, nil when it maps to none
// (no document, filtered out, or its row has another key).
func expected(rd *round, doc bson.Raw, t *transform.Table, key []byte) []any {
	if doc == nil {
		return nil
	}
	rows, err := rd.apply(doc)
	if err != nil {
		return nil
	}
	for _, r := range rows {
		if r.Table == t && bytes.Equal(r.Key, key) {
			return r.Values
		}
	}
	return nil
}

func canonical(t *transform.Table, values []any) []byte {
	b, err := t.AppendCanonical(nil, values)
	if err != nil {
		return nil
	}
	return b
}

func sameRow(t *transform.Table, a, b []any) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	ca, cb := canonical(t, a), canonical(t, b)
	return ca != nil && bytes.Equal(ca, cb)
}

// owner looks for the source document that writes a target row no document
// of the scan mapped to: the row's values are tried as _ids (text as itself,
// as an ObjectId and as a number; numbers; UUIDs), and a document counts as
// the owner only if the transform really maps it to this key. lagKeys are the
// envelope keys of every _id tried: a change of any of them may be in flight.
func (rd *round) owner(ctx context.Context, t *transform.Table, key []byte, act []any) (id []byte, lagKeys [][]byte, err error) {
	var ids []bson.RawValue
	seen := map[string]bool{}
	add := func(v any) {
		t, data, err := bson.MarshalValue(v)
		if err != nil {
			return
		}
		rv := bson.RawValue{Type: t, Value: data}
		k := string(envelope.Key(rv))
		if !seen[k] {
			seen[k] = true
			ids = append(ids, rv)
			lagKeys = append(lagKeys, []byte(k))
		}
	}
	for _, v := range act {
		switch x := v.(type) {
		case string:
			add(x)
			if oid, err := primitive.ObjectIDFromHex(x); err == nil {
				add(oid)
			}
			if n, err := strconv.ParseInt(x, 10, 64); err == nil {
				add(n)
			}
			if f, err := strconv.ParseFloat(x, 64); err == nil && f != math.Trunc(f) {
				add(f)
			}
		case int32:
			add(int64(x))
		case int64:
			add(x)
		case gocql.UUID:
			add(primitive.Binary{Subtype: 4, Data: x[:]})
		}
	}
	docs, err := rd.src.find(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	for k, doc := range docs {
		if expected(rd, doc, t, key) != nil {
			return []byte(k), [][]byte{[]byte(k)}, nil
		}
	}
	return nil, lagKeys, nil
}

// divergent classifies a key the pipeline has caught up with.
func (rd *round) divergent(ctx context.Context, t *transform.Table, key []byte, keyVals []any, id []byte, exp, act []any, wt int64) outcome {
	o := rd.describe(t, keyVals, id, exp, act)
	o.ref = KeyRef{Table: t.QualifiedName(), Key: key, ID: id}
	switch {
	case exp == nil:
		o.class = ClassExtra
	case act == nil:
		o.class = ClassMissing
	default:
		o.class = ClassDifferent
		ca := canonical(t, act)
		for j, c := range t.Columns {
			mixed := append([]any(nil), act...)
			mixed[j] = exp[j]
			if !bytes.Equal(canonical(t, mixed), ca) {
				o.sample.Columns = append(o.sample.Columns, c.Name)
			}
		}
		if wt > 0 && id != nil {
			if idv, err := envelope.ParseKey(id); err == nil {
				if v, ok := rd.src.changedAfter(ctx, idv, envelope.VersionFromMicros(wt), rd.r.cfg.OplogReads); ok {
					o.class = ClassStale
					o.sample.SourceVersion = v.String()
				}
			}
		}
	}
	if wt > 0 {
		o.sample.TargetVersion = envelope.VersionFromMicros(wt).String()
	}
	o.sample.Class, o.ref.Class = o.class, o.class
	return o
}

func (rd *round) describe(t *transform.Table, keyVals []any, id []byte, exp, act []any) outcome {
	s := KeySample{Table: t.QualifiedName(), PrimaryKey: map[string]any{}}
	for i, ci := range append(append([]int{}, t.PartitionKey...), t.ClusteringKey...) {
		s.PrimaryKey[t.Columns[ci].Name] = jsonValue(keyVals[i])
	}
	if id != nil {
		s.SourceID = idJSON(id)
	}
	side := func(vals []any) map[string]any {
		if vals == nil {
			return nil
		}
		m := make(map[string]any, len(vals))
		for i, c := range t.Columns {
			m[c.Name] = jsonValue(vals[i])
		}
		return m
	}
	s.Source, s.Target = side(exp), side(act)
	return outcome{sample: s, src: exp != nil, tgt: act != nil}
}

// idJSON renders an envelope key's _id in relaxed extended JSON.
func idJSON(key []byte) string {
	v, err := envelope.ParseKey(key)
	if err != nil {
		return hex.EncodeToString(key)
	}
	b, err := bson.MarshalExtJSON(bson.D{{Key: "_id", Value: v}}, false, false)
	if err != nil {
		return hex.EncodeToString(key)
	}
	return string(bytes.TrimSuffix(bytes.TrimPrefix(b, []byte(`{"_id":`)), []byte("}")))
}

// leafOf is the tree leaf (token range) of a candidate's row: where the
// status page's heat-map puts it.
func (rd *round) leafOf(c candidate) (uint32, bool) {
	t := rd.tables[c.table]
	kv, err := t.DecodeKey(c.key)
	if err != nil || len(kv) < len(t.PartitionKey) {
		return 0, false
	}
	vals := make([]any, len(t.Columns))
	for j, ci := range t.PartitionKey {
		vals[ci] = kv[j]
	}
	pk, err := partitionKeyBytes(nil, t, vals)
	if err != nil {
		return 0, false
	}
	return bucketOf(tokenOf(pk), rd.rep.BucketBits), true
}
