//go:build integration

package reconcile

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo/options"
	"golang.org/x/sync/errgroup"
)

// TestIntegrationTokensMatchCassandra: the tokens computed for expected rows
// are the ones Cassandra gives the same partition keys, single and composite.
func TestIntegrationTokensMatchCassandra(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	m, err := transform.Parse([]byte(fmt.Sprintf(`version: "tok"
collections:
  - namespace: %s
    tables:
      - {keyspace: %s, table: by_int, partition_key: [k], columns: [{name: k, type: int, from: n}]}
      - {keyspace: %s, table: by_text, partition_key: [k], columns: [{name: k, type: text, from: s}]}
      - {keyspace: %s, table: by_pair, partition_key: [a, b], columns: [{name: a, type: text, from: s}, {name: b, type: bigint, from: n}]}
`, f.ns, f.ks, f.ks, f.ks)))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"CREATE TABLE %s.by_int (k int PRIMARY KEY)", "CREATE TABLE %s.by_text (k text PRIMARY KEY)",
		"CREATE TABLE %s.by_pair (a text, b bigint, PRIMARY KEY ((a, b)))"} {
		if err := f.s.Query(fmt.Sprintf(q, f.ks)).ExecContext(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 200 {
		doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: i}, {Key: "n", Value: int32(i*7919 - 50000)}, {Key: "s", Value: fmt.Sprintf("k-%d-é€", i*31)}})
		rows, err := m.Apply(f.ns, doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			pk, err := partitionKeyBytes(nil, r.Table, r.Values)
			if err != nil {
				t.Fatal(err)
			}
			var want int64
			cols, marks, where := []string{}, []string{}, []string{}
			for _, c := range r.Table.Columns {
				cols, marks, where = append(cols, c.Name), append(marks, "?"), append(where, c.Name+" = ?")
			}
			ins := fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", r.Table.QualifiedName(), strings.Join(cols, ", "), strings.Join(marks, ", "))
			if err := f.s.Query(ins, r.Values...).ExecContext(ctx); err != nil {
				t.Fatal(err)
			}
			sel := fmt.Sprintf("SELECT token(%s) FROM %s WHERE %s", strings.Join(cols, ", "), r.Table.QualifiedName(), strings.Join(where, " AND "))
			if err := f.s.Query(sel, r.Values...).ScanContext(ctx, &want); err != nil {
				t.Fatal(err)
			}
			if got := tokenOf(pk); got != want {
				t.Fatalf("%s %v: token %d, Cassandra says %d", r.Table.Name, r.Values, got, want)
			}
		}
	}
}

