//go:build integration

package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kgo"
)

// daemonStandIn is one daemon's reconcile part: its own Kafka-backed store
// on the shared topic, its Reconciler and its Worker.
type daemonStandIn struct {
	name   string
	store  *checkpoints.KafkaStore
	r      *Reconciler
	w      *Worker
	cancel context.CancelFunc
	done   chan struct{}
}

// daemons opens n stand-ins on one checkpoints topic, named <prefix><i>,
// stopped when t ends; cfg(i) is daemon i's config. Workers are started by
// run.
func (f *fixture) daemons(t *testing.T, ctx context.Context, topic, prefix string, n int, cfg func(i int) Config) []*daemonStandIn {
	var out []*daemonStandIn
	for i := range n {
		st, err := checkpoints.OpenKafka(ctx, topic, []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)},
			checkpoints.KafkaLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		c := cfg(i)
		c.ReportDir = t.TempDir()
		name := fmt.Sprintf("%s%d", prefix, i)
		r, err := New(c, Deps{Mongo: f.mc, Cassandra: f.s, Mapping: f.m, Store: st, Lag: Quiescent{}, Name: name,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("daemon", name)})
		if err != nil {
			t.Fatal(err)
		}
		d := &daemonStandIn{name: name, store: st, r: r, w: NewWorker(r)}
		d.w.poll = 50 * time.Millisecond
		t.Cleanup(func() { d.stop(); st.Close() })
		out = append(out, d)
	}
	return out
}

// run starts the daemon's Worker; stop (or kill) ends it.
func (d *daemonStandIn) run(ctx context.Context) {
	wctx, cancel := context.WithCancel(ctx)
	d.cancel, d.done = cancel, make(chan struct{})
	go func() { defer close(d.done); d.w.Run(wctx) }()
}

// stop cancels the Worker's context and waits for it. Nothing is released:
// a lease the Worker held stays in the store as a dead daemon's would.
func (d *daemonStandIn) stop() {
	if d.cancel != nil {
		d.cancel()
		<-d.done
		d.cancel = nil
	}
}

// reportFacts is what must not depend on how many daemons hashed a round.
type reportFacts struct {
	Status           string
	Docs, Rows       int64
	Counts           string
	Divergent        []string
	Tables           []string
	InFlight, Errors int64
}

