package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/reconcile"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/sink"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
)

// Outcome is what the demo saw, written as JSON at the end. Every field is
// read back from the daemon (its API and audit log), not assumed, so the test
// harness that checks it checks what actually happened.
type Outcome struct {
	// ReconcileClean: the newest round, taken after the plan completed, found
	// no divergent key.
	ReconcileClean bool   `json:"reconcile_clean"`
	FinalReport    string `json:"final_report"`
	// PlanComplete: the last stage's gates all passed.
	PlanComplete bool     `json:"plan_complete"`
	StagesSeen   []string `json:"stages_seen"`
	// TriggersFired counts trigger.fire entries in the audit log.
	TriggersFired int      `json:"triggers_fired"`
	TriggerNames  []string `json:"trigger_names"`
	// Injected are the _ids corrupted in Cassandra; Found those a round
	// reported divergent.
	Injected []string `json:"injected"`
	Found    []string `json:"found"`
	Steps    []Step   `json:"steps"`
	Error    string   `json:"error,omitempty"`
}

// Step is one narrated moment.
type Step struct {
	At     time.Time `json:"at"`
	Name   string    `json:"name"`
	Detail string    `json:"detail"`
}

type narrator struct {
	ac  *admin.Client
	out Outcome
}

func (n *narrator) step(name, format string, a ...any) {
	d := fmt.Sprintf(format, a...)
	n.out.Steps = append(n.out.Steps, Step{At: time.Now().UTC(), Name: name, Detail: d})
	fmt.Printf("\n\033[1m== %s\033[0m\n  %s\n", name, d)
}

// bar prints a one-line progress bar in place.
func bar(done, total int64, label string) {
	const w = 40
	if total <= 0 {
		total = 1
	}
	f := int(min(done*w/total, w))
	fmt.Printf("\r  [%-40s] %3d%%  %s   ", strings.Repeat("#", f), min(done*100/total, 100), label)
}

// failed ends a wait at once; other errors from a check are retried (the
// daemon may be busy) until the deadline.
type failed struct{ error }

// waitFor polls check every period until it reports done, or the deadline.
func waitFor(ctx context.Context, what string, limit, period time.Duration, check func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := check()
		if ok {
			return nil
		}
		var f failed
		if errors.As(err, &f) {
			return f.error
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("%s: not within %s: %w", what, limit, err)
			}
			return fmt.Errorf("%s: not within %s", what, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(period):
		}
	}
}

type daemonStatus struct {
	Partitions []sink.PartitionLag         `json:"partitions"`
	Backfill   map[string]capture.Progress `json:"backfill"`
}

// narrate drives and narrates the demo against a running daemon: backfill,
// streaming under a write workload, the rollout plan's stages, an injected
// divergence that a reconcile round finds and a trigger repairs, and the
// plan's completion. It writes what it saw to outPath and fails if the story
// did not happen as told.
func narrate(ctx context.Context, coll *mongo.Collection, addr, outPath string, docs, rate, rows int, limit time.Duration) {
	ac, err := admin.NewClient(addr, "")
	if err != nil {
		fatal{}.Fatal(err)
	}
	n := &narrator{ac: ac}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	err = n.run(ctx, coll, docs, rate, rows)
	if err != nil {
		n.out.Error = err.Error()
	}
	b, _ := json.MarshalIndent(n.out, "", "  ")
	if werr := os.WriteFile(outPath, b, 0o644); werr != nil {
		fatal{}.Fatal(werr)
	}
	if err != nil {
		fatal{}.Fatalf("\ndemo failed: %v (outcome in %s)", err, outPath)
	}
}

func (n *narrator) run(ctx context.Context, coll *mongo.Collection, docs, rate, rows int) error {
	if err := n.backfill(ctx, docs); err != nil {
		return err
	}

	// Streaming under a steady write load, for the rest of the demo.
	wctx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	workDone := make(chan struct{})
	go func() {
		defer close(workDone)
		workload(wctx, coll, docs, rate, time.Hour)
	}()
	defer func() { stopWork(); <-workDone }()
	n.step("streaming", "a workload of %d changes/s (updates, inserts, deletes) runs against MongoDB from now on", rate)

	ps, err := n.followPlan(ctx, docs, rows)
	if err != nil {
		return err
	}
	n.out.PlanComplete = true
	n.step("plan complete", "stage %q reached with every gate passing: %s", ps.StageName, gateLine(ps))

	// The workload stops, and one more scheduled round, started after
	// everything, must be clean: with nothing in flight, every row is
	// compared as it will stay (the rounds above ran under the load). Under
	// the load, a round over the whole key space can also outlast the wait on
	// a slow machine, as the stand-in's change history grows.
	stopWork()
	<-workDone
	return n.finalRound(ctx)
}