// BenchmarkReconcile compares a clean round over N documents (2N rows in
// two tables) with simply reading both sides in full in the same run: the
// MongoDB collection scanned, the Cassandra tables read in the same 256
// token ranges with the same concurrency, both at once, no transform and no
// hashing (and once more with the source in _id order, which a resumable
// scan needs). Reported: rows/s of each, the ratios, the round's peak heap.
// N is TIDEMARK_RECONCILE_BENCH_ROWS (default 100,000); the passes of plain
// reads and rounds, each logged, TIDEMARK_RECONCILE_BENCH_PASSES (default 2):
// at 1,000,000 documents the load takes longer than several passes.
//
//	go test -tags integration -run '^$' -bench 'BenchmarkReconcile$' -benchtime 1x ./reconcile/
func BenchmarkReconcile(b *testing.B) {
	n := envInt("TIDEMARK_RECONCILE_BENCH_ROWS", 100_000)
	passes := envInt("TIDEMARK_RECONCILE_BENCH_PASSES", 2)
	f := newFixture(b)
	ctx := context.Background()
	f.load(ctx, n)
	r := f.reconciler(Config{Concurrency: 8})
	r.d.Lag = Quiescent{}
	tables := f.m.Tables(f.ns)

	plain := func(sorted bool) (time.Duration, int64) {
		start := time.Now()
		var rows atomic.Int64
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error {
			opts := options.Find().SetBatchSize(2000) // as the round; the stand-in would send everything at once
			if sorted {
				opts.SetSort(bson.D{{Key: "_id", Value: 1}})
			}
			cur, err := f.coll.Find(gctx, bson.D{}, opts)
			if err != nil {
				return err
			}
			defer cur.Close(gctx)
			for cur.Next(gctx) {
				rows.Add(int64(len(tables))) // one expected row per table, as the round counts
			}
			return cur.Err()
		})
		g.Go(func() error {
			sg, sctx := errgroup.WithContext(gctx)
			sg.SetLimit(8)
			for seg := range 1 << segBits {
				sg.Go(func() error {
					for _, t := range tables {
						err := newTarget(f.s, t).scanRange(sctx, bucketFirst(uint32(seg), segBits), bucketLast(uint32(seg), segBits),
							func(int64, []any) error { rows.Add(1); return nil })
						if err != nil {
							return err
						}
					}
					return nil
				})
			}
			return sg.Wait()
		})
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start), rows.Load()
	}
	round := func() (time.Duration, *Report, uint64, int64) {
		runtime.GC()
		debug.FreeOSMemory() // what the load and the plain reads left behind is not the round's
		resetPeakRSS(b)
		var peak atomic.Uint64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ms runtime.MemStats
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		}()
		start := time.Now()
		rep, err := r.Round(ctx, Scope{Namespace: f.ns}, RoundOptions{Fresh: true})
		el := time.Since(start)
		close(stop)
		wg.Wait()
		rss := peakRSS(b)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Status != "clean" {
			b.Fatalf("round not clean: %s %v %s", rep.Status, rep.Counts, rep.Error)
		}
		return el, rep, peak.Load(), rss
	}

	b.ResetTimer()
	for range b.N {
		// Alternate, and keep the best of each, so that neither profits
		// from the other's warm caches alone.
		var bestPlain, bestSorted, bestRound time.Duration
		var plainRows int64
		var rep *Report
		var peak uint64
		var rss int64
		for i := range passes {
			p, pr := plain(false)
			ps, _ := plain(true)
			rt, rr, pk, rs := round()
			if i == 0 || p < bestPlain {
				bestPlain, plainRows = p, pr
			}
			if i == 0 || ps < bestSorted {
				bestSorted = ps
			}
			if i == 0 || rt < bestRound {
				bestRound, rep = rt, rr
			}
			peak, rss = max(peak, pk), max(rss, rs)
			b.Logf("pass %d: plain read %s, in _id order %s, clean round %s (%.2fx), peak RSS %d MB",
				i+1, p.Round(time.Millisecond), ps.Round(time.Millisecond), rt.Round(time.Millisecond), rt.Seconds()/p.Seconds(), rs>>20)
		}
		ratio := bestRound.Seconds() / bestPlain.Seconds()
		b.ReportMetric(float64(plainRows)/bestPlain.Seconds(), "plain_rows/s")
		b.ReportMetric(float64(rep.RowsCompared)/bestRound.Seconds(), "round_rows/s")
		b.ReportMetric(ratio, "round/plain")
		b.ReportMetric(1/ratio, "of-baseline") // throughput: the plain read's time over the round's
		b.ReportMetric(bestRound.Seconds()/bestSorted.Seconds(), "round/plain_id_order")
		b.ReportMetric(float64(peak)/(1<<20), "peak_heap_MB")
		b.ReportMetric(float64(rss)/(1<<20), "peak-rss-MB")
		b.Logf("%d documents, %d rows: plain read %s (%.0f rows/s; in _id order %s), clean round %s (%.0f rows/s; scans %.1fs/%.1fs, %d leaves per table) = %.2fx the plain read, %.2fx the _id-ordered one; peak heap in use %.0f MB, peak RSS %d MB",
			n, rep.RowsCompared, bestPlain.Round(time.Millisecond), float64(plainRows)/bestPlain.Seconds(), bestSorted.Round(time.Millisecond),
			bestRound.Round(time.Millisecond), float64(rep.RowsCompared)/bestRound.Seconds(), rep.SourceSeconds, rep.TargetSeconds,
			1<<rep.BucketBits, ratio, bestRound.Seconds()/bestSorted.Seconds(), float64(peak)/(1<<20), rss>>20)
	}
}

