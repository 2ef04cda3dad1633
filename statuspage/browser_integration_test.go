//go:build integration

package statuspage_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/statuspage"
	spt "github.com/tidemarkhq/tidemark/statuspage/statuspagetest"
)

// fixtures are API answers by path; a missing path answers 404.
type fixtures map[string]string

// fixtureServer serves the page and fixed API answers, and records every path
// the browser asked for, so a test can tell that nothing else was requested.
func fixtureServer(t *testing.T, fx fixtures, token string) (*httptest.Server, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var asked []string
	mux := http.NewServeMux()
	for _, p := range statuspage.Patterns {
		mux.Handle(p, statuspage.Handler())
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(401)
			w.Write([]byte(`{"error":"a bearer token is required (set TIDEMARK_TOKEN or --token-file)"}`))
			return
		}
		body, ok := fx[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if strings.HasPrefix(body, "{") || strings.HasPrefix(body, "[") {
			w.Header().Set("Content-Type", "application/json")
		}
		w.Write([]byte(body))
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Path)
		mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), asked...)
	}
}

const statusJSON = `{
  "roles": ["capture", "sink"],
  "spec_version": "users-v1/0123456789ab",
  "partitions": [
    {"topic": "tm.app.users", "partition": 0, "committed": 12345, "end": 13345, "records_behind": 1000,
     "applied_version": {"T": 1764057600, "I": 42}, "seconds_behind": 3.5, "paused": true},
    {"topic": "tm.app.users", "partition": 1, "committed": 20001, "end": 20002, "records_behind": 1,
     "applied_version": {"T": 1764057610, "I": 7}, "seconds_behind": 0, "paused": false}
  ],
  "paused": [{"topic": "tm.app.users", "partition": 0}],
  "backfill": {"app.users": {"namespace": "app.users", "t0_t": 1764057000, "t0_i": 1, "chunks": 40, "docs": 40000,
    "estimated": 100000, "done": false, "started": "2026-11-25T08:00:00Z", "updated": "2026-11-25T08:00:20Z"}}
}`

const metricsText = `# TYPE tidemark_capture_events_total counter
tidemark_capture_events_total{namespace="app.users",op="insert"} 900
tidemark_capture_events_total{namespace="app.users",op="update"} 100
tidemark_capture_source_cluster_time_seconds{namespace="app.users"} 1.76405761e+09
tidemark_capture_produced_cluster_time_seconds{namespace="app.users"} 1.76405761e+09
tidemark_capture_checkpoint_timestamp_seconds{namespace="app.users"} 1.76405761e+09
tidemark_capture_history_lost{namespace="app.users"} 0
`

// planJSON has the shape of rollout.Status (GET /v1/plan).
const planJSON = `{
  "plan_version": "plan-3", "dry_run": false, "stage": 0, "stage_name": "canary", "stages": ["canary", "half", "all"],
  "stage_since": "2026-11-25T07:00:00Z", "advance": "auto", "slice": {"collections": ["app.users"], "share": "1%"}, "reads": "shadow",
  "complete": false, "soft_rollback": false, "reverted": [], "aborted": false, "paused_by_rollout": null,
  "gates": [
    {"name": "clean reconcile", "signal": "divergent_rows", "state": "pass", "observed": "ok", "value": 0, "threshold": "<= 0", "held_for_seconds": 240, "window_seconds": 600},
    {"name": "lag", "signal": "lag_seconds", "state": "fail", "observed": "breach", "value": 7.25, "threshold": "<= 5", "held_for_seconds": 610, "window_seconds": 600}
  ],
  "triggers": [
    {"name": "divergence", "signal": "divergent_rows", "action": "rewind", "condition": "> 10", "observed": "ok", "value": 0,
     "held_for_seconds": 0, "for_seconds": 60, "attempts": 1, "max_attempts": 3, "last_fired": "2026-11-25T07:30:00Z", "cooldown_left_seconds": 120, "exhausted": false}
  ],
  "route_generation": 4, "evaluated": "2026-11-25T08:00:00Z"
}`