func factsOf(rep *Report) reportFacts {
	f := reportFacts{Status: rep.Status, Docs: rep.DocsScanned, Rows: rep.RowsCompared, InFlight: rep.Counts["in_flight"],
		Errors: rep.SourceErrors}
	var cs []string
	for k, v := range rep.Counts {
		cs = append(cs, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(cs)
	f.Counts = strings.Join(cs, " ")
	for _, k := range rep.Divergent {
		f.Divergent = append(f.Divergent, fmt.Sprintf("%s/%x/%s", k.Table, k.Key, k.Class))
	}
	sort.Strings(f.Divergent)
	for _, tr := range rep.Tables {
		f.Tables = append(f.Tables, fmt.Sprintf("%s src=%d tgt=%d mism=%d roots=%s,%s missing=%d extra=%d different=%d",
			tr.Table, tr.RowsSource, tr.RowsTarget, tr.BucketMismatches, tr.RootSource, tr.RootTarget, tr.Missing, tr.Extra, tr.Different))
	}
	return f
}

func (a reportFacts) diff(b reportFacts) string {
	var out []string
	if a.Status != b.Status || a.Docs != b.Docs || a.Rows != b.Rows || a.Counts != b.Counts || a.InFlight != b.InFlight || a.Errors != b.Errors {
		out = append(out, fmt.Sprintf("status/docs/rows/counts: %s %d %d %q | %s %d %d %q", a.Status, a.Docs, a.Rows, a.Counts,
			b.Status, b.Docs, b.Rows, b.Counts))
	}
	if !slices.Equal(a.Divergent, b.Divergent) {
		out = append(out, fmt.Sprintf("divergent keys:\n  %v\n  %v", a.Divergent, b.Divergent))
	}
	if !slices.Equal(a.Tables, b.Tables) {
		out = append(out, fmt.Sprintf("tables:\n  %v\n  %v", a.Tables, b.Tables))
	}
	return strings.Join(out, "\n")
}

// TestIntegrationSegmentedRoundsAcrossDaemons: a collection with rows
// missing, extra and different in many parts of the key space (so that
// several segments hold divergence) is compared by a single-daemon round,
// then by rounds split into segments across one, two and three daemons
// sharing a Kafka checkpoints topic, then with one of three daemons killed
// while it held a segment. Every report has the same divergent keys,
// counts, rows and tree roots as the single-daemon one; with several
// daemons, segments were hashed by more than one of them; the killed
// daemon's segment was redone by another (attempt 2, audited).
func TestIntegrationSegmentedRoundsAcrossDaemons(t *testing.T) {
	n := envInt("TIDEMARK_SEGMENTS_TEST_ROWS", 20_000)
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	f.load(ctx, n)
	users := f.ks + ".users"
	var missing, different []int
	for i := 7; i < n; i += n / 9 {
		missing = append(missing, i)
		different = append(different, i+3)
	}
	for _, id := range missing {
		if err := f.s.Query("DELETE FROM "+users+" WHERE id = ?", fmt.Sprint(id)).ExecContext(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range different {
		if err := f.s.Query("UPDATE "+users+" SET age = 999 WHERE id = ?", fmt.Sprint(id)).ExecContext(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if err := f.s.Query("INSERT INTO "+users+" (id, email, name, age, status) VALUES (?, ?, 'No One', 40, 'active')",
			fmt.Sprintf("extra-%d", i), fmt.Sprintf("ghost%d@x.org", i)).ExecContext(ctx); err != nil {
			t.Fatal(err)
		}
	}
	topic := testbed.UniqueName(t, "cp")
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		f.adm.DeleteTopics(c, topic)
	})
	scope := Scope{Namespace: f.ns}
	const segments = 8
	lease := 3 * time.Second

	base := f.daemons(t, ctx, topic, "single", 1, func(int) Config { return Config{InFlightWait: time.Second, Lease: lease} })[0]
	want, err := base.r.Round(ctx, scope, RoundOptions{Actor: "test", Reason: "single daemon", Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	wf := factsOf(want)
	t.Logf("single daemon: %s in %.1fs, %d rows, counts %s", want.Status, want.DurationSeconds, want.RowsCompared, wf.Counts)
	if want.Status != "divergent" || want.Counts[ClassMissing] != int64(len(missing)) || want.Counts[ClassDifferent] != int64(len(different)) ||
		want.Counts[ClassExtra] != 5 {
		t.Fatalf("single-daemon round: %s, counts %v; want %d missing, %d different, 5 extra", want.Status, want.Counts,
			len(missing), len(different))
	}

	segCfg := func(int) Config { return Config{InFlightWait: time.Second, Lease: lease, Segments: segments} }
	for _, nd := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("%d daemons", nd), func(t *testing.T) {
			ds := f.daemons(t, ctx, topic, fmt.Sprintf("n%d-d", nd), nd, segCfg)
			for _, d := range ds[1:] {
				d.run(ctx)
			}
			rep, err := ds[0].r.Round(ctx, scope, RoundOptions{Actor: "test", Reason: fmt.Sprintf("%d daemons", nd)})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d daemon(s): %s in %.1fs (hashing %.1fs), segments by %s", nd, rep.Status, rep.DurationSeconds,
				rep.SourceSeconds, owners(rep.Segments))
			if d := wf.diff(factsOf(rep)); d != "" {
				t.Fatalf("report differs from the single-daemon one:\n%s", d)
			}
			if len(rep.Segments) != segments {
				t.Fatalf("%d segments reported, want %d", len(rep.Segments), segments)
			}
			if by := ownerSet(rep.Segments); nd > 1 && len(by) < 2 {
				t.Errorf("every segment hashed by %v; want the work shared", by)
			}
			assertNoSegmentKeysLeft(t, ctx, ds[0].store)
		})
	}

	t.Run("3 daemons, one killed holding a segment", func(t *testing.T) {
		// The victim hashes slowly, so that it still holds its segment when
		// it is killed.
		ds := f.daemons(t, ctx, topic, "kill-d", 3, func(i int) Config {
			c := segCfg(i)
			if i == 2 {
				c.DocsPerSecond = 200
			}
			return c
		})
		ds[1].run(ctx)
		victim := ds[2]
		victim.run(ctx)
		type result struct {
			rep *Report
			err error
		}
		done := make(chan result, 1)
		rctx, rcancel := context.WithCancel(ctx)
		finished := make(chan struct{})
		go func() {
			defer close(finished)
			rep, err := ds[0].r.Round(rctx, scope, RoundOptions{Actor: "test", Reason: "one daemon killed"})
			done <- result{rep, err}
		}()
		// Runs before the stores close: the round must release its record.
		t.Cleanup(func() { rcancel(); <-finished })
		held := waitHeldBy(t, ctx, victim)
		victim.stop()
		checkpoints.Sync(ctx, ds[0].store)
		if l, _, _, _ := getVersioned[segmentLease](ctx, ds[0].store, held); l.Owner != victim.name || l.Done {
			t.Fatalf("after the kill, %s is %+v; want it still held by %s", held, l, victim.name)
		}
		t.Logf("killed %s while it held %s", victim.name, held)
		var res result
		select {
		case res = <-done:
		case <-ctx.Done():
			t.Fatal("the round did not finish")
		}
		if res.err != nil {
			t.Fatal(res.err)
		}
		rep := res.rep
		t.Logf("with %s killed: %s in %.1fs (hashing %.1fs), segments by %s", victim.name, rep.Status, rep.DurationSeconds,
			rep.SourceSeconds, owners(rep.Segments))
		if d := wf.diff(factsOf(rep)); d != "" {
			t.Fatalf("report differs from the single-daemon one:\n%s", d)
		}
		k := segmentIndex(t, held)
		s := rep.Segments[k]
		if s.Attempt != 2 || s.TookOverFrom != victim.name || s.Owner == victim.name {
			t.Fatalf("the killed segment %d: %+v; want attempt 2 by another daemon, taken from %s", k, s, victim.name)
		}
		for _, o := range rep.Segments {
			if o.Owner == victim.name {
				t.Errorf("segment %d was used from the killed daemon", o.Segment)
			}
		}
		audit, err := ds[0].store.Audit(ctx, checkpoints.AuditFilter{Action: "reconcile.segment.takeover"})
		if err != nil || len(audit) == 0 || audit[len(audit)-1].Details["from"] != victim.name {
			t.Fatalf("takeover audit %+v (%v); want an entry taking from %s", audit, err, victim.name)
		}
		assertNoSegmentKeysLeft(t, ctx, ds[0].store)
	})

	t.Run("coordinator stopped, another daemon finishes", func(t *testing.T) {
		coordinatorStopsTest(t, ctx, f, topic, segCfg, wf)
	})
}

// coordinatorStopsTest: the coordinator of a segmented round is stopped
// (its context cancelled: a daemon shutting down) after some segments are
// done; a round of the scope on another daemon finishes the same round
// from the stored segments, redoing only the one the first was hashing.
func coordinatorStopsTest(t *testing.T, ctx context.Context, f *fixture, topic string, cfg func(int) Config, want reportFacts) {
	ds := f.daemons(t, ctx, topic, "stop-d", 2, func(i int) Config {
		c := cfg(i)
		if i == 0 {
			c.DocsPerSecond = 2000
		}
		return c
	})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan *Report, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		rep, _ := ds[0].r.Round(rctx, Scope{Namespace: f.ns}, RoundOptions{Actor: "test", Reason: "stopped midway"})
		done <- rep
	}()
	t.Cleanup(func() { stop(); <-finished })
	deadline := time.Now().Add(2 * time.Minute)
	for segmentsDone(ctx, ds[0].store) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the first coordinator finished no two segments in 2 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	first := <-done
	if first == nil || first.Status != "incomplete" {
		t.Fatalf("the stopped round: %+v", first)
	}
	rep, err := ds[1].r.Round(ctx, Scope{Namespace: f.ns}, RoundOptions{Actor: "test", Reason: "finish it"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("finished after the coordinator stopped: %s in %.1fs, resumed from %s, segments by %s", rep.Status,
		rep.DurationSeconds, rep.ResumedFrom, owners(rep.Segments))
	if rep.ResumedFrom != first.ID {
		t.Errorf("resumed from %q, want the stopped round %s", rep.ResumedFrom, first.ID)
	}
	if d := want.diff(factsOf(rep)); d != "" {
		t.Fatalf("report differs from the single-daemon one:\n%s", d)
	}
	kept := ownerSet(rep.Segments)[ds[0].name]
	if kept < 2 {
		t.Errorf("%d segments of the stopped coordinator used; want the 2 or more it finished", kept)
	}
	assertNoSegmentKeysLeft(t, ctx, ds[1].store)
}

func segmentsDone(ctx context.Context, st checkpoints.Store) int {
	all, _ := st.List(ctx, checkpoints.PrefixReconcile+"segment/")
	n := 0
	for key := range all {
		if l, _, found, _ := getVersioned[segmentLease](ctx, st, key); found && l.Done {
			n++
		}
	}
	return n
}

// waitHeldBy waits until d holds a segment lease that is not done.
func waitHeldBy(t *testing.T, ctx context.Context, d *daemonStandIn) string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		all, _ := d.store.List(ctx, checkpoints.PrefixReconcile+"segment/")
		for key := range all {
			l, _, found, _ := getVersioned[segmentLease](ctx, d.store, key)
			if found && l.Owner == d.name && !l.Done {
				return key
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never held a segment", d.name)
	return ""
}

func segmentIndex(t *testing.T, key string) int {
	var k int
	if _, err := fmt.Sscanf(key[strings.LastIndex(key, "/")+1:], "%d", &k); err != nil {
		t.Fatalf("segment key %s: %v", key, err)
	}
	return k
}

func ownerSet(segs []SegmentReport) map[string]int {
	by := map[string]int{}
	for _, s := range segs {
		by[s.Owner]++
	}
	return by
}

func owners(segs []SegmentReport) string {
	var out []string
	for _, s := range segs {
		o := fmt.Sprintf("%d:%s(%d docs)", s.Segment, s.Owner, s.Docs)
		if s.Attempt > 1 {
			o += fmt.Sprintf("[attempt %d, from %s]", s.Attempt, s.TookOverFrom)
		}
		out = append(out, o)
	}
	return strings.Join(out, " ")
}

// assertNoSegmentKeysLeft: a finished round leaves neither its running
// record nor its segments' leases and results behind.
func assertNoSegmentKeysLeft(t *testing.T, ctx context.Context, st checkpoints.Store) {
	t.Helper()
	checkpoints.Sync(ctx, st)
	for _, p := range []string{"running/", "segment/", "segment-result/"} {
		if left, _ := st.List(ctx, checkpoints.PrefixReconcile+p); len(left) > 0 {
			t.Errorf("%d keys left under %s%s", len(left), checkpoints.PrefixReconcile, p)
		}
	}
}
