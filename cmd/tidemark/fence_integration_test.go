//go:build integration

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/rollout"
)

// TestIntegrationElectionFencesAFrozenLeader runs two daemons with the
// election on and the checkpoints store in Kafka. Daemon a leads and
// evaluates a plan whose first stage advances on its own once a gate has
// held for 20 s. a is frozen (SIGSTOP) before that, past its 6 s session
// timeout; b takes office under a higher epoch and an operator aborts the
// plan on b. When a is continued its gate has held long enough and its
// store has not read b's writes: its first write, made before it would
// act, is refused by the epoch b stored, so a advances nothing, audits the
// refusal (leader.fenced), counts it, steps down and follows b's plan.
func TestIntegrationElectionFencesAFrozenLeader(t *testing.T) {
	e := newDaemonEnv(t, "fence")
	prefix := testbed.UniqueName(t, "fence")
	topic := prefix + ".checkpoints"
	const window = 20 * time.Second
	extra := strings.NewReplacer("NS", e.ns, "WINDOW", window.String()).Replace(`
election: {enabled: true, session_timeout: 6s}
rollout:
  version: fence-1
  every: 250ms
  stages:
    - name: half
      slice: {collections: [NS], share: 50%}
      advance: auto
      gates:
        - {name: lag, signal: lag_records, max: 1000, window: WINDOW}
    - name: all
      slice: {collections: [NS], share: 100%}
      advance: manual
`)
	addrA, addrB := "127.0.0.1:17094", "127.0.0.1:17095"
	kafkaStore := func(cfg string) string {
		return strings.Replace(cfg, "checkpoints: {kind: file, dir: "+e.dir+"/state}", "checkpoints: {kind: kafka, topic: "+topic+"}", 1)
	}
	cfgA := kafkaStore(e.config(addrA, prefix, "", extra))
	cfgB := strings.Replace(kafkaStore(e.config(addrB, prefix, "", extra)), "roles: [capture, sink]", "roles: [sink]", 1)
	e.writeConfigs(t, map[string]string{"a.yaml": cfgA, "b.yaml": cfgB})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	acA, _ := admin.NewClient(addrA, e.tokenFile)
	acB, _ := admin.NewClient(addrB, e.tokenFile)
	plan := func(ac *admin.Client) (rollout.Status, error) {
		var st rollout.Status
		err := ac.Do(ctx, "GET", "/v1/plan", nil, &st)
		return st, err
	}
	audits := func(ac *admin.Client, action string, since time.Time) []checkpoints.AuditEntry {
		t.Helper()
		q := url.Values{}
		if action != "" {
			q.Set("action", action)
		}
		if !since.IsZero() {
			q.Set("since", since.UTC().Format(time.RFC3339))
		}
		var es []checkpoints.AuditEntry
		if err := ac.Do(ctx, "GET", "/v1/audit?"+q.Encode(), nil, &es); err != nil {
			t.Fatalf("GET /v1/audit: %v", err)
		}
		return es
	}

	// Documents to capture and apply, so the gate's signal (the sink's lag)
	// has data.
	coll := e.mc.Database(e.db).Collection("users")
	t.Cleanup(func() { e.mc.Database(e.db).Drop(context.Background()) })
	var docs []any
	for i := range 20 {
		docs = append(docs, bson.D{{Key: "_id", Value: int64(i)}, {Key: "email", Value: fmt.Sprintf("f%d@x.org", i)}, {Key: "age", Value: int32(i)}})
	}
	if _, err := coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}

	a := testbed.RunDaemon(t, ctx, e.bin, "daemon a", filepath.Join(e.dir, "a.yaml"))
	// The cleanups run last first: continue a before RunDaemon's cleanup
	// interrupts it, whatever happens below.
	t.Cleanup(func() { a.Process.Signal(syscall.SIGCONT) })
	waitFor(t, "daemon a leads", func() bool { i, err := leaderOf(ctx, acA); return err == nil && i.Leading })
	var last rollout.Status
	waitFor(t, "a evaluates the plan and its gate holds", func() bool {
		var err error
		last, err = plan(acA)
		if err != nil {
			return false
		}
		if time.Since(last.StageSince) > 80*time.Second {
			t.Logf("a's plan: %+v", last)
		}
		return !last.Following && len(last.Gates) == 1 && last.Gates[0].Observed == rollout.ObsOK
	})
	testbed.RunDaemon(t, ctx, e.bin, "daemon b", filepath.Join(e.dir, "b.yaml"))
	var infoB daemon.LeaderInfo
	waitFor(t, "daemon b follows a", func() bool {
		var err error
		infoB, err = leaderOf(ctx, acB)
		return err == nil && infoB.Leader != nil && infoB.Leader.Admin == addrA
	})
	epochA := infoB.Leader.Epoch
	stA, err := plan(acA)
	if err != nil {
		t.Fatal(err)
	}
	if stA.StageName != "half" || stA.Gates[0].State != rollout.Pending {
		t.Fatalf("a before the freeze: stage %s, gate %+v; want half with the gate's window still running", stA.StageName, stA.Gates[0])
	}
	// When a's gate will have held its window, by a's clock.
	passAt := time.Now().Add(window - time.Duration(stA.Gates[0].HeldFor*float64(time.Second)))

	frozen := time.Now()
	if err := a.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "daemon b takes office", func() bool { i, err := leaderOf(ctx, acB); return err == nil && i.Leading })
	t.Logf("daemon b took office %.1fs after daemon a was frozen", time.Since(frozen).Seconds())
	waitFor(t, "b evaluates the plan", func() bool { st, err := plan(acB); return err == nil && !st.Following })
	var stB rollout.Status
	if err := acB.Do(ctx, "POST", "/v1/plan/abort", map[string]any{"reason": "fencing test"}, &stB); err != nil || !stB.Aborted {
		t.Fatalf("operator abort on the new leader: %v (aborted %v)", err, stB.Aborted)
	}
	infoB, err = leaderOf(ctx, acB)
	if err != nil || infoB.Leader == nil || infoB.Leader.Epoch <= epochA {
		t.Fatalf("b's term: %+v (%v), want an epoch above a's %d", infoB.Leader, err, epochA)
	}
	epochB := infoB.Leader.Epoch

	// a stays frozen until its gate has held the window: woken, it would
	// advance at once. This wait is the scenario (a long pause), not a
	// synchronisation.
	select {
	case <-time.After(time.Until(passAt.Add(2 * time.Second))):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	woke := time.Now()
	if err := a.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Logf("daemon a continued after %.1fs frozen", woke.Sub(frozen).Seconds())

	var fenced []checkpoints.AuditEntry
	waitFor(t, "a's refusal is audited", func() bool { fenced = audits(acB, "leader.fenced", time.Time{}); return len(fenced) > 0 })
	f := fenced[0]
	if len(fenced) != 1 || f.Actor != "auto:rollout" || f.Result != "refused" ||
		fmt.Sprint(f.Details["epoch"]) != fmt.Sprint(epochA) || fmt.Sprint(f.Details["current_epoch"]) != fmt.Sprint(epochB) {
		t.Fatalf("leader.fenced audit entries %+v, want one refusal of a's epoch %d against b's %d", fenced, epochA, epochB)
	}
	// a's term is over. Its group member rejoins, so Kafka may hand it the
	// role again; then it takes office under a newer epoch still, from the
	// state b stored.
	var now daemon.LeaderInfo
	waitFor(t, "a's term ends", func() bool {
		i, err := leaderOf(ctx, acA)
		if err != nil || (i.Leading && (i.Leader == nil || i.Leader.Epoch <= epochB)) {
			return false
		}
		st, err := plan(acA)
		if err != nil || st.Following == i.Leading || !st.Aborted {
			return false // a follower takes the stored state at its next evaluation
		}
		now, err = leaderOf(ctx, acB)
		return err == nil && now.Leader != nil && now.Leader.Epoch >= epochB
	})
	t.Logf("now leading: %s under epoch %d", now.Leader.Admin, now.Leader.Epoch)

	// The plan is as b left it, on both daemons.
	for name, ac := range map[string]*admin.Client{"a": acA, "b": acB} {
		st, err := plan(ac)
		if err != nil || st.StageName != "half" || !st.Aborted {
			t.Fatalf("plan on %s after a woke: stage %s aborted %v (%v); want half, aborted", name, st.StageName, st.Aborted, err)
		}
	}
	if es := audits(acB, "stage.advance", time.Time{}); len(es) != 0 {
		t.Fatalf("the plan was advanced: %+v", es)
	}
	if es := audits(acB, "slice.backfill", time.Time{}); len(es) != 0 {
		t.Fatalf("a widened slice was back-filled: %+v", es)
	}
	// a's first write after waking was the refused one: nothing else it
	// decided under its term was recorded after the freeze.
	for _, en := range audits(acB, "", frozen.Add(-time.Second)) {
		if en.Time.After(frozen) && en.Actor == "auto:rollout" && fmt.Sprint(en.Details["leader_epoch"]) == fmt.Sprint(epochA) &&
			en.Action != "leader.fenced" {
			t.Fatalf("the deposed leader recorded %s after it was frozen: %+v", en.Action, en)
		}
	}
	resp, err := http.Get("http://" + addrA + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `tidemark_leader_fenced_writes_total{component="rollout"} 1`; !strings.Contains(string(body), want) {
		t.Fatalf("a's metrics lack %q", want)
	}
	logs := a.Stdout.(*testbed.LockedBuffer).String()
	for _, want := range []string{"evaluation was paused", "a newer leader took office"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("a's log lacks %q", want)
		}
	}

	// Operator writes on the leader keep working.
	acL := acB
	if now.Leader.Admin == addrA {
		acL = acA
	}
	if err := acL.Do(ctx, "POST", "/v1/plan/resume", map[string]any{"reason": "fencing test done"}, &stB); err != nil || stB.Aborted {
		t.Fatalf("operator resume on the leader: %v (aborted %v)", err, stB.Aborted)
	}
	t.Logf("a (epoch %d) was refused %.2fs after it continued; b holds epoch %d", epochA, f.Time.Sub(woke).Seconds(), epochB)
}
