package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
)

var errFollower = fmt.Errorf("%w: this daemon follows the plan (rollout.follow, or another daemon is the elected leader: GET /v1/leader names it); send plan commands to the daemon that evaluates it", ErrRefused)

func refused(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// Advance moves to the next stage. It is refused while the plan is aborted or
// rolled back, at the last stage, and — unless force — while any gate of the
// current stage does not pass. Advancing clears a hold: a person decided.
func (e *Engine) Advance(ctx context.Context, actor, reason string, force bool) (Status, error) {
	e.op.Lock()
	defer e.op.Unlock()
	if e.following.Load() {
		return e.Status(), errFollower
	}
	now := e.now().UTC()
	switch {
	case e.st.Aborted:
		return e.Status(), refused("the plan is aborted; `tidemark plan resume` first")
	case e.st.SoftRollback:
		return e.Status(), refused("reads are rolled back to legacy; `tidemark plan resume` first")
	case e.st.Halted:
		return e.Status(), refused("a trigger halted the plan (%s); `tidemark plan resume` first", e.st.Held)
	case len(e.st.Paused) > 0:
		return e.Status(), refused("a trigger halted %d partitions; `tidemark plan resume` releases them first", len(e.st.Paused))
	case e.st.Stage >= len(e.cfg.Stages)-1:
		return e.Status(), refused("stage %s is the plan's last", e.st.StageName)
	}
	gates := e.gateStatus(now)
	if !allPass(gates) && !force {
		var not []string
		for _, g := range gates {
			if g.State != Pass {
				not = append(not, fmt.Sprintf("%s is %s (%s, held %.0fs of %.0fs)", g.Name, g.State, g.Observed, g.HeldFor, g.Window))
			}
		}
		return e.Status(), refused("not every gate of %s passes: %s; wait, or add --force", e.st.StageName, strings.Join(not, "; "))
	}
	e.st.Held = ""
	err := e.advanceTo(ctx, actor, reason, map[string]any{"gates": gates, "forced": force && !allPass(gates)})
	e.refresh(now, err)
	return e.Status(), err
}

// Abort stops automation (no trigger fires, nothing advances) and routes
// every read to legacy. The sink keeps writing the slice, so Cassandra stays
// current for a retry; `plan resume` undoes an abort.
func (e *Engine) Abort(ctx context.Context, actor, reason string) (Status, error) {
	e.op.Lock()
	defer e.op.Unlock()
	if e.following.Load() {
		return e.Status(), errFollower
	}
	if e.st.Aborted {
		return e.Status(), refused("the plan is already aborted")
	}
	e.st.Aborted = true
	err := e.publish(ctx)
	e.audit(ctx, actor, "plan.abort", e.st.StageName, reason, resultOf(err), map[string]any{"routes": "legacy"})
	e.refresh(e.now().UTC(), err)
	return e.Status(), err
}

// Rollback is an operator's soft (routes to legacy) or hard (back to the
// previous stage, this one marked reverted) rollback.
func (e *Engine) Rollback(ctx context.Context, actor, reason string, hard bool) (Status, error) {
	e.op.Lock()
	defer e.op.Unlock()
	if e.following.Load() {
		return e.Status(), errFollower
	}
	a := SoftRollback
	switch {
	case hard && e.st.Stage < 0:
		return e.Status(), refused("nothing to roll back: no stage is applied")
	case hard:
		a = HardRollback
	case e.st.SoftRollback:
		return e.Status(), refused("reads are already rolled back to legacy")
	}
	res, err := e.do(ctx, a, reason, nil)
	e.audit(ctx, actor, "rollback", e.st.StageName, reason, resultOf(err), merge(res, map[string]any{"action": string(a)}))
	e.refresh(e.now().UTC(), err)
	return e.Status(), err
}

// Resume is a person's all-clear: it lifts a hold, an abort and a soft
// rollback, releases the partitions the rollout paused, and gives the
// current stage's triggers their attempts back.
func (e *Engine) Resume(ctx context.Context, actor, reason string) (Status, error) {
	e.op.Lock()
	defer e.op.Unlock()
	if e.following.Load() {
		return e.Status(), errFollower
	}
	before := map[string]any{"held": e.st.Held, "aborted": e.st.Aborted, "soft_rollback": e.st.SoftRollback, "paused": e.st.Paused}
	var err error
	if err = e.fence(ctx); err != nil {
		e.refresh(e.now().UTC(), err)
		return e.Status(), err
	}
	if len(e.st.Paused) > 0 {
		if err = e.act.Resume(ctx, e.st.Paused, reason); err == nil {
			e.st.Paused = nil
		}
	}
	e.st.Held, e.st.Halted, e.st.Aborted, e.st.SoftRollback = "", false, false, false
	for k := range e.st.Triggers {
		if strings.HasPrefix(k, e.st.StageName+"/") {
			delete(e.st.Triggers, k)
		}
	}
	clear(e.trigs)
	if perr := e.publish(ctx); err == nil {
		err = perr
	}
	e.audit(ctx, actor, "plan.resume", e.st.StageName, reason, resultOf(err), before)
	e.refresh(e.now().UTC(), err)
	return e.Status(), err
}

// DrillReport is the record of one drill.
type DrillReport struct {
	ID      string      `json:"id"`
	Trigger string      `json:"trigger"`
	Action  Action      `json:"action"`
	Stage   string      `json:"stage"`
	Actor   string      `json:"actor"`
	Reason  string      `json:"reason"`
	Start   time.Time   `json:"start"`
	End     time.Time   `json:"end"`
	Result  string      `json:"result"` // pass or fail
	Steps   []DrillStep `json:"steps"`
}

// DrillStep is one checked step.
type DrillStep struct {
	Step    string  `json:"step"`
	OK      bool    `json:"ok"`
	Detail  string  `json:"detail"`
	Seconds float64 `json:"seconds"`
}

// Drill rehearses a trigger of the current stage on the running system: it
// performs the action for real, waits for its effect (partitions paused,
// offsets rewound and replayed, repair requests served, routes flipped, the
// slice narrowed), restores what was there before and checks that too. The
// report goes to the audit log and under DrillKeyPrefix. A drill does not
// count as a trigger attempt.
func (e *Engine) Drill(ctx context.Context, actor, reason, trigger string) (DrillReport, error) {
	e.op.Lock()
	defer e.op.Unlock()
	if e.following.Load() {
		return DrillReport{}, errFollower
	}
	var t *Trigger
	var names []string
	for _, x := range e.cfg.triggers(e.st.Stage) {
		names = append(names, x.Name)
		if x.Name == trigger {
			t = &x
		}
	}
	if t == nil {
		return DrillReport{}, fmt.Errorf("%w %q in stage %s (triggers: %s)", ErrUnknownTrigger, trigger, e.st.StageName, strings.Join(names, ", "))
	}
	switch {
	case e.st.Aborted:
		return DrillReport{}, refused("the plan is aborted")
	case t.Action == SoftRollback && e.st.SoftRollback:
		return DrillReport{}, refused("reads are already rolled back; a drill could not show the flip")
	case t.Action == HardRollback && e.st.Stage < 0:
		return DrillReport{}, refused("no stage is applied; a hard rollback has nothing to narrow")
	}
	start := e.now().UTC()
	rep := DrillReport{ID: fmt.Sprintf("drill-%d", start.UnixNano()), Trigger: t.Name, Action: t.Action, Stage: e.st.StageName,
		Actor: actor, Reason: reason, Start: start}
	step := func(name string, ok bool, detail string, began time.Time) {
		rep.Steps = append(rep.Steps, DrillStep{Step: name, OK: ok, Detail: detail, Seconds: time.Since(began).Seconds()})
	}
	saved := e.snapshot()
	tps, err := e.act.Partitions(ctx, e.st.Applied)
	if err != nil {
		return DrillReport{}, err
	}

	// Fire.
	began := time.Now()
	res, err := e.do(ctx, t.Action, "drill "+rep.ID+": "+reason, nil)
	b, _ := json.Marshal(res)
	step("fire "+string(t.Action), err == nil, errText(err, string(b)), began)

	// Verify the effect.
	if err == nil {
		began = time.Now()
		detail, err := e.waitFor(ctx, func() (bool, string, error) { return e.effect(ctx, t.Action, saved, tps, res) })
		step("verify effect", err == nil, detail, began)
	}

	// Restore, whatever happened, and check the system is as it was.
	began = time.Now()
	released, err := e.restore(ctx, t.Action, saved)
	if err == nil {
		detail, werr := e.waitFor(ctx, func() (bool, string, error) { return e.restored(ctx, t.Action, saved, released) })
		step("restore", werr == nil, detail, began)
	} else {
		step("restore", false, err.Error(), began)
	}

	rep.End = e.now().UTC()
	rep.Result = Pass
	for _, s := range rep.Steps {
		if !s.OK {
			rep.Result = Fail
		}
	}
	e.met.drills.WithLabelValues(string(t.Action), rep.Result).Inc()
	res2 := "ok"
	if rep.Result != Pass {
		res2 = "failed: drill did not pass"
	}
	e.audit(ctx, actor, "drill", t.Name, reason, res2, map[string]any{"report": rep})
	perr := checkpoints.PutJSON(ctx, e.store, DrillKeyPrefix+rep.ID, rep)
	e.refresh(e.now().UTC(), nil)
	return rep, perr
}

func errText(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

// snapshot deep-copies the state.
func (e *Engine) snapshot() State {
	b, _ := json.Marshal(e.st)
	var s State
	json.Unmarshal(b, &s)
	return s
}

// waitFor polls check until it holds or the drill timeout passes.
func (e *Engine) waitFor(ctx context.Context, check func() (bool, string, error)) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.DrillTimeout)
	defer cancel()
	t := time.NewTicker(e.poll)
	defer t.Stop()
	for {
		ok, detail, err := check()
		if ok && err == nil {
			return detail, nil
		}
		if err == nil {
			err = errors.New("not yet")
		}
		select {
		case <-ctx.Done():
			return detail, fmt.Errorf("not seen within %s: %s (%v)", e.cfg.DrillTimeout, detail, err)
		case <-t.C:
		}
	}
}