// resetPeakRSS sets the process's peak resident set (VmHWM) to its current
// one (Linux ≥ 4.0: "5" to clear_refs), so that peakRSS then reports the
// peak of what follows, not of the load before it.
func resetPeakRSS(b *testing.B) {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Fatalf("reset the peak RSS: %v", err)
	}
}

// peakRSS is the process's peak resident set in bytes since the last
// resetPeakRSS (VmHWM in /proc/self/status).
func peakRSS(b *testing.B) int64 {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmHWM in /proc/self/status")
	return 0
}

// BenchmarkReconcileUnderLoad runs a round over N documents while
// TIDEMARK_RECONCILE_BENCH_RATE changes/s (default 1,000: updates,
// replaces and inserts, deletes) flow through capture and the sink, after
// a round of the same collection with the pipeline idle (the baseline). The
// round must finish clean: keys that changed under it are rechecked and
// counted resolved or in flight, never divergent. Once the load stops and
// the pipeline catches up, a last round must be clean with nothing in
// flight: every target row matches its source document. of-baseline is the
// idle round's time over the loaded round's. N is
// TIDEMARK_RECONCILE_BENCH_ROWS (default 100,000), the passes (each an idle
// and a loaded round) TIDEMARK_RECONCILE_BENCH_PASSES (default 2).
//
//	go test -tags integration -run '^$' -bench BenchmarkReconcileUnderLoad -benchtime 1x ./reconcile/
func BenchmarkReconcileUnderLoad(b *testing.B) {
	n := envInt("TIDEMARK_RECONCILE_BENCH_ROWS", 100_000)
	perSecond := envInt("TIDEMARK_RECONCILE_BENCH_RATE", 1000)
	f := newFixture(b)
	ctx := context.Background()
	f.load(ctx, n)
	f.startPipeline(ctx, 4)
	r := f.reconciler(Config{Concurrency: 8})

	passes := envInt("TIDEMARK_RECONCILE_BENCH_PASSES", 2)
	for range b.N {
		// Each pass is logged; the metrics are the worst pass's.
		var worst loadedPass
		for i := range passes {
			p := f.loadedPass(b, ctx, r, n, perSecond)
			b.Logf("pass %d: round under %.0f changes/s: %s in %.1fs (idle: %.1fs; scans %.1fs/%.1fs), %d rows, %d candidates, counts %v, in flight waiting for %v, peak RSS %d MB",
				i+1, p.rate, p.rep.Status, p.loaded.Seconds(), p.idle.Seconds(), p.rep.SourceSeconds, p.rep.TargetSeconds, p.rep.RowsCompared,
				p.rep.Candidates, p.rep.Counts, p.rep.InFlightWaiting, p.rss>>20)
			if i == 0 || p.idle.Seconds()/p.loaded.Seconds() < worst.idle.Seconds()/worst.loaded.Seconds() {
				worst.idle, worst.loaded, worst.rep = p.idle, p.loaded, p.rep
			}
			if i == 0 || p.rate < worst.rate {
				worst.rate = p.rate
			}
			worst.rss = max(worst.rss, p.rss)
		}
		b.ReportMetric(worst.rate, "changes/s")
		b.ReportMetric(worst.loaded.Seconds(), "round_s")
		b.ReportMetric(worst.idle.Seconds(), "idle_round_s")
		b.ReportMetric(worst.idle.Seconds()/worst.loaded.Seconds(), "of-baseline")
		b.ReportMetric(float64(worst.rep.Counts["in_flight"]), "in_flight_keys")
		b.ReportMetric(float64(worst.rep.Counts["resolved"]), "resolved_keys")
		b.ReportMetric(float64(worst.rss)/(1<<20), "peak-rss-MB")
	}
}

