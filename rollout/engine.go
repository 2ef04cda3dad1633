package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/leader"
)

// StateKey holds the engine's State.
const StateKey = checkpoints.PrefixRollout + "state"

// DrillKeyPrefix holds drill reports, one per drill.
const DrillKeyPrefix = checkpoints.PrefixRollout + "drill/"

// AutoActor is the audit actor of automatic decisions.
const AutoActor = "auto:rollout"

// Errors an operator's request can meet.
var (
	// ErrRefused: the request does not fit the plan's state; the message says why.
	ErrRefused = errors.New("refused")
	// ErrUnknownTrigger: no trigger of that name in the current stage.
	ErrUnknownTrigger = errors.New("unknown trigger")
)

// State is what the engine restarts from.
type State struct {
	PlanVersion string `json:"plan_version"`
	// Stage indexes the plan's stages; -1 is before the first (nothing applied).
	Stage      int       `json:"stage"`
	StageName  string    `json:"stage_name"`
	StageSince time.Time `json:"stage_since"`
	// SoftRollback routes the slice's reads to legacy.
	SoftRollback bool `json:"soft_rollback,omitempty"`
	// Reverted names the stages a hard rollback left; they do not advance
	// again automatically.
	Reverted map[string]bool `json:"reverted,omitempty"`
	// Held, when set, says why automatic advancing waits for a person.
	Held string `json:"held,omitempty"`
	// Halted is set by a halt (a trigger's, an exhausted trigger's, or a
	// repair over its bound): `plan advance` is refused until `plan resume`.
	Halted  bool `json:"halted,omitempty"`
	Aborted bool `json:"aborted,omitempty"`
	// Paused are the partitions the rollout paused (resume releases only these).
	Paused []envelope.TopicPartition `json:"paused,omitempty"`
	// Triggers are keyed by "<stage>/<trigger>".
	Triggers map[string]TriggerState `json:"triggers,omitempty"`
	// Applied is the slice the sink was last told to write.
	Applied Slice `json:"applied"`
	// Widening follows the backfill the last widening of the slice asked
	// for. Until it is applied (capture took the requests and the sink
	// committed past them), and for rounds that started before, reconcile
	// evidence says nothing about the stage: the keys it added may not be
	// written yet.
	Widening *Effect `json:"widening,omitempty"`
	// WouldAdvance is the stage a dry run announced it would advance to.
	WouldAdvance string `json:"would_advance,omitempty"`
	Routes       Routes `json:"routes"`
	// LeaderEpoch is the leadership term of the evaluator that last wrote
	// the state (election on; see Deps.Deposed): an evaluator of an older
	// term may no longer write it.
	LeaderEpoch int64 `json:"leader_epoch,omitempty"`
}

// Status is GET /v1/plan.
type Status struct {
	PlanVersion  string                    `json:"plan_version"`
	DryRun       bool                      `json:"dry_run"`
	Stage        int                       `json:"stage"`
	StageName    string                    `json:"stage_name"`
	Stages       []string                  `json:"stages"`
	StageSince   time.Time                 `json:"stage_since"`
	Advance      string                    `json:"advance,omitempty"`
	Slice        map[string]any            `json:"slice"`
	Reads        Mode                      `json:"reads,omitempty"`
	Complete     bool                      `json:"complete"`
	SoftRollback bool                      `json:"soft_rollback"`
	Reverted     []string                  `json:"reverted"`
	Held         string                    `json:"held,omitempty"`
	Aborted      bool                      `json:"aborted"`
	Paused       []envelope.TopicPartition `json:"paused_by_rollout"`
	Gates        []GateStatus              `json:"gates"`
	// Widening is the backfill of the keys the current stage added.
	Widening  *Effect         `json:"widening,omitempty"`
	Triggers  []TriggerStatus `json:"triggers"`
	RouteGen  int64           `json:"route_generation"`
	Evaluated time.Time       `json:"evaluated,omitzero"`
	LastError string          `json:"last_error,omitempty"`
	// Following is true on a daemon that follows another's evaluation
	// (rollout.follow, or an election another daemon leads).
	Following bool `json:"following"`
}

// Deps are what an engine needs from the daemon.
type Deps struct {
	// Store keeps the plan's state, shared by every daemon.
	Store checkpoints.Store
	// Signals are what gates and triggers read.
	Signals Signals
	// Actions carry out what the plan decides.
	Actions Actions
	// Deposed, when set, turns fencing on: every write of the state, and
	// every action, is conditional on the leadership term SetTerm gave
	// this engine; the stored state must not carry a newer term's epoch
	// (leader.Check). A refused write makes the engine a follower at once
	// (it acts no more), is audited as leader.fenced, and is passed to
	// Deposed (the elector counts it and steps down).
	Deposed func(error)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the engine's metrics; nil for none.
	Registerer prometheus.Registerer
}

// Option tunes an Engine's timing (tests).
type Option func(*Engine)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(e *Engine) { e.now = now } }

// WithPoll sets how often drills re-check an effect. Default 200ms.
func WithPoll(d time.Duration) Option { return func(e *Engine) { e.poll = d } }