// effect checks that action a did what it promises.
func (e *Engine) effect(ctx context.Context, a Action, saved State, tps []envelope.TopicPartition, res map[string]any) (bool, string, error) {
	switch a {
	case Halt:
		return e.st.Held != "", fmt.Sprintf("plan held: %q (the sink keeps running)", e.st.Held), nil
	case Rewind:
		ok, err := e.act.CaughtUp(ctx, tps)
		return ok, fmt.Sprintf("rewound to the verified marks (%v); replay finished: %v", res, ok), err
	case Repair:
		ids, _ := res["requests"].([]string)
		n, err := e.act.Requests(ctx, ids)
		return n == 0, fmt.Sprintf("%d of %d repair requests still queued", n, len(ids)), err
	case SoftRollback:
		return e.routesAre(Legacy, saved)
	case HardRollback:
		want := Slice{}
		if saved.Stage > 0 {
			want = e.cfg.Stages[saved.Stage-1].Slice.Slice()
		}
		ok := e.st.Applied.Equal(want) && e.st.Stage == saved.Stage-1
		rok, detail, err := e.routeFileCurrent()
		return ok && rok, fmt.Sprintf("stage %s -> %q, slice %v; %s", saved.StageName, e.st.StageName, e.st.Applied, detail), err
	}
	return false, "", fmt.Errorf("unknown action %q", a)
}

