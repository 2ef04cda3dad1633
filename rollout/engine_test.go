package rollout_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/rollout/rollouttest"
)

const planYAML = `
version: "2026-11-25.1"
every: 1s
triggers:
  - {name: lag-halt, signal: lag_seconds, above: 30, for: 2m, action: halt, cooldown: 10m, max_attempts: 2}
stages:
  - name: canary
    slice: {collections: [app.users], share: 1%}
    reads: shadow
    advance: auto
    gates:
      - {name: lag, signal: lag_seconds, max: 5, window: 10m}
      - {name: clean, signal: divergent_rows, max: 0, window: 10m}
    triggers:
      - {name: diverged, signal: divergent_rows, above: 0, for: 1m, action: rewind, cooldown: 5m, max_attempts: 3}
      - {name: reads-back, signal: error_ratio, above: 0.05, for: 1m, action: soft-rollback}
  - name: tenth
    slice: {collections: [app.users], share: 10%}
    reads: new
    advance: manual
    gates:
      - {name: lag, signal: lag_seconds, max: 5, window: 10m}
    triggers:
      - {name: undo, signal: divergent_rows, above: 100, for: 1m, action: hard-rollback}
      - {name: fix, signal: divergent_rows, above: 0, for: 1m, action: repair}
  - name: all
    slice: {collections: [app.users, app.orders], share: 100%}
    reads: new
`

type env struct {
	t     *testing.T
	ctx   context.Context
	cfg   rollout.Config
	clock *rollouttest.Clock
	sig   *rollouttest.Signals
	act   *rollouttest.Actions
	store *checkpointstest.Memory
	e     *rollout.Engine
}

