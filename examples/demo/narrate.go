package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/reconcile"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/sink"
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
	// 1. Backfill, with the change stream already open.
	var st daemonStatus
	err := waitFor(ctx, "backfill", 10*time.Minute, 500*time.Millisecond, func() (bool, error) {
		if err := n.ac.Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
			return false, err
		}
		p := st.Backfill["app.users"]
		bar(p.Docs, max(p.Estimated, int64(docs)), fmt.Sprintf("backfill: %d documents", p.Docs))
		return p.Done, nil
	})
	fmt.Println()
	if err != nil {
		return err
	}
	p := st.Backfill["app.users"]
	n.step("backfill", "%d documents of app.users re-emitted below T0 in %s while the change stream was already open",
		p.Docs, p.Updated.Sub(p.Started).Round(time.Second))

	// 2. Streaming under a steady write load, for the rest of the demo.
	wctx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	workDone := make(chan struct{})
	go func() {
		defer close(workDone)
		workload(wctx, coll, docs, rate, time.Hour)
	}()
	defer func() { stopWork(); <-workDone }()
	n.step("streaming", "a workload of %d changes/s (updates, inserts, deletes) runs against MongoDB from now on", rate)

	// 3. The plan: watch the stages advance, inject a divergence once the
	// second stage is reached, and wait for the plan to complete.
	var ps rollout.Status
	seen := map[string]bool{}
	injectedAt := time.Time{}
	lastLine := ""
	err = waitFor(ctx, "the rollout plan to complete", 15*time.Minute, time.Second, func() (bool, error) {
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
		if ps.Stage == 1 && injectedAt.IsZero() {
			// A clean round of the widened slice first: the keys the stage
			// added are back-filled by then.
			if err := n.cleanRoundAfter(ctx, ps.StageSince); err != nil {
				return false, failed{err}
			}
			// Rounds started from here on count, the one running while the
			// rows are corrupted included: it may find some and fire the repair.
			injectedAt = time.Now()
			n.out.Injected = inject(docs, rows)
			if len(n.out.Injected) == 0 {
				return false, failed{errors.New("no reserved document has rows in the slice to corrupt")}
			}
			n.step("injected divergence", "%d rows of app.users corrupted directly in Cassandra (age = -1): %s",
				len(n.out.Injected), strings.Join(n.out.Injected, ", "))
			if err := n.divergenceFound(ctx, injectedAt); err != nil {
				return false, failed{err}
			}
			if err := n.triggerFired(ctx, injectedAt); err != nil {
				return false, failed{err}
			}
			if err := n.cleanRoundAfter(ctx, time.Now()); err != nil {
				return false, failed{err}
			}
			// The stage waits for a person: advance it as an operator would,
			// with a reason (refused unless every gate passes).
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
			if err == nil {
				var st rollout.Status
				err = n.ac.Do(ctx, "POST", "/v1/plan/advance", map[string]any{"reason": "demo: the half stage is clean again after the repair"}, &st)
			}
			if err != nil {
				return false, failed{err}
			}
			n.step("operator advance", "tidemark plan advance --reason \"the half stage is clean again after the repair\" (audited)")
		}
		return ps.Complete && !injectedAt.IsZero(), nil
	})
	if err != nil {
		return err
	}
	n.out.PlanComplete = true
	n.step("plan complete", "stage %q reached with every gate passing: %s", ps.StageName, gateLine(ps))

	// 4. The workload stops, and one more scheduled round, started after
	// everything, must be clean: with nothing in flight, every row is
	// compared as it will stay (the rounds above ran under the load). Under
	// the load, a round over the whole key space can also outlast the wait on
	// a slow machine, as the stand-in's change history grows.
	stopWork()
	<-workDone
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

// divergenceFound waits for the rounds started after t to report the
// injected keys. It reads every round, not only the latest: rounds run every
// few seconds, and the one that found the keys may already have fired the
// repair trigger, so that the next round is clean before this looks; and a
// round running while the rows were corrupted may find only some of them.
// It waits until the rounds together have reported every injected key.
func (n *narrator) divergenceFound(ctx context.Context, t time.Time) error {
	found := map[string]bool{}
	read := map[string]bool{}
	var rounds []string
	var last reconcile.Report
	err := waitFor(ctx, "a reconcile round after the injection", 5*time.Minute, time.Second, func() (bool, error) {
		var list []struct {
			ID     string    `json:"id"`
			Status string    `json:"status"`
			Start  time.Time `json:"start"`
		}
		if err := n.ac.Do(ctx, "GET", "/v1/reports", nil, &list); err != nil {
			return false, err
		}
		// The listing is newest first.
		for i := len(list) - 1; i >= 0; i-- {
			l := list[i]
			if !l.Start.After(t) || read[l.ID] {
				continue
			}
			if err := n.ac.Do(ctx, "GET", "/v1/reports/"+l.ID, nil, &last); err != nil {
				return false, err
			}
			read[l.ID] = true
			rounds = append(rounds, l.ID)
			for _, s := range last.Sample {
				if id, ok := s.PrimaryKey["id"].(string); ok && s.Class != "in_flight" {
					found[id] = true
				}
			}
			if !slices.ContainsFunc(n.out.Injected, func(id string) bool { return !found[id] }) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return err
	}
	for id := range found {
		n.out.Found = append(n.out.Found, id)
	}
	sort.Strings(n.out.Found)
	n.step("divergence found", "rounds %s since the injection; the last: %s, counts %v; divergent ids %s",
		strings.Join(rounds, ", "), last.Status, last.Counts, strings.Join(n.out.Found, ", "))
	return nil
}

// triggerFired waits for a trigger.fire audit entry after t.
func (n *narrator) triggerFired(ctx context.Context, t time.Time) error {
	var fired checkpoints.AuditEntry
	err := waitFor(ctx, "a trigger to fire", 3*time.Minute, time.Second, func() (bool, error) {
		var es []checkpoints.AuditEntry
		if err := n.ac.Do(ctx, "GET", "/v1/audit?action=trigger.fire&since="+t.UTC().Format(time.RFC3339Nano), nil, &es); err != nil {
			return false, err
		}
		for _, e := range es {
			if e.Result != "dry-run" {
				fired = e
				return true, nil
			}
		}
		return false, nil
	})
	if err == nil {
		n.step("trigger fired", "%s by %s: %s (%s)", fired.Target, fired.Actor, fired.Result, detailLine(fired.Details))
	}
	return err
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
