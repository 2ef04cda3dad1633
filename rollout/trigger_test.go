package rollout_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/rollout"
)

const triggerPlan = `
version: t1
every: 1s
repair: {keys_per_second: 1000}
stages:
  - name: s
    slice: {collections: [app.users], share: 10%%}
    triggers:
      - {name: fix, signal: divergent_rows, above: 0, for: 10s, action: repair, cooldown: %s, max_attempts: %d}
`

// ev is one step of a trigger script: a new reconcile round (its id, value,
// started now) if round is set, a change of how far the sink lags, then
// wait of fake time ticked every second.
type ev struct {
	round   string
	value   float64
	behind  int // Passed answers false this many more times; -1 leaves it
	wait    time.Duration
	comment string
}

func round(id string, v float64, wait time.Duration) ev {
	return ev{round: id, value: v, behind: -1, wait: wait}
}

// TestTriggerRules runs scripts of reconcile rounds against one repair
// trigger and checks what it did: how many repairs, how many attempts
// counted, whether a firing is pending, whether the plan is held.
func TestTriggerRules(t *testing.T) {
	for _, tc := range []struct {
		name         string
		cooldown     string
		max          int
		sinkBehind   int
		script       []ev
		wantRepairs  int
		wantAttempts int
		wantPending  bool
		wantHeld     bool
	}{
		{name: "one report fires at most once", cooldown: "1s", max: 3,
			script:      []ev{round("r1", 5, 5*time.Minute)},
			wantRepairs: 1, wantAttempts: 0, wantPending: true},
		{name: "the firing counts only once a round started after the effect reports", cooldown: "1s", max: 3, sinkBehind: 1000,
			script: []ev{
				round("r1", 5, 20*time.Second),
				// Started while the sink had not applied the repair: not evidence about it.
				round("r2", 5, 30*time.Second),
				{behind: 0, wait: 10 * time.Second, comment: "the sink passes the re-emitted records"},
				// Started after: judges the firing (resolved).
				round("r3", 0, 10*time.Second),
			},
			wantRepairs: 1, wantAttempts: 1, wantPending: false},
		{name: "still divergent on fresh evidence: counted, and fires again on it", cooldown: "1s", max: 3,
			script:      []ev{round("r1", 5, 30*time.Second), round("r2", 5, 30*time.Second)},
			wantRepairs: 2, wantAttempts: 1, wantPending: true},
		{name: "cool-down delays the next firing, not the verdict", cooldown: "5m", max: 3,
			script:      []ev{round("r1", 5, 30*time.Second), round("r2", 5, 3*time.Minute)},
			wantRepairs: 1, wantAttempts: 1, wantPending: false},
		{name: "after the cool-down it fires on the fresh round", cooldown: "5m", max: 3,
			script:      []ev{round("r1", 5, 30*time.Second), round("r2", 5, 5*time.Minute)},
			wantRepairs: 2, wantAttempts: 1, wantPending: true},
		{name: "max_attempts judged firings, then it holds instead", cooldown: "1s", max: 2,
			script: []ev{round("r1", 5, 30*time.Second), round("r2", 5, 30*time.Second), round("r3", 5, 30*time.Second),
				round("r4", 5, 30*time.Second)},
			wantRepairs: 2, wantAttempts: 2, wantPending: false, wantHeld: true},
		{name: "a resolved round ends it", cooldown: "1s", max: 2,
			script:      []ev{round("r1", 5, 30*time.Second), round("r2", 0, 5*time.Minute)},
			wantRepairs: 1, wantAttempts: 1, wantPending: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			en := newEnvPlan(t, fmt.Sprintf(triggerPlan, tc.cooldown, tc.max), nil)
			en.act.SinkBehind = tc.sinkBehind
			for _, e := range tc.script {
				if e.round != "" {
					now := en.clock.Now()
					en.sig.SetSample("divergent_rows", rollout.Sample{Value: e.value, At: now, Started: now, Source: "app.users:" + e.round})
				}
				if e.behind >= 0 {
					en.act.SinkBehind = e.behind
				}
				en.run(e.wait, time.Second)
			}
			tr := en.trigger("fix")
			repairs := len(en.audits("trigger.fire")) - boolInt(tc.wantHeld)
			if en.act.Count("repair") != tc.wantRepairs || repairs != tc.wantRepairs || tr.Attempts != tc.wantAttempts ||
				tr.Pending != tc.wantPending || (en.e.Status().Held != "") != tc.wantHeld {
				t.Fatalf("repairs %d (audited %d), attempts %d, pending %v, held %q; want %d, %d, %v, held %v\n%+v\ncalls %v",
					en.act.Count("repair"), repairs, tr.Attempts, tr.Pending, en.e.Status().Held, tc.wantRepairs, tc.wantAttempts,
					tc.wantPending, tc.wantHeld, tr, en.act.Calls)
			}
			// Every firing names the round it acted on, never the same twice.
			seen := map[string]bool{}
			for _, f := range en.audits("trigger.fire") {
				on, _ := f.Details["fired_on"].(string)
				if f.Details["exhausted"] == true {
					continue
				}
				if !strings.HasPrefix(on, "app.users:r") || seen[on] {
					t.Fatalf("firing on %q (seen %v)", on, seen)
				}
				seen[on] = true
			}
			if tc.wantAttempts > 0 && !strings.Contains(tr.Judged, "app.users:r") {
				t.Fatalf("status does not name the judging round: %+v", tr)
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestRepairBoundedAndRateLimited: a repair over max_keys holds the plan
// without re-emitting anything; within it, keys go out at keys_per_second
// and not at all while the lag is above max_lag_seconds.
func TestRepairBoundedAndRateLimited(t *testing.T) {
	keys := func(n int) [][]byte {
		var out [][]byte
		for i := 0; i < n; i++ {
			out = append(out, []byte(fmt.Sprint("k", i)))
		}
		return out
	}
	setup := func(t *testing.T, n int) *env {
		en := newEnvPlan(t, strings.Replace(fmt.Sprintf(triggerPlan, "1m", 3), "{keys_per_second: 1000}",
			"{keys_per_second: 2, max_keys: 50, max_lag_seconds: 30}", 1), nil)
		en.act.SetDivergent(rollout.DivergentKeys{Namespace: "app.users", Round: "r1", Keys: keys(n), Complete: true})
		now := en.clock.Now()
		en.sig.SetSample("divergent_rows", rollout.Sample{Value: float64(n), At: now, Started: now, Source: "app.users:r1"})
		return en
	}
	t.Run("over max_keys", func(t *testing.T) {
		en := setup(t, 51)
		en.run(time.Minute, time.Second)
		st := en.e.Status()
		if en.act.Reemitted != 0 || !strings.Contains(st.Held, "max_keys") || !en.trigger("fix").Exhausted {
			t.Fatalf("re-emitted %d, held %q", en.act.Reemitted, st.Held)
		}
	})
	t.Run("incomplete list", func(t *testing.T) {
		en := setup(t, 3)
		en.act.SetDivergent(rollout.DivergentKeys{Namespace: "app.users", Round: "r1", Keys: keys(3)})
		en.run(time.Minute, time.Second)
		if en.act.Reemitted != 0 || !strings.Contains(en.e.Status().Held, "did not list every") {
			t.Fatalf("re-emitted %d, held %q", en.act.Reemitted, en.e.Status().Held)
		}
	})
	t.Run("rate and lag", func(t *testing.T) {
		en := setup(t, 40)
		en.sig.Set("lag_seconds", 1)
		en.run(10*time.Second, time.Second) // fires at 10s
		en.run(5*time.Second, time.Second)
		if n := en.act.Reemitted; n < 8 || n > 12 {
			t.Fatalf("%d keys re-emitted in 5s at 2/s", n)
		}
		en.sig.Set("lag_seconds", 100)
		before := en.act.Reemitted
		en.run(time.Minute, time.Second)
		if en.act.Reemitted != before || !strings.Contains(en.trigger("fix").Effect, "paused: lag") {
			t.Fatalf("re-emitted %d keys while the lag was high; effect %q", en.act.Reemitted-before, en.trigger("fix").Effect)
		}
		en.sig.Set("lag_seconds", 1)
		en.run(20*time.Second, time.Second)
		if en.act.Reemitted != 40 || en.act.Count("repair") < 15 {
			t.Fatalf("%d of 40 keys in %d requests", en.act.Reemitted, en.act.Count("repair"))
		}
	})
}

// TestCleanGateWaitsForTheWidenedSlice: after an advance, the new stage's
// clean gate cannot pass on a round that started before the advance, nor on
// one that started before the widened slice's backfill was in Cassandra;
// a round that started after it passes once it held its window.
func TestCleanGateWaitsForTheWidenedSlice(t *testing.T) {
	en := newEnvPlan(t, `
version: w1
every: 1s
stages:
  - name: a
    slice: {collections: [app.users], share: 10%}
    advance: auto
    gates: [{name: clean, signal: divergent_rows, max: 0, window: 10s}]
  - name: b
    slice: {collections: [app.users], share: 50%}
    gates: [{name: clean, signal: divergent_rows, max: 0, window: 10s}]
`, nil)
	roundNow := func(id string) {
		now := en.clock.Now()
		en.sig.SetSample("divergent_rows", rollout.Sample{Value: 0, At: now, Started: now, Source: "app.users:" + id})
	}
	// A round starts in stage a and is still running when a advances.
	roundNow("r1")
	early := en.clock.Now()
	en.act.SinkBehind = 1000 // the widening's backfill is not applied yet
	en.run(12*time.Second, time.Second)
	st := en.e.Status()
	if st.StageName != "b" || st.Widening == nil || st.Widening.Phase == rollout.PhaseApplied {
		t.Fatalf("want stage b with its backfill in flight: %+v", st)
	}
	// r0 started before the advance and ended after it.
	en.sig.SetSample("divergent_rows", rollout.Sample{Value: 0, At: en.clock.Now(), Started: early, Source: "app.users:r0"})
	en.run(time.Minute, time.Second)
	if g := en.gate("clean"); g.State != rollout.Pending {
		t.Fatalf("a round that started before the advance passed the gate: %+v", g)
	}
	// r2 started after the advance, before the backfill was applied.
	roundNow("r2")
	en.run(time.Minute, time.Second)
	en.act.SinkBehind = 0
	en.run(time.Minute, time.Second)
	if g, w := en.gate("clean"), en.e.Status().Widening; g.State != rollout.Pending || w == nil || w.Phase != rollout.PhaseApplied {
		t.Fatalf("a round that started before the backfill was applied passed the gate: %+v (widening %+v)", g, w)
	}
	if n := len(en.audits("slice.backfill.applied")); n != 1 {
		t.Fatalf("%d slice.backfill.applied audits", n)
	}
	// r3 started after: the gate passes once it held 10s.
	roundNow("r3")
	en.run(11*time.Second, time.Second)
	if g := en.gate("clean"); g.State != rollout.Pass {
		t.Fatalf("a clean round of the back-filled slice did not pass the gate: %+v", g)
	}
}
