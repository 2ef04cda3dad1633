package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
)

// RoundOptions are per-round settings.
type RoundOptions struct {
	Actor  string
	Reason string
	// OnProgress is called about once a second while the round runs.
	OnProgress func(Progress)
	// Fresh discards the scope's saved progress instead of resuming it.
	Fresh bool
	// Fence, when set, is asked before the round writes shared state (its
	// progress, summary and verified marks): an error means the round may
	// no longer write it (a scheduled round whose daemon was deposed as the
	// elected leader), and the round stops without writing.
	Fence func(ctx context.Context) error
}

// roundState is a round's resumable progress, kept in checkpoints under
// reconcile/progress/<scope> while the scan runs.
type roundState struct {
	ID           string    `json:"id"`
	SpecChecksum string    `json:"spec_checksum"`
	Bits         int       `json:"bits"`
	Start        time.Time `json:"start"`
	// LastIDType/LastID is the last source _id whose rows are in Exp.
	LastIDType byte     `json:"last_id_type,omitempty"`
	LastID     []byte   `json:"last_id,omitempty"`
	SourceDone bool     `json:"source_done"`
	Docs       int64    `json:"docs"`
	Errors     int64    `json:"errors"`
	Exp        [][]byte `json:"exp"`
	Act        [][]byte `json:"act"`
	SegDone    []int    `json:"seg_done"`
	SrcRows    []int64  `json:"src_rows"`
	TgtRows    []int64  `json:"tgt_rows"`
}

func progressKey(s Scope) string { return checkpoints.PrefixReconcile + "progress/" + s.Key() }

// segBits splits the ring into 2^segBits ranges for the full target scan:
// each is one paged query, small enough to restart, big enough that the
// per-query cost vanishes.
const segBits = 8

type round struct {
	r      *Reconciler
	scope  Scope
	tables []*transform.Table
	src    *source
	tgts   []*target
	st     roundState
	exp    []*tree
	act    []*tree
	rep    *Report

	segmentCounters
	mu        sync.Mutex // guards st's target part, act and segDone
	segDone   map[int]bool
	docs      atomic.Int64
	srcRows   []atomic.Int64
	tgtRows   []atomic.Int64
	docLim    *rate.Limiter
	rowLim    *rate.Limiter
	docsTotal int64
	started   time.Time
	outcomes  []outcome // of the last recheckAll, by candidate
	cands     atomic.Int64
	candsDone atomic.Int64
	phase     atomic.Value
	// inSlice filters the source documents; nil admits every one.
	inSlice func(namespace string, idKey []byte) bool
	// fence is RoundOptions.Fence; fenced is its refusal, after which the
	// round writes nothing more.
	fence  func(ctx context.Context) error
	fenced atomic.Pointer[error]
}

// mayWrite asks the round's fence whether it may still write shared state.
func (rd *round) mayWrite(ctx context.Context) error {
	if p := rd.fenced.Load(); p != nil {
		return *p
	}
	if rd.fence == nil {
		return nil
	}
	if err := rd.fence(ctx); err != nil {
		err = fmt.Errorf("reconcile: round %s may not write its results: %w", rd.rep.ID, err)
		rd.fenced.Store(&err)
		return err
	}
	return nil
}

// apply is the rows doc should have in the target: none when the current
// slice leaves it out, as the sink does.
func (rd *round) apply(doc bson.Raw) ([]transform.Row, error) {
	if rd.inSlice != nil {
		if id, err := doc.LookupErr("_id"); err == nil && !rd.inSlice(rd.scope.Namespace, envelope.Key(id)) {
			return nil, nil
		}
	}
	return rd.r.d.Mapping.Apply(rd.scope.Namespace, doc)
}

func limiter(perSecond float64) *rate.Limiter {
	if perSecond <= 0 {
		return nil
	}
	// A tenth of a second of burst: enough for the 256-row steps, small
	// enough that the cap holds over short windows too.
	return rate.NewLimiter(rate.Limit(perSecond), max(256, int(perSecond/10)))
}

func wait(ctx context.Context, l *rate.Limiter, n int) error {
	if l == nil {
		return nil
	}
	return l.WaitN(ctx, n)
}