// Engine runs a plan. Its methods are safe for concurrent use: operations
// (evaluation, operator requests, drills) run one at a time; Status and Route
// never wait for them.
type Engine struct {
	cfg   Config
	store checkpoints.Store
	sig   Signals
	act   Actions
	log   *slog.Logger
	now   func() time.Time
	reg   prometheus.Registerer
	poll  time.Duration
	met   *metrics
	// auto carries out automatic decisions: perform, or wouldDo in a dry run.
	// ef follows the action's effect until a fresh round judges it.
	auto func(ctx context.Context, a Action, reason string, details map[string]any, ef *Effect) error

	// deposed is Deps.Deposed: set, fencing is on.
	deposed func(error)

	op sync.Mutex // serialises everything that changes st
	st State
	// epoch is the leadership term this engine evaluates under (SetTerm);
	// saved is the state as last written under it, so an unchanged state
	// is not written again (each conditional write is a record kept for
	// good in the Kafka store). Both guarded by op.
	epoch int64
	saved []byte
	// fenced is the newest term this engine was deposed from; SetTerm
	// ignores it and older ones (the elector may not have stepped down yet).
	fenced int64
	// lastTick is when the evaluator last evaluated; a longer gap than
	// expected means this process may have been frozen (see Tick).
	lastTick time.Time
	// following is true while another daemon evaluates the plan: set by
	// rollout.follow, or by SetEvaluating as an election moves the role.
	following atomic.Bool
	// gates and trigs follow conditions of the current stage; they are not
	// persisted: after a restart every window starts again, which only delays.
	gates map[string]*hold
	trigs map[string]*hold
	// verdicts are the gates' last states, to audit each change once.
	verdicts map[string]string
	// lastEmit is when each trigger's repair last re-emitted keys: the
	// rate limit's clock (in memory; after a restart it starts again).
	lastEmit map[string]time.Time

	mu     sync.RWMutex // guards status
	status Status
	routes atomic.Pointer[Routes]
}

// NewEngine builds an engine for cfg (already defaulted and validated). Call Start
// before anything else.
func NewEngine(cfg Config, d Deps, opts ...Option) (*Engine, error) {
	if !cfg.Enabled() {
		return nil, errors.New("rollout: no plan (rollout.stages is empty)")
	}
	log := d.Logger
	if log == nil {
		log = slog.Default()
	}
	e := &Engine{cfg: cfg, store: d.Store, sig: d.Signals, act: d.Actions, log: log, reg: d.Registerer, deposed: d.Deposed,
		now: time.Now, poll: 200 * time.Millisecond,
		gates: map[string]*hold{}, trigs: map[string]*hold{}, verdicts: map[string]string{},
		lastEmit: map[string]time.Time{}}
	for _, o := range opts {
		o(e)
	}
	e.log = e.log.With("stage", "rollout", "plan", cfg.Version)
	e.met = newMetrics(e.reg)
	e.auto = e.perform
	if cfg.DryRun {
		e.auto = e.wouldDo
	}
	e.following.Store(cfg.Follow)
	return e, nil
}

// Start loads the state (or begins the first stage), hands the sink its slice
// and writes the route file.
func (e *Engine) Start(ctx context.Context) error {
	e.op.Lock()
	defer e.op.Unlock()
	return e.start(ctx)
}

// SetEvaluating makes this engine the plan's evaluator (on) or a follower of
// the stored state (off), as an election gives or takes the role. A new
// evaluator reloads the state the previous one stored and starts every gate
// and trigger window again, as after a restart: that only delays. An engine
// configured with rollout.follow never evaluates.
func (e *Engine) SetEvaluating(ctx context.Context, on bool) error {
	e.op.Lock()
	defer e.op.Unlock()
	if !on {
		e.stopEvaluating()
		return nil
	}
	if e.cfg.Follow || !e.following.Load() {
		return nil
	}
	return e.startEvaluating(ctx)
}

// SetTerm is SetEvaluating for an elected leader: epoch is the term this
// daemon now holds (0: none, follow). With Deps.Deposed set every write carries
// it. A new term reloads the stored state even if this engine was
// evaluating already: another leader may have written it in between.
func (e *Engine) SetTerm(ctx context.Context, epoch int64) error {
	e.op.Lock()
	defer e.op.Unlock()
	if epoch == 0 {
		e.stopEvaluating()
		e.epoch = 0
		return nil
	}
	if e.cfg.Follow || (!e.following.Load() && e.epoch == epoch) || epoch <= e.fenced {
		return nil
	}
	e.following.Store(true)
	e.epoch = epoch
	return e.startEvaluating(ctx)
}

func (e *Engine) stopEvaluating() {
	if !e.following.Swap(true) {
		e.log.Info("rollout: following the plan; another daemon evaluates it")
		e.refresh(e.now().UTC(), nil)
	}
}

func (e *Engine) startEvaluating(ctx context.Context) error {
	e.following.Store(false)
	e.saved, e.lastTick = nil, time.Time{}
	clear(e.gates)
	clear(e.trigs)
	clear(e.verdicts)
	if err := e.start(ctx); err != nil {
		e.following.Store(true)
		return err
	}
	return nil
}