// reportJSON has the shape of reconcile.Report plus the per-table bucket
// list the heat-map reads: buckets: [{id, divergent}], sparse (only leaves
// with divergent keys), over 2^bucket_bits leaves. The second report has
// 4,096 leaves, shown as 256 cells of sixteen, and a table with none.
const reportJSON = `[{"schema_version": 1, "id": "20261125T080000Z-a1b2c3", "status": "divergent", "scope": {"namespace": "app.users"},
  "spec_version": "users-v1", "start": "2026-11-25T08:00:00Z", "end": "2026-11-25T08:01:30Z", "duration_seconds": 90,
  "docs_scanned": 50000, "rows_compared": 100000, "source_errors": 0, "candidates": 20, "bucket_bits": 6,
  "counts": {"missing": 5, "extra": 0, "different": 7, "stale": 0, "in_flight": 3, "resolved": 2},
  "sample": [{"table": "ks.users", "class": "missing", "source_id": "42"}],
  "tables": [{"table": "ks.users", "rows_source": 50000, "rows_target": 49995, "bucket_mismatches": 3, "missing": 5, "extra": 0,
    "different": 7, "stale": 0, "in_flight": 3, "resolved": 2,
    "buckets": [{"id": 5, "divergent": 9}, {"id": 17, "divergent": 2}, {"id": 63, "divergent": 1}]}]},
 {"schema_version": 1, "id": "20261125T070000Z-d4e5f6", "status": "divergent", "scope": {"namespace": "app.orders", "table": "ks.orders"},
  "start": "2026-11-25T07:00:00Z", "end": "2026-11-25T07:00:10Z", "duration_seconds": 10, "rows_compared": 2000, "bucket_bits": 12,
  "counts": {"missing": 0, "extra": 0, "different": 3, "stale": 0, "in_flight": 0},
  "tables": [{"table": "ks.orders", "rows_source": 1000, "rows_target": 1000, "different": 3, "buckets": [{"id": 4001, "divergent": 3}]},
    {"table": "ks.orders_by_day", "rows_source": 1000, "rows_target": 1000, "buckets": []}]}]`

const auditJSON = `[
  {"time": "2026-11-25T08:00:00Z", "actor": "auto:daemon", "action": "daemon.start", "result": "ok", "details": {"roles": ["capture","sink"]}},
  {"time": "2026-11-25T08:00:05Z", "actor": "alice", "action": "POST /v1/pause", "reason": "INC-42 <b>not bold</b>", "result": "ok"},
  {"time": "2026-11-25T08:00:06Z", "actor": "anonymous", "action": "POST /v1/rewind", "result": "refused: not authenticated"}
]`

// historyAt is the right edge of historyJSON's chart: the hour before it is
// drawn.
var historyAt = time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)