// Round runs one round over scope and returns its report, which is also
// written to the report folder, summarised in checkpoints and exported as
// metrics. A round cut short by the time box or ctx returns an incomplete
// report (and ctx's error when ctx ended) and is resumed by the next round of
// the same scope.
func (r *Reconciler) Round(ctx context.Context, scope Scope, o RoundOptions) (*Report, error) {
	if !r.run.TryLock() {
		return nil, ErrBusy
	}
	defer r.run.Unlock()
	tables, err := r.tables(scope)
	if err != nil {
		return nil, err
	}
	src, err := newSource(r.d.Mongo, scope.Namespace)
	if err != nil {
		return nil, err
	}
	rd := &round{r: r, scope: scope, tables: tables, src: src, started: time.Now(), fence: o.Fence,
		srcRows: make([]atomic.Int64, len(tables)), tgtRows: make([]atomic.Int64, len(tables)),
		docLim: limiter(r.cfg.DocsPerSecond), rowLim: limiter(r.cfg.RowsPerSecond), segDone: map[int]bool{}}
	rd.phase.Store("scan")
	for _, t := range tables {
		rd.tgts = append(rd.tgts, newTarget(r.d.Cassandra, t))
	}
	var sliceDesc string
	if r.d.Slice != nil {
		if rd.inSlice, sliceDesc, err = r.d.Slice(ctx); err != nil {
			return nil, fmt.Errorf("reconcile: read the rollout slice: %w", err)
		}
	}
	now := time.Now().UTC()
	rd.rep = &Report{SchemaVersion: SchemaVersion, ID: newID(now), Scope: scope, SpecVersion: r.d.Mapping.Version(),
		SpecChecksum: r.d.Mapping.Checksum(), Actor: o.Actor, Reason: o.Reason, Start: now, Slice: sliceDesc,
		Counts: map[string]int64{ClassMissing: 0, ClassExtra: 0, ClassDifferent: 0, ClassStale: 0, "in_flight": 0, "resolved": 0},
		Sample: []KeySample{}}
	for _, t := range tables {
		rd.rep.Tables = append(rd.rep.Tables, TableReport{Table: t.QualifiedName()})
	}
	// A tree round holds its scope's running record, so that a second
	// round of the scope, here or on another daemon, is refused.
	var held *lease
	var prior *runningRound
	if len(scope.IDs) == 0 {
		if held, prior, err = rd.takeScope(ctx, o.Actor); err != nil {
			return nil, err
		}
	}
	if v, err := src.now(ctx); err == nil {
		rd.rep.SourceVersionStart = v.String()
	}
	if rd.rep.LagStart, err = r.d.Lag.Positions(ctx, scope.Namespace); err != nil {
		r.log.Warn("cannot read the pipeline's positions", "err", err)
	}
	rd.rep.SinkStart = sinkOffsets(rd.rep.LagStart)
	r.setProgress(rd.progress())
	defer r.setProgress(nil)
	stopTicker := rd.tick(ctx, o.OnProgress)

	tctx, cancel := context.WithTimeout(ctx, r.cfg.TimeBox)
	defer cancel()
	if held != nil {
		// Another daemon took the scope over (this one stalled past its
		// lease): stop, it finishes the round.
		go func() {
			select {
			case <-held.Lost():
				cancel()
			case <-tctx.Done():
			}
		}()
	}
	var runErr error
	var keep *manifest
	switch {
	case len(scope.IDs) > 0:
		runErr = rd.byIDs(tctx)
	case r.cfg.Segments > 1:
		keep, runErr = rd.bySegments(tctx, o.Fresh, held, prior)
	default:
		if prior != nil && prior.Manifest != nil {
			if err := deleteSegments(ctx, r.d.Store, prior.Manifest.ID); err != nil {
				r.log.Warn("cannot delete an abandoned round's segments", "round", prior.Manifest.ID, "err", err)
			}
		}
		runErr = rd.byTree(tctx, o.Fresh)
	}
	stopTicker()
	rep, err := rd.finish(ctx, runErr)
	// The record goes first: Workers take segments only of a running round,
	// so none takes one of these while they are deleted.
	rd.releaseScope(context.WithoutCancel(ctx), held, keep)
	if keep == nil && rd.segsTotal.Load() > 0 {
		if derr := deleteSegments(context.WithoutCancel(ctx), r.d.Store, rd.st.ID); derr != nil {
			r.log.Warn("cannot delete the round's segments", "round", rd.st.ID, "err", derr)
		}
	}
	return rep, err
}

func (r *Reconciler) setProgress(p *Progress) {
	r.mu.Lock()
	r.progress = p
	r.mu.Unlock()
}