// loadedPass is one idle round, one round under load, and what they took.
type loadedPass struct {
	idle, loaded time.Duration
	rate         float64 // changes/s the source took during the loaded round
	rep          *Report // the loaded round's
	rss          int64   // the loaded round's peak RSS in bytes
}

// loadedPass runs a round with the pipeline idle, then one under perSecond
// changes/s, checks that the latter finished clean at that rate, and waits
// for a round after the load with nothing in flight.
func (f *fixture) loadedPass(b *testing.B, ctx context.Context, r *Reconciler, n, perSecond int) loadedPass {
	var p loadedPass
	p.idle = cleanRound(b, ctx, r, f.ns, "idle pipeline")
	load := f.startLoad(ctx, n, perSecond, nil)
	steady(b, ctx, load, perSecond)
	runtime.GC()
	debug.FreeOSMemory()
	resetPeakRSS(b)
	start, before := time.Now(), load.changes.Load()
	rep, err := r.Round(ctx, Scope{Namespace: f.ns}, RoundOptions{Actor: "bench", Reason: "live load"})
	p.loaded = time.Since(start)
	p.rate = float64(load.changes.Load()-before) / p.loaded.Seconds()
	p.rss, p.rep = peakRSS(b), rep
	load.stop()
	if err != nil {
		b.Fatal(err)
	}
	if rep.Status != "clean" {
		b.Errorf("the round under load is %s, want clean: counts %v, sample %+v, error %q", rep.Status, rep.Counts, rep.Sample, rep.Error)
	}
	// Offered is not taken: the source (or a stalled load) must not pass for it.
	if p.rate < 0.9*float64(perSecond) {
		b.Errorf("the load ran at %.0f changes/s during the round, not the %d asked for (%d failed operations)", p.rate, perSecond, load.errs.Load())
	}
	if e := load.errs.Load(); e > 0 {
		b.Errorf("%d load operations failed (%d succeeded)", e, load.changes.Load())
	}
	caughtUp(b, ctx, r, f.ns)
	return p
}

// cleanRound runs a fresh round that must be clean with nothing in flight,
// and returns its duration.
func cleanRound(b *testing.B, ctx context.Context, r *Reconciler, ns, what string) time.Duration {
	start := time.Now()
	rep, err := r.Round(ctx, Scope{Namespace: ns}, RoundOptions{Actor: "bench", Reason: what, Fresh: true})
	el := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if rep.Status != "clean" || rep.Counts["in_flight"] != 0 {
		b.Fatalf("round with %s: %s, counts %v, sample %+v, error %q", what, rep.Status, rep.Counts, rep.Sample, rep.Error)
	}
	return el
}

// steady waits until the load has run at its pace for two seconds.
func steady(b *testing.B, ctx context.Context, l *liveLoad, perSecond int) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		c0, t0 := l.changes.Load(), time.Now()
		select {
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		case <-time.After(2 * time.Second):
		}
		rate := float64(l.changes.Load()-c0) / time.Since(t0).Seconds()
		if rate >= 0.9*float64(perSecond) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("the load did not reach %d changes/s in 60s (last 2s: %.0f/s, %d failed)", perSecond, rate, l.errs.Load())
		}
	}
}

// caughtUp runs rounds after the load stopped until one reports nothing in
// flight (the pipeline needs some seconds to apply what it holds), and
// requires it clean: every target row then matches its source document.
func caughtUp(b *testing.B, ctx context.Context, r *Reconciler, ns string) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		rep, err := r.Round(ctx, Scope{Namespace: ns}, RoundOptions{Actor: "bench", Reason: "after the load", Fresh: true})
		if err != nil {
			b.Fatal(err)
		}
		if rep.Status != "clean" {
			b.Fatalf("round after the load: %s, counts %v, sample %+v, error %q", rep.Status, rep.Counts, rep.Sample, rep.Error)
		}
		if rep.Counts["in_flight"] == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d keys still in flight 5 minutes after the load stopped: %v", rep.Counts["in_flight"], rep.InFlightWaiting)
		}
	}
}