// historyJSON has the shape of sink.LagHistoryView (GET /v1/lag/history):
// partition 0 sampled every 10 s for the whole hour (360 samples) with a
// 5-minute hole, its lag rising to 3.5 s while paused at the end; partition 1
// for the last 10 minutes (60), caught up; partition 2 once (a dot).
func historyJSON() string {
	type sample struct {
		Time    time.Time `json:"time"`
		Seconds float64   `json:"seconds_behind"`
		Records int64     `json:"records_behind"`
		Paused  bool      `json:"paused,omitempty"`
	}
	type part struct {
		Topic     string   `json:"topic"`
		Partition int32    `json:"partition"`
		Samples   []sample `json:"samples"`
	}
	var p0, p1 []sample
	for i := 359; i >= 0; i-- {
		at := historyAt.Add(-time.Duration(i) * 10 * time.Second)
		if i >= 200 && i < 230 {
			continue // the partition was on another daemon for 5 minutes
		}
		s := sample{Time: at, Seconds: 1, Records: 40}
		if i < 30 {
			s = sample{Time: at, Seconds: 3.5 - float64(i)/10, Records: 1000 - int64(i)*10, Paused: true}
		}
		p0 = append(p0, s)
		if i < 60 {
			p1 = append(p1, sample{Time: at, Records: 1})
		}
	}
	v := map[string]any{"at": historyAt, "interval_seconds": 10, "window_seconds": 3600, "max_partitions": 1024, "untracked": 0,
		"partitions": []part{{"tm.app.users", 0, p0}, {"tm.app.users", 1, p1},
			{"tm.app.users", 2, []sample{{Time: historyAt.Add(-30 * time.Minute), Seconds: 2, Records: 7}}}}}
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// roundsJSON has the shape of GET /v1/reports (newest first): the two
// reports of reportJSON and an older incomplete round.
const roundsJSON = `[
  {"id": "20261125T080000Z-a1b2c3", "status": "divergent", "scope": "app.users", "start": "2026-11-25T08:00:00Z", "end": "2026-11-25T08:01:30Z",
   "counts": {"missing": 5, "extra": 0, "different": 7, "stale": 0, "in_flight": 3, "resolved": 2}},
  {"id": "20261125T070000Z-d4e5f6", "status": "divergent", "scope": "app.orders/ks.orders", "start": "2026-11-25T07:00:00Z", "end": "2026-11-25T07:00:10Z",
   "counts": {"missing": 0, "extra": 0, "different": 3, "stale": 0, "in_flight": 0}},
  {"id": "20261125T063000Z-0a0b0c", "status": "incomplete", "scope": "app.users", "start": "2026-11-25T06:30:00Z", "end": "2026-11-25T06:45:00Z",
   "counts": {"missing": 0, "extra": 0, "different": 0, "stale": 0, "in_flight": 41}}]`

func full() fixtures {
	return fixtures{
		"/healthz": "ok\n", "/readyz": "ready\n", "/v1/status": statusJSON, "/metrics": metricsText,
		"/v1/plan": planJSON, "/v1/reports/latest": reportJSON, "/v1/audit": auditJSON,
		"/v1/lag/history": historyJSON(), "/v1/reports": roundsJSON,
		"/v1/whoami": `{"name": "wally", "role": "viewer", "routes": [], "allowed": ["GET /v1/status"]}`,
	}
}

func cellsOf(t *testing.T, doc, attr, key string) map[string]string {
	t.Helper()
	row, ok := spt.Element(doc, attr, key)
	if !ok {
		t.Fatalf("the page shows no element %s=%q", attr, key)
	}
	return spt.Cells(row)
}

func mustText(t *testing.T, doc, attr, key string) string {
	t.Helper()
	s, ok := spt.Element(doc, attr, key)
	if !ok {
		t.Fatalf("the page shows no element %s=%q", attr, key)
	}
	return spt.Text(s)
}

func mustContain(t *testing.T, what, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s: %q does not contain %q", what, got, w)
		}
	}
}

