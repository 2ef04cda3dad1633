//go:build integration

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/rollout"
)

// TestIntegrationRolloutDrills runs the real binary with a two-stage plan
// against the local stack. The sink writes only the first stage's half of the
// key space. A drill of the halt trigger holds the plan without pausing the
// sink (no partition paused in the consumer), restores it, and is audited; changes made after
// it still arrive. A soft rollback flips the route endpoint and the route
// file to legacy within a second and resume flips them back, and a drill of
// the soft-rollback trigger passes and leaves the routes as they were.
func TestIntegrationRolloutDrills(t *testing.T) {
	e := newDaemonEnv(t, "ro")
	s, mc, dir, bin, db, ns, _, m := e.s, e.mc, e.dir, e.bin, e.db, e.ns, e.ks, e.m
	tokenFile := e.tokenFile
	prefix := testbed.UniqueName(t, "ro")
	addr := "127.0.0.1:17093"
	routeFile := filepath.Join(dir, "routes.json")
	cfg := e.config(addr, prefix, "", fmt.Sprintf(`rollout:
  version: itest-1
  every: 500ms
  route_file: %s
  drill_timeout: 60s
  stages:
    - name: half
      slice: {collections: [%s], share: 50%%}
      reads: new
      triggers:
        - {name: lag-halt, signal: lag_seconds, above: 3600, for: 1m, action: halt}
        - {name: reads-back, signal: error_ratio, above: 0.5, for: 1m, action: soft-rollback}
        - {name: diverged-soft, signal: divergent_rows, above: 0, for: 1s, action: soft-rollback}
    - name: all
      slice: {collections: [%s]}
      reads: new
`, routeFile, ns, ns))
	os.WriteFile(filepath.Join(dir, "tidemark.yaml"), []byte(cfg), 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	coll := mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	// One document before the daemon starts, so the collection exists; its
	// _id (bucket 4927) is inside the slice, so it does not matter whether the
	// backfill reaches the sink before the plan hands the sink its slice.
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: int64(-1)}, {Key: "email", Value: "seed@x.org"}, {Key: "age", Value: int32(1)}}); err != nil {
		t.Fatal(err)
	}

	testbed.RunDaemon(t, ctx, bin, "daemon", filepath.Join(dir, "tidemark.yaml"))
	ac, _ := admin.NewClient(addr, tokenFile)
	for deadline := time.Now().Add(time.Minute); ; {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon not ready within a minute")
		}
		time.Sleep(200 * time.Millisecond)
	}
	cli := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, append(args, "--addr", addr, "--token-file", tokenFile)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// Only keys in the first stage's half of the key space reach Cassandra.
	inSlice := func(docs []bson.Raw) []bson.Raw {
		var out []bson.Raw
		for _, d := range docs {
			if rollout.BucketOfID(d.Lookup("_id")) < 5000 {
				out = append(out, d)
			}
		}
		return out
	}
	waitMatch := func(what string) {
		t.Helper()
		docs := testbed.SourceDocs(t, ctx, coll)
		want := testbed.Expected(t, m, ns, inSlice(docs))
		all := testbed.Expected(t, m, ns, docs)
		for deadline := time.Now().Add(2 * time.Minute); ; {
			got := testbed.Snapshot(t, s, m, ns)
			if bytes.Equal(got, want) {
				if bytes.Equal(got, all) {
					t.Fatalf("%s: the slice holds every document; the test needs keys outside it", what)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Cassandra does not hold exactly the slice: got %q want %q", what, testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	insert := func(from, to int) {
		var docs []any
		for i := from; i < to; i++ {
			docs = append(docs, bson.D{{Key: "_id", Value: int64(i)}, {Key: "email", Value: fmt.Sprintf("r%d@x.org", i)}, {Key: "age", Value: int32(i % 80)}})
		}
		if _, err := coll.InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
	insert(0, 400)
	waitMatch("first stage")

	out, err := cli("plan", "status")
	if err != nil || !strings.Contains(out, "stage 1/2 half") || !strings.Contains(out, "lag-halt") {
		t.Fatalf("plan status: %v\n%s", err, out)
	}

	// Drill the halt trigger end to end.
	out, err = cli("plan", "drill", "--trigger", "lag-halt", "--reason", "itest halt drill", "--json")
	if err != nil {
		t.Fatalf("halt drill: %v\n%s", err, out)
	}
	var rep rollout.DrillReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Result != rollout.Pass || len(rep.Steps) != 3 {
		t.Fatalf("halt drill report: %v\n%s", err, out)
	}
	// A halt holds the plan; the sink keeps running (docs/rollout.md).
	if !strings.Contains(rep.Steps[1].Detail, "plan held") {
		t.Fatalf("the drill did not see the plan held: %+v", rep.Steps[1])
	}
	var st daemon.Status
	if err := ac.Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Paused) != 0 {
		t.Fatalf("partitions still paused after the drill: %v", st.Paused)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		ac.Do(ctx, "GET", "/v1/status", nil, &st)
		paused := 0
		for _, p := range st.Partitions {
			if p.Paused {
				paused++
			}
		}
		if paused == 0 && len(st.Partitions) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the consumer did not resume: %+v", st.Partitions)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var es []checkpoints.AuditEntry
	if err := ac.Do(ctx, "GET", "/v1/audit?action=drill", nil, &es); err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Actor != "ci" || es[0].Result != "ok" || es[0].Reason != "itest halt drill" || es[0].Target != "lag-halt" {
		t.Fatalf("drill audit: %+v", es)
	}
	// The pipeline runs as before: new changes arrive, still only the slice.
	insert(400, 600)
	coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: int64(3)}}, bson.D{{Key: "$set", Value: bson.D{{Key: "email", Value: "after-drill@x.org"}}}})
	waitMatch("after the halt drill")

	// Soft rollback: the route flips to legacy within a second, and back.
	var inKey string
	for i := 0; i < 600; i++ {
		id := fmt.Sprint(i)
		var ra daemon.RouteAnswer
		if err := ac.Do(ctx, "GET", "/v1/route?collection="+ns+"&id="+id, nil, &ra); err != nil {
			t.Fatal(err)
		}
		if ra.Route == rollout.New {
			inKey = id
			break
		}
	}
	if inKey == "" {
		t.Fatal("no key routes to the new store in a 50% slice")
	}
	route := func() (rollout.Mode, rollout.Mode) {
		var ra daemon.RouteAnswer
		if err := ac.Do(ctx, "GET", "/v1/route?collection="+ns+"&id="+inKey, nil, &ra); err != nil {
			t.Fatal(err)
		}
		r, err := rollout.LoadRoutes(routeFile)
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		fmt.Sscan(inKey, &n)
		return ra.Route, r.RouteID(ns, rawInt64(n))
	}
	began := time.Now()
	if out, err := cli("plan", "rollback", "--reason", "itest soft rollback"); err != nil {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	api, file := route()
	if api != rollout.Legacy || file != rollout.Legacy || time.Since(began) > time.Second {
		t.Fatalf("after rollback (%s): endpoint %s, route file %s", time.Since(began), api, file)
	}
	if out, err := cli("plan", "resume", "--reason", "itest reads fine again"); err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	if api, file := route(); api != rollout.New || file != rollout.New {
		t.Fatalf("after resume: endpoint %s, route file %s", api, file)
	}
	out, err = cli("plan", "drill", "--trigger", "reads-back", "--reason", "itest soft drill", "--json")
	rep = rollout.DrillReport{}
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || rep.Result != rollout.Pass {
		t.Fatalf("soft-rollback drill: %v\n%s", err, out)
	}
	if api, file := route(); api != rollout.New || file != rollout.New {
		t.Fatalf("after the soft-rollback drill: endpoint %s, route file %s", api, file)
	}

	// A soft-rollback trigger: a divergent reconcile round (written as
	// reconcile does) fires it after 1s, and the route endpoint and the route
	// file say legacy within a second of the firing.
	store, err := checkpoints.OpenFile(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	round := func(div int64) {
		now := time.Now().UTC()
		if err := checkpoints.PutJSON(ctx, store, checkpoints.KeyReconcileLatest+ns, checkpoints.RoundSummary{ID: fmt.Sprint("r", div), Scope: ns,
			Start: now, End: now, Clean: div == 0, RowsCompared: 600, Divergent: div}); err != nil {
			t.Fatal(err)
		}
	}
	round(3)
	var seen time.Time
	for deadline := time.Now().Add(20 * time.Second); seen.IsZero(); time.Sleep(20 * time.Millisecond) {
		if api, file := route(); api == rollout.Legacy && file == rollout.Legacy {
			seen = time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatal("the soft-rollback trigger did not flip the route")
		}
	}
	// The engine audits an action once it is done, so the entry can follow
	// the flipped route by a moment on a busy machine.
	var fires []checkpoints.AuditEntry
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		fires = nil
		err := ac.Do(ctx, "GET", "/v1/audit?action=trigger.fire", nil, &fires)
		if err == nil && len(fires) > 0 || time.Now().After(deadline) {
			if err != nil || len(fires) != 1 {
				t.Fatalf("trigger audit: %v %+v", err, fires)
			}
			break
		}
	}
	if d := seen.Sub(fires[0].Time); d > time.Second || fires[0].Details["trigger"] != "diverged-soft" || fires[0].Details["value"] != 3.0 {
		t.Fatalf("route seen legacy %s after the firing: %+v", d, fires[0])
	}
	round(0)
	if out, err := cli("plan", "resume", "--reason", "itest divergence repaired"); err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	if api, file := route(); api != rollout.New || file != rollout.New {
		t.Fatalf("after resume: endpoint %s, route file %s", api, file)
	}

	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var metrics bytes.Buffer
	metrics.ReadFrom(resp.Body)
	for _, want := range []string{`tidemark_rollout_drills_total{action="halt",result="pass"} 1`, `tidemark_rollout_drills_total{action="soft-rollback",result="pass"} 1`,
		"tidemark_rollout_route_generation 7", `tidemark_rollout_trigger_fires_total{action="soft-rollback",mode="auto",trigger="diverged-soft"} 1`, `tidemark_rollout_slice_basis_points{collection="` + ns + `"} 5000`} {
		if !strings.Contains(metrics.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func rawInt64(n int64) bson.RawValue {
	typ, b, _ := bson.MarshalValue(n)
	return bson.RawValue{Type: typ, Value: b}
}

// TestIntegrationRolloutThreeStages runs a 10% → 50% → 100% plan that
// advances by itself on a clean pipeline once every gate has held for its
// window; each widening backfills the newly included keys. Reconcile is not
// part of this daemon yet, so the test plays it through its contract with
// rollout: a round summary under checkpoints.KeyReconcileLatest and, after a
// clean round, verified marks. Divergence injected during the second stage
// fires the rewind trigger within its hold window; the rewind replays from
// the verified marks, the next round is clean, and the plan continues to
// the end. At the last stage, drills of rewind, repair and hard rollback
// pass and Cassandra still equals the source.
func TestIntegrationRolloutThreeStages(t *testing.T) {
	e := newDaemonEnv(t, "ro3")
	s, mc, dir, bin, db, ns, _, m := e.s, e.mc, e.dir, e.bin, e.db, e.ns, e.ks, e.m
	tokenFile := e.tokenFile
	prefix := testbed.UniqueName(t, "ro3")
	topic := prefix + "." + ns
	addr := "127.0.0.1:17094"
	gates := `
      gates:
        - {name: lag, signal: lag_seconds, max: 5, window: 3s}
        - {name: clean, signal: divergent_rows, max: 0, window: 3s}`
	cfg := strings.NewReplacer("DIR", dir, "BROKERS", strings.Join(testbed.KafkaBrokers(), ","), "MONGO", testbed.MongoURI(),
		"CASSANDRA", strings.Join(testbed.CassandraHosts(), ","), "ADDR", addr, "PREFIX", prefix, "NS", ns, "GATES", gates).Replace(`roles: [capture, sink]
spec: DIR/spec.yaml
kafka: {brokers: [BROKERS]}
mongo: {uri: "MONGO"}
cassandra: {hosts: [CASSANDRA]}
checkpoints: {kind: file, dir: DIR/state}
admin: {listen: "ADDR", tokens_file: DIR/tokens, open_status: true}
capture: {topic_prefix: PREFIX, namespaces: [NS], partitions: 3}
sink: {group: PREFIX-g, consistency: ONE, mark_interval: 1s}
rollout:
  version: itest-3
  every: 250ms
  drill_timeout: 90s
  stages:
    - name: ten
      slice: {collections: [NS], share: 10%}
      advance: autoGATES
    - name: half
      slice: {collections: [NS], share: 50%}
      advance: autoGATES
      triggers:
        - {name: diverged, signal: divergent_rows, above: 5, for: 2s, action: rewind, cooldown: 1m, max_attempts: 2}
    - name: all
      slice: {collections: [NS], share: 100%}
      reads: newGATES
      triggers:
        - {name: replay, signal: divergent_rows, above: 0, for: 1m, action: rewind}
        - {name: fix, signal: divergent_rows, above: 0, for: 1m, action: repair}
        - {name: undo, signal: divergent_rows, above: 1000, for: 1m, action: hard-rollback}
`)
	os.WriteFile(filepath.Join(dir, "tidemark.yaml"), []byte(cfg), 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	coll := mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	insert := func(from, to int) {
		var docs []any
		for i := from; i < to; i++ {
			docs = append(docs, bson.D{{Key: "_id", Value: int64(i)}, {Key: "email", Value: fmt.Sprintf("s%d@x.org", i)}, {Key: "age", Value: int32(i % 80)}})
		}
		if _, err := coll.InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
	// Before the daemon starts: the first stage's keys arrive by backfill.
	// Documents are inserted only once the plan's slice is in place, except
	// -1, whose bucket (4927) is outside 10%: written early or not, the
	// widening to 50% includes it anyway.
	insert(-1, 0)

	store, err := checkpoints.OpenFile(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	// The reconcile stand-in: every 300ms a round summary of the namespace,
	// clean or divergent, and after a clean one the verified marks.
	// Rounds are divergent until the first stage's keys are in, so the plan
	// cannot advance past an empty pipeline.
	var divergent atomic.Int64
	divergent.Store(1)
	rctx, stopRounds := context.WithCancel(ctx)
	rounds := make(chan struct{})
	go func() {
		defer close(rounds)
		for n := 0; ; n++ {
			select {
			case <-rctx.Done():
				return
			case <-time.After(300 * time.Millisecond):
			}
			div := divergent.Load()
			id := fmt.Sprintf("itest-round-%d", n)
			if div == 0 {
				marks, _ := store.List(rctx, checkpoints.PrefixMark+topic+"/")
				for _, b := range marks {
					var mk checkpoints.Mark
					if json.Unmarshal(b, &mk) == nil {
						mk.Name = id
						checkpoints.PutJSON(rctx, store, checkpoints.PartitionKey(checkpoints.PrefixVerified, mk.Topic, mk.Partition), mk)
					}
				}
			}
			now := time.Now().UTC()
			checkpoints.PutJSON(rctx, store, checkpoints.KeyReconcileLatest+ns, checkpoints.RoundSummary{ID: id, Scope: ns,
				Start: now.Add(-100 * time.Millisecond), End: now, Clean: div == 0, RowsCompared: 1000, Divergent: div})
		}
	}()
	defer func() { stopRounds(); <-rounds }()

	testbed.RunDaemon(t, ctx, bin, "daemon", filepath.Join(dir, "tidemark.yaml"))
	ac, _ := admin.NewClient(addr, tokenFile)
	plan := func() rollout.Status {
		t.Helper()
		var st rollout.Status
		for deadline := time.Now().Add(30 * time.Second); ; {
			err := ac.Do(ctx, "GET", "/v1/plan", nil, &st)
			if err == nil {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET /v1/plan: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitStage := func(name string, limit time.Duration) rollout.Status {
		t.Helper()
		for deadline := time.Now().Add(limit); ; {
			st := plan()
			if st.StageName == name {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("not at stage %s within %s: %+v", name, limit, st)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitMatch := func(what string, share int) {
		t.Helper()
		docs := testbed.SourceDocs(t, ctx, coll)
		var in []bson.Raw
		for _, d := range docs {
			if rollout.BucketOfID(d.Lookup("_id")) < share {
				in = append(in, d)
			}
		}
		want := testbed.Expected(t, m, ns, in)
		for deadline := time.Now().Add(2 * time.Minute); ; {
			got := testbed.Snapshot(t, s, m, ns)
			if bytes.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Cassandra does not hold exactly the %d bp slice: got %q want %q", what, share, testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
			}
			time.Sleep(300 * time.Millisecond)
		}
	}

	st := waitStage("ten", 30*time.Second)
	if st.Slice[ns] != "10%" {
		t.Fatalf("first stage: %+v", st)
	}
	insert(0, 500)
	waitMatch("first stage", 1000)
	divergent.Store(0)

	// Clean rounds: the gates hold 3s and the plan widens to 50%, whose new
	// keys are backfilled.
	waitStage("half", 30*time.Second)
	// One divergent row per round holds the stage (the clean gate cannot
	// pass; the trigger wants more than 5) and freezes the verified marks;
	// the widening's backfill and new documents are then applied past them.
	divergent.Store(1)
	insert(500, 700)
	waitMatch("second stage", 5000)
	// A blip shorter than the trigger's 2s window does not fire it.
	divergent.Store(10)
	time.Sleep(800 * time.Millisecond)
	divergent.Store(1)
	time.Sleep(2500 * time.Millisecond)
	steady := time.Now()
	divergent.Store(10)
	var fire []checkpoints.AuditEntry
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := ac.Do(ctx, "GET", "/v1/audit?action=trigger.fire", nil, &fire); err != nil {
			t.Fatal(err)
		}
		if len(fire) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the divergence trigger did not fire")
		}
		time.Sleep(100 * time.Millisecond)
	}
	f := fire[0]
	if f.Time.Before(steady.Add(2 * time.Second)) {
		t.Fatalf("the trigger fired at %s, before the divergence that began at %s held 2s: the blip fired it", f.Time, steady)
	}
	if f.Actor != rollout.AutoActor || f.Result != "ok" || f.Details["action"] != "rewind" || f.Details["value"] != 10.0 ||
		f.Details["held_for_seconds"].(float64) < 2 {
		t.Fatalf("trigger audit: %+v", f)
	}
	t.Logf("rewind fired %s after the divergence began; details %v", f.Time.Sub(steady).Round(time.Millisecond), f.Details[topic])
	if rw, _ := f.Details[topic].(map[string]any); rw == nil || rw["records_to_replay"].(float64) <= 0 {
		t.Fatalf("the rewind replayed nothing: %+v", f.Details)
	}
	// The rewind replayed and resumed: no partition stays paused, and the
	// data is still the slice.
	var ds daemon.Status
	ac.Do(ctx, "GET", "/v1/status", nil, &ds)
	if len(ds.Paused) != 0 {
		t.Fatalf("paused after the rewind: %v", ds.Paused)
	}
	waitMatch("after the rewind", 5000)
	if st := plan(); st.StageName != "half" {
		t.Fatalf("advanced while divergent: %s", st.StageName)
	}
	// The next round is clean: the plan continues to the end.
	divergent.Store(0)
	st = waitStage("all", 30*time.Second)
	waitMatch("last stage", 10000)
	if st.Reads != rollout.New {
		t.Fatalf("last stage reads: %+v", st)
	}
	var adv, pass, backfills []checkpoints.AuditEntry
	ac.Do(ctx, "GET", "/v1/audit?action=stage.advance", nil, &adv)
	ac.Do(ctx, "GET", "/v1/audit?action=gate.pass", nil, &pass)
	ac.Do(ctx, "GET", "/v1/audit?action=slice.backfill", nil, &backfills)
	if len(adv) != 2 || len(pass) != 2 || len(backfills) != 2 {
		t.Fatalf("audit: %d advances, %d gate passes, %d backfills", len(adv), len(pass), len(backfills))
	}
	for _, p := range pass {
		gs, _ := p.Details["gates"].([]any)
		if len(gs) != 2 {
			t.Fatalf("gate.pass without the gates: %+v", p)
		}
		for _, g := range gs {
			g := g.(map[string]any)
			if g["state"] != "pass" || g["held_for_seconds"].(float64) < g["window_seconds"].(float64) {
				t.Fatalf("advanced before a gate held its window: %+v", g)
			}
		}
	}

	// Drills at the last stage; the source keeps changing in between.
	for i, trig := range []string{"replay", "fix", "undo"} {
		coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: int64(i)}}, bson.D{{Key: "$set", Value: bson.D{{Key: "email", Value: "drill-" + trig + "@x.org"}}}})
		cmd := exec.CommandContext(ctx, bin, "plan", "drill", "--trigger", trig, "--reason", "itest drill", "--json", "--addr", addr, "--token-file", tokenFile)
		out, err := cmd.CombinedOutput()
		var rep rollout.DrillReport
		if err != nil || json.Unmarshal(out, &rep) != nil || rep.Result != rollout.Pass {
			t.Fatalf("drill %s: %v\n%s", trig, err, out)
		}
		if st := plan(); st.StageName != "all" || st.Held != "" || len(st.Reverted) != 0 || len(st.Paused) != 0 {
			t.Fatalf("drill %s left the plan changed: %+v", trig, st)
		}
		waitMatch("after the "+trig+" drill", 10000)
	}
}