// routesAre checks that every collection of the saved slice now reads from
// mode, in memory and in the route file.
func (e *Engine) routesAre(mode Mode, saved State) (bool, string, error) {
	r := e.Routes()
	for ns := range saved.Applied {
		if c := r.Collections[ns]; c.InSlice != mode {
			return false, fmt.Sprintf("%s reads %s", ns, c.InSlice), nil
		}
	}
	ok, detail, err := e.routeFileCurrent()
	return ok, fmt.Sprintf("every collection of the slice reads %s (generation %d); %s", mode, r.Generation, detail), err
}

func (e *Engine) routeFileCurrent() (bool, string, error) {
	if e.cfg.RouteFile == "" {
		return true, "no route file configured", nil
	}
	f, err := LoadRoutes(e.cfg.RouteFile)
	if err != nil {
		return false, "route file unreadable", err
	}
	g := e.Routes().Generation
	return f.Generation == g, fmt.Sprintf("route file at generation %d of %d", f.Generation, g), nil
}

// restore puts back what action a changed. It returns the partitions it
// released: those the drill paused, never those a person or an earlier
// trigger had paused.
func (e *Engine) restore(ctx context.Context, a Action, saved State) ([]envelope.TopicPartition, error) {
	switch a {
	case Halt:
		e.st.Held, e.st.Halted = saved.Held, saved.Halted
		return nil, e.save(ctx)
	case Rewind:
		var newly []envelope.TopicPartition
		was := map[envelope.TopicPartition]bool{}
		for _, tp := range saved.Paused {
			was[tp] = true
		}
		for _, tp := range e.st.Paused {
			if !was[tp] {
				newly = append(newly, tp)
			}
		}
		if len(newly) > 0 {
			if err := e.act.Resume(ctx, newly, "drill restore"); err != nil {
				return nil, err
			}
		}
		e.st.Paused = saved.Paused
		return newly, e.save(ctx)
	case Repair:
		return nil, nil
	case SoftRollback:
		e.st.SoftRollback = saved.SoftRollback
		return nil, e.publish(ctx)
	case HardRollback:
		e.st.Stage, e.st.StageName, e.st.StageSince = saved.Stage, saved.StageName, saved.StageSince
		e.st.Reverted, e.st.Held = saved.Reverted, saved.Held
		clear(e.gates)
		clear(e.trigs)
		if err := e.applySlice(ctx); err != nil {
			return nil, err
		}
		return nil, e.publish(ctx)
	}
	return nil, nil
}