// TestIntegrationStatusPageRendersEverySection loads the page in headless
// Chromium against fixed API answers and checks what a reader sees in each
// section, and that the page asked for nothing but its own files and the API.
func TestIntegrationStatusPageRendersEverySection(t *testing.T) {
	bin := spt.Chromium(t)
	srv, asked := fixtureServer(t, full(), "")
	doc := spt.DumpDOM(t, context.Background(), bin, srv.URL+"/", 5*time.Second)
	if !strings.Contains(doc, `data-state="ready"`) {
		t.Fatalf("the page never reached ready:\n%s", doc)
	}
	mustContain(t, "roles", mustText(t, doc, "id", "roles"), "capture, sink")
	mustContain(t, "whoami", mustText(t, doc, "id", "whoami"), "wally · role viewer")
	mustContain(t, "spec", mustText(t, doc, "id", "spec"), "users-v1/0123456789ab")
	mustContain(t, "health", mustText(t, doc, "id", "healthz"), "ok")
	mustContain(t, "ready", mustText(t, doc, "id", "readyz"), "ready")

	p0 := cellsOf(t, doc, "data-tp", "tm.app.users/0")
	if p0["committed"] != "12,345" || p0["end"] != "13,345" || p0["records_behind"] != "1,000" || p0["state"] != "paused" {
		t.Errorf("partition 0 row: %v", p0)
	}
	mustContain(t, "partition 0 applied", p0["applied"], "1764057600.42", "2025-11-25 08:00:00")
	p1 := cellsOf(t, doc, "data-tp", "tm.app.users/1")
	if p1["committed"] != "20,001" || p1["records_behind"] != "1" || p1["state"] != "caught up" {
		t.Errorf("partition 1 row: %v", p1)
	}
	mustContain(t, "lag summary", mustText(t, doc, "id", "lag-summary"), "2 partitions", "1 paused", "1,001 records behind")

	capture := mustText(t, doc, "id", "capture-rows")
	mustContain(t, "capture", capture, "app.users", "streaming", "1,000")
	backfill := mustText(t, doc, "id", "backfill-rows")
	mustContain(t, "backfill", backfill, "40.0 %", "40,000 / ≈100,000", "in progress", "40 chunks, 2,000/s", "about 30 s left")

	plan := mustText(t, doc, "id", "plan-body")
	mustContain(t, "plan", plan, "plan plan-3", "running", "1. canary", "current", "2. half", "pending", "3. all",
		"slice: collections app.users · share 1% · reads: shadow · advance: auto")
	g1 := cellsOf(t, doc, "data-gate", "clean reconcile")
	g2 := cellsOf(t, doc, "data-gate", "lag")
	if g1["state"] != "pass" || g2["state"] != "fail" || g2["observed"] != "7.25 (breach)" {
		t.Errorf("gates: %v %v", g1, g2)
	}
	mustContain(t, "lag gate", mustText(t, doc, "data-gate", "lag"), "<= 5", "10 min 10 s / 10 min 0 s")
	mustContain(t, "trigger", mustText(t, doc, "data-trigger", "divergence"), "divergent_rows > 10 for 60 s", "rewind",
		"fired, cooling down 2 min 0 s", "1 / 3")

	rep := mustText(t, doc, "id", "reconcile-body")
	mustContain(t, "report", rep, "app.users", "12 divergent", "20261125T080000Z-a1b2c3", "scanned 50,000 documents",
		"compared 100,000 rows", "missing 5", "different 7", "in flight 3", "resolved on re-check 2", "took 90 s",
		"3 of 64 cells hold divergent keys", "most divergent: bucket 5 (9), bucket 17 (2), bucket 63 (1)", "missing ks.users 42",
		"app.orders → ks.orders", "3 divergent", "1 of 256 cells hold divergent keys (each cell sums 16 buckets)",
		"most divergent: buckets 4000–4015 (3)")
	if c := cellsOf(t, doc, "data-table", "ks.users"); c["missing"] != "5" || c["bucket_mismatches"] != "3" || c["rows_target"] != "49,995" {
		t.Errorf("per-table row: %v", c)
	}
	if got := mustText(t, doc, "data-bucket", "ks.users/5"); got != "9" {
		t.Errorf("bucket 5 shows %q, want 9", got)
	}
	if got := mustText(t, doc, "data-bucket", "ks.users/6"); got != "·" {
		t.Errorf("bucket 6 shows %q, want ·", got)
	}
	if keys, _ := spt.Elements(doc, "data-bucket"); len(keys) != 64+256 {
		t.Errorf("the heat-maps have %d cells, want 64 + 256", len(keys))
	}
	if got := mustText(t, doc, "data-bucket", "ks.orders/4000"); got != "3" {
		t.Errorf("ks.orders cell 4000-4015 shows %q, want 3", got)
	}

	// The lag chart: one line per partition, with every sample; the time
	// axis in UTC clock times over the hour before the history's "at".
	series, lines := spt.Elements(doc, "data-series")
	if got := strings.Join(series, " "); got != "tm.app.users/0 tm.app.users/1 tm.app.users/2 divergent in_flight" {
		t.Errorf("chart series: %s", got)
	}
	for key, n := range map[string]string{"tm.app.users/0": "330", "tm.app.users/1": "60", "tm.app.users/2": "1"} {
		if got := spt.Attr(doc, "data-series", key, "data-points"); got != n {
			t.Errorf("lag series %s draws %s points, want %s", key, got, n)
		}
	}
	// The hole in partition 0 breaks its line: two segments. Partition 2's
	// one sample is a dot.
	if d := pathOf(lines["tm.app.users/0"]); strings.Count(d, "M") != 2 || strings.Count(d, "L") != 330-2 {
		t.Errorf("partition 0's line: %d segments, %d joins; want 2 around the hole and 328: %.200s", strings.Count(d, "M"), strings.Count(d, "L"), d)
	}
	if d := pathOf(lines["tm.app.users/2"]); strings.Count(d, "M") != 1 || !strings.HasSuffix(d, "h0.01") {
		t.Errorf("partition 2's one sample: path %q, want a dot", d)
	}
	checkTimeAxis(t, doc, "lag", "seconds behind", "07:00", "07:00", "08:00")
	mustContain(t, "lag legend", mustText(t, doc, "data-legend", "tm.app.users/0"), "tm.app.users/0", "3.5 s behind now (1,000 records, paused)", "max 3.5 s")
	mustContain(t, "lag note", mustText(t, doc, "data-chart-note", "lag"), "3 partitions", "one sample every 10 s · worst now tm.app.users/0 3.5 s",
		"worst in the last 1 h tm.app.users/0 3.5 s")
	mustContain(t, "lag line title", lines["tm.app.users/2"], "tm.app.users/2: 2.0 s behind now (7 records)")

	// Rounds over time: a marker per round in each of the two series, the
	// incomplete one open, each titled with its round.
	for _, key := range []string{"divergent", "in_flight"} {
		if got := spt.Attr(doc, "data-series", key, "data-points"); got != "3" {
			t.Errorf("rounds series %s: %s points, want 3", key, got)
		}
		if n := strings.Count(lines[key], "<circle"); n != 3 {
			t.Errorf("rounds series %s: %d markers, want 3", key, n)
		}
		if n := strings.Count(lines[key], `class="hollow"`); n != 1 {
			t.Errorf("rounds series %s: %d open markers, want 1 (the incomplete round)", key, n)
		}
	}
	mustContain(t, "round marker", lines["divergent"], "round 20261125T080000Z-a1b2c3 · app.users · divergent · ended 2026-11-25 08:01:30 UTC: 12 divergent, 3 in flight",
		"round 20261125T063000Z-0a0b0c · app.users · incomplete")
	// The axis runs from a little before the first round (06:45) to a
	// little after the last (08:01:30); its steps depend on the width.
	checkTimeAxis(t, doc, "rounds", "keys", "06:42", "07:00", "08:00")
	mustContain(t, "rounds legend", mustText(t, doc, "id", "rounds-chart"), "divergent keys (missing, extra, different, stale)", "in flight",
		"open circle: an incomplete round")
	mustContain(t, "rounds note", mustText(t, doc, "data-chart-note", "rounds"), "3 rounds", "newest 20261125T080000Z-a1b2c3: 12 divergent, 3 in flight")

	// The heat-map's colour key runs from 1 to the map's largest count.
	heatKeys := spt.All(doc, "data-legend", "heat")
	if len(heatKeys) != 2 {
		t.Fatalf("%d heat-map legends, want 2", len(heatKeys))
	}
	if got := strings.Join(spt.Keys(heatKeys[0], "data-scale"), " "); got != "1 2 5 9" {
		t.Errorf("ks.users colour scale: %s, want 1 2 5 9", got)
	}
	mustContain(t, "heat legend", spt.Text(heatKeys[0]), "divergent keys", "darker = more")
	if title := spt.Attr(doc, "data-bucket", "ks.users/17", "title"); title != "bucket 17: 2 divergent" {
		t.Errorf("bucket 17's title: %q", title)
	}

	keys, rows := spt.Elements(doc, "data-action")
	if len(keys) != 3 || keys[0] != "POST /v1/rewind" || keys[2] != "daemon.start" {
		t.Errorf("audit rows newest first: %v", keys)
	}
	pause := spt.Cells(rows["POST /v1/pause"])
	if pause["actor"] != "alice" || pause["reason"] != "INC-42 <b>not bold</b>" || pause["result"] != "ok" {
		t.Errorf("pause audit row: %v", pause)
	}
	if strings.Contains(doc, "<b>not bold</b>") {
		t.Errorf("an audit reason was inserted as HTML")
	}
	mustContain(t, "refused", spt.Cells(rows["POST /v1/rewind"])["result"], "refused")

	allowed := map[string]bool{"/": true, "/ui/app.js": true, "/ui/charts.js": true, "/ui/style.css": true, "/healthz": true, "/readyz": true,
		"/metrics": true, "/v1/status": true, "/v1/plan": true, "/v1/reports/latest": true, "/v1/audit": true, "/v1/whoami": true,
		"/v1/lag/history": true, "/v1/reports": true}
	// (/v1/trace only on demand: TestIntegrationStatusPageTrace.)
	polled := 0
	for _, p := range asked() {
		if !allowed[p] {
			t.Errorf("the page asked for %s", p)
		}
		if p == "/v1/status" {
			polled++
		}
	}
	if polled < 2 {
		t.Errorf("the page read /v1/status %d times in 5 s of virtual time; it should poll", polled)
	}
	// A picture of every section filled, for reviewing the layout.
	if shot := os.Getenv("TIDEMARK_STATUSPAGE_FIXTURE_SCREENSHOT"); shot != "" {
		spt.Screenshot(t, context.Background(), bin, srv.URL+"/", shot, 1280, 1400, 5*time.Second)
	}
}