func (e *Engine) start(ctx context.Context) error {
	st, ok, err := checkpoints.GetJSON[State](ctx, e.store, StateKey)
	if err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	now := e.now().UTC()
	if e.following.Load() {
		if !ok {
			// The evaluator has not started yet; it will begin with the
			// first stage, so the sink must not skip those keys meanwhile.
			st = State{PlanVersion: e.cfg.Version, StageName: e.cfg.Stages[0].Name, StageSince: now}
		}
		e.follow(ctx, st)
		e.refresh(now, nil)
		return nil
	}
	switch {
	case !ok:
		st = State{PlanVersion: e.cfg.Version, Stage: 0, StageName: e.cfg.Stages[0].Name, StageSince: now}
		e.audit(ctx, AutoActor, "plan.start", st.StageName, "", "ok", map[string]any{"stages": len(e.cfg.Stages)})
	case st.PlanVersion != e.cfg.Version:
		// A new revision of the plan: keep the stage by name, so editing
		// thresholds does not restart the migration; a stage that no longer
		// exists needs a person.
		from := st.PlanVersion
		st.PlanVersion = e.cfg.Version
		if i := e.stageIndex(st.StageName); i >= 0 || st.Stage < 0 {
			if st.Stage >= 0 {
				st.Stage = i
			}
		} else {
			st.Stage = min(st.Stage, len(e.cfg.Stages)-1)
			st.StageName = e.cfg.Stages[st.Stage].Name
			st.Held = fmt.Sprintf("plan changed from %s to %s and its stage is gone; check the slice and run `tidemark plan resume`", from, e.cfg.Version)
		}
		e.audit(ctx, AutoActor, "plan.version", st.StageName, "", "ok", map[string]any{"from": from, "to": e.cfg.Version, "held": st.Held})
	}
	e.st = st
	if err := e.applySlice(ctx); err != nil {
		return err
	}
	if err := e.publish(ctx); err != nil {
		return err
	}
	e.refresh(now, nil)
	e.log.Info("rollout started", "stage", e.st.StageName, "dry_run", e.cfg.DryRun, "held", e.st.Held)
	return nil
}

