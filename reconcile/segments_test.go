package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/internal/testbed"
)

func TestObserverCallsALeaseStaleOnlyAfterWatchingItUnchanged(t *testing.T) {
	now := time.Unix(1000, 0)
	o := newObserver()
	o.now = func() time.Time { return now }
	const d = 10 * time.Second
	steps := []struct {
		advance time.Duration
		version int64
		stale   bool
		changed bool
	}{
		{0, 5, false, false},               // first sight: never stale
		{9 * time.Second, 5, false, false}, // not yet a lease
		{time.Second, 5, true, false},      // a whole lease unchanged
		{0, 6, false, true},                // renewed: alive, the watch restarts
		{9 * time.Second, 6, false, false}, // nearly a lease again
		{2 * time.Second, 6, true, false},  // stale again
		{time.Hour, 7, false, true},        // a renewal after long: fresh again
		{d - time.Nanosecond, 7, false, false},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		if got := o.changed("k", s.version); got != s.changed {
			t.Errorf("step %d: changed %v, want %v", i, got, s.changed)
		}
		if got := o.stale("k", s.version, d); got != s.stale {
			t.Errorf("step %d: stale %v, want %v", i, got, s.stale)
		}
	}
}

func TestLeaseRenewsUntilAnotherWriterTakesIt(t *testing.T) {
	ctx := context.Background()
	st := checkpointstest.New()
	ver, err := putVersioned(ctx, st, "k", 0, segmentLease{Owner: "a"})
	if err != nil {
		t.Fatal(err)
	}
	l := hold(ctx, st, "k", ver, 5*time.Millisecond, func(beat int64, now time.Time) any {
		return segmentLease{Owner: "a", Beat: beat, Renewed: now}
	})
	waitFor(t, func() bool {
		cur, _, _, _ := getVersioned[segmentLease](ctx, st, "k")
		return cur.Beat >= 3
	})
	// Another worker takes the record: the holder's next renewal fails.
	_, v, _ := st.GetVersion(ctx, "k")
	if _, err := putVersioned(ctx, st, "k", v, segmentLease{Owner: "b", Attempt: 2}); err != nil {
		// The holder renewed in between; take the newer version.
		_, v, _ = st.GetVersion(ctx, "k")
		if _, err := putVersioned(ctx, st, "k", v, segmentLease{Owner: "b", Attempt: 2}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-l.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("the holder did not notice that its lease was taken")
	}
	if err := l.end(ctx, segmentLease{Owner: "a", Done: true}); !errors.Is(err, checkpoints.ErrConflict) {
		t.Fatalf("the former holder's last write: %v, want a conflict", err)
	}
	cur, _, _, _ := getVersioned[segmentLease](ctx, st, "k")
	if cur.Owner != "b" || cur.Done {
		t.Fatalf("record %+v: the former holder overwrote the new one", cur)
	}
}

func TestSegmentSpecsCoverEveryIDAndRangeOnce(t *testing.T) {
	cut := func(i int) *idBound { return &idBound{Type: 0x10, Value: []byte{byte(i), 0, 0, 0}} }
	for _, tc := range []struct{ n, cuts int }{{1, 0}, {2, 1}, {3, 2}, {3, 0}, {5, 2}, {7, 6}, {256, 255}, {256, 3}} {
		t.Run(fmt.Sprintf("%d segments %d cuts", tc.n, tc.cuts), func(t *testing.T) {
			var cuts []*idBound
			for i := range tc.cuts {
				cuts = append(cuts, cut(i))
			}
			specs := segmentSpecs(cuts, tc.n)
			next := 0
			var prevThrough *idBound
			sources := 0
			for k, s := range specs {
				if s.First != next || s.End <= s.First {
					t.Fatalf("segment %d: ranges [%d,%d) after %d", k, s.First, s.End, next)
				}
				next = s.End
				if s.NoSource {
					continue
				}
				sources++
				// Source ranges chain: each starts after the previous end.
				if s.After != prevThrough {
					t.Fatalf("segment %d starts after %v, the previous ended at %v", k, s.After, prevThrough)
				}
				prevThrough = s.Through
			}
			if next != 1<<segBits {
				t.Fatalf("target ranges end at %d, want %d", next, 1<<segBits)
			}
			if prevThrough != nil || sources != tc.cuts+1 {
				t.Fatalf("%d source ranges, the last ending at %v; want %d, open-ended", sources, prevThrough, tc.cuts+1)
			}
		})
	}
}

func TestSegmentResultsSurviveTheStoreInParts(t *testing.T) {
	ctx := context.Background()
	st := checkpointstest.New()
	// 2^16 leaves: 786 KB per tree before compression, random sums that
	// do not compress: more than one part.
	res := &segmentResult{Docs: 12345, Errors: 2, SrcRows: []int64{7}, TgtRows: []int64{9}}
	for range 1 {
		e, a := newTree(16), newTree(16)
		for i := range e.leaves {
			e.leaves[i] = leaf{Sum: rand.Uint64(), N: uint32(i % 100)}
		}
		a.leaves[3] = leaf{Sum: 42, N: 1}
		eb, _ := e.MarshalBinary()
		ab, _ := a.MarshalBinary()
		res.Exp, res.Act = append(res.Exp, eb), append(res.Act, ab)
	}
	parts, err := putResult(ctx, st, "R", 4, 2, res)
	if err != nil {
		t.Fatal(err)
	}
	if parts < 2 {
		t.Fatalf("%d part(s); want the result split", parts)
	}
	all, _ := st.List(ctx, resultPrefix("R"))
	for k, v := range all {
		if len(v) > resultPartBytes {
			t.Errorf("%s holds %d bytes, over %d", k, len(v), resultPartBytes)
		}
	}
	got, err := getResult(ctx, st, "R", 4, 2, parts)
	if err != nil {
		t.Fatal(err)
	}
	if got.Docs != res.Docs || got.Errors != res.Errors || !slices.Equal(got.SrcRows, res.SrcRows) || !slices.Equal(got.TgtRows, res.TgtRows) {
		t.Fatalf("counts %+v", got)
	}
	for i := range res.Exp {
		if !slices.Equal(got.Exp[i], res.Exp[i]) || !slices.Equal(got.Act[i], res.Act[i]) {
			t.Fatalf("table %d: trees differ after the round trip", i)
		}
	}
	if err := deleteSegments(ctx, st, "R"); err != nil {
		t.Fatal(err)
	}
	if left, _ := st.List(ctx, checkpoints.PrefixReconcile); len(left) != 0 {
		t.Fatalf("%d keys left after deleteSegments", len(left))
	}
}

// fakeWorkers are segment workers of one manifest, each with its own
// Reconciler identity over one shared store, hashing with a stand-in.
type fakeWorkers struct {
	st    *checkpointstest.Memory
	m     *manifest
	lease time.Duration
}

func (f *fakeWorkers) worker(name string, hash func(ctx context.Context, s segmentSpec) (*segmentResult, error)) *segmentWorker {
	r := &Reconciler{cfg: Config{Lease: f.lease}, d: Deps{Store: f.st}, log: slog.New(slog.DiscardHandler),
		met: newMetrics(nil), owner: name, obs: newObserver()}
	rd := &round{r: r, st: roundState{Bits: segBits}}
	return &segmentWorker{rd: rd, m: f.m, obs: r.obs, live: func(context.Context) bool { return true }, hash: hash}
}

// resultOf is a segment's stand-in result: one source row per segment, so
// that the merged counts say which segments were merged.
func resultOf(s segmentSpec) *segmentResult {
	e, a := newTree(segBits), newTree(segBits)
	e.leaves[s.First] = leaf{Sum: uint64(s.First), N: 1}
	a.leaves[s.First] = leaf{Sum: uint64(s.First), N: 1}
	eb, _ := e.MarshalBinary()
	ab, _ := a.MarshalBinary()
	return &segmentResult{Docs: 1, SrcRows: []int64{1}, TgtRows: []int64{1}, Exp: [][]byte{eb}, Act: [][]byte{ab}}
}

func TestSegmentWorkersShareARoundAndRedoAKilledOnesSegment(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, workers := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("%d workers and one killed", workers), func(t *testing.T) {
			f := &fakeWorkers{st: checkpointstest.New(), m: &manifest{ID: fmt.Sprintf("R%d", workers), Bits: segBits,
				Segments: segmentSpecs(nil, 8)}, lease: 300 * time.Millisecond}
			// The doomed worker takes a segment and is killed while hashing it.
			killed := make(chan int, 1)
			dctx, kill := context.WithCancel(ctx)
			doomed := f.worker("doomed", func(ctx context.Context, s segmentSpec) (*segmentResult, error) {
				killed <- s.First
				<-ctx.Done()
				return nil, ctx.Err()
			})
			go doomed.run(dctx)
			first := <-killed
			kill()

			var mu sync.Mutex
			did := map[string]int{}
			var g sync.WaitGroup
			errs := make(chan error, workers)
			for i := range workers {
				name := fmt.Sprintf("w%d", i)
				w := f.worker(name, func(ctx context.Context, s segmentSpec) (*segmentResult, error) {
					mu.Lock()
					did[name]++
					mu.Unlock()
					time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
					return resultOf(s), nil
				})
				g.Add(1)
				go func() { defer g.Done(); errs <- w.run(ctx) }()
			}
			g.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			// The coordinator's view: every segment done once, merged.
			var srcRows int64
			for k, s := range f.m.Segments {
				l, _, found, _ := getVersioned[segmentLease](ctx, f.st, segmentKey(f.m.ID, k))
				if !found || !l.Done || l.Owner == "doomed" {
					t.Fatalf("segment %d: %+v", k, l)
				}
				if s.First == first {
					if l.Attempt != 2 || l.TookOverFrom != "doomed" {
						t.Errorf("the killed segment %d: attempt %d taken from %q; want 2, from doomed", k, l.Attempt, l.TookOverFrom)
					}
				} else if l.Attempt != 1 {
					t.Errorf("segment %d: attempt %d, want 1", k, l.Attempt)
				}
				res, err := getResult(ctx, f.st, f.m.ID, k, l.Attempt, l.Parts)
				if err != nil {
					t.Fatal(err)
				}
				srcRows += res.SrcRows[0]
			}
			if srcRows != int64(len(f.m.Segments)) {
				t.Errorf("%d segment results, want %d", srcRows, len(f.m.Segments))
			}
			total := 0
			for _, n := range did {
				total += n
			}
			if total != len(f.m.Segments) || (workers > 1 && len(did) < 2) {
				t.Errorf("segments hashed by worker %v: want %d in all, spread when there are several workers", did, len(f.m.Segments))
			}
			audit, _ := f.st.Audit(ctx, checkpoints.AuditFilter{Action: "reconcile.segment.takeover"})
			if len(audit) != 1 || audit[0].Details["from"] != "doomed" {
				t.Errorf("takeover audit %+v; want one entry, from doomed", audit)
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	testbed.Until(t, "condition", 10*time.Second, cond)
}

// scopeRound is a round of one scope on daemon name, far enough built for
// takeScope.
func scopeRound(st checkpoints.Store, name string, lease time.Duration) *round {
	r := &Reconciler{cfg: Config{Lease: lease}, d: Deps{Store: st}, log: slog.New(slog.DiscardHandler),
		met: newMetrics(nil), owner: name, obs: newObserver()}
	now := time.Now().UTC()
	return &round{r: r, scope: Scope{Namespace: "app.users"}, rep: &Report{ID: newID(now), Start: now}}
}

func TestASecondRoundOfAScopeIsRefusedUntilTheFirstStops(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := checkpointstest.New()
	const dur = 600 * time.Millisecond
	first := scopeRound(st, "a", dur)
	fctx, kill := context.WithCancel(ctx)
	held, prior, err := first.takeScope(fctx, "alice")
	if err != nil || prior != nil {
		t.Fatalf("first round: %v, replaced %+v", err, prior)
	}
	if err := held.update(ctx, func(beat int64, now time.Time) any {
		return runningRound{Round: first.rep.ID, Owner: "a", Actor: "alice", Beat: beat, Renewed: now,
			Manifest: &manifest{ID: first.rep.ID, Segments: segmentSpecs(nil, 2)}}
	}); err != nil {
		t.Fatal(err)
	}

	// While the first renews, a second start elsewhere is refused at once,
	// naming the running round.
	second := scopeRound(st, "b", dur)
	_, _, err = second.takeScope(ctx, "bob")
	var re *RunningError
	if !errors.As(err, &re) || !errors.Is(err, ErrBusy) || re.Round != first.rep.ID || re.Owner != "a" || re.Actor != "alice" {
		t.Fatalf("second start: %v; want a RunningError naming %s on a", err, first.rep.ID)
	}

	// The first daemon dies: nothing is released, the record stops being
	// renewed. A start soon after is still refused (the record looks
	// alive); a later one watches it for a lease, then takes it over with
	// the manifest (to finish its segments) and audits it.
	kill()
	<-held.done
	died := time.Now()
	third := second // refused before: its old look must not refuse it now
	var h3 *lease
	for {
		h3, prior, err = third.takeScope(ctx, "carol")
		if !errors.Is(err, ErrBusy) || time.Since(died) > 10*dur {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer h3.end(ctx, nil)
	if waited := time.Since(died); waited < dur {
		t.Errorf("took a record %s after its holder died, before watching it for a lease (%s)", waited, dur)
	}
	if prior == nil || prior.Round != first.rep.ID || prior.Manifest == nil || prior.Manifest.ID != first.rep.ID {
		t.Fatalf("replaced %+v; want the first round with its manifest", prior)
	}
	audit, _ := st.Audit(ctx, checkpoints.AuditFilter{Action: "reconcile.round.takeover"})
	if len(audit) != 1 || audit[0].Details["from"] != "a" {
		t.Fatalf("round takeover audit %+v", audit)
	}

	// A round that stops (time box) and releases its record is followed at
	// once.
	h3.end(ctx, runningRound{Round: third.rep.ID, Owner: "c", Released: true})
	start := time.Now()
	h4, _, err := scopeRound(st, "d", dur).takeScope(ctx, "dave")
	if err != nil {
		t.Fatal(err)
	}
	defer h4.end(ctx, nil)
	if waited := time.Since(start); waited >= dur {
		t.Errorf("waited %s for a released record", waited)
	}
}