func (rd *round) progress() *Progress {
	p := &Progress{ID: rd.rep.ID, Scope: rd.scope.Key(), Phase: rd.phase.Load().(string), Started: rd.started,
		DocsDone: rd.docs.Load(), DocsTotal: rd.docsTotal, Candidates: rd.cands.Load(), CandidatesDone: rd.candsDone.Load()}
	for i := range rd.tables {
		p.RowsDone += rd.srcRows[i].Load() + rd.tgtRows[i].Load()
	}
	el := time.Since(rd.started).Seconds()
	if el > 0 {
		p.RowsPerSecond = float64(p.RowsDone) / el
	}
	rd.mu.Lock()
	segs, srcDone := len(rd.segDone), rd.st.SourceDone
	rd.mu.Unlock()
	srcFrac := 1.0
	if rd.docsTotal > 0 && !srcDone {
		srcFrac = min(1, float64(p.DocsDone)/float64(rd.docsTotal))
	}
	tgtFrac := float64(segs) / float64(int(1)<<segBits)
	if n := rd.segsTotal.Load(); n > 0 {
		// A segmented round: both sides advance segment by segment.
		srcFrac = float64(rd.segsDone.Load()) / float64(n)
		tgtFrac = srcFrac
	}
	switch p.Phase {
	case "scan":
		p.Percent = 100 * (srcFrac + tgtFrac) / 2 * 0.9
	case "narrow":
		p.Percent = 90
	case "recheck":
		p.Percent = 95
		if p.Candidates > 0 {
			p.Percent += 5 * float64(p.CandidatesDone) / float64(p.Candidates)
		}
	}
	if p.Percent > 0 && p.Percent < 100 {
		p.ETASeconds = el * (100 - p.Percent) / p.Percent
	}
	return p
}

func (rd *round) tick(ctx context.Context, fn func(Progress)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-done:
				return
			case <-t.C:
			}
			p := rd.progress()
			rd.r.setProgress(p)
			if fn != nil {
				fn(*p)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// byTree is the full round: hash both sides into trees, narrow the differing
// leaves to keys, re-check the keys.
func (rd *round) byTree(ctx context.Context, fresh bool) error {
	r := rd.r
	key := progressKey(rd.scope)
	st, ok, err := checkpoints.GetJSON[roundState](ctx, r.d.Store, key)
	if err != nil {
		return err
	}
	if ok && !fresh && st.SpecChecksum == r.d.Mapping.Checksum() && len(st.Exp) == len(rd.tables) {
		rd.st = st
		rd.rep.ResumedFrom = st.ID
		for i := range rd.tables {
			e, a := &tree{}, &tree{}
			if e.UnmarshalBinary(st.Exp[i]) != nil || a.UnmarshalBinary(st.Act[i]) != nil {
				ok = false
				break
			}
			rd.exp, rd.act = append(rd.exp, e), append(rd.act, a)
			rd.srcRows[i].Store(st.SrcRows[i])
			rd.tgtRows[i].Store(st.TgtRows[i])
		}
		for _, s := range st.SegDone {
			rd.segDone[s] = true
		}
		rd.docs.Store(st.Docs)
		r.log.Info("resuming round", "scope", rd.scope.Key(), "from", st.ID, "docs", st.Docs, "segments", len(st.SegDone))
	}
	if !ok || fresh || rd.rep.ResumedFrom == "" {
		rd.rep.ResumedFrom = ""
		rd.exp, rd.act = nil, nil
		rd.segDone = map[int]bool{}
		n, _ := rd.src.coll.EstimatedDocumentCount(ctx)
		bits := r.cfg.BucketBits
		if bits == 0 {
			bits = bucketBitsFor(n)
		}
		rd.st = roundState{ID: rd.rep.ID, SpecChecksum: r.d.Mapping.Checksum(), Bits: max(bits, segBits), Start: rd.rep.Start,
			SrcRows: make([]int64, len(rd.tables)), TgtRows: make([]int64, len(rd.tables))}
		for range rd.tables {
			rd.exp, rd.act = append(rd.exp, newTree(rd.st.Bits)), append(rd.act, newTree(rd.st.Bits))
		}
		for i := range rd.tables {
			rd.srcRows[i].Store(0)
			rd.tgtRows[i].Store(0)
		}
	}
	rd.docsTotal, _ = rd.src.coll.EstimatedDocumentCount(ctx)
	rd.rep.BucketBits = rd.st.Bits

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		start := time.Now()
		defer func() { rd.rep.SourceSeconds = time.Since(start).Seconds() }()
		return rd.scanSource(gctx)
	})
	g.Go(func() error {
		start := time.Now()
		defer func() { rd.rep.TargetSeconds = time.Since(start).Seconds() }()
		return rd.scanTarget(gctx)
	})
	err = g.Wait()
	if serr := rd.save(context.WithoutCancel(ctx)); serr != nil {
		r.log.Warn("cannot save round progress", "err", serr)
	}
	if err != nil {
		return err
	}

	return rd.compare(ctx)
}

// compare is the end of a tree round, once both trees are whole: find the
// differing leaves, narrow them to keys, re-check the keys.
func (rd *round) compare(ctx context.Context) error {
	rd.phase.Store("narrow")
	var mism [][]uint32
	for i := range rd.tables {
		leaves, _, err := diff(rd.exp[i], rd.act[i])
		if err != nil {
			return err
		}
		mism = append(mism, leaves)
		rd.rep.Tables[i].BucketMismatches = int64(len(leaves))
		rd.rep.Tables[i].RootSource, rd.rep.Tables[i].RootTarget = rd.exp[i].root(), rd.act[i].root()
	}
	cands, err := rd.narrow(ctx, mism)
	if err != nil {
		return err
	}
	rd.phase.Store("recheck")
	return rd.recheckAll(ctx, cands, true)
}