// Run evaluates every cfg.Every until ctx ends. An evaluation error is
// logged and shown in Status; it never stops the daemon.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.Every)
	defer t.Stop()
	for {
		if err := e.Tick(ctx); err != nil && ctx.Err() == nil {
			e.log.Warn("evaluation failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (e *Engine) stageIndex(name string) int {
	for i, s := range e.cfg.Stages {
		if s.Name == name {
			return i
		}
	}
	return -1
}

func (e *Engine) stage() *Stage {
	if e.st.Stage < 0 || e.st.Stage >= len(e.cfg.Stages) {
		return nil
	}
	return &e.cfg.Stages[e.st.Stage]
}

// slice is what the current stage lets the sink write.
func (e *Engine) slice() Slice {
	if s := e.stage(); s != nil {
		return s.Slice.Slice()
	}
	return Slice{}
}

// Tick evaluates once: reads signals, moves gate and trigger windows, fires
// triggers that held, and advances when the stage allows it.
func (e *Engine) Tick(ctx context.Context) error {
	e.op.Lock()
	defer e.op.Unlock()
	now := e.now().UTC()
	if e.following.Load() {
		st, ok, err := checkpoints.GetJSON[State](ctx, e.store, StateKey)
		if err == nil && ok {
			err = e.follow(ctx, st)
		}
		e.refresh(now, err)
		return err
	}
	if err := e.checkTerm(ctx, now); err != nil {
		e.refresh(now, err)
		return err
	}
	var samples map[string]Sample
	var sampleErr error
	if !e.st.Aborted {
		samples, sampleErr = e.sig.Sample(ctx, e.slice())
	}
	read := func(name string) (Sample, bool) {
		s, ok := samples[name]
		if ok && e.stale(s) {
			return s, false
		}
		return s, ok
	}
	var errs []error
	if sampleErr != nil {
		errs = append(errs, fmt.Errorf("signals: %w", sampleErr))
	}
	if !e.st.Aborted {
		if err := e.progress(ctx, now, samples); err != nil {
			errs = append(errs, err)
		}
	}
	// deposed: a refused write made this engine a follower; it acts no more.
	deposed := e.following.Load
	if st := e.stage(); st != nil && !e.st.Aborted && !deposed() {
		for _, g := range st.Gates {
			h := e.hold(e.gates, g.Name)
			s, has := read(g.Signal)
			h.observe(now, s, has, has && g.ok(s.Value))
			e.auditVerdict(ctx, g.evaluate(h, now))
		}
		for _, t := range e.cfg.triggers(e.st.Stage) {
			h := e.hold(e.trigs, t.Name)
			s, has := read(t.Signal)
			if has {
				e.judge(ctx, t, s, now)
				// Evidence the last firing acted on, or gathered before
				// its effect was applied, says nothing new.
				has = e.fresh(t, s)
			}
			h.observe(now, s, has, !(has && t.breached(s.Value)))
			// The hold says ok/breach for the gate sense; a trigger's
			// condition is the breach.
			if h.obs != ObsBreach || h.heldFor(now) < t.For {
				continue
			}
			if err := e.fire(ctx, t, h, s, now); err != nil {
				errs = append(errs, err)
			}
			if deposed() {
				break
			}
		}
		if !deposed() {
			if err := e.maybeAdvance(ctx, now); err != nil {
				errs = append(errs, err)
			}
		}
	}
	err := errors.Join(errs...)
	e.refresh(now, err)
	return err
}

// follow adopts the evaluator's state: the sink's slice and the routes.
func (e *Engine) follow(ctx context.Context, st State) error {
	var err error
	if e.st.Applied == nil || !e.st.Applied.Equal(st.Applied) || st.Applied == nil {
		want := st.Applied
		if want == nil {
			want = e.cfg.Stages[0].Slice.Slice()
		}
		if err = e.act.ApplySlice(ctx, want); err == nil {
			e.met.setSlice(want)
			st.Applied = want
		}
	}
	e.st = st
	r := st.Routes
	if r.Generation == 0 {
		r = e.buildRoutes()
	}
	e.routes.Store(&r)
	e.met.routeGen.Set(float64(r.Generation))
	if e.cfg.RouteFile != "" {
		if cur, lerr := LoadRoutes(e.cfg.RouteFile); lerr != nil || cur.Generation != r.Generation {
			err = errors.Join(err, writeRoutes(e.cfg.RouteFile, &r))
		}
	}
	return err
}

// CurrentSlice is the slice the plan's evaluator last handed the sink, for
// other components (reconcile compares only keys inside it). ok is false
// when no plan has run: every key is in.
func CurrentSlice(ctx context.Context, store checkpoints.Store) (s Slice, ok bool, err error) {
	st, ok, err := checkpoints.GetJSON[State](ctx, store, StateKey)
	if err != nil || !ok {
		return nil, false, err
	}
	return st.Applied, true, nil
}

func (e *Engine) hold(m map[string]*hold, name string) *hold {
	h := m[name]
	if h == nil {
		h = &hold{}
		m[name] = h
	}
	return h
}

func (e *Engine) triggerKey(name string) string { return e.st.StageName + "/" + name }

// fire acts on a trigger whose condition held for its window, unless it is
// cooling down or exhausted. After max_attempts automatic firings the next one
// halts instead and waits for a person.
//
// A trigger acts on fresh evidence only: it does not fire while its last
// firing is pending (its effect not yet applied, or no evidence that started
// after it has reported), nor twice on one round. A firing counts against
// max_attempts once judged (see judge). While the plan is held, only the
// rollbacks fire: a hold stops repairs and rewinds, not the sink.
func (e *Engine) fire(ctx context.Context, t Trigger, h *hold, s Sample, now time.Time) error {
	key := e.triggerKey(t.Name)
	ts := e.st.Triggers[key]
	switch {
	case ts.Exhausted, ts.Effect != nil:
		return nil
	case s.Source != "" && s.Source == ts.FiredOn:
		return nil
	case !ts.LastFired.IsZero() && now.Sub(ts.LastFired) < t.Cooldown:
		return nil
	case e.st.Held != "" && t.Action != SoftRollback && t.Action != HardRollback:
		return nil
	}
	if err := e.fence(ctx); err != nil {
		return err
	}
	src := s.Source
	if src == "" {
		src = "sample at " + s.At.UTC().Format(time.RFC3339)
	}
	details := map[string]any{"trigger": t.Name, "signal": t.Signal, "condition": t.breachText(), "value": deref(h.value),
		"held_for_seconds": h.heldFor(now).Seconds(), "for_seconds": t.For.Seconds(), "attempt": ts.Attempts + 1,
		"max_attempts": t.MaxAttempts, "stage": e.st.StageName, "plan_version": e.cfg.Version, "fired_on": src,
		"evidence_started": s.started().UTC()}
	action, reason := t.Action, fmt.Sprintf("trigger %s: %s %s held for %s (%s)", t.Name, t.Signal, t.breachText(),
		h.heldFor(now).Round(time.Second), src)
	var ef *Effect
	if ts.Attempts >= t.MaxAttempts {
		ts.Exhausted = true
		action = Halt
		reason = fmt.Sprintf("trigger %s acted %d times (max_attempts) and %s still holds; halted, waiting for a person",
			t.Name, ts.Attempts, t.Signal+" "+t.breachText())
		details["exhausted"] = true
	} else {
		ts.LastFired, ts.FiredOn = now, src
		ef = &Effect{Action: action, Phase: PhaseApplied, AppliedAt: now}
		if action == Repair {
			over, err := e.planRepair(ctx, ef, details)
			if err != nil {
				return err
			}
			if over != "" {
				// Not a repair to do on its own: a person decides.
				ts.Exhausted = true
				action, ef = Halt, nil
				reason = fmt.Sprintf("trigger %s: %s; halted, waiting for a person (`tidemark repair --report latest` re-emits them)", t.Name, over)
				details["over_bound"] = over
			}
		}
	}
	if e.st.Triggers == nil {
		e.st.Triggers = map[string]TriggerState{}
	}
	h.reset() // the condition must hold for a whole window again
	details["action"] = string(action)
	e.met.fires.WithLabelValues(t.Name, string(action), e.mode()).Inc()
	err := e.auto(ctx, action, reason, details, ef)
	if err != nil {
		ef = nil // nothing to wait for; the failure is audited
	}
	ts.Effect = ef
	e.st.Triggers[key] = ts
	if perr := e.save(ctx); perr != nil {
		err = errors.Join(err, perr)
	}
	return err
}

// stale reports whether s says nothing about the current stage: measured
// before it began or, for reconcile evidence, gathered by a round that
// started before the stage began or before the backfill of the keys the
// stage added was applied.
func (e *Engine) stale(s Sample) bool {
	if s.At.Before(e.st.StageSince) {
		return true
	}
	if s.Source == "" {
		return false
	}
	if s.started().Before(e.st.StageSince) {
		return true
	}
	w := e.st.Widening
	return w != nil && (!w.applied() || !s.started().After(w.AppliedAt))
}

// fresh reports whether s is new evidence for trigger t: not the evidence
// its last firing acted on, and (while that firing is pending) gathered
// after its effect was applied.
func (e *Engine) fresh(t Trigger, s Sample) bool {
	ts := e.st.Triggers[e.triggerKey(t.Name)]
	if s.Source != "" && s.Source == ts.FiredOn {
		return false
	}
	if ef := ts.Effect; ef != nil && (!ef.applied() || !s.started().After(ef.AppliedAt)) {
		return false
	}
	if s.Source == "" && !ts.LastFired.IsZero() && !s.started().After(ts.LastFired) {
		return false
	}
	return true
}

// judge closes a pending firing of t once evidence that started after its
// effect was applied has reported: only then does the firing count as an
// attempt. The verdict (resolved, or still breached) is audited.
func (e *Engine) judge(ctx context.Context, t Trigger, s Sample, now time.Time) {
	key := e.triggerKey(t.Name)
	ts, ok := e.st.Triggers[key]
	if !ok || ts.Effect == nil || !ts.Effect.applied() || !s.started().After(ts.Effect.AppliedAt) {
		return
	}
	if s.Source != "" && s.Source == ts.FiredOn {
		return
	}
	src := s.Source
	if src == "" {
		src = "sample at " + s.At.UTC().Format(time.RFC3339)
	}
	verdict := "resolved"
	if t.breached(s.Value) {
		verdict = "still " + t.Signal + " " + t.breachText()
	}
	ts.Attempts++
	ts.Judged = fmt.Sprintf("%s: %s = %g, %s", src, t.Signal, s.Value, verdict)
	ts.JudgedAt = now
	applied := ts.Effect.AppliedAt
	ts.Effect = nil
	e.st.Triggers[key] = ts
	e.audit(ctx, AutoActor, "trigger.judged", e.st.StageName+"/"+t.Name, verdict, "ok", map[string]any{"trigger": t.Name,
		"signal": t.Signal, "value": s.Value, "judged_on": src, "evidence_started": s.started().UTC(), "effect_applied": applied,
		"fired_on": ts.FiredOn, "attempt": ts.Attempts, "max_attempts": t.MaxAttempts})
	if err := e.save(ctx); err != nil {
		e.log.Warn("cannot save the trigger's verdict", "err", err)
	}
}

func (e *Engine) mode() string {
	if e.cfg.DryRun {
		return "dry-run"
	}
	return "auto"
}

func (t Trigger) breachText() string { return bounds(t.Below, t.Above, "<", ">") }

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

// perform carries out an automatic action and audits it with the numbers.
func (e *Engine) perform(ctx context.Context, a Action, reason string, details map[string]any, ef *Effect) error {
	res, err := e.do(ctx, a, reason, ef)
	for k, v := range res {
		details[k] = v
	}
	e.audit(ctx, AutoActor, "trigger.fire", e.st.StageName, reason, resultOf(err), details)
	e.log.Warn("trigger fired", "action", a, "reason", reason, "err", err)
	return err
}

// wouldDo is perform's dry-run twin: it audits what perform would have done.
// Attempts count as if it had acted: the effect is taken as applied now.
func (e *Engine) wouldDo(ctx context.Context, a Action, reason string, details map[string]any, ef *Effect) error {
	if ef != nil {
		*ef = Effect{Action: a, Phase: PhaseApplied, AppliedAt: e.now().UTC()}
	}
	details["would"] = string(a)
	e.audit(ctx, AutoActor, "trigger.fire", e.st.StageName, reason, "dry-run", details)
	e.log.Warn("dry run: trigger would fire", "action", a, "reason", reason)
	return nil
}

// do changes the pipeline or the routes for action a; the caller holds op.
// ef, when given (a trigger's firing), follows the effect: do sets where it
// starts. A repair with ef only queues the keys; progress re-emits them at
// rollout.repair's pace. Without ef (a drill) a repair re-emits them at once.
func (e *Engine) do(ctx context.Context, a Action, reason string, ef *Effect) (map[string]any, error) {
	if err := e.fence(ctx); err != nil {
		return nil, err
	}
	switch a {
	case Halt:
		// A halt holds the plan: no stage advances, no automatic repair or
		// rewind. It does not pause the sink: rounds keep producing the
		// evidence a person needs, and Kafka does not pile up behind it.
		if e.st.Held == "" {
			e.st.Held = reason
		}
		e.st.Halted = true
		return map[string]any{"held": e.st.Held, "sink": "not paused"}, e.save(ctx)
	case Rewind:
		tps, err := e.act.Partitions(ctx, e.st.Applied)
		if err != nil {
			return nil, err
		}
		// Paused while owners move their positions, so nothing is applied
		// from the old position in between; released afterwards either way,
		// unless a person or a halt had paused them before.
		newly, err := e.act.Pause(ctx, tps, reason)
		if err != nil {
			return nil, err
		}
		res, err := e.act.Rewind(ctx, tps, reason)
		if rerr := e.act.Resume(ctx, newly, reason); err == nil {
			err = rerr
		}
		if ef != nil {
			// Applied once the sink has replayed past today's ends.
			*ef = Effect{Action: Rewind, Phase: PhaseCapture}
		}
		return res, err
	case Repair:
		if ef != nil {
			return map[string]any{"queued_keys": ef.Keys}, nil
		}
		ds, over, err := e.divergent(ctx)
		if err != nil {
			return nil, err
		}
		if over != "" {
			return map[string]any{"over_bound": over}, fmt.Errorf("rollout: %s", over)
		}
		var ids []string
		scope := map[string]any{}
		for _, d := range ds {
			scope[d.Namespace] = fmt.Sprintf("%d documents found divergent by round %s", len(d.Keys), d.Round)
			if len(d.Keys) == 0 {
				continue
			}
			id, err := e.act.Reemit(ctx, d.Namespace, d.Keys, reason)
			if err != nil {
				return map[string]any{"requests": ids, "reemit": scope}, err
			}
			ids = append(ids, id)
		}
		return map[string]any{"requests": ids, "reemit": scope}, nil
	case SoftRollback:
		e.st.SoftRollback = true
		return map[string]any{"routes": "legacy"}, e.publish(ctx)
	case HardRollback:
		from := e.st.StageName
		if e.st.Reverted == nil {
			e.st.Reverted = map[string]bool{}
		}
		e.st.Reverted[from] = true
		e.setStage(e.st.Stage - 1)
		e.st.Held = fmt.Sprintf("stage %s was hard-rolled back (%s); `tidemark plan advance` retries it", from, reason)
		if err := e.applySlice(ctx); err != nil {
			return nil, err
		}
		return map[string]any{"from": from, "to": e.st.StageName, "slice": e.st.Applied}, e.publish(ctx)
	}
	return nil, fmt.Errorf("rollout: unknown action %q", a)
}

func (e *Engine) setStage(i int) {
	e.st.Stage = i
	e.st.StageName = ""
	if s := e.stage(); s != nil {
		e.st.StageName = s.Name
	}
	e.st.StageSince = e.now().UTC()
	e.st.WouldAdvance = ""
	clear(e.gates)
	clear(e.trigs)
	clear(e.verdicts)
}

// applySlice hands the sink the current stage's slice and asks for a backfill
// of every namespace the slice widened, since the sink skipped those keys.
func (e *Engine) applySlice(ctx context.Context) error {
	if err := e.fence(ctx); err != nil {
		return err
	}
	want := e.slice()
	prev := e.st.Applied
	if err := e.act.ApplySlice(ctx, want); err != nil {
		return fmt.Errorf("rollout: apply slice: %w", err)
	}
	e.st.Applied = want
	if prev != nil {
		if wider := prev.Widened(want); len(wider) > 0 {
			ids, err := e.act.Backfill(ctx, wider, "rollout: slice widened to stage "+e.st.StageName)
			e.audit(ctx, AutoActor, "slice.backfill", e.st.StageName, "keys newly in the slice were skipped by the sink", resultOf(err),
				map[string]any{"namespaces": wider, "requests": ids, "from": prev, "to": want})
			if err != nil {
				return err
			}
			// Rounds say nothing about the stage until this is applied.
			e.st.Widening = &Effect{Phase: PhaseCapture, Requests: ids, Waiting: fmt.Sprintf("capture to take %d backfill requests", len(ids))}
		} else if !want.Equal(prev) {
			e.st.Widening = nil // narrowed: nothing new to write
		}
	}
	e.met.setSlice(want)
	return e.save(ctx)
}

// maybeAdvance moves to the next stage when the current one advances
// automatically and every gate passes.
func (e *Engine) maybeAdvance(ctx context.Context, now time.Time) error {
	st := e.stage()
	if st == nil || st.Advance != "auto" || e.st.Held != "" || e.st.SoftRollback || len(e.st.Paused) > 0 || e.st.Stage >= len(e.cfg.Stages)-1 {
		return nil
	}
	next := e.cfg.Stages[e.st.Stage+1]
	if e.st.Reverted[next.Name] {
		return nil
	}
	gates := e.gateStatus(now)
	if !allPass(gates) {
		return nil
	}
	if err := e.fence(ctx); err != nil {
		return err
	}
	details := map[string]any{"from": st.Name, "to": next.Name, "gates": gates, "plan_version": e.cfg.Version}
	if e.cfg.DryRun {
		if e.st.WouldAdvance != next.Name {
			e.st.WouldAdvance = next.Name
			e.audit(ctx, AutoActor, "gate.pass", st.Name, "every gate held for its window", "dry-run", details)
			e.log.Info("dry run: would advance", "to", next.Name)
			return e.save(ctx)
		}
		return nil
	}
	e.audit(ctx, AutoActor, "gate.pass", st.Name, "every gate held for its window", "ok", details)
	return e.advanceTo(ctx, AutoActor, "every gate held for its window", details)
}

// auditVerdict records a gate's change of state (pending, pass, fail) with
// the numbers behind it; a first pending after a restart is no change.
func (e *Engine) auditVerdict(ctx context.Context, g GateStatus) {
	prev := e.verdicts[g.Name]
	e.verdicts[g.Name] = g.State
	if prev == g.State || (prev == "" && g.State == Pending) {
		return
	}
	e.audit(ctx, AutoActor, "gate.change", e.st.StageName+"/"+g.Name, fmt.Sprintf("%s -> %s", orNoData(prev), g.State), "ok",
		map[string]any{"gate": g.Name, "signal": g.Signal, "from": prev, "to": g.State, "value": deref(g.Value),
			"threshold": g.Threshold, "observed": g.Observed, "held_for_seconds": g.HeldFor, "window_seconds": g.Window})
}

func allPass(gs []GateStatus) bool {
	for _, g := range gs {
		if g.State != Pass {
			return false
		}
	}
	return true
}

func (e *Engine) advanceTo(ctx context.Context, actor, reason string, details map[string]any) error {
	from := e.st.StageName
	e.setStage(e.st.Stage + 1)
	delete(e.st.Reverted, e.st.StageName)
	err := e.applySlice(ctx)
	if err == nil {
		err = e.publish(ctx)
	}
	e.audit(ctx, actor, "stage.advance", e.st.StageName, reason, resultOf(err), merge(details, map[string]any{"from": from, "to": e.st.StageName}))
	e.log.Info("advanced", "from", from, "to", e.st.StageName, "actor", actor)
	return err
}

func (e *Engine) gateStatus(now time.Time) []GateStatus {
	st := e.stage()
	if st == nil {
		return []GateStatus{}
	}
	out := make([]GateStatus, 0, len(st.Gates))
	for _, g := range st.Gates {
		out = append(out, g.evaluate(e.hold(e.gates, g.Name), now))
	}
	return out
}

// routes builds the table the current state implies.
func (e *Engine) buildRoutes() Routes {
	r := Routes{Generation: e.st.Routes.Generation, PlanVersion: e.cfg.Version, Stage: e.st.StageName,
		Collections: map[string]CollectionRoute{}}
	if st := e.stage(); st != nil {
		mode := st.Reads
		if e.st.SoftRollback || e.st.Aborted {
			mode = Legacy
		}
		for ns, bp := range st.Slice.Slice() {
			r.Collections[ns] = CollectionRoute{BasisPoints: bp, InSlice: mode}
		}
	}
	return r
}

// publish updates the route table when the state changed it: a new
// generation, the route file replaced, the state saved. The table is served
// from memory the moment publish stores it.
func (e *Engine) publish(ctx context.Context) error {
	r := e.buildRoutes()
	old := e.st.Routes
	if old.Generation > 0 && old.Stage == r.Stage && old.PlanVersion == r.PlanVersion && sameCollections(old.Collections, r.Collections) {
		r = old
	} else {
		r.Generation = old.Generation + 1
		r.Updated = e.now().UTC()
		e.st.Routes = r
		e.log.Info("routes changed", "generation", r.Generation, "stage", r.Stage, "collections", r.Collections)
	}
	e.routes.Store(&r)
	e.met.routeGen.Set(float64(r.Generation))
	var err error
	if e.cfg.RouteFile != "" {
		if cur, lerr := LoadRoutes(e.cfg.RouteFile); lerr != nil || cur.Generation != r.Generation {
			err = writeRoutes(e.cfg.RouteFile, &r)
		}
	}
	if serr := e.save(ctx); err == nil {
		err = serr
	}
	return err
}

func sameCollections(a, b map[string]CollectionRoute) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func (e *Engine) save(ctx context.Context) error {
	if e.deposed == nil {
		if err := checkpoints.PutJSON(ctx, e.store, StateKey, e.st); err != nil {
			return fmt.Errorf("rollout: save state: %w", err)
		}
		return nil
	}
	return e.write(ctx, false)
}

// fence writes the state under this engine's term before an action: an
// evaluator that was deposed learns it here, before it acts, and not after.
// A no-op without Deps.Deposed.
func (e *Engine) fence(ctx context.Context) error {
	if e.deposed == nil {
		return nil
	}
	return e.write(ctx, true)
}

// write stores the state if the stored one carries no newer term than this
// engine's, in one compare-and-swap (checkpoints.Update): a newer leader's
// write in between makes the swap fail, and the retry reads that leader's
// epoch. Unless force, a state equal to the one last written is not
// written again.
func (e *Engine) write(ctx context.Context, force bool) error {
	mine := e.epoch
	if mine == 0 {
		// Stepped down already (or never given a term): nothing to tell.
		return fmt.Errorf("%w: %w", ErrRefused, &leader.DeposedError{Key: StateKey})
	}
	e.st.LeaderEpoch = mine
	b, err := json.Marshal(e.st)
	if err != nil {
		return fmt.Errorf("rollout: encode state: %w", err)
	}
	if !force && bytes.Equal(b, e.saved) {
		return nil
	}
	err = checkpoints.Update(ctx, e.store, StateKey, func(old []byte, found bool) ([]byte, error) {
		var cur struct {
			LeaderEpoch int64 `json:"leader_epoch"`
		}
		if found {
			if err := json.Unmarshal(old, &cur); err != nil {
				return nil, fmt.Errorf("decode %s: %w", StateKey, err)
			}
		}
		if err := leader.Check(StateKey, mine, cur.LeaderEpoch); err != nil {
			return nil, err
		}
		return b, nil
	})
	if errors.Is(err, leader.ErrDeposed) {
		e.stepDown(ctx, err)
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if err != nil {
		return fmt.Errorf("rollout: save state: %w", err)
	}
	e.saved = b
	return nil
}

// checkTerm is a leader's cheap check at each evaluation: the state as this
// daemon last read it (no round trip) must not carry a newer term. It
// catches a deposed leader once its store has caught up; fence catches it
// otherwise, before any action.
//
// After a gap of more than two evaluation periods, and at least a second
// more than one (a process frozen by SIGSTOP or a long pause; a busy
// machine delays ticks by less), the store's view may be as old as the
// gap, so the first thing the evaluator does is a conditional write
// (fence): a leader deposed meanwhile writes, audits and decides nothing
// else. A shorter pause can still depose it (its session may have had
// little time left); then the fence before each action and each write
// catches it, though gate changes it observed may be audited first.
func (e *Engine) checkTerm(ctx context.Context, now time.Time) error {
	if e.deposed == nil {
		return nil
	}
	last := e.lastTick
	e.lastTick = now
	if gap := now.Sub(last); !last.IsZero() && gap > e.cfg.Every+max(e.cfg.Every, time.Second) {
		e.log.Info("rollout: evaluation was paused; checking the leadership term before anything else", "gap", gap.Round(time.Millisecond))
		return e.fence(ctx)
	}
	st, ok, err := checkpoints.GetJSON[State](ctx, e.store, StateKey)
	if err != nil || !ok {
		return nil // the conditional write decides
	}
	if err := leader.Check(StateKey, e.epoch, st.LeaderEpoch); err != nil {
		e.stepDown(ctx, err)
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	return nil
}

// stepDown makes a deposed evaluator a follower: it acts no more, and the
// next evaluation follows the stored state, the new leader's.
func (e *Engine) stepDown(ctx context.Context, err error) {
	e.following.Store(true)
	var de *leader.DeposedError
	errors.As(err, &de)
	e.log.Error("rollout: a newer leader took office; this daemon stops evaluating the plan", "err", err)
	details := map[string]any{"key": StateKey}
	if de != nil {
		details["epoch"], details["current_epoch"] = de.Epoch, de.Current
	}
	e.audit(ctx, AutoActor, "leader.fenced", e.st.StageName, err.Error(), "refused", details)
	e.fenced = max(e.fenced, e.epoch)
	e.epoch = 0
	e.deposed(err)
}

// refresh rebuilds the status snapshot and the metrics from the state.
func (e *Engine) refresh(now time.Time, err error) {
	s := Status{PlanVersion: e.cfg.Version, DryRun: e.cfg.DryRun, Stage: e.st.Stage, StageName: e.st.StageName,
		StageSince: e.st.StageSince, SoftRollback: e.st.SoftRollback, Held: e.st.Held,
		Aborted: e.st.Aborted, Paused: append([]envelope.TopicPartition{}, e.st.Paused...), Gates: e.gateStatus(now),
		Triggers: []TriggerStatus{}, RouteGen: e.st.Routes.Generation, Evaluated: now, Reverted: []string{}, Slice: map[string]any{},
		Following: e.following.Load()}
	for _, st := range e.cfg.Stages {
		s.Stages = append(s.Stages, st.Name)
	}
	s.Complete = e.st.Stage == len(e.cfg.Stages)-1 && allPass(s.Gates) && !e.st.SoftRollback && !e.st.Aborted
	if st := e.stage(); st != nil {
		s.Advance, s.Reads = st.Advance, st.Reads
		for ns, bp := range st.Slice.Slice() {
			s.Slice[ns] = Share(bp).String()
		}
	}
	for n, on := range e.st.Reverted {
		if on {
			s.Reverted = append(s.Reverted, n)
		}
	}
	sort.Strings(s.Reverted)
	if w := e.st.Widening; w != nil {
		c := *w // the snapshot must not share what the next evaluation changes
		s.Widening = &c
	}
	for _, t := range e.cfg.triggers(e.st.Stage) {
		ts := t.status(e.hold(e.trigs, t.Name), e.st.Triggers[e.triggerKey(t.Name)], now)
		s.Triggers = append(s.Triggers, ts)
		e.met.attempts.WithLabelValues(t.Name).Set(float64(ts.Attempts))
	}
	if err != nil {
		s.LastError = err.Error()
	}
	e.met.observe(s)
	e.mu.Lock()
	e.status = s
	e.mu.Unlock()
}

// Status is the latest evaluation.
func (e *Engine) Status() Status {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.status
}

// Routes is the current route table.
func (e *Engine) Routes() *Routes { return e.routes.Load() }

// Route answers where to read key (envelope.Key bytes) of namespace ns.
func (e *Engine) Route(ns string, key []byte) Mode { return e.routes.Load().Route(ns, key) }

func (e *Engine) audit(ctx context.Context, actor, action, target, reason, result string, details map[string]any) {
	if details == nil {
		details = map[string]any{}
	}
	details["plan_version"] = e.cfg.Version
	if e.deposed != nil && e.epoch != 0 {
		// Which term decided: two daemons' entries look alike otherwise.
		details["leader_epoch"] = e.epoch
	}
	err := e.store.Append(context.WithoutCancel(ctx), checkpoints.AuditEntry{Time: e.now().UTC(), Actor: actor, Action: action,
		Target: target, Reason: reason, Result: result, Details: details})
	if err != nil {
		e.log.Error("cannot write the audit log", "action", action, "err", err)
	}
}

func resultOf(err error) string {
	if err == nil {
		return "ok"
	}
	return "failed: " + err.Error()
}

func merge(a, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func mergeTP(a, b []envelope.TopicPartition) []envelope.TopicPartition {
	set := map[envelope.TopicPartition]bool{}
	for _, tp := range a {
		set[tp] = true
	}
	for _, tp := range b {
		set[tp] = true
	}
	return envelope.Members(set)
}
