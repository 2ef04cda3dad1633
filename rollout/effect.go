package rollout

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// progress moves every effect in flight one step: a repair's rate-limited
// re-emission, capture requests being taken, the sink passing the records
// they produced. An effect reaches PhaseApplied once all of it is in
// Cassandra; only evidence that started after that judges it.
func (e *Engine) progress(ctx context.Context, now time.Time, samples map[string]Sample) error {
	var errs []error
	changed := false
	if w := e.st.Widening; w != nil && !w.applied() {
		if err := e.advance(ctx, "", w, now, samples); err != nil {
			errs = append(errs, fmt.Errorf("slice backfill: %w", err))
		}
		if w.applied() {
			e.audit(ctx, AutoActor, "slice.backfill.applied", e.st.StageName, "the widened slice's backfill is in Cassandra",
				"ok", map[string]any{"ends": w.Ends, "applied_at": w.AppliedAt})
		}
		changed = true
	}
	for key, ts := range e.st.Triggers {
		if ts.Effect == nil || ts.Effect.applied() {
			continue
		}
		if err := e.advance(ctx, key, ts.Effect, now, samples); err != nil {
			errs = append(errs, fmt.Errorf("trigger %s: %w", key, err))
		}
		changed = true
	}
	if changed {
		if err := e.save(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// advance takes one step of ef; key names the trigger (the rate limit's
// clock), empty for a widening.
func (e *Engine) advance(ctx context.Context, key string, ef *Effect, now time.Time, samples map[string]Sample) error {
	if ef.Phase == PhaseReemit {
		if err := e.reemit(ctx, key, ef, now, samples); err != nil || ef.Phase == PhaseReemit {
			return err
		}
	}
	if ef.Phase == PhaseCapture {
		if len(ef.Requests) > 0 {
			n, err := e.act.Requests(ctx, ef.Requests)
			if err != nil {
				return err
			}
			if n > 0 {
				ef.Waiting = fmt.Sprintf("capture to take %d of %d requests", n, len(ef.Requests))
				return nil
			}
		}
		// Capture produced every record of the requests (or a rewind moved
		// the positions back): they are all below today's ends.
		tps, err := e.act.Partitions(ctx, e.st.Applied)
		if err != nil {
			return err
		}
		ends, err := e.act.Ends(ctx, tps)
		if err != nil {
			return err
		}
		ef.Requests, ef.Ends, ef.Phase = nil, ends, PhaseSink
		ef.Waiting = fmt.Sprintf("the sink to commit past the ends of %d partitions", len(ends))
	}
	if ef.Phase == PhaseSink {
		ok, err := e.act.Passed(ctx, ef.Ends)
		if err != nil || !ok {
			return err
		}
		ef.Phase, ef.AppliedAt, ef.Waiting = PhaseApplied, now, ""
	}
	return nil
}

// reemit hands capture the next keys of a repair, at most
// rollout.repair.keys_per_second, and none while the lag is above
// rollout.repair.max_lag_seconds: a repair must not push the live stream
// past its lag gate.
func (e *Engine) reemit(ctx context.Context, key string, ef *Effect, now time.Time, samples map[string]Sample) error {
	rc := e.cfg.Repair
	if lag, ok := samples[SignalLagSeconds]; ok && lag.Value > rc.MaxLagSeconds {
		ef.Waiting = fmt.Sprintf("paused: lag %.0fs above rollout.repair.max_lag_seconds (%gs); %d of %d keys re-emitted",
			lag.Value, rc.MaxLagSeconds, ef.Emitted, ef.Keys)
		e.lastEmit[key] = now
		return nil
	}
	last, ok := e.lastEmit[key]
	if !ok {
		last = now.Add(-time.Second)
	}
	burst := rc.KeysPerSecond * max(e.cfg.Every.Seconds(), 1)
	n := int(min(rc.KeysPerSecond*now.Sub(last).Seconds(), burst))
	if n < 1 {
		return nil
	}
	e.lastEmit[key] = now
	for n > 0 && len(ef.Queue) > 0 {
		d := &ef.Queue[0]
		take := min(n, len(d.Keys))
		if err := e.fence(ctx); err != nil {
			return err
		}
		id, err := e.act.Reemit(ctx, d.Namespace, d.Keys[:take], fmt.Sprintf("rollout repair of round %s", d.Round))
		if err != nil {
			return err
		}
		ef.Requests = append(ef.Requests, id)
		d.Keys = d.Keys[take:]
		ef.Emitted += take
		n -= take
		if len(d.Keys) == 0 {
			ef.Queue = ef.Queue[1:]
		}
	}
	ef.Waiting = fmt.Sprintf("%d of %d keys re-emitted at up to %g/s", ef.Emitted, ef.Keys, rc.KeysPerSecond)
	if len(ef.Queue) == 0 {
		ef.Queue, ef.Phase = nil, PhaseCapture
		delete(e.lastEmit, key)
	}
	return nil
}

// divergent lists what the newest rounds found divergent in the slice.
// over says why an automatic repair must not act on it: a round did not
// list every divergent document, or there are more than rollout.repair.max_keys.
func (e *Engine) divergent(ctx context.Context) ([]DivergentKeys, string, error) {
	ds, err := e.act.Divergent(ctx, e.st.Applied)
	if err != nil {
		return nil, "", fmt.Errorf("rollout: divergent keys: %w", err)
	}
	total := 0
	for _, d := range ds {
		if d.Round == "" {
			return ds, fmt.Sprintf("%s has no finished round to take divergent keys from", d.Namespace), nil
		}
		if !d.Complete {
			return ds, fmt.Sprintf("round %s of %s did not list every divergent document", d.Round, d.Namespace), nil
		}
		total += len(d.Keys)
	}
	if total > e.cfg.Repair.MaxKeys {
		return ds, fmt.Sprintf("%d divergent documents, more than rollout.repair.max_keys (%d)", total, e.cfg.Repair.MaxKeys), nil
	}
	return ds, "", nil
}

// planRepair fills ef with the keys an automatic repair re-emits, or says
// why it must not (over the bound).
func (e *Engine) planRepair(ctx context.Context, ef *Effect, details map[string]any) (string, error) {
	ds, over, err := e.divergent(ctx)
	if err != nil || over != "" {
		return over, err
	}
	scope := map[string]any{}
	*ef = Effect{Action: Repair, Phase: PhaseReemit}
	for _, d := range ds {
		scope[d.Namespace] = fmt.Sprintf("%d documents found divergent by round %s", len(d.Keys), d.Round)
		if len(d.Keys) > 0 {
			ef.Queue = append(ef.Queue, DivergentKeys{Namespace: d.Namespace, Round: d.Round, Complete: true,
				Keys: append([][]byte(nil), d.Keys...)})
			ef.Keys += len(d.Keys)
		}
	}
	if ef.Keys == 0 {
		ef.Phase = PhaseCapture // nothing to re-emit: applied once the sink is past today's ends
	}
	ef.Waiting = fmt.Sprintf("0 of %d keys re-emitted", ef.Keys)
	details["reemit"] = scope
	details["keys"] = ef.Keys
	return "", nil
}