// TestIntegrationStatusPageNotConfigured: 404 from the plan and report routes
// reads as "not configured", not as an error.
func TestIntegrationStatusPageNotConfigured(t *testing.T) {
	bin := spt.Chromium(t)
	fx := full()
	delete(fx, "/v1/plan")
	delete(fx, "/v1/reports/latest")
	fx["/v1/status"] = `{"roles": ["sink"], "partitions": [], "paused": null, "backfill": {}}`
	fx["/v1/audit"] = `[]`
	fx["/v1/lag/history"] = `{"at": "2026-11-25T08:00:00Z", "interval_seconds": 10, "window_seconds": 3600, "max_partitions": 1024, "untracked": 0, "partitions": []}`
	delete(fx, "/v1/reports")
	srv, _ := fixtureServer(t, fx, "")
	doc := spt.DumpDOM(t, context.Background(), bin, srv.URL+"/", 3*time.Second)
	mustContain(t, "plan", mustText(t, doc, "id", "plan-body"), "no plan configured")
	mustContain(t, "reconcile", mustText(t, doc, "id", "reconcile-body"), "no reconcile round yet")
	mustContain(t, "lag", mustText(t, doc, "id", "lag-rows"), "no partitions assigned")
	mustContain(t, "capture", mustText(t, doc, "id", "capture-rows"), "does not run the capture role")
	mustContain(t, "backfill", mustText(t, doc, "id", "backfill-rows"), "no backfill recorded")
	mustContain(t, "audit", mustText(t, doc, "id", "audit-rows"), "no audit entries")
	mustContain(t, "lag chart", mustText(t, doc, "data-empty", "lag-history"), "no lag history yet", "every 10 s", "last 1 h")
	mustContain(t, "rounds chart", mustText(t, doc, "data-empty", "rounds"), "no reconcile round yet")
	if keys, _ := spt.Elements(doc, "data-chart"); len(keys) != 0 {
		t.Errorf("charts drawn without data: %v", keys)
	}
}