// backfill waits for the backfill, which runs with the change stream
// already open, drawing its progress.
func (n *narrator) backfill(ctx context.Context, docs int) error {
	var st daemonStatus
	err := waitFor(ctx, "backfill", 10*time.Minute, 500*time.Millisecond, func() (bool, error) {
		if err := n.ac.Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
			return false, err
		}
		p := st.Backfill[ns()]
		bar(p.Docs, max(p.Estimated, int64(docs)), fmt.Sprintf("backfill: %d documents", p.Docs))
		return p.Done, nil
	})
	fmt.Println()
	if err != nil {
		return err
	}
	p := st.Backfill[ns()]
	n.step("backfill", "%d documents of "+ns()+" re-emitted below T0 in %s while the change stream was already open",
		p.Docs, p.Updated.Sub(p.Started).Round(time.Second))
	return nil
}

// followPlan watches the plan's stages advance, injects a divergence once
// the second stage is reached, and waits for the plan to complete.
func (n *narrator) followPlan(ctx context.Context, docs, rows int) (rollout.Status, error) {
	var ps rollout.Status
	seen := map[string]bool{}
	injected := false
	lastLine := ""
	// Three widenings each re-emit the whole collection; on a 2-core machine
	// shared with other work the sink took up to 10 minutes to apply one.
	err := waitFor(ctx, "the rollout plan to complete", 25*time.Minute, time.Second, func() (bool, error) {
		if err := n.ac.Do(ctx, "GET", "/v1/plan", nil, &ps); err != nil {
			return false, err
		}
		if !seen[ps.StageName] {
			seen[ps.StageName] = true
			n.out.StagesSeen = append(n.out.StagesSeen, ps.StageName)
			n.step("stage "+ps.StageName, "stage %d of %d, slice %v, reads %s", ps.Stage+1, len(ps.Stages), ps.Slice, ps.Reads)
		}
		if line := gateLine(ps); line != lastLine {
			fmt.Printf("  gates: %s\n", line)
			lastLine = line
		}
		if ps.Stage == 1 && !injected {
			injected = true
			if err := n.divergeAndRepair(ctx, docs, rows); err != nil {
				return false, failed{err}
			}
		}
		return ps.Complete && injected, nil
	})
	return ps, err
}

// divergeAndRepair corrupts rows of the widened slice once a clean round has
// covered it, waits for a trigger to repair them, and advances the stage as
// an operator would.
func (n *narrator) divergeAndRepair(ctx context.Context, docs, rows int) error {
	// A clean round of the widened slice first, one that started
	// after the keys the stage added were back-filled.
	applied, err := n.wideningApplied(ctx)
	if err != nil {
		return err
	}
	if err := n.cleanRoundAfter(ctx, applied); err != nil {
		return err
	}
	// Corrupt the rows between two rounds, so that one round sees
	// all of them rather than a round already under way seeing some.
	if err := n.betweenRounds(ctx); err != nil {
		return err
	}
	injectedAt := time.Now()
	n.out.Injected = inject(docs, rows)
	if len(n.out.Injected) == 0 {
		return errors.New("no reserved document has rows in the slice to corrupt")
	}
	n.step("injected divergence", "%d rows of %s corrupted directly in Cassandra (age = -1): %s",
		len(n.out.Injected), ns(), strings.Join(n.out.Injected, ", "))
	// Judge from what the system recorded (the trigger's firing names
	// the round it acted on; its verdict names the round that judged
	// it), not by racing the rounds: a repair can heal the rows
	// before the narrator looks at the next round.
	if err := n.repaired(ctx, injectedAt); err != nil {
		return err
	}
	return n.advanceWhenGatesPass(ctx)
}

