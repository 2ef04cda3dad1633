package rollout_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/rollout/rollouttest"
	"github.com/tidemarkhq/tidemark/sink"
)

func TestPipelineSignalsFromMetricsLagAndRounds(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	// The same names and buckets as the sink's metrics.
	lat := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tidemark_sink_write_duration_seconds", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)})
	retries := prometheus.NewCounter(prometheus.CounterOpts{Name: "tidemark_sink_retries_total"})
	dead := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_sink_dead_letters_total"}, []string{"stage"})
	reg.MustRegister(lat, retries, dead)
	clock := rollouttest.NewClock(time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC))
	store := checkpointstest.New()
	lag := []sink.PartitionLag{
		{Topic: "tm.app.users", Partition: 0, Committed: 10, RecordsBehind: 4, SecondsBehind: 2.5},
		{Topic: "tm.app.users", Partition: 1, Committed: -1, RecordsBehind: 900, SecondsBehind: 900}, // never polled
		{Topic: "tm.app.other", Partition: 0, Committed: 10, RecordsBehind: 99, SecondsBehind: 99},   // not in the slice
	}
	validated := 0
	p := &rollout.PipelineSignals{Store: store, Gatherer: reg, Lag: func() []sink.PartitionLag { return lag },
		TopicOf: func(ns string) string { return "tm." + ns }, Window: time.Minute, Now: clock.Now,
		Validate: func(context.Context) (bool, error) { validated++; return true, nil }}
	slice := rollout.Slice{"app.users": 100}

	s, err := p.Sample(ctx, slice)
	if err != nil {
		t.Fatal(err)
	}
	if s["lag_seconds"].Value != 2.5 || s["lag_records"].Value != 4 || s["type_compat"].Value != 1 {
		t.Fatalf("first sample: %+v", s)
	}
	for _, name := range []string{"write_p99_seconds", "error_ratio", "dead_letter_rate", "divergent_rows"} {
		if _, ok := s[name]; ok {
			t.Fatalf("%s has data before any window or round: %+v", name, s)
		}
	}
	// 1000 writes: 980 at 1ms, 20 at 100ms; 10 retries; 3 dead letters.
	for i := 0; i < 980; i++ {
		lat.Observe(0.001)
	}
	for i := 0; i < 20; i++ {
		lat.Observe(0.1)
	}
	retries.Add(10)
	dead.WithLabelValues("transform").Add(3)
	clock.Add(30 * time.Second)
	s, _ = p.Sample(ctx, slice)
	if v := s["write_p99_seconds"].Value; v < 0.064 || v > 0.128 {
		t.Fatalf("p99 %v, want within the 64-128ms bucket", v)
	}
	if v := s["error_ratio"].Value; math.Abs(v-0.01) > 1e-9 {
		t.Fatalf("error ratio %v", v)
	}
	if v := s["dead_letter_rate"].Value; math.Abs(v-0.1) > 1e-9 {
		t.Fatalf("dead letters per second %v", v)
	}
	// A minute later with no writes: the window slid past them.
	clock.Add(31 * time.Second)
	p.Sample(ctx, slice)
	clock.Add(31 * time.Second)
	s, _ = p.Sample(ctx, slice)
	if _, ok := s["write_p99_seconds"]; ok || s["dead_letter_rate"].Value != 0 {
		t.Fatalf("old writes still in the window: %+v", s)
	}
	if validated != 1 {
		t.Fatalf("validate ran %d times within its reuse period", validated)
	}

	// Reconcile: data only when every collection of the slice has a round.
	end := clock.Now()
	checkpoints.PutJSON(ctx, store, checkpoints.KeyReconcileLatest+"app.users", checkpoints.RoundSummary{End: end, RowsCompared: 200, Divergent: 2})
	wide := rollout.Slice{"app.users": 100, "app.orders": 100}
	if s, _ = p.Sample(ctx, wide); s["divergent_rows"] != (rollout.Sample{}) {
		t.Fatalf("a round of one collection of two gave data: %+v", s["divergent_rows"])
	}
	checkpoints.PutJSON(ctx, store, checkpoints.KeyReconcileLatest+"app.orders", checkpoints.RoundSummary{End: end.Add(-time.Hour), RowsCompared: 800, Divergent: 0})
	s, _ = p.Sample(ctx, wide)
	if d := s["divergent_rows"]; d.Value != 2 || !d.At.Equal(end.Add(-time.Hour)) || s["divergence_ratio"].Value != 0.002 {
		t.Fatalf("rounds: %+v %+v", d, s["divergence_ratio"])
	}
}

func TestFollowerAppliesTheEvaluatorsSliceAndRoutes(t *testing.T) {
	en := newEnv(t, nil)
	cfg := en.cfg
	cfg.Follow = true
	cfg.RouteFile = t.TempDir() + "/follower-routes.json"
	act := &rollouttest.Actions{}
	f, err := rollout.NewEngine(cfg, rollout.Deps{Store: en.store, Signals: en.sig, Actions: act}, rollout.WithClock(en.clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(en.ctx); err != nil {
		t.Fatal(err)
	}
	if act.Slice()["app.users"] != 100 {
		t.Fatalf("follower slice: %v", act.Slice())
	}
	en.e.Advance(en.ctx, "alice", "go", true)
	f.Tick(en.ctx)
	if act.Slice()["app.users"] != 1000 || f.Routes().Generation != en.e.Routes().Generation {
		t.Fatalf("follower did not follow: %v gen %d", act.Slice(), f.Routes().Generation)
	}
	r, err := rollout.LoadRoutes(cfg.RouteFile)
	if err != nil || r.Stage != "tenth" {
		t.Fatalf("follower route file: %+v %v", r, err)
	}
	if _, err := f.Advance(en.ctx, "alice", "go", true); err == nil {
		t.Fatal("a follower accepted a plan command")
	}
	if act.Count("backfill") != 0 {
		t.Fatal("a follower asked for a backfill; the evaluator does")
	}
}