// TestIntegrationStatusPageChartsWithoutSink: a daemon without the sink role
// has no lag to draw and says why; a clean report, whose tables list no
// buckets, reads as a clean heat-map, and its one round is drawn.
func TestIntegrationStatusPageChartsWithoutSink(t *testing.T) {
	bin := spt.Chromium(t)
	fx := full()
	fx["/v1/status"] = `{"roles": ["capture"], "partitions": [], "paused": null, "backfill": {}}`
	delete(fx, "/v1/lag/history")
	fx["/v1/reports/latest"] = `{"schema_version": 1, "id": "20261125T080000Z-a1b2c3", "status": "clean", "scope": {"namespace": "app.users"},
  "start": "2026-11-25T08:00:00Z", "end": "2026-11-25T08:01:30Z", "rows_compared": 100, "bucket_bits": 6,
  "counts": {"missing": 0, "extra": 0, "different": 0, "stale": 0, "in_flight": 0},
  "tables": [{"table": "ks.users", "rows_source": 50, "rows_target": 50}]}`
	fx["/v1/reports"] = `[{"id": "20261125T080000Z-a1b2c3", "status": "clean", "scope": "app.users", "start": "2026-11-25T08:00:00Z",
  "end": "2026-11-25T08:01:30Z", "counts": {"missing": 0, "extra": 0, "different": 0, "stale": 0, "in_flight": 0}}]`
	srv, asked := fixtureServer(t, fx, "")
	doc := spt.DumpDOM(t, context.Background(), bin, srv.URL+"/", 3*time.Second)
	mustContain(t, "lag chart", mustText(t, doc, "data-empty", "lag-history"), "does not run the sink role")
	mustContain(t, "heat-map", mustText(t, doc, "id", "reconcile-body"), "Divergence by bucket (ks.users): all 64 buckets agree")
	for _, key := range []string{"divergent", "in_flight"} {
		if got := spt.Attr(doc, "data-series", key, "data-points"); got != "1" {
			t.Errorf("rounds series %s: %s points, want 1", key, got)
		}
	}
	// Counts of 0 are labelled in whole keys: 0 and 1, not 0, 0.25, ….
	if svg, _ := spt.Element(doc, "data-chart", "rounds"); strings.Join(spt.Texts(svg, "data-axis", "y"), " ") != "0 1" {
		t.Errorf("rounds chart value ticks: %q, want 0 1", spt.Texts(svg, "data-axis", "y"))
	}
	for _, p := range asked() {
		if p == "/v1/lag/history" {
			t.Errorf("the page asked a daemon without the sink role for its lag history")
		}
	}
}