// save writes the resumable progress.
func (rd *round) save(ctx context.Context) error {
	if err := rd.mayWrite(ctx); err != nil {
		return err
	}
	rd.mu.Lock()
	st := rd.st
	st.Exp, st.Act, st.SegDone = nil, nil, nil
	for s := range rd.segDone {
		st.SegDone = append(st.SegDone, s)
	}
	sort.Ints(st.SegDone)
	for i := range rd.tables {
		e, _ := rd.exp[i].MarshalBinary()
		a, _ := rd.act[i].MarshalBinary()
		st.Exp, st.Act = append(st.Exp, e), append(st.Act, a)
		st.TgtRows[i] = rd.tgtRows[i].Load()
	}
	rd.mu.Unlock()
	return checkpoints.PutJSON(ctx, rd.r.d.Store, progressKey(rd.scope), st)
}

// scanSource hashes every document's expected rows into exp, in _id order,
// saving progress every few seconds. exp and the source part of st change
// only here, so a save between documents is consistent.
func (rd *round) scanSource(ctx context.Context) error {
	if rd.st.SourceDone {
		return nil
	}
	var after bson.RawValue
	if rd.st.LastIDType != 0 {
		after = bson.RawValue{Type: bsontype.Type(rd.st.LastIDType), Value: rd.st.LastID}
	}
	h := rd.newRowHasher()
	docs := rd.docThrottle(ctx)
	lastSave := time.Now()
	err := readAhead(ctx, rd.src, nil, after, func(doc bson.Raw) error {
		if err := docs(); err != nil {
			return err
		}
		if err := rd.hashExpected(h, doc); err != nil {
			return err
		}
		rd.markHashed(doc)
		if time.Since(lastSave) > 10*time.Second {
			lastSave = time.Now()
			if err := rd.save(ctx); err != nil {
				rd.r.log.Warn("cannot save round progress", "err", err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	rd.mu.Lock()
	rd.st.SourceDone = true
	rd.mu.Unlock()
	return nil
}

// hashExpected adds doc's expected rows to exp. A document the transform
// rejects is counted (the sink dead-letters it) and has no rows.
func (rd *round) hashExpected(h *rowHasher, doc bson.Raw) error {
	return h.hash(doc, func(i int, tok int64, sum uint64) {
		rd.exp[i].add(tok, sum)
		rd.srcRows[i].Add(1)
	}, func() {
		rd.mu.Lock()
		rd.st.Errors++
		rd.mu.Unlock()
	})
}

// markHashed records doc as the last one whose rows are in exp: the point a
// resumed round scans on from.
func (rd *round) markHashed(doc bson.Raw) {
	id := doc.Lookup("_id")
	rd.mu.Lock()
	rd.st.LastIDType, rd.st.LastID = byte(id.Type), append(rd.st.LastID[:0], id.Value...)
	rd.st.Docs = rd.docs.Add(1)
	for i := range rd.tables {
		rd.st.SrcRows[i] = rd.srcRows[i].Load()
	}
	rd.mu.Unlock()
}

// docThrottle returns a function to call once per document: it waits for
// docs_per_second in steps of 256 documents.
func (rd *round) docThrottle(ctx context.Context) func() error {
	pending := 0
	return func() error {
		if pending++; pending == 256 {
			pending = 0
			return wait(ctx, rd.docLim, 256)
		}
		return nil
	}
}

// rowHasher maps documents to the (table, token, row hash) of each expected
// row inside the round's scope; its buffers are reused from row to row, so
// one goroutine owns it.
type rowHasher struct {
	rd      *round
	tidx    map[*transform.Table]int
	buf, pk []byte
}

func (rd *round) newRowHasher() *rowHasher {
	h := &rowHasher{rd: rd, tidx: map[*transform.Table]int{}}
	for i, t := range rd.tables {
		h.tidx[t] = i
	}
	return h
}

// hash calls row for each of doc's rows whose token is in scope, or
// rejected once when the transform cannot convert doc. Other transform
// errors end the scan.
func (h *rowHasher) hash(doc bson.Raw, row func(table int, tok int64, sum uint64), rejected func()) error {
	rows, err := h.rd.apply(doc)
	if err != nil {
		var ce *transform.ConvertError
		if !errors.As(err, &ce) {
			return err
		}
		if rejected != nil {
			rejected()
		}
	}
	for _, r := range rows {
		i, ok := h.tidx[r.Table]
		if !ok {
			continue
		}
		if h.pk, err = partitionKeyBytes(h.pk[:0], r.Table, r.Values); err != nil {
			return err
		}
		tok := tokenOf(h.pk)
		if !h.rd.scope.inRange(tok) {
			continue
		}
		if h.buf, err = r.Table.AppendCanonical(h.buf[:0], r.Values); err != nil {
			return err
		}
		row(i, tok, xxhash.Sum64(h.buf))
	}
	return nil
}

// readAhead is src.scan with the cursor read on its own goroutine and
// batches of copied documents handed over, so that the driver's decoding
// and fn (the transform, hashing) overlap. fn runs on one goroutine, in
// _id order.
func readAhead(ctx context.Context, src *source, filter bson.D, after bson.RawValue, fn func(doc bson.Raw) error) error {
	batches := make(chan []bson.Raw, 4)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(batches)
		var b []bson.Raw
		var arena []byte
		flush := func() error {
			select {
			case batches <- b:
			case <-gctx.Done():
				return gctx.Err()
			}
			b, arena = nil, nil
			return nil
		}
		err := src.scan(gctx, filter, after, func(doc bson.Raw) error {
			// Documents are copied into shared arenas: one allocation per
			// 256 KiB rather than one per document.
			if cap(arena)-len(arena) < len(doc) {
				arena = make([]byte, 0, max(256<<10, len(doc)))
			}
			at := len(arena)
			arena = append(arena, doc...)
			b = append(b, arena[at:len(arena):len(arena)])
			if len(b) == 512 {
				return flush()
			}
			return nil
		})
		if err == nil && len(b) > 0 {
			err = flush()
		}
		return err
	})
	g.Go(func() error {
		for b := range batches {
			for _, doc := range b {
				if err := fn(doc); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return g.Wait()
}

// scanTarget reads every table in 2^segBits token ranges, Concurrency at a
// time. A range's hashes go into act only once the range is read whole, so
// saved progress never holds half a range.
func (rd *round) scanTarget(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(rd.r.cfg.Concurrency)
	for seg := range 1 << segBits {
		rd.mu.Lock()
		done := rd.segDone[seg]
		rd.mu.Unlock()
		if done {
			continue
		}
		g.Go(func() error {
			local, counts, err := rd.hashTargetRange(gctx, seg)
			if err != nil {
				return err
			}
			rd.mu.Lock()
			defer rd.mu.Unlock()
			for i := range local {
				rd.act[i].merge(local[i])
				rd.tgtRows[i].Add(counts[i])
			}
			rd.segDone[seg] = true
			return nil
		})
	}
	return g.Wait()
}

// hashTargetRange reads range seg of the 2^segBits (within the scope) of
// every table into a partial tree per table; nil trees when the scope's
// token range leaves none of it.
func (rd *round) hashTargetRange(ctx context.Context, seg int) ([]*tree, []int64, error) {
	lo, hi := rd.scope.tokenRange()
	first, last := bucketFirst(uint32(seg), segBits), bucketLast(uint32(seg), segBits)
	if last < lo || first > hi {
		return nil, nil, nil
	}
	local := make([]*tree, len(rd.tables))
	counts := make([]int64, len(rd.tables))
	for i, tg := range rd.tgts {
		local[i] = newTree(rd.st.Bits)
		var buf []byte
		pending := 0
		err := tg.scanRange(ctx, max(first, lo), min(last, hi), func(tok int64, values []any) error {
			if pending++; pending == 256 {
				if err := wait(ctx, rd.rowLim, pending); err != nil {
					return err
				}
				pending = 0
			}
			var err error
			if buf, err = tg.t.AppendCanonical(buf[:0], values); err != nil {
				return err
			}
			b := bucketOf(tok, rd.st.Bits)
			local[i].leaves[b].Sum += xxhash.Sum64(buf)
			local[i].leaves[b].N++
			counts[i]++
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
	}
	return local, counts, nil
}

// candidate is a key whose two sides differed while narrowing.
type candidate struct {
	table int
	key   []byte
	// id is the source document's envelope key; nil when no document of the
	// narrowing scan mapped to the key (an extra row, or one whose document
	// changed its key).
	id []byte
}

type srcEntry struct {
	h  uint64
	id []byte
}

// maxNarrowRows bounds the rows (both sides) one narrowing pass holds.
const maxNarrowRows = 200_000

// leafRef is one differing leaf of one table.
type leafRef struct {
	table int
	leaf  uint32
}

// narrow turns differing leaves into candidate keys: the source is scanned
// again keeping only rows in those leaves, and the target leaves are read
// whole. Leaves are taken in chunks so that memory stays bounded by
// maxNarrowRows rather than by how many leaves differ.
func (rd *round) narrow(ctx context.Context, mism [][]uint32) ([]candidate, error) {
	var cands []candidate
	for _, chunk := range rd.narrowChunks(mism) {
		src, err := rd.sourceRowsIn(ctx, chunk)
		if err != nil {
			return nil, err
		}
		tgt, err := rd.targetRowsIn(ctx, chunk)
		if err != nil {
			return nil, err
		}
		cands = append(cands, candidatesOf(src, tgt)...)
		if len(cands) > rd.r.cfg.MaxCandidates {
			cands = cands[:rd.r.cfg.MaxCandidates]
			rd.rep.Truncated = true
			break
		}
	}
	return cands, nil
}

// narrowChunks groups the differing leaves into passes of about
// maxNarrowRows rows (at least one leaf each), by the trees' counts.
func (rd *round) narrowChunks(mism [][]uint32) [][]leafRef {
	var chunks [][]leafRef
	var chunk []leafRef
	rows := 0
	for i, ls := range mism {
		for _, l := range ls {
			if len(chunk) > 0 && rows >= maxNarrowRows {
				chunks, chunk, rows = append(chunks, chunk), nil, 0
			}
			rows += int(rd.exp[i].leaves[l].N + rd.act[i].leaves[l].N)
			chunk = append(chunk, leafRef{i, l})
		}
	}
	if len(chunk) > 0 {
		chunks = append(chunks, chunk)
	}
	return chunks
}

// sourceRowsIn scans the source again and keeps, per table, the hash and
// document of every expected row in the chunk's leaves, by row key.
func (rd *round) sourceRowsIn(ctx context.Context, chunk []leafRef) ([]map[string]srcEntry, error) {
	want := make([]map[uint32]bool, len(rd.tables))
	src := make([]map[string]srcEntry, len(rd.tables))
	for i := range rd.tables {
		want[i], src[i] = map[uint32]bool{}, map[string]srcEntry{}
	}
	for _, l := range chunk {
		want[l.table][l.leaf] = true
	}
	tidx := map[*transform.Table]int{}
	for i, t := range rd.tables {
		tidx[t] = i
	}
	var buf, pk []byte
	err := rd.src.scan(ctx, nil, bson.RawValue{}, func(doc bson.Raw) error {
		rows, _ := rd.apply(doc)
		for _, row := range rows {
			i, ok := tidx[row.Table]
			if !ok {
				continue
			}
			var err error
			if pk, err = partitionKeyBytes(pk[:0], row.Table, row.Values); err != nil {
				return err
			}
			tok := tokenOf(pk)
			if !want[i][bucketOf(tok, rd.st.Bits)] || !rd.scope.inRange(tok) {
				continue
			}
			if buf, err = row.Table.AppendCanonical(buf[:0], row.Values); err != nil {
				return err
			}
			src[i][string(row.Key)] = srcEntry{h: xxhash.Sum64(buf), id: envelope.Key(doc.Lookup("_id"))}
		}
		return nil
	})
	return src, err
}

// targetRowsIn reads the chunk's leaves from Cassandra, Concurrency at a
// time, and returns per table the hash of every row by row key.
func (rd *round) targetRowsIn(ctx context.Context, chunk []leafRef) ([]map[string]uint64, error) {
	tgt := make([]map[string]uint64, len(rd.tables))
	for i := range rd.tables {
		tgt[i] = map[string]uint64{}
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(rd.r.cfg.Concurrency)
	lo, hi := rd.scope.tokenRange()
	for _, l := range chunk {
		tg := rd.tgts[l.table]
		g.Go(func() error {
			var buf []byte
			found := map[string]uint64{}
			err := tg.scanRange(gctx, max(lo, bucketFirst(l.leaf, rd.st.Bits)), min(hi, bucketLast(l.leaf, rd.st.Bits)), func(_ int64, values []any) error {
				k, err := tg.t.EncodeKey(tg.t.KeyValues(values))
				if err != nil {
					return err
				}
				if buf, err = tg.t.AppendCanonical(buf[:0], values); err != nil {
					return err
				}
				found[string(k)] = xxhash.Sum64(buf)
				return nil
			})
			mu.Lock()
			for k, h := range found {
				tgt[l.table][k] = h
			}
			mu.Unlock()
			return err
		})
	}
	return tgt, g.Wait()
}

// candidatesOf compares one chunk's rows: per table, every source key whose
// target row is missing or hashes differently, then every target key no
// source row has, each in key order so that reports are reproducible.
func candidatesOf(src []map[string]srcEntry, tgt []map[string]uint64) []candidate {
	var cands []candidate
	for i := range src {
		for _, k := range sortedKeys(src[i]) {
			if h, ok := tgt[i][k]; !ok || h != src[i][k].h {
				cands = append(cands, candidate{table: i, key: []byte(k), id: src[i][k].id})
			}
		}
		for _, k := range sortedKeys(tgt[i]) {
			if _, ok := src[i][k]; !ok {
				cands = append(cands, candidate{table: i, key: []byte(k)})
			}
		}
	}
	return cands
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// byIDs checks the listed documents' rows directly, without a tree.
func (rd *round) byIDs(ctx context.Context) error {
	ids, err := parseIDs(rd.scope.IDs)
	if err != nil {
		return err
	}
	docs, err := rd.src.find(ctx, ids)
	if err != nil {
		return err
	}
	rd.docs.Store(int64(len(docs)))
	rd.phase.Store("recheck")
	return rd.recheckAll(ctx, candidatesForIDs(rd.r.d.Mapping, rd.scope.Namespace, rd.tables, ids, docs), false)
}

// candidatesForIDs is every row the documents map to, plus, for tables keyed
// by _id alone, the key of each _id (a row there without a document is extra).
func candidatesForIDs(m *transform.Mapping, ns string, tables []*transform.Table, ids []bson.RawValue, docs map[string]bson.Raw) []candidate {
	var cands []candidate
	for _, id := range ids {
		idKey := envelope.Key(id)
		var rows []transform.Row
		if doc, ok := docs[string(idKey)]; ok {
			rows, _ = m.Apply(ns, doc)
		}
		for i, t := range tables {
			var have []byte
			for _, row := range rows {
				if row.Table == t {
					have = row.Key
					cands = append(cands, candidate{table: i, key: row.Key, id: idKey})
				}
			}
			if t.KeyFromIDOnly {
				kv, err := t.KeyForID(id)
				if err != nil {
					continue
				}
				if k, err := t.EncodeKey(kv); err == nil && !bytes.Equal(k, have) {
					cands = append(cands, candidate{table: i, key: k, id: idKey})
				}
			}
		}
	}
	return cands
}

// finish completes the report and publishes it.
func (rd *round) finish(ctx context.Context, runErr error) (*Report, error) {
	r, rep := rd.r, rd.rep
	pctx := context.WithoutCancel(ctx)
	rep.End = time.Now().UTC()
	rep.DurationSeconds = rep.End.Sub(rep.Start).Seconds()
	rep.DocsScanned = rd.docs.Load()
	rep.SourceErrors = rd.st.Errors
	for i := range rd.tables {
		if rep.Tables[i].RowsSource == 0 && rep.Tables[i].RowsTarget == 0 {
			rep.Tables[i].RowsSource, rep.Tables[i].RowsTarget = rd.srcRows[i].Load(), rd.tgtRows[i].Load()
		}
		rep.RowsCompared += rep.Tables[i].RowsSource + rep.Tables[i].RowsTarget
	}
	if el := time.Since(rd.started).Seconds(); el > 0 {
		rep.RowsPerSecond = float64(rep.RowsCompared) / el
		rep.DocsPerSecond = float64(rep.DocsScanned) / el
	}
	if v, err := rd.src.now(pctx); err == nil {
		rep.SourceVersionEnd = v.String()
	}
	rep.LagEnd, _ = r.d.Lag.Positions(pctx, rd.scope.Namespace)
	rep.SinkEnd = sinkOffsets(rep.LagEnd)
	// The round judged the slice it started with (rd.inSlice is that
	// snapshot); a plan that moved on meanwhile is recorded, not followed.
	if r.d.Slice != nil {
		if _, desc, err := r.d.Slice(pctx); err != nil {
			r.log.Warn("cannot read the rollout slice at the end of the round", "err", err)
		} else {
			rep.SliceEnd, rep.SliceChanged = desc, desc != rep.Slice
		}
	}
	divergent := rep.Counts[ClassMissing] + rep.Counts[ClassExtra] + rep.Counts[ClassDifferent] + rep.Counts[ClassStale]
	switch {
	case runErr != nil:
		rep.Status = "incomplete"
		rep.Error = runErr.Error()
	case divergent > 0:
		rep.Status = "divergent"
	default:
		rep.Status = "clean"
	}
	if err := rd.mayWrite(pctx); err != nil {
		// The report file is this daemon's own; the shared state is not.
		rep.Status, rep.Error = "incomplete", errors.Join(runErr, err).Error()
		if werr := r.reports.Write(rep); werr != nil {
			r.log.Warn("cannot write the report", "err", werr)
		}
		return rep, err
	}
	if runErr == nil && len(rd.scope.IDs) == 0 {
		if err := r.d.Store.Delete(pctx, progressKey(rd.scope)); err != nil {
			r.log.Warn("cannot clear round progress", "err", err)
		}
	}
	if err := r.reports.Write(rep); err != nil {
		return rep, err
	}
	// Retention: without it a daemon running rounds every few minutes fills
	// its report volume. A failure to remove old files does not fail the round.
	if err := r.reports.Prune(r.cfg.KeepReports); err != nil {
		r.log.Warn("cannot remove old reports", "keep_reports", r.cfg.KeepReports, "err", err)
	}
	sum := checkpoints.RoundSummary{ID: rep.ID, Scope: rd.scope.Key(), Start: rep.Start, End: rep.End,
		Clean: rep.Status == "clean", RowsCompared: rep.RowsCompared, Divergent: divergent, InFlight: rep.Counts["in_flight"],
		ByClass: map[string]int64{}}
	for _, c := range []string{ClassMissing, ClassExtra, ClassDifferent, ClassStale} {
		sum.ByClass[c] = rep.Counts[c]
	}
	sum.IDs, sum.IDsComplete = divergentIDs(rep)
	sum.Slice, sum.SliceChanged, sum.SinkStart, sum.SinkEnd = rep.Slice, rep.SliceChanged, rep.SinkStart, rep.SinkEnd
	if err := checkpoints.PutJSON(pctx, r.d.Store, checkpoints.KeyReconcileLatest+rd.scope.Key(), sum); err != nil {
		return rep, fmt.Errorf("reconcile: record round summary: %w", err)
	}
	if rep.Status == "clean" && rep.Counts["in_flight"] == 0 && rd.scope.Table == "" && rd.scope.MinToken == nil && rd.scope.MaxToken == nil && len(rd.scope.IDs) == 0 {
		// Every record below the start offsets was applied before the scan
		// read the target, and the scan found nothing divergent or undecided: replaying
		// from these offsets rebuilds a verified state.
		for _, p := range rep.LagStart {
			// A partition the sink never committed is verified from its start.
			m := checkpoints.Mark{Topic: p.Topic, Partition: p.Partition, Offset: max(p.Committed, 0), VersionT: p.AppliedT,
				VersionI: p.AppliedI, Wall: rep.Start, Name: rep.ID}
			key := checkpoints.PartitionKey(checkpoints.PrefixVerified, p.Topic, p.Partition)
			if err := checkpoints.PutJSON(pctx, r.d.Store, key, m); err != nil {
				return rep, fmt.Errorf("reconcile: record verified mark: %w", err)
			}
			// Named copies let `tidemark rewind --to-mark ID` reach older
			// verified rounds, not only the newest.
			if err := keepNamedMark(pctx, r.d.Store, key, m, r.cfg.KeepVerifiedMarks); err != nil {
				return rep, fmt.Errorf("reconcile: record verified mark: %w", err)
			}
		}
	}
	r.met.observe(rep)
	r.log.Info("round finished", "id", rep.ID, "scope", rd.scope.Key(), "status", rep.Status, "rows", rep.RowsCompared,
		"divergent", divergent, "in_flight", rep.Counts["in_flight"], "seconds", rep.DurationSeconds)
	if runErr != nil && ctx.Err() != nil {
		return rep, ctx.Err()
	}
	return rep, nil
}

// keepNamedMark stores m under key/<name> as well and drops the oldest named
// copies beyond keep (reconcile.keep_verified_marks): one is added per clean
// round, so without the bound the store, which every daemon holds in memory,
// would grow with every round.
func keepNamedMark(ctx context.Context, st checkpoints.Store, key string, m checkpoints.Mark, keep int) error {
	if err := checkpoints.PutJSON(ctx, st, key+"/"+m.Name, m); err != nil {
		return err
	}
	all, err := st.List(ctx, key+"/")
	if err != nil || len(all) <= keep {
		return err
	}
	type named struct {
		key  string
		wall time.Time
	}
	var ms []named
	for k, b := range all {
		var x checkpoints.Mark
		if json.Unmarshal(b, &x) == nil {
			ms = append(ms, named{k, x.Wall})
		}
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].wall.Before(ms[j].wall) })
	for _, x := range ms[:max(0, len(ms)-keep)] {
		if err := st.Delete(ctx, x.key); err != nil {
			return err
		}
	}
	return nil
}

// divergentIDs lists the documents behind a finished round's divergent rows
// once each, and whether that is all of them (see RoundSummary.IDs).
func divergentIDs(rep *Report) ([][]byte, bool) {
	if rep.Status == "incomplete" || rep.Truncated {
		return nil, false
	}
	var ids [][]byte
	seen := map[string]bool{}
	for _, k := range rep.Divergent {
		if k.ID == nil {
			return nil, false // an extra row that no document maps to
		}
		if !seen[string(k.ID)] {
			if len(ids) == checkpoints.SummaryIDsMax {
				return nil, false
			}
			seen[string(k.ID)] = true
			ids = append(ids, k.ID)
		}
	}
	return ids, true
}