// restored checks that the system is back where the drill found it.
func (e *Engine) restored(ctx context.Context, a Action, saved State, released []envelope.TopicPartition) (bool, string, error) {
	switch a {
	case Halt:
		return e.st.Held == saved.Held, fmt.Sprintf("hold as before: %q", e.st.Held), nil
	case Rewind:
		for _, tp := range released {
			p, err := e.act.Paused(ctx, []envelope.TopicPartition{tp})
			if err != nil || p {
				return false, fmt.Sprintf("%s/%d still paused", tp.Topic, tp.Partition), err
			}
		}
		return true, fmt.Sprintf("%d partitions the drill paused consume again", len(released)), nil
	case Repair:
		return true, "nothing to restore: repairs only re-emit source documents", nil
	case SoftRollback:
		return e.routesAre(saved.Routes.Collections[firstNS(saved.Applied)].InSlice, saved)
	case HardRollback:
		ok := e.st.Stage == saved.Stage && e.st.Applied.Equal(saved.Applied)
		rok, detail, err := e.routeFileCurrent()
		return ok && rok, fmt.Sprintf("back at stage %s with slice %v; %s", e.st.StageName, e.st.Applied, detail), err
	}
	return true, "", nil
}

func firstNS(s Slice) string {
	if ns := s.Namespaces(); len(ns) > 0 {
		return ns[0]
	}
	return ""
}