// pathOf is the d attribute of the first path in an SVG fragment.
func pathOf(fragment string) string {
	m := regexp.MustCompile(`<path\b[^>]*\sd="([^"]*)"`).FindStringSubmatch(fragment)
	if m == nil {
		return ""
	}
	return m[1]
}

// checkTimeAxis checks a chart's axes: titled, value ticks starting at 0,
// time ticks as UTC clock times in order, the first between firstMin and
// firstMax, the last equal to last.
func checkTimeAxis(t *testing.T, doc, chart, yTitle, firstMin, firstMax, last string) {
	t.Helper()
	svg, ok := spt.Element(doc, "data-chart", chart)
	if !ok {
		t.Fatalf("no %s chart drawn", chart)
	}
	if x, y := spt.Texts(svg, "data-axis-title", "x"), spt.Texts(svg, "data-axis-title", "y"); len(x) != 1 || x[0] != "time (UTC)" || len(y) != 1 || y[0] != yTitle {
		t.Errorf("%s chart axis titles: x %q, y %q", chart, x, y)
	}
	ys := spt.Texts(svg, "data-axis", "y")
	if len(ys) < 2 || ys[0] != "0" {
		t.Errorf("%s chart value ticks: %q", chart, ys)
	}
	xs := spt.Texts(svg, "data-axis", "x")
	if len(xs) < 3 || xs[0] < firstMin || xs[0] > firstMax || xs[len(xs)-1] != last {
		t.Errorf("%s chart time ticks: %q, want the first in %s–%s, the last %s", chart, xs, firstMin, firstMax, last)
	}
	for i, x := range xs {
		if len(x) != 5 || x[2] != ':' || i > 0 && x <= xs[i-1] {
			t.Errorf("%s chart time ticks not HH:MM in order: %q", chart, xs)
			break
		}
	}
}

