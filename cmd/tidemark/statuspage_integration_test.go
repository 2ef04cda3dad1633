//go:build integration

package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/reconcile"
	"github.com/tidemarkhq/tidemark/sink"
	spt "github.com/tidemarkhq/tidemark/statuspage/statuspagetest"
	"go.mongodb.org/mongo-driver/bson"
)

// TestIntegrationStatusPageInBrowser runs the built daemon against the local
// stack, lets it back-fill and stream some documents, runs a clean reconcile
// round and one after a row is deleted behind the pipeline's back, pauses
// one partition, then loads the status page in headless Chromium and checks
// that what the page shows is what the API says: roles, spec, every
// partition's offsets and lag, the paused partition, the backfill, the audit
// entries, and the three charts: one lag line per partition of
// GET /v1/lag/history, a marker per round of GET /v1/reports in each of the
// rounds chart's two series, and the divergent round's heat-map cell by cell.
//
// With TIDEMARK_STATUSPAGE_SCREENSHOT=docs/status-page.png (relative to the
// repository root) it also saves the README's screenshot of that page.
func TestIntegrationStatusPageInBrowser(t *testing.T) {
	chromium := spt.Chromium(t)
	e := newDaemonEnv(t, "spg")
	cass, mc, dir, bin, db, ns, ks, _ := e.s, e.mc, e.dir, e.bin, e.db, e.ns, e.ks, e.m
	prefix := testbed.UniqueName(t, "spg")
	addr := freeAddr(t)
	cfg := e.config(addr, prefix, ", update_lookup: capture, backfill: {chunk_size: 500}", fmt.Sprintf(`reconcile: {report_dir: %[2]s/reports, in_flight_wait: 15s, settle: 1s}
rollout:
  version: statuspage-plan-1
  every: 500ms
  stages:
    - name: canary
      slice: {collections: [%[1]s], share: "10%%"}
      advance: manual
      gates:
        - {name: lag, signal: lag_records, max: 100000, window: 2s}
        - {name: dead letters, signal: dead_letter_rate, max: 0, window: 2s}
      triggers:
        - {name: stuck, signal: lag_seconds, above: 3600, for: 1m, action: halt}
    - {name: half, slice: {collections: [%[1]s], share: "50%%"}, advance: manual}
    - {name: all, slice: {collections: [%[1]s], share: "100%%"}, advance: manual}
`, ns, dir))
	os.WriteFile(filepath.Join(dir, "tidemark.yaml"), []byte(cfg), 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	coll := mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	insert := func(from, n int) {
		t.Helper()
		var docs []any
		for i := from; i < from+n; i++ {
			docs = append(docs, bson.D{{Key: "_id", Value: int64(i)}, {Key: "email", Value: fmt.Sprintf("s%d@x.org", i)}, {Key: "age", Value: int32(i % 80)}})
		}
		if _, err := coll.InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
	insert(0, 2000)

	testbed.RunDaemon(t, ctx, bin, "daemon", filepath.Join(dir, "tidemark.yaml"))
	ac, err := admin.NewClient(addr, filepath.Join(dir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	// waitStatus polls /v1/status until ok accepts it.
	waitStatus := func(what string, ok func(daemon.Status) bool) daemon.Status {
		t.Helper()
		var st daemon.Status
		for deadline := time.Now().Add(2 * time.Minute); ; {
			st = daemon.Status{}
			err := ac.Do(ctx, "GET", "/v1/status", nil, &st)
			if err == nil && ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not reached in 2 minutes: %+v (%v)", what, st, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	// A transactional topic ends with a commit marker, so a caught-up
	// partition is at most one offset behind its high watermark.
	caughtUp := func(st daemon.Status, skip int32) bool {
		if len(st.Partitions) != 3 {
			return false
		}
		for _, p := range st.Partitions {
			if p.Partition != skip && (p.Committed <= 0 || p.RecordsBehind > 1) {
				return false
			}
		}
		return true
	}
	waitStatus("backfill done and sink caught up", func(st daemon.Status) bool {
		return st.Backfill[ns].Done && caughtUp(st, -1)
	})

	// Two rounds for the rounds chart and the heat-map: a clean one, then
	// one after a row of the slice is deleted in Cassandra behind the
	// pipeline's back (it reports that row missing, in its bucket).
	round := func(reason string) reconcile.Report {
		t.Helper()
		var started daemon.RoundStatus
		if err := ac.Do(ctx, "POST", "/v1/reconcile", daemon.RoundRequest{Reason: reason, Scope: reconcile.Scope{Namespace: ns}}, &started); err != nil || started.Progress == nil {
			t.Fatalf("POST /v1/reconcile: %v %+v", err, started)
		}
		var rep reconcile.Report
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(250 * time.Millisecond) {
			err := ac.Do(ctx, "GET", "/v1/reports/"+started.Progress.ID, nil, &rep)
			if err == nil && rep.ID == started.Progress.ID {
				return rep
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %s wrote no report in 2 minutes: %v", started.Progress.ID, err)
			}
		}
	}
	if rep := round("status page test: clean"); rep.Status != "clean" {
		t.Fatalf("first round: %s %v", rep.Status, rep.Counts)
	}
	var gone string
	if err := cass.Query("SELECT id FROM " + ks + ".users LIMIT 1").WithContext(ctx).Scan(&gone); err != nil {
		t.Fatal(err)
	}
	if err := cass.Query("DELETE FROM "+ks+".users WHERE id = ?", gone).ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	divergent := round("status page test: a row deleted")
	if divergent.Status != "divergent" || divergent.Counts[reconcile.ClassMissing] != 1 {
		t.Fatalf("round after deleting row %s: %s %v", gone, divergent.Status, divergent.Counts)
	}

	// Pause one partition (an audited change), then keep writing: the other
	// partitions move on, the paused one holds.
	topic := prefix + "." + ns
	if err := ac.Do(ctx, "POST", "/v1/pause", daemon.PauseRequest{Topic: topic, Partitions: []int32{0}, Reason: "status page browser test"}, nil); err != nil {
		t.Fatal(err)
	}
	waitStatus("partition 0 paused", func(st daemon.Status) bool { return len(st.Partitions) == 3 && st.Partitions[0].Paused })
	insert(2000, 600)
	waitStatus("partitions 1 and 2 caught up", func(st daemon.Status) bool { return caughtUp(st, 0) })
	// A change without a token is refused and audited as refused.
	resp, err := http.Post("http://"+addr+"/v1/resume", "application/json", strings.NewReader(`{"topic":"`+topic+`","reason":"no token"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unauthenticated resume: HTTP %d", resp.StatusCode)
	}

	// The lag chart needs two samples of every partition (one every 10 s).
	var hist sink.LagHistoryView
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		hist = sink.LagHistoryView{}
		err := ac.Do(ctx, "GET", "/v1/lag/history", nil, &hist)
		if err == nil && len(hist.Partitions) == 3 && !slices.ContainsFunc(hist.Partitions, func(p sink.PartitionHistory) bool { return len(p.Samples) < 2 }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no two lag samples of each of 3 partitions in a minute: %+v (%v)", hist, err)
		}
	}

	url := "http://" + addr + "/"
	var doc string
	var st daemon.Status
	// The page and the API are read at different moments; with partition 0
	// paused and no writes the figures hold still, but retry if a commit
	// marker or a mark moved in between.
	for attempt := 0; ; attempt++ {
		var before, after daemon.Status
		if err := ac.Do(ctx, "GET", "/v1/status", nil, &before); err != nil {
			t.Fatal(err)
		}
		doc = spt.DumpDOM(t, ctx, chromium, url, 5*time.Second)
		if err := ac.Do(ctx, "GET", "/v1/status", nil, &after); err != nil {
			t.Fatal(err)
		}
		if sameOffsets(before, after) {
			st = after
			break
		}
		if attempt == 4 {
			t.Fatalf("the daemon's offsets kept moving while the page loaded: %+v then %+v", before.Partitions, after.Partitions)
		}
	}
	if !strings.Contains(doc, `data-state="ready"`) {
		t.Fatalf("the page did not reach ready:\n%s", testbed.Tail(doc, 6000))
	}

	text := func(attr, key string) string {
		t.Helper()
		s, ok := spt.Element(doc, attr, key)
		if !ok {
			t.Fatalf("the page shows no %s=%q:\n%s", attr, key, testbed.Tail(doc, 6000))
		}
		return spt.Text(s)
	}
	if got := text("id", "roles"); got != "capture, sink" {
		t.Errorf("roles: page shows %q", got)
	}
	if got := text("id", "spec"); got != st.SpecVersion || got == "" {
		t.Errorf("spec: page shows %q, API says %q", got, st.SpecVersion)
	}
	if got := text("id", "healthz"); got != "✓ ok" && got != "ok" {
		t.Errorf("health: page shows %q", got)
	}
	if got := text("id", "readyz"); !strings.Contains(got, "ready") {
		t.Errorf("ready: page shows %q", got)
	}
	num := func(n int64) string {
		if n < 0 {
			return "—"
		}
		return strconv.FormatInt(n, 10)
	}
	for _, p := range st.Partitions {
		row, ok := spt.Element(doc, "data-tp", fmt.Sprintf("%s/%d", p.Topic, p.Partition))
		if !ok {
			t.Errorf("the page has no row for %s/%d", p.Topic, p.Partition)
			continue
		}
		c := spt.Cells(row)
		for col, want := range map[string]string{"committed": num(p.Committed), "end": num(p.End), "records_behind": num(p.RecordsBehind)} {
			if got := spt.Number(c[col]); got != want {
				t.Errorf("partition %d %s: page shows %q, API says %s", p.Partition, col, c[col], want)
			}
		}
		wantState := "caught up"
		if p.Paused {
			wantState = "paused"
		}
		if c["state"] != wantState {
			t.Errorf("partition %d state: page shows %q, want %q (API paused=%v)", p.Partition, c["state"], wantState, p.Paused)
		}
		if !strings.HasPrefix(c["applied"], fmt.Sprintf("%d.%d ", p.Applied.T, p.Applied.I)) {
			t.Errorf("partition %d applied version: page shows %q, API says %v", p.Partition, c["applied"], p.Applied)
		}
	}
	if keys, _ := spt.Elements(doc, "data-tp"); len(keys) != len(st.Partitions) {
		t.Errorf("the page shows %d partitions, the API %d", len(keys), len(st.Partitions))
	}
	if got := text("id", "lag-summary"); !strings.Contains(got, "3 partitions · 1 paused") {
		t.Errorf("lag summary: %q", got)
	}
	bf := st.Backfill[ns]
	if got := text("id", "backfill-rows"); !strings.Contains(got, ns) || !strings.Contains(got, "100.0 %") || !strings.Contains(got, "done") ||
		!strings.Contains(got, commas(bf.Docs)) {
		t.Errorf("backfill: page shows %q, API says %+v", got, bf)
	}
	if got := text("id", "capture-rows"); !strings.Contains(got, ns) || !strings.Contains(got, "streaming") {
		t.Errorf("capture: page shows %q", got)
	}
	if got := text("id", "reconcile-body"); strings.Contains(got, "cannot read") {
		t.Errorf("reconcile: %q", got)
	}
	var plan struct {
		PlanVersion string   `json:"plan_version"`
		Stages      []string `json:"stages"`
		StageName   string   `json:"stage_name"`
		Gates       []struct {
			Name string `json:"name"`
		} `json:"gates"`
	}
	if err := ac.Do(ctx, "GET", "/v1/plan", nil, &plan); err != nil {
		t.Fatal(err)
	}
	got := text("id", "plan-body")
	if !strings.Contains(got, "plan "+plan.PlanVersion) || plan.PlanVersion != "statuspage-plan-1" {
		t.Errorf("plan: page shows %q, API says version %q", got, plan.PlanVersion)
	}
	for i, name := range plan.Stages {
		want := fmt.Sprintf("%d. %s", i+1, name)
		if name == plan.StageName {
			want += " current"
		}
		if !strings.Contains(got, want) {
			t.Errorf("plan: page shows %q, lacking %q", got, want)
		}
	}
	for _, g := range plan.Gates {
		if _, ok := spt.Element(doc, "data-gate", g.Name); !ok {
			t.Errorf("plan: the page has no row for gate %q", g.Name)
		}
	}
	if len(plan.Gates) != 2 {
		t.Errorf("the API lists gates %+v, want the config's two", plan.Gates)
	}

	_, audit := spt.Elements(doc, "data-action")
	if _, ok := audit["daemon.start"]; !ok {
		t.Errorf("the audit table lacks daemon.start: %v", audit)
	}
	// The pause is audited twice: started (before it ran), then its result.
	var pauseResults []string
	for _, row := range spt.All(doc, "data-action", "POST /v1/pause") {
		pause := spt.Cells(row)
		if pause["actor"] != "ci" || pause["reason"] != "status page browser test" {
			t.Errorf("the audit table's pause row: %v", pause)
		}
		pauseResults = append(pauseResults, pause["result"])
	}
	if got := strings.Join(pauseResults, ","); !strings.Contains(got, "ok") || !strings.Contains(got, "started") {
		t.Errorf("the audit table's pause rows (newest first): %s, want ok and started", got)
	}
	refused := spt.Cells(audit["POST /v1/resume"])
	if refused["actor"] != "anonymous" || !strings.Contains(refused["result"], "refused") {
		t.Errorf("the audit table's refused resume row: %v", refused)
	}

	checkCharts(t, doc, hist, divergent)
	var rounds []daemon.ReportListing
	if err := ac.Do(ctx, "GET", "/v1/reports", nil, &rounds); err != nil || len(rounds) != 2 {
		t.Fatalf("GET /v1/reports: %v %+v", err, rounds)
	}
	for _, key := range []string{"divergent", "in_flight"} {
		if got := spt.Attr(doc, "data-series", key, "data-points"); got != "2" {
			t.Errorf("rounds chart, series %s: %s points, want the 2 rounds", key, got)
		}
	}
	for _, r := range rounds {
		if n := len(spt.All(doc, "data-point", r.ID)); n != 2 {
			t.Errorf("rounds chart: round %s has %d markers, want one per series", r.ID, n)
		}
	}
	_, series := spt.Elements(doc, "data-series")
	if !strings.Contains(series["divergent"], "round "+divergent.ID+" · "+ns+" · divergent · ended ") ||
		!strings.Contains(series["divergent"], fmt.Sprintf("UTC: 1 divergent, %d in flight", divergent.Counts["in_flight"])) {
		t.Errorf("rounds chart: no marker titled with round %s and its 1 divergent key:\n%s", divergent.ID, series["divergent"])
	}

	if shot := os.Getenv("TIDEMARK_STATUSPAGE_SCREENSHOT"); shot != "" {
		if !filepath.IsAbs(shot) {
			shot = filepath.Join(testbed.RepoRoot(), shot)
		}
		// A light write load while the picture is taken, as a running
		// migration has; the assertions above were made with none.
		wctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 100_000; wctx.Err() == nil; i += 20 {
				var docs []any
				for j := i; j < i+20; j++ {
					docs = append(docs, bson.D{{Key: "_id", Value: int64(j)}, {Key: "email", Value: fmt.Sprintf("w%d@x.org", j)}, {Key: "age", Value: int32(j % 80)}})
				}
				coll.InsertMany(wctx, docs)
			}
		}()
		time.Sleep(4 * time.Second) // let the load show in the lag figures
		// A short virtual-time budget: the page's clock runs ahead of the
		// wall clock by up to the budget, which would inflate every "ago".
		spt.Screenshot(t, ctx, chromium, url, shot, 1280, 1800, 1500*time.Millisecond)
		stop()
		<-done
		t.Logf("screenshot saved to %s", shot)
	}
}

// checkCharts checks the lag chart against the history the API served just
// before the page loaded (a sample may have come in since: one more point
// at most), and the heat-maps against the divergent report: one map per
// table, the table with the deleted row showing 1 in its bucket's cell.
func checkCharts(t *testing.T, doc string, hist sink.LagHistoryView, rep reconcile.Report) {
	t.Helper()
	var want []string
	for _, p := range hist.Partitions {
		key := fmt.Sprintf("%s/%d", p.Topic, p.Partition)
		want = append(want, key)
		n, _ := strconv.Atoi(spt.Attr(doc, "data-series", key, "data-points"))
		if n < len(p.Samples) || n > len(p.Samples)+1 {
			t.Errorf("lag chart, %s: %d points, the API had %d samples", key, n, len(p.Samples))
		}
		if _, ok := spt.Element(doc, "data-legend", key); !ok {
			t.Errorf("lag chart: no legend entry for %s", key)
		}
	}
	var got []string
	for _, k := range spt.Keys(doc, "data-series") {
		if k != "divergent" && k != "in_flight" {
			got = append(got, k)
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("lag chart series %v, want the history's partitions %v", got, want)
	}
	svg, ok := spt.Element(doc, "data-chart", "lag")
	if !ok {
		t.Fatal("no lag chart")
	}
	if x, y := spt.Texts(svg, "data-axis-title", "x"), spt.Texts(svg, "data-axis-title", "y"); len(x) != 1 || x[0] != "time (UTC)" || len(y) != 1 || y[0] != "seconds behind" {
		t.Errorf("lag chart axis titles: %q %q", x, y)
	}
	// Ticks are UTC clock times from the oldest sample (the daemon has run
	// for less than the hour) to the history's "at".
	xs := spt.Texts(svg, "data-axis", "x")
	oldest := hist.At
	for _, p := range hist.Partitions {
		if p.Samples[0].Time.Before(oldest) {
			oldest = p.Samples[0].Time
		}
	}
	from, to := oldest.Add(-5*time.Minute).UTC().Format("15:04"), hist.At.Add(time.Minute).UTC().Format("15:04")
	for _, x := range xs {
		inside := from <= x && x <= to
		if from > to { // the hour spans midnight
			inside = x >= from || x <= to
		}
		if len(x) != 5 || !inside {
			t.Errorf("lag chart time tick %q outside %s–%s (ticks %q)", x, from, to, xs)
		}
	}
	if len(xs) < 3 {
		t.Errorf("lag chart time ticks: %q", xs)
	}

	cells, text := spt.Elements(doc, "data-bucket")
	leaves := 1 << rep.BucketBits
	per := (leaves + 255) / 256
	perMap := (leaves + per - 1) / per
	hot := 0
	for _, tr := range rep.Tables {
		if len(tr.Buckets) == 0 {
			continue
		}
		hot++
		n := 0
		for _, c := range cells {
			if strings.HasPrefix(c, tr.Table+"/") {
				n++
			}
		}
		if n != perMap {
			t.Errorf("heat-map of %s: %d cells, want %d (2^%d buckets)", tr.Table, n, perMap, rep.BucketBits)
		}
		for _, b := range tr.Buckets {
			key := fmt.Sprintf("%s/%d", tr.Table, int(b.ID)/per*per)
			if got := spt.Text(text[key]); got != strconv.FormatInt(b.Divergent, 10) {
				t.Errorf("heat-map cell %s shows %q, the report says %d", key, got, b.Divergent)
			}
			if title := spt.Attr(doc, "data-bucket", key, "title"); !strings.Contains(title, fmt.Sprintf(": %d divergent", b.Divergent)) {
				t.Errorf("heat-map cell %s title %q", key, title)
			}
		}
	}
	if hot != 1 || len(spt.All(doc, "data-legend", "heat")) != 1 {
		t.Errorf("%d tables with divergent buckets, %d heat-map legends; want 1 each", hot, len(spt.All(doc, "data-legend", "heat")))
	}
	if body, _ := spt.Element(doc, "id", "reconcile-body"); !strings.Contains(spt.Text(body), "buckets agree") {
		t.Errorf("the clean tables' heat-maps do not say they agree: %s", spt.Text(body))
	}
}

func sameOffsets(a, b daemon.Status) bool {
	if len(a.Partitions) != len(b.Partitions) {
		return false
	}
	for i := range a.Partitions {
		x, y := a.Partitions[i], b.Partitions[i]
		if x.Topic != y.Topic || x.Partition != y.Partition || x.Committed != y.Committed || x.End != y.End ||
			x.RecordsBehind != y.RecordsBehind || x.Paused != y.Paused || x.Applied != y.Applied {
			return false
		}
	}
	return true
}

// freeAddr is a loopback address no one listens on right now.
func freeAddr(t *testing.T) string { return testbed.FreeAddr(t) }

// commas writes n the way the page does: 12,345.
func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