func plan(t *testing.T, text string) rollout.Config {
	t.Helper()
	var c rollout.Config
	if err := yaml.Unmarshal([]byte(text), &c); err != nil {
		t.Fatal(err)
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

func newEnv(t *testing.T, mutate func(*rollout.Config)) *env {
	t.Helper()
	return newEnvPlan(t, planYAML, mutate)
}

// newEnvPlan is newEnv with another plan.
func newEnvPlan(t *testing.T, text string, mutate func(*rollout.Config)) *env {
	t.Helper()
	cfg := plan(t, text)
	cfg.RouteFile = filepath.Join(t.TempDir(), "routes.json")
	cfg.DrillTimeout = 5 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	clock := rollouttest.NewClock(time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC))
	en := &env{t: t, ctx: context.Background(), cfg: cfg, clock: clock, sig: &rollouttest.Signals{Clock: clock},
		act: &rollouttest.Actions{}, store: checkpointstest.New()}
	en.start()
	return en
}

// start builds an engine on the env's store, as a restarted daemon would.
func (en *env) start() {
	en.t.Helper()
	e, err := rollout.NewEngine(en.cfg, rollout.Deps{Store: en.store, Signals: en.sig, Actions: en.act, Logger: slog.New(slog.DiscardHandler)},
		rollout.WithClock(en.clock.Now), rollout.WithPoll(time.Millisecond))
	if err != nil {
		en.t.Fatal(err)
	}
	if err := e.Start(en.ctx); err != nil {
		en.t.Fatal(err)
	}
	en.e = e
}

// set gives a signal a value and evaluates at once, as a new reading would be.
func (en *env) set(name string, v float64) {
	en.sig.Set(name, v)
	en.e.Tick(en.ctx)
}

// run ticks every step for d of fake time.
func (en *env) run(d, step time.Duration) {
	en.t.Helper()
	for end := en.clock.Now().Add(d); en.clock.Now().Before(end); {
		en.clock.Add(step)
		en.e.Tick(en.ctx)
	}
}

func (en *env) gate(name string) rollout.GateStatus {
	en.t.Helper()
	for _, g := range en.e.Status().Gates {
		if g.Name == name {
			return g
		}
	}
	en.t.Fatalf("no gate %s in %+v", name, en.e.Status().Gates)
	return rollout.GateStatus{}
}

func (en *env) trigger(name string) rollout.TriggerStatus {
	en.t.Helper()
	for _, g := range en.e.Status().Triggers {
		if g.Name == name {
			return g
		}
	}
	en.t.Fatalf("no trigger %s", name)
	return rollout.TriggerStatus{}
}

func (en *env) audits(action string) []checkpoints.AuditEntry {
	es, _ := en.store.Audit(en.ctx, checkpoints.AuditFilter{Action: action})
	return es
}

func TestGatePendingWithoutDataNeverPasses(t *testing.T) {
	en := newEnv(t, nil)
	en.set("lag_seconds", 1)
	en.run(30*time.Minute, 10*time.Second)
	if g := en.gate("lag"); g.State != rollout.Pass {
		t.Fatalf("lag gate held 30m: %+v", g)
	}
	if g := en.gate("clean"); g.State != rollout.Pending || g.Observed != rollout.ObsNoData {
		t.Fatalf("divergence gate without any reconcile round: %+v", g)
	}
	if st := en.e.Status(); st.StageName != "canary" {
		t.Fatalf("advanced with a pending gate: %s", st.StageName)
	}
	// A round that ended before the stage began is no evidence about it.
	en.sig.SetAt("divergent_rows", 0, en.clock.Now().Add(-time.Hour))
	en.run(20*time.Minute, 10*time.Second)
	if g := en.gate("clean"); g.State != rollout.Pending {
		t.Fatalf("stale round counted: %+v", g)
	}
}

func TestGateBlipNeitherPassesNorFails(t *testing.T) {
	en := newEnv(t, nil)
	en.set("lag_seconds", 1)
	en.run(9*time.Minute, 10*time.Second)
	if g := en.gate("lag"); g.State != rollout.Pending || g.Observed != rollout.ObsOK || g.HeldFor < 530 {
		t.Fatalf("9m of 10m: %+v", g)
	}
	// A 1-minute breach: not a failure, and it restarts the pass window.
	en.set("lag_seconds", 60)
	en.run(time.Minute, 10*time.Second)
	if g := en.gate("lag"); g.State != rollout.Pending || g.Observed != rollout.ObsBreach {
		t.Fatalf("blip made the gate %+v", g)
	}
	en.set("lag_seconds", 1)
	en.run(9*time.Minute, 10*time.Second)
	if g := en.gate("lag"); g.State != rollout.Pending {
		t.Fatalf("window not restarted after the blip: %+v", g)
	}
	en.run(90*time.Second, 10*time.Second)
	if g := en.gate("lag"); g.State != rollout.Pass {
		t.Fatalf("10m after the blip: %+v", g)
	}
	// A good blip inside a long breach does not pass either; a breach held
	// for the window fails.
	en.set("lag_seconds", 6)
	en.run(5*time.Minute, 10*time.Second)
	en.set("lag_seconds", 1)
	en.run(10*time.Second, 10*time.Second)
	en.set("lag_seconds", 6)
	en.run(9*time.Minute, 10*time.Second)
	if g := en.gate("lag"); g.State != rollout.Pending {
		t.Fatalf("9m breach: %+v", g)
	}
	en.run(2*time.Minute, 10*time.Second)
	if g := en.gate("lag"); g.State != rollout.Fail || *g.Value != 6 || g.Threshold != "<= 5" {
		t.Fatalf("11m breach: %+v", g)
	}
	// Each change of state is audited once, with its numbers: pass, back to
	// pending at the breach, fail.
	var changes []string
	for _, e := range en.audits("gate.change") {
		if e.Details["gate"] == "lag" {
			changes = append(changes, e.Reason)
		}
	}
	if strings.Join(changes, ", ") != "pending -> pass, pass -> pending, pending -> fail" {
		t.Fatalf("gate changes audited: %v", changes)
	}
}

func TestAutoAdvanceAfterEveryGateHeldAndBackfillOnWidening(t *testing.T) {
	en := newEnv(t, nil)
	if got := en.act.Slice(); got["app.users"] != 100 || len(got) != 1 {
		t.Fatalf("first stage slice: %v", got)
	}
	en.set("lag_seconds", 1)
	en.run(5*time.Minute, 10*time.Second)
	en.set("divergent_rows", 0) // a clean round arrives 5 minutes in
	en.run(9*time.Minute, 10*time.Second)
	if st := en.e.Status(); st.StageName != "canary" {
		t.Fatalf("advanced before the divergence gate held 10m: %+v", st.Gates)
	}
	en.run(2*time.Minute, 10*time.Second)
	st := en.e.Status()
	if st.StageName != "tenth" || st.Reads != rollout.New {
		t.Fatalf("did not advance: %+v", st)
	}
	if got := en.act.Slice(); got["app.users"] != 1000 {
		t.Fatalf("sink slice after advancing: %v", got)
	}
	if en.act.Count("backfill [app.users]") != 1 {
		t.Fatalf("widening did not backfill the namespace: %v", en.act.Calls)
	}
	pass := en.audits("gate.pass")
	if len(pass) != 1 || pass[0].Actor != rollout.AutoActor || pass[0].Details["gates"] == nil {
		t.Fatalf("gate.pass audit: %+v", pass)
	}
	if len(en.audits("stage.advance")) != 1 || len(en.audits("slice.backfill")) != 1 {
		t.Fatal("advance or backfill not audited")
	}
	// The second stage is manual: gates passing is not enough.
	en.run(30*time.Minute, 10*time.Second)
	if st := en.e.Status(); st.StageName != "tenth" {
		t.Fatalf("a manual stage advanced by itself to %s", st.StageName)
	}
	if _, err := en.e.Advance(en.ctx, "alice", "looks good", false); err != nil {
		t.Fatal(err)
	}
	if got := en.act.Slice(); got["app.orders"] != 10000 || got["app.users"] != 10000 {
		t.Fatalf("last stage slice: %v", got)
	}
	if en.act.Count("backfill [app.orders app.users]") != 1 {
		t.Fatalf("calls: %v", en.act.Calls)
	}
	if _, err := en.e.Advance(en.ctx, "alice", "more", true); !errors.Is(err, rollout.ErrRefused) {
		t.Fatalf("advance past the last stage: %v", err)
	}
}

func TestManualAdvanceRefusedUntilGatesPassUnlessForced(t *testing.T) {
	en := newEnv(t, nil)
	_, err := en.e.Advance(en.ctx, "alice", "go", false)
	if !errors.Is(err, rollout.ErrRefused) || !strings.Contains(err.Error(), "clean is pending (no-data") {
		t.Fatalf("advance with pending gates: %v", err)
	}
	st, err := en.e.Advance(en.ctx, "alice", "go anyway", true)
	if err != nil || st.StageName != "tenth" {
		t.Fatalf("forced advance: %v %+v", err, st)
	}
	es := en.audits("stage.advance")
	if len(es) != 1 || es[0].Actor != "alice" || es[0].Details["forced"] != true {
		t.Fatalf("audit: %+v", es)
	}
}

func TestTriggerBlipShorterThanWindowDoesNotFire(t *testing.T) {
	en := newEnv(t, nil)
	en.set("lag_seconds", 100)
	en.run(110*time.Second, 10*time.Second) // for: 2m
	en.set("lag_seconds", 1)
	en.run(time.Minute, 10*time.Second)
	if n := en.act.Count("pause"); n != 0 || en.trigger("lag-halt").Attempts != 0 {
		t.Fatalf("a 110s blip fired a 2m trigger: %v", en.act.Calls)
	}
	en.set("lag_seconds", 100)
	en.run(2*time.Minute, 10*time.Second)
	// A halt holds the plan; it does not pause the sink, which would only
	// make the lag worse.
	if n := len(en.act.PausedNow()); n != 0 || en.e.Status().Held == "" {
		t.Fatalf("held 2m: plan held %q, %d partitions paused (%v)", en.e.Status().Held, n, en.act.Calls)
	}
	fires := en.audits("trigger.fire")
	if len(fires) != 1 || fires[0].Actor != rollout.AutoActor || fires[0].Details["value"] != 100.0 || fires[0].Result != "ok" {
		t.Fatalf("audit: %+v", fires)
	}
	if st := en.e.Status(); len(st.Paused) != 0 || !strings.Contains(st.Held, "lag-halt") {
		t.Fatalf("status does not say why the plan is held: %q %+v", st.Held, st.Paused)
	}
	// Halted stays halted: nothing advances until a person resumes.
	en.set("lag_seconds", 0)
	en.set("divergent_rows", 0)
	en.run(20*time.Minute, 10*time.Second)
	if st := en.e.Status(); st.StageName != "canary" || st.Held == "" || len(en.act.PausedNow()) != 0 {
		t.Fatalf("advanced or resumed by itself after a halt: %+v", st)
	}
	if _, err := en.e.Advance(en.ctx, "alice", "go", true); !errors.Is(err, rollout.ErrRefused) {
		t.Fatalf("advance while halted: %v", err)
	}
	en.e.Resume(en.ctx, "alice", "lag understood")
	en.run(time.Minute, 10*time.Second)
	if st := en.e.Status(); st.StageName != "tenth" || len(en.act.PausedNow()) != 0 {
		t.Fatalf("after resume: %+v paused %v", st, en.act.PausedNow())
	}
}

func TestTriggerCooldownAndMaxAttemptsThenWaitsForAPerson(t *testing.T) {
	en := newEnv(t, nil)
	en.set("divergent_rows", 5) // diverged: rewind, for 1m, cooldown 5m, max 3
	en.run(time.Minute, 10*time.Second)
	if n := en.act.Count("rewind"); n != 1 {
		t.Fatalf("first firing: %v", en.act.Calls)
	}
	// Condition still true: cooling down for 5m.
	en.run(4*time.Minute, 10*time.Second)
	if n := en.act.Count("rewind"); n != 1 {
		t.Fatalf("fired during the cool-down: %d", n)
	}
	if tr := en.trigger("diverged"); tr.CooldownLeft <= 0 || tr.CooldownLeft > 60 || tr.Attempts != 1 {
		t.Fatalf("status: %+v", tr)
	}
	en.run(2*time.Minute, 10*time.Second)
	en.run(6*time.Minute, 10*time.Second)
	if n := en.act.Count("rewind"); n != 3 {
		t.Fatalf("after two cool-downs: %d rewinds", n)
	}
	// A rewind pauses only for its duration.
	if n := len(en.act.PausedNow()); n != 0 {
		t.Fatalf("rewind left %d partitions paused", n)
	}
	en.run(6*time.Minute, 10*time.Second)
	if n := en.act.Count("rewind"); n != 3 {
		t.Fatalf("fired past max_attempts: %d", n)
	}
	st := en.e.Status()
	// Exhausted: the plan is held for a person, and the sink keeps running
	// so that rounds can still show whether the cause is gone.
	if st.Held == "" || !en.trigger("diverged").Exhausted || len(en.act.PausedNow()) != 0 {
		t.Fatalf("exhausted trigger did not hold (without pausing the sink): %+v paused=%v", st, en.act.PausedNow())
	}
	// Nothing advances while held, even with every gate passing.
	en.set("divergent_rows", 0)
	en.set("lag_seconds", 0)
	en.run(20*time.Minute, 10*time.Second)
	if st := en.e.Status(); st.StageName != "canary" {
		t.Fatal("advanced while waiting for a person")
	}
	// A person resumes: partitions released, attempts back.
	if _, err := en.e.Resume(en.ctx, "bob", "fixed the mapping"); err != nil {
		t.Fatal(err)
	}
	if len(en.act.PausedNow()) != 0 || en.trigger("diverged").Attempts != 0 || en.e.Status().Held != "" {
		t.Fatalf("resume: %+v", en.e.Status())
	}
}

func TestDryRunAuditsWhatItWouldDo(t *testing.T) {
	en := newEnv(t, func(c *rollout.Config) { c.DryRun = true })
	en.set("divergent_rows", 0)
	en.set("lag_seconds", 1)
	en.run(11*time.Minute, 10*time.Second)
	if st := en.e.Status(); st.StageName != "canary" || !st.DryRun {
		t.Fatalf("dry run advanced: %+v", st)
	}
	en.run(5*time.Minute, 10*time.Second)
	would := en.audits("gate.pass")
	if len(would) != 1 || would[0].Result != "dry-run" || would[0].Details["to"] != "tenth" {
		t.Fatalf("would-advance audited %d times: %+v", len(would), would)
	}
	en.set("lag_seconds", 100)
	en.set("error_ratio", 0.5)
	en.run(3*time.Minute, 10*time.Second)
	fires := en.audits("trigger.fire")
	if len(fires) != 2 {
		t.Fatalf("want lag-halt and reads-back to say what they would do: %+v", fires)
	}
	for _, f := range fires {
		if f.Result != "dry-run" || f.Details["would"] == nil {
			t.Fatalf("dry-run audit: %+v", f)
		}
	}
	if n := en.act.Count("pause"); n != 0 || en.e.Route("app.users", []byte("anything")) == "x" {
		t.Fatalf("dry run acted: %v", en.act.Calls)
	}
	if st := en.e.Status(); st.SoftRollback || len(st.Paused) != 0 {
		t.Fatalf("dry run changed state: %+v", st)
	}
}

// keyIn finds a key whose bucket is in [lo, hi).
func keyIn(t *testing.T, lo, hi int) []byte {
	t.Helper()
	for i := 0; i < 1_000_000; i++ {
		k := []byte{0x12, byte(i), byte(i >> 8), byte(i >> 16), 0, 0, 0, 0}
		if b := rollout.Bucket(k); b >= lo && b < hi {
			return k
		}
	}
	t.Fatal("no key found")
	return nil
}

func TestRoutesPerStageAndSoftRollback(t *testing.T) {
	en := newEnv(t, nil)
	in1, in10, out := keyIn(t, 0, 100), keyIn(t, 100, 1000), keyIn(t, 1000, 10000)
	check := func(when string, want map[string]rollout.Mode) {
		t.Helper()
		file, err := rollout.LoadRoutes(en.cfg.RouteFile)
		if err != nil {
			t.Fatal(err)
		}
		for name, key := range map[string][]byte{"in1": in1, "in10": in10, "out": out} {
			if got := en.e.Route("app.users", key); got != want[name] {
				t.Errorf("%s: %s routes %s, want %s", when, name, got, want[name])
			}
			if got := file.Route("app.users", key); got != want[name] {
				t.Errorf("%s: route file: %s routes %s, want %s", when, name, got, want[name])
			}
		}
		if got := en.e.Route("app.orders", in1); got != want["orders"] {
			t.Errorf("%s: app.orders routes %s, want %s", when, got, want["orders"])
		}
		if file.Generation != en.e.Routes().Generation {
			t.Errorf("%s: route file generation %d, table %d", when, file.Generation, en.e.Routes().Generation)
		}
	}
	check("canary", map[string]rollout.Mode{"in1": rollout.Shadow, "in10": rollout.Legacy, "out": rollout.Legacy, "orders": rollout.Legacy})
	en.e.Advance(en.ctx, "alice", "go", true)
	check("tenth", map[string]rollout.Mode{"in1": rollout.New, "in10": rollout.New, "out": rollout.Legacy, "orders": rollout.Legacy})
	gen := en.e.Routes().Generation

	// error_ratio breach for 1m fires reads-back (plan-wide triggers plus the stage's).
	en.set("error_ratio", 0.2)
	en.run(time.Minute, 10*time.Second) // the tenth stage has no reads-back trigger
	if en.e.Status().SoftRollback {
		t.Fatal("a trigger of another stage fired")
	}
	if _, err := en.e.Rollback(en.ctx, "alice", "errors in the new read path", false); err != nil {
		t.Fatal(err)
	}
	check("soft rollback", map[string]rollout.Mode{"in1": rollout.Legacy, "in10": rollout.Legacy, "out": rollout.Legacy, "orders": rollout.Legacy})
	if en.e.Routes().Generation != gen+1 {
		t.Fatalf("generation %d after one change from %d", en.e.Routes().Generation, gen)
	}
	if en.act.Slice()["app.users"] != 1000 {
		t.Fatal("a soft rollback must keep the sink writing the slice")
	}
	if _, err := en.e.Resume(en.ctx, "alice", "fixed"); err != nil {
		t.Fatal(err)
	}
	check("resumed", map[string]rollout.Mode{"in1": rollout.New, "in10": rollout.New, "out": rollout.Legacy, "orders": rollout.Legacy})
	en.e.Abort(en.ctx, "alice", "stop")
	check("aborted", map[string]rollout.Mode{"in1": rollout.Legacy, "in10": rollout.Legacy, "out": rollout.Legacy, "orders": rollout.Legacy})
}

func TestSoftRollbackTriggerFlipsRoutesAtOnce(t *testing.T) {
	en := newEnv(t, nil)
	in1 := keyIn(t, 0, 100)
	en.set("error_ratio", 0.2)
	en.run(50*time.Second, 10*time.Second)
	if en.e.Route("app.users", in1) != rollout.Shadow {
		t.Fatal("flipped before the window")
	}
	en.run(10*time.Second, 10*time.Second)
	if got := en.e.Route("app.users", in1); got != rollout.Legacy {
		t.Fatalf("after the trigger fired: %s", got)
	}
	f, _ := rollout.LoadRoutes(en.cfg.RouteFile)
	if f.Route("app.users", in1) != rollout.Legacy {
		t.Fatal("route file not flipped in the same evaluation")
	}
}

func TestHardRollbackNarrowsAndMarksReverted(t *testing.T) {
	en := newEnv(t, nil)
	en.e.Advance(en.ctx, "alice", "go", true)
	en.set("divergent_rows", 500) // undo: hard-rollback above 100 for 1m
	en.run(time.Minute, 10*time.Second)
	st := en.e.Status()
	if st.StageName != "canary" || len(st.Reverted) != 1 || st.Reverted[0] != "tenth" || st.Held == "" {
		t.Fatalf("after hard rollback: %+v", st)
	}
	if en.act.Slice()["app.users"] != 100 {
		t.Fatalf("sink slice not narrowed: %v", en.act.Slice())
	}
	if en.e.Route("app.users", keyIn(t, 100, 1000)) != rollout.Legacy {
		t.Fatal("keys of the reverted stage still route to the new store")
	}
	// Gates pass again, but a reverted stage waits for a person.
	en.set("divergent_rows", 0)
	en.set("lag_seconds", 0)
	en.run(20*time.Minute, 10*time.Second)
	if en.e.Status().StageName != "canary" {
		t.Fatal("re-entered a reverted stage automatically")
	}
	if _, err := en.e.Advance(en.ctx, "alice", "retry after the fix", false); err != nil {
		t.Fatal(err)
	}
	if st := en.e.Status(); st.StageName != "tenth" || len(st.Reverted) != 0 || st.Held != "" {
		t.Fatalf("retry: %+v", st)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	en := newEnv(t, nil)
	en.e.Advance(en.ctx, "alice", "go", true)
	en.set("divergent_rows", 5) // fix: repair
	// Fires at 1m; re-emits, is applied, and judged by the next sample.
	en.run(time.Minute+40*time.Second, 10*time.Second)
	en.e.Rollback(en.ctx, "alice", "check reads", false)
	before := en.e.Status()
	gen := en.e.Routes().Generation
	if before.Triggers[len(before.Triggers)-1].Attempts != 1 {
		t.Fatalf("repair did not fire: %+v", before.Triggers)
	}

	en.act = &rollouttest.Actions{} // a new process: the sink knows nothing yet
	en.start()
	after := en.e.Status()
	if after.StageName != "tenth" || !after.SoftRollback || en.e.Routes().Generation != gen {
		t.Fatalf("after restart: %+v (generation %d, was %d)", after, en.e.Routes().Generation, gen)
	}
	if en.act.Slice()["app.users"] != 1000 {
		t.Fatalf("restart did not hand the sink its slice: %v", en.act.Slice())
	}
	if en.act.Count("backfill") != 0 {
		t.Fatal("a restart must not backfill")
	}
	var fix rollout.TriggerStatus
	for _, tr := range after.Triggers {
		if tr.Name == "fix" {
			fix = tr
		}
	}
	if fix.Attempts != 1 || fix.LastFired.IsZero() {
		t.Fatalf("trigger bookkeeping lost: %+v", fix)
	}
	// The cool-down carries over: still bad, but no second repair for 10m.
	en.run(5*time.Minute, 10*time.Second)
	if en.act.Count("repair") != 0 {
		t.Fatal("fired again inside the cool-down after a restart")
	}
	en.run(6*time.Minute, 10*time.Second)
	if en.act.Count("repair") != 1 {
		t.Fatalf("calls: %v", en.act.Calls)
	}
}

func TestPlanRevisionKeepsStageByName(t *testing.T) {
	en := newEnv(t, nil)
	en.e.Advance(en.ctx, "alice", "go", true)
	en.cfg.Version = "2026-11-25.2"
	en.cfg.Stages[1].Gates[0].Window = time.Minute
	en.start()
	st := en.e.Status()
	if st.StageName != "tenth" || st.PlanVersion != "2026-11-25.2" || st.Held != "" {
		t.Fatalf("%+v", st)
	}
	if en.e.Routes().PlanVersion != "2026-11-25.2" {
		t.Fatal("routes do not name the new plan")
	}
	en.cfg.Version = "3"
	en.cfg.Stages[1].Name = "ten-percent"
	en.start()
	if st := en.e.Status(); st.Held == "" {
		t.Fatalf("a vanished stage must wait for a person: %+v", st)
	}
}

func TestDrillEveryActionRestores(t *testing.T) {
	for _, tc := range []struct {
		trigger string
		stage   int
	}{{"lag-halt", 0}, {"diverged", 0}, {"reads-back", 0}, {"undo", 1}, {"fix", 1}} {
		t.Run(tc.trigger, func(t *testing.T) {
			en := newEnv(t, nil)
			if tc.stage == 1 {
				en.e.Advance(en.ctx, "alice", "go", true)
			}
			before := en.e.Status()
			slice := en.act.Slice()
			rep, err := en.e.Drill(en.ctx, "alice", "monthly drill", tc.trigger)
			if err != nil || rep.Result != rollout.Pass || len(rep.Steps) != 3 {
				t.Fatalf("drill: %v %+v", err, rep)
			}
			after := en.e.Status()
			if after.StageName != before.StageName || after.SoftRollback || len(en.act.PausedNow()) != 0 ||
				!en.act.Slice().Equal(slice) || after.Held != "" || len(after.Reverted) != 0 {
				t.Fatalf("drill left the system changed: before %+v after %+v paused %v", before, after, en.act.PausedNow())
			}
			for _, tr := range after.Triggers {
				if tr.Attempts != 0 {
					t.Fatalf("a drill counted as an attempt: %+v", tr)
				}
			}
			es := en.audits("drill")
			if len(es) != 1 || es[0].Actor != "alice" || es[0].Result != "ok" || es[0].Reason != "monthly drill" {
				t.Fatalf("drill audit: %+v", es)
			}
			if _, ok, _ := checkpoints.GetJSON[rollout.DrillReport](en.ctx, en.store, rollout.DrillKeyPrefix+rep.ID); !ok {
				t.Fatal("drill report not stored")
			}
		})
	}
}

func TestDrillHaltKeepsPartitionsAPersonPaused(t *testing.T) {
	en := newEnv(t, nil)
	tps, _ := en.act.Partitions(en.ctx, en.act.Slice())
	en.act.Pause(en.ctx, tps[:1], "operator")
	rep, err := en.e.Drill(en.ctx, "alice", "drill", "lag-halt")
	if err != nil || rep.Result != rollout.Pass {
		t.Fatalf("%v %+v", err, rep)
	}
	if p := en.act.PausedNow(); len(p) != 1 || p[0] != tps[0] {
		t.Fatalf("drill resumed a partition an operator paused: %v", p)
	}
}

func TestDrillUnknownTrigger(t *testing.T) {
	en := newEnv(t, nil)
	_, err := en.e.Drill(en.ctx, "alice", "drill", "nope")
	if !errors.Is(err, rollout.ErrUnknownTrigger) || !strings.Contains(err.Error(), "lag-halt, diverged, reads-back") {
		t.Fatalf("%v", err)
	}
}

// TestEvaluatorRoleMovesBetweenEngines plays an election on two engines
// sharing one store: only the evaluator takes plan commands and fires
// triggers, and the engine that takes the role over continues from the state
// the other stored, its trigger bookkeeping included.
func TestEvaluatorRoleMovesBetweenEngines(t *testing.T) {
	en := newEnv(t, nil)
	a := en.e
	b, err := rollout.NewEngine(en.cfg, rollout.Deps{Store: en.store, Signals: en.sig, Actions: &rollouttest.Actions{}, Logger: slog.New(slog.DiscardHandler)},
		rollout.WithClock(en.clock.Now), rollout.WithPoll(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetEvaluating(en.ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(en.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Advance(en.ctx, "bob", "not the evaluator", true); !errors.Is(err, rollout.ErrRefused) || !b.Status().Following {
		t.Fatalf("a follower took a plan command: %v (following %v)", err, b.Status().Following)
	}
	if _, err := a.Advance(en.ctx, "alice", "go", true); err != nil {
		t.Fatal(err)
	}
	en.set("divergent_rows", 5) // tenth's fix trigger: repair
	en.run(time.Minute+40*time.Second, 10*time.Second)
	if en.act.Count("repair") != 1 {
		t.Fatalf("the evaluator did not repair: %v", en.act.Calls)
	}

	// The role moves: a stops evaluating, b starts.
	if err := a.SetEvaluating(en.ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := b.SetEvaluating(en.ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Rollback(en.ctx, "alice", "too late", false); !errors.Is(err, rollout.ErrRefused) {
		t.Fatalf("the former evaluator took a plan command: %v", err)
	}
	st := b.Status()
	if st.StageName != "tenth" || st.Following {
		t.Fatalf("the new evaluator: stage %s following %v, want tenth and evaluating", st.StageName, st.Following)
	}
	var fix rollout.TriggerStatus
	for _, tr := range st.Triggers {
		if tr.Name == "fix" {
			fix = tr
		}
	}
	if fix.Attempts != 1 {
		t.Fatalf("the new evaluator lost the trigger's attempts: %+v", fix)
	}
	// Ticking both, only b acts; the repair's cool-down (10m) carried over.
	calls := en.act.Count("repair")
	for end := en.clock.Now().Add(5 * time.Minute); en.clock.Now().Before(end); {
		en.clock.Add(10 * time.Second)
		a.Tick(en.ctx)
		b.Tick(en.ctx)
	}
	if en.act.Count("repair") != calls {
		t.Fatal("the former evaluator fired a trigger")
	}
	if _, err := b.Rollback(en.ctx, "bob", "reads back", false); err != nil {
		t.Fatalf("the new evaluator refused a plan command: %v", err)
	}
	a.Tick(en.ctx)
	if !a.Status().SoftRollback {
		t.Fatal("the follower did not pick up the new evaluator's state")
	}
}