// TestIntegrationStatusPageAsksForToken: with read routes behind a token
// (admin.open_status false) and none given, the page says so and asks for one.
func TestIntegrationStatusPageAsksForToken(t *testing.T) {
	bin := spt.Chromium(t)
	srv, _ := fixtureServer(t, full(), "fixture-token-0123456789")
	doc := spt.DumpDOM(t, context.Background(), bin, srv.URL+"/", 3*time.Second)
	if !strings.Contains(doc, `data-state="unauthorized"`) {
		t.Fatalf("page state is not unauthorized:\n%s", doc)
	}
	mustContain(t, "banner", mustText(t, doc, "id", "banner"), "need a token", "admin.open_status is false", "sessionStorage")
	mustContain(t, "auth", mustText(t, doc, "id", "auth-state"), "token needed")
	mustContain(t, "lag", mustText(t, doc, "id", "lag-rows"), "HTTP 401")
}

// traceJSON has the shape of trace.Journey (GET /v1/trace).
const traceJSON = `{"namespace": "app.users", "id": "\"u-7\"", "key": "02", "state": "divergent",
  "summary": "every record of the key in Kafka is applied, yet [ks.users] differ from the source through the transform",
  "source": {"found": true, "document": "{\"_id\": \"u-7\", \"age\": 77}", "read_at": "1764057600.3"},
  "kafka": {"topic": "tm.app.users", "partition": 2, "start": 0, "end": 120, "committed": 120, "scanned": 118, "complete": true,
    "records": [{"offset": 41, "op": "backfill", "version": "1764057000.999999", "timestamp": "2026-11-25T08:00:00Z", "applied": true},
                {"offset": 117, "op": "update", "version": "1764057600.2", "timestamp": "2026-11-25T08:10:00Z", "applied": true}]},
  "tables": [{"table": "ks.users", "expected": {"id": "u-7", "age": 77}, "row": {"primary_key": {"id": "u-7"}, "values": {"id": "u-7", "age": 5},
     "writetime": {"age": 1764057600000003}, "version": "1764057600.3"}, "match": false, "columns": ["age"]},
    {"table": "ks.users_by_email", "expected": {"email": "a@x"}, "row": {"primary_key": {"email": "a@x"}, "values": {"email": "a@x"}},
     "key_map": {"primary_key": {"email": "a@x"}, "version": "1764057600.2"}, "match": true}],
  "verdicts": [{"report": "20261125T081000Z-a1b2c3", "start": "2026-11-25T08:10:00Z", "status": "divergent", "class": "different", "table": "ks.users"},
    {"report": "20261125T080000Z-d4e5f6", "start": "2026-11-25T08:00:00Z", "status": "clean", "class": "not_reported"}],
  "at": "2026-11-25T08:11:00Z"}`

// TestIntegrationStatusPageTrace opens the page with a trace in its URL, as
// a link from a report or an alert would, and checks the journey it shows.
func TestIntegrationStatusPageTrace(t *testing.T) {
	bin := spt.Chromium(t)
	fx := full()
	fx["/v1/trace"] = traceJSON
	srv, asked := fixtureServer(t, fx, "")
	doc := spt.DumpDOM(t, context.Background(), bin, srv.URL+"/?trace_ns=app.users&trace_id=%22u-7%22", 3*time.Second)
	mustContain(t, "state", mustText(t, doc, "data-trace", "state"), "divergent", "[ks.users] differ")
	mustContain(t, "source", mustText(t, doc, "data-trace", "source"), "read at 1764057600.3")
	mustContain(t, "kafka", mustText(t, doc, "data-trace", "kafka"), "offsets 0–120", "sink committed 120", "118 records scanned")
	if r := cellsOf(t, doc, "data-offset", "117"); r["op"] != "update" || r["version"] != "1764057600.2" || r["applied"] != "applied" {
		t.Errorf("record 117: %v", r)
	}
	mustContain(t, "users", mustText(t, doc, "data-trace-table", "ks.users"), "differs in age")
	mustContain(t, "users_by_email", mustText(t, doc, "data-trace-table", "ks.users_by_email"), "matches the source")
	if v := cellsOf(t, doc, "data-verdict", "20261125T081000Z-a1b2c3"); v["class"] != "different" || v["round"] != "divergent" {
		t.Errorf("verdict: %v", v)
	}
	traced := false
	for _, p := range asked() {
		traced = traced || p == "/v1/trace"
	}
	if !traced {
		t.Error("the page did not ask for /v1/trace")
	}
}