// advanceWhenGatesPass advances the stage, which waits for a person, as an
// operator would: with a reason, once every gate passes (the daemon refuses
// it otherwise).
func (n *narrator) advanceWhenGatesPass(ctx context.Context) error {
	err := waitFor(ctx, "the half stage's gates to pass", 3*time.Minute, time.Second, func() (bool, error) {
		var st rollout.Status
		if err := n.ac.Do(ctx, "GET", "/v1/plan", nil, &st); err != nil {
			return false, err
		}
		for _, g := range st.Gates {
			if g.State != "pass" {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	var st rollout.Status
	reason := map[string]any{"reason": "demo: the half stage is clean again after the repair"}
	if err := n.ac.Do(ctx, "POST", "/v1/plan/advance", reason, &st); err != nil {
		return err
	}
	n.step("operator advance", "tidemark plan advance --reason \"the half stage is clean again after the repair\" (audited)")
	return nil
}

// finalRound waits for a round started now, records it and the triggers
// that fired, and fails unless the round is clean.
func (n *narrator) finalRound(ctx context.Context) error {
	rep, err := n.roundStartedAfter(ctx, time.Now())
	if err != nil {
		return fmt.Errorf("final reconcile round: %w", err)
	}
	n.out.ReconcileClean = rep.Status == "clean"
	n.out.FinalReport = rep.ID
	n.step("final reconcile", "round %s: %s, %d rows compared, counts %v", rep.ID, rep.Status, rep.RowsCompared, rep.Counts)

	var es []checkpoints.AuditEntry
	if err := n.ac.Do(ctx, "GET", "/v1/audit?action=trigger.fire", nil, &es); err != nil {
		return err
	}
	for _, e := range es {
		if e.Result == "dry-run" {
			continue
		}
		n.out.TriggersFired++
		n.out.TriggerNames = append(n.out.TriggerNames, e.Target)
	}
	if !n.out.ReconcileClean {
		return fmt.Errorf("the final reconcile round is %s", rep.Status)
	}
	return nil
}

// cleanRoundAfter waits for a scheduled round that ended after t and is clean.
func (n *narrator) cleanRoundAfter(ctx context.Context, t time.Time) error {
	var rep reconcile.Report
	err := waitFor(ctx, "a clean reconcile round", 5*time.Minute, time.Second, func() (bool, error) {
		if err := n.ac.Do(ctx, "GET", "/v1/reports/latest", nil, &rep); err != nil {
			return false, err
		}
		return rep.Start.After(t) && rep.Status == "clean", nil
	})
	if err == nil {
		n.step("reconcile clean", "round %s compared %d rows (%d in flight under the live load, never counted as divergent): clean",
			rep.ID, rep.RowsCompared, rep.Counts["in_flight"])
	}
	return err
}

// roundStartedAfter waits for the first complete round that started after t.
func (n *narrator) roundStartedAfter(ctx context.Context, t time.Time) (reconcile.Report, error) {
	var rep reconcile.Report
	err := waitFor(ctx, "a reconcile round", 5*time.Minute, time.Second, func() (bool, error) {
		if err := n.ac.Do(ctx, "GET", "/v1/reports/latest", nil, &rep); err != nil {
			return false, err
		}
		return rep.Start.After(t) && rep.Status != "incomplete", nil
	})
	return rep, err
}

// wideningApplied waits until the plan reports the widened slice's
// backfill applied (in Cassandra), and returns when that was.
func (n *narrator) wideningApplied(ctx context.Context) (time.Time, error) {
	var at time.Time
	err := waitFor(ctx, "the widened slice's backfill to be applied", 8*time.Minute, time.Second, func() (bool, error) {
		var st rollout.Status
		if err := n.ac.Do(ctx, "GET", "/v1/plan", nil, &st); err != nil {
			return false, err
		}
		if w := st.Widening; w != nil && w.Phase == rollout.PhaseApplied {
			at = w.AppliedAt
			return true, nil
		}
		return st.Widening == nil, nil
	})
	if err == nil && !at.IsZero() {
		n.step("backfill of the widened slice", "capture re-emitted the collection and the sink committed past it at %s",
			at.Format("15:04:05"))
	}
	return at, err
}

// betweenRounds waits (up to two minutes) until no reconcile round runs.
// Rounds run back to back on a busy machine; then it goes ahead anyway.
func (n *narrator) betweenRounds(ctx context.Context) error {
	err := waitFor(ctx, "a pause between reconcile rounds", 2*time.Minute, 50*time.Millisecond, func() (bool, error) {
		var rs struct {
			Running bool `json:"running"`
		}
		if err := n.ac.Do(ctx, "GET", "/v1/reconcile", nil, &rs); err != nil {
			return false, err
		}
		return !rs.Running, nil
	})
	if err != nil && ctx.Err() == nil {
		fmt.Printf("  (%v: injecting while a round runs)\n", err)
		return nil
	}
	return err
}

// repaired follows the trigger history from t: every trigger.fire names the
// round it acted on (fired_on), whose report must list the injected rows;
// the firing is judged by a round that started after the repair was in
// Cassandra, and that verdict must be "resolved". It waits until the
// injected rows were all found and a verdict resolved them.
func (n *narrator) repaired(ctx context.Context, t time.Time) error {
	want := map[string]bool{}
	for _, id := range n.out.Injected {
		want[id] = true
	}
	found := map[string]bool{}
	seenFire := map[string]bool{}
	var judged checkpoints.AuditEntry
	since := "&since=" + t.UTC().Format(time.RFC3339Nano)
	err := waitFor(ctx, "the injected rows to be found and repaired", 8*time.Minute, time.Second, func() (bool, error) {
		var fires []checkpoints.AuditEntry
		if err := n.ac.Do(ctx, "GET", "/v1/audit?action=trigger.fire"+since, nil, &fires); err != nil {
			return false, err
		}
		for _, f := range fires {
			if f.Result == "dry-run" || seenFire[fmt.Sprint(f.Time, f.Details["fired_on"])] {
				continue
			}
			if act, _ := f.Details["action"].(string); act != "repair" {
				return false, failed{fmt.Errorf("trigger %s %s instead of repairing: %s", f.Target, act, f.Reason)}
			}
			ids, rounds, err := n.divergentIn(ctx, f.Details["fired_on"])
			if err != nil {
				return false, err
			}
			seenFire[fmt.Sprint(f.Time, f.Details["fired_on"])] = true
			for _, id := range ids {
				if !want[id] {
					return false, failed{fmt.Errorf("round %s reported %s divergent, which the demo did not corrupt", rounds, id)}
				}
				found[id] = true
			}
			n.step("trigger fired", "%s at %s on round %s: %s; %d injected rows in that round's report",
				f.Target, f.Time.Format("15:04:05"), rounds, f.Reason, len(ids))
		}
		var verdicts []checkpoints.AuditEntry
		if err := n.ac.Do(ctx, "GET", "/v1/audit?action=trigger.judged"+since, nil, &verdicts); err != nil {
			return false, err
		}
		for _, v := range verdicts {
			if v.Reason == "resolved" && len(found) == len(want) {
				judged = v
				return true, nil
			}
		}
		return false, nil
	})
	for id := range found {
		n.out.Found = append(n.out.Found, id)
	}
	sort.Strings(n.out.Found)
	if err != nil {
		return err
	}
	n.step("repair judged", "%s: a round that started after the repair was in Cassandra (%v) reports %s = %v: resolved",
		judged.Target, judged.Details["effect_applied"], judged.Details["signal"], judged.Details["value"])
	return nil
}

// divergentIn reads the reports a firing names ("ns:id", comma-separated)
// and returns the _ids (hex) of their divergent rows.
func (n *narrator) divergentIn(ctx context.Context, firedOn any) ([]string, string, error) {
	src, _ := firedOn.(string)
	var ids, rounds []string
	seen := map[string]bool{}
	for _, part := range strings.Split(src, ",") {
		_, id, ok := strings.Cut(part, ":")
		if !ok {
			continue
		}
		rounds = append(rounds, id)
		var rep reconcile.Report
		if err := n.ac.Do(ctx, "GET", "/v1/reports/"+id, nil, &rep); err != nil {
			return nil, "", err
		}
		for _, k := range rep.Divergent {
			// The envelope key of an ObjectId: its BSON type byte, then the 12 bytes.
			if len(k.ID) == 13 && k.ID[0] == byte(bson.TypeObjectID) && !seen[hex.EncodeToString(k.ID[1:])] {
				seen[hex.EncodeToString(k.ID[1:])] = true
				ids = append(ids, hex.EncodeToString(k.ID[1:]))
			}
		}
	}
	if len(rounds) == 0 {
		return nil, "", fmt.Errorf("a trigger fired on %q, not on a round", src)
	}
	return ids, strings.Join(rounds, ","), nil
}

func gateLine(ps rollout.Status) string {
	var parts []string
	for _, g := range ps.Gates {
		parts = append(parts, g.Name+"="+g.State)
	}
	return strings.Join(parts, " ")
}

func detailLine(d map[string]any) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%v", k, d[k]))
	}
	return strings.Join(parts, " ")
}
