package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// pendingMetrics are queried by the dashboard and the alert rules but are not
// in the committed code yet: reconcile (issue 7) was being written while these
// files were (the names and labels are those of its work in progress). Only those two families may be listed here; capture,
// sink and checkpoint metrics must match the code today. TestMetricNames
// reports every entry the code now defines: delete it from this list then,
// and rename the query if the code chose another name.
var pendingMetrics = map[string]bool{
	"tidemark_reconcile_divergent_rows":                true, // {table, class}
	"tidemark_reconcile_in_flight_rows":                true, // {table}
	"tidemark_reconcile_rows_compared_total":           true, // {table}
	"tidemark_reconcile_bucket_mismatches_total":       true, // {table}
	"tidemark_reconcile_rounds_total":                  true, // {result}
	"tidemark_reconcile_round_duration_seconds_bucket": true,
	"tidemark_reconcile_last_round_age_seconds":        true,
}

// pendingFamilies are the only prefixes pendingMetrics may use.
var pendingFamilies = []string{"tidemark_reconcile_", "tidemark_rollout_"}

// Series that exist without a metric definition in this module.
var builtinSeries = map[string]string{
	"up":                            "prometheus", // added by Prometheus to every target
	"go_goroutines":                 "go",
	"process_resident_memory_bytes": "process",
	"process_cpu_seconds_total":     "process",
}

// Labels every series gets from the scrape, and the ones our Kubernetes scrape
// job adds (deploy/prometheus/kubernetes-scrape.yml).
var targetLabels = map[string]bool{"job": true, "instance": true, "pod": true, "component": true}

var promqlWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`
		sum min max avg count stddev stdvar topk bottomk quantile count_values group limitk limit_ratio
		by without on ignoring group_left group_right and or unless bool offset atan2
		rate irate increase delta idelta deriv predict_linear histogram_quantile resets changes
		abs absent absent_over_time ceil floor round exp ln log2 log10 sqrt sgn clamp clamp_max clamp_min
		time timestamp vector scalar sort sort_desc label_replace label_join day_of_month day_of_week
		days_in_month hour minute month year avg_over_time min_over_time max_over_time sum_over_time
		count_over_time quantile_over_time stddev_over_time stdvar_over_time last_over_time present_over_time
		holt_winters double_exponential_smoothing inf nan`) {
		promqlWords[w] = true
	}
}

var (
	reString    = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	reVariable  = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	reRange     = regexp.MustCompile(`\[[^\]]*\]`)
	reMatchers  = regexp.MustCompile(`\{([^}]*)\}`)
	reMatcherLb = regexp.MustCompile(`([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)`)
	reGrouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	reIdent     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	reLabelVals = regexp.MustCompile(`^\s*label_values\(\s*([^,]+?)\s*,\s*([a-zA-Z_]\w*)\s*\)\s*$`)
	reDuration  = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)
)

// promRef is what one PromQL expression references.
type promRef struct {
	metrics []string
	labels  []string
}

// parsePromQL finds the metric names and label names an expression uses. It
// is not a PromQL parser: it removes strings, Grafana variables, ranges and
// matcher values, takes label names from matchers and grouping clauses, and
// treats every remaining identifier that is not a PromQL keyword or function
// as a metric name — so a misspelt metric is caught rather than skipped.
func parsePromQL(expr string) (promRef, error) {
	var r promRef
	if err := balanced(expr); err != nil {
		return r, err
	}
	if m := reLabelVals.FindStringSubmatch(expr); m != nil {
		inner, err := parsePromQL(m[1])
		if err != nil {
			return r, err
		}
		inner.labels = append(inner.labels, m[2])
		return inner, nil
	}
	s := reString.ReplaceAllString(expr, `""`)
	s = reVariable.ReplaceAllString(s, "1")
	s = reRange.ReplaceAllString(s, "")
	for _, m := range reMatchers.FindAllStringSubmatch(s, -1) {
		for _, l := range reMatcherLb.FindAllStringSubmatch(m[1], -1) {
			r.labels = append(r.labels, l[1])
		}
	}
	s = reMatchers.ReplaceAllString(s, " ")
	for _, m := range reGrouping.FindAllStringSubmatch(s, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				r.labels = append(r.labels, l)
			}
		}
	}
	s = reGrouping.ReplaceAllString(s, " ")
	for _, loc := range reIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		if loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.') {
			continue // the unit or exponent of a number: 5m, 1e6
		}
		if promqlWords[id] {
			continue
		}
		r.metrics = append(r.metrics, id)
	}
	return r, nil
}

func balanced(s string) error {
	s = reString.ReplaceAllString(s, `""`)
	var stack []rune
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	for _, c := range s {
		switch c {
		case '(', '[', '{':
			stack = append(stack, c)
		case ')', ']', '}':
			if len(stack) == 0 || stack[len(stack)-1] != pairs[c] {
				return fmt.Errorf("unbalanced %q", c)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if len(stack) > 0 {
		return fmt.Errorf("unclosed %q", stack[len(stack)-1])
	}
	return nil
}

// queryRef is one PromQL expression and where it came from.
type queryRef struct {
	where, expr string
}

func dashboardQueries(t *testing.T) []queryRef {
	t.Helper()
	var d any
	readJSON(t, "grafana/dashboards/tidemark.json", &d)
	var out []queryRef
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if s, ok := c.(string); ok && (k == "expr" || (k == "query" || k == "definition") && strings.Contains(path, "templating")) {
					if strings.TrimSpace(s) != "" && k != "definition" && !(k == "query" && s == "prometheus") {
						out = append(out, queryRef{where: path + "." + k, expr: s})
					}
				}
				walk(path+"."+k, c)
			}
		case []any:
			for i, c := range x {
				name := fmt.Sprint(i)
				if m, ok := c.(map[string]any); ok {
					if title, ok := m["title"].(string); ok {
						name = fmt.Sprintf("%d(%s)", i, title)
					} else if n, ok := m["name"].(string); ok {
						name = fmt.Sprintf("%d(%s)", i, n)
					}
				}
				walk(path+"["+name+"]", c)
			}
		}
	}
	walk("dashboard", d)
	if len(out) < 20 {
		t.Fatalf("found only %d queries in the dashboard", len(out))
	}
	return out
}

// alertFile is the rule file's structure.
type alertFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadAlerts(t *testing.T) alertFile {
	t.Helper()
	var af alertFile
	b, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&af); err != nil {
		t.Fatalf("prometheus/alerts.yml: %v", err)
	}
	return af
}

func alertQueries(t *testing.T) []queryRef {
	var out []queryRef
	for _, g := range loadAlerts(t).Groups {
		for _, r := range g.Rules {
			out = append(out, queryRef{where: "alerts.yml " + g.Name + "/" + r.Alert, expr: r.Expr})
		}
	}
	return out
}

// TestMetricNames checks that every metric the dashboard and the alert rules
// query is registered by the code (or, for reconcile and rollout only, is on
// the pending list), and that every label they group or filter by is a label
// of a metric in the same expression.
func TestMetricNames(t *testing.T) {
	cm := scanMetrics(t)
	for name := range pendingMetrics {
		ok := false
		for _, fam := range pendingFamilies {
			ok = ok || strings.HasPrefix(name, fam)
		}
		if !ok {
			t.Errorf("pendingMetrics: %s is not a reconcile or rollout metric; capture, sink and checkpoint metrics must exist in the code", name)
		}
	}
	used := map[string]bool{}
	queries := append(dashboardQueries(t), alertQueries(t)...)
	for _, q := range queries {
		ref, err := parsePromQL(q.expr)
		if err != nil {
			t.Errorf("%s: %v in %q", q.where, err, q.expr)
			continue
		}
		if len(ref.metrics) == 0 {
			t.Errorf("%s: no metric in %q", q.where, q.expr)
		}
		labels := map[string]bool{}
		for k := range targetLabels {
			labels[k] = true
		}
		checkLabels := true
		for _, m := range ref.metrics {
			used[m] = true
			if info, ok := cm.byName[m]; ok {
				for _, l := range info.labels {
					labels[l] = true
				}
				continue
			}
			if src, ok := builtinSeries[m]; ok {
				if (src == "go" && !cm.goCollector) || (src == "process" && !cm.processCollector) {
					t.Errorf("%s: %s needs the %s collector, which the daemon no longer registers", q.where, m, src)
				}
				continue
			}
			if pendingMetrics[m] {
				checkLabels = false // their labels are not known yet
				continue
			}
			t.Errorf("%s: metric %s is not defined in the code (query %q)", q.where, m, q.expr)
		}
		if !checkLabels {
			continue
		}
		for _, l := range ref.labels {
			if !labels[l] {
				t.Errorf("%s: label %q is not a label of %v (query %q)", q.where, l, ref.metrics, q.expr)
			}
		}
	}

	var landed []string
	for name := range pendingMetrics {
		if _, ok := cm.byName[name]; ok {
			landed = append(landed, name)
		}
	}
	sort.Strings(landed)
	if len(landed) > 0 {
		t.Logf("now defined in the code, remove from pendingMetrics: %v", landed)
	}
	var unusedPending []string
	for name := range pendingMetrics {
		if !used[name] {
			unusedPending = append(unusedPending, name)
		}
	}
	if len(unusedPending) > 0 {
		t.Errorf("pendingMetrics lists names no query uses: %v", unusedPending)
	}
	// Reconcile and rollout metrics that nothing shows yet: a hint for whoever
	// adds them to the dashboard.
	for _, fam := range pendingFamilies {
		var unshown []string
		for _, n := range cm.names(fam) {
			if !used[n] && !used[n+"_bucket"] && !used[n+"_count"] {
				unshown = append(unshown, n)
			}
		}
		if len(unshown) > 0 {
			t.Logf("%s* metrics in the code that neither the dashboard nor the alerts use: %v", fam, unshown)
		}
	}
	// Capture, sink and lag metrics that no panel shows are a gap in the
	// dashboard, not an error in it: list them.
	for _, fam := range []string{"tidemark_capture_", "tidemark_sink_", "tidemark_replication_", "tidemark_checkpoints_"} {
		for _, n := range cm.names(fam) {
			if !used[n] && !used[n+"_bucket"] && !used[n+"_count"] && !used[n+"_sum"] {
				t.Logf("not on the dashboard or in an alert: %s", n)
			}
		}
	}
}

func TestParsePromQL(t *testing.T) {
	for _, c := range []struct {
		expr            string
		metrics, labels []string
	}{
		{`sum by (namespace, op) (rate(tidemark_capture_events_total{namespace=~"$namespace"}[$__rate_interval]))`,
			[]string{"tidemark_capture_events_total"}, []string{"namespace", "namespace", "op"}},
		{`histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) > 2`, []string{"x_bucket"}, []string{"le"}},
		{`time() - max(a_seconds) > 6 * 3600`, []string{"a_seconds"}, nil},
		{`sum(rate(a[10m])) > 0 and on() sum(b) == 0`, []string{"a", "b"}, nil},
		{`label_values(tidemark_replication_lag_records, topic)`, []string{"tidemark_replication_lag_records"}, []string{"topic"}},
		{`up{job=~"tidemark.*"} == 0`, []string{"up"}, []string{"job"}},
		{`sum(rate(a[1m])) * 1e6`, []string{"a"}, nil},
	} {
		r, err := parsePromQL(c.expr)
		if err != nil {
			t.Errorf("%q: %v", c.expr, err)
			continue
		}
		sort.Strings(r.labels)
		if strings.Join(r.metrics, ",") != strings.Join(c.metrics, ",") || strings.Join(r.labels, ",") != strings.Join(c.labels, ",") {
			t.Errorf("%q: metrics %v labels %v, want %v %v", c.expr, r.metrics, r.labels, c.metrics, c.labels)
		}
	}
	if _, err := parsePromQL(`sum(rate(a[5m])`); err == nil {
		t.Error("an unclosed parenthesis was accepted")
	}
}

// TestAlertRules checks the rule file's shape: what Prometheus would refuse
// (a bad duration, a rule that is neither alert nor record) and what on-call
// needs (a severity, a summary and a description on every alert).
func TestAlertRules(t *testing.T) {
	af := loadAlerts(t)
	seen := map[string]bool{}
	n := 0
	for _, g := range af.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: needs a name and rules", g.Name)
		}
		for _, r := range g.Rules {
			n++
			if r.Alert == "" {
				t.Errorf("group %s: a rule without alert name (recording rules do not belong here)", g.Name)
				continue
			}
			if seen[r.Alert] {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			seen[r.Alert] = true
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: no expr", r.Alert)
			}
			if r.For != "" && !reDuration.MatchString(r.For) {
				t.Errorf("%s: for %q is not a Prometheus duration", r.Alert, r.For)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs summary and description annotations", r.Alert)
			}
		}
	}
	// The alerts the issue asks for, by what they watch.
	for _, want := range []string{"TidemarkReplicationLagHigh", "TidemarkDivergence", "TidemarkTriggerFired",
		"TidemarkCaptureHistoryLost", "TidemarkCaptureStalled", "TidemarkDeadLetters", "TidemarkCaptureCheckpointOld", "TidemarkDown"} {
		if !seen[want] {
			t.Errorf("alert %s is missing", want)
		}
	}
	if n < 10 {
		t.Errorf("only %d rules", n)
	}
}

// TestDashboard checks what Grafana needs to load and what makes the
// dashboard portable: unique panel ids, a datasource variable (so it imports
// into any Grafana), and only variables that are defined.
func TestDashboard(t *testing.T) {
	var d struct {
		UID        string           `json:"uid"`
		Title      string           `json:"title"`
		Schema     int              `json:"schemaVersion"`
		Panels     []map[string]any `json:"panels"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
				Type string `json:"type"`
			} `json:"list"`
		} `json:"templating"`
	}
	readJSON(t, "grafana/dashboards/tidemark.json", &d)
	if d.UID == "" || d.Title == "" || d.Schema == 0 {
		t.Errorf("uid %q title %q schemaVersion %d: all are required", d.UID, d.Title, d.Schema)
	}
	vars := map[string]bool{"__rate_interval": true, "__interval": true, "__range": true, "__all": true}
	hasDS := false
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		hasDS = hasDS || v.Type == "datasource"
	}
	if !hasDS {
		t.Error("no datasource variable: the dashboard would be tied to one Grafana's datasource uid")
	}
	ids := map[float64]bool{}
	rows := map[string]bool{}
	cells := map[[2]int]any{}
	b, _ := os.ReadFile("grafana/dashboards/tidemark.json")
	for _, m := range regexp.MustCompile(`\$\{?(\w+)`).FindAllStringSubmatch(string(b), -1) {
		if !vars[m[1]] {
			t.Errorf("variable $%s is used but not defined", m[1])
		}
	}
	for _, p := range d.Panels {
		id, _ := p["id"].(float64)
		if ids[id] {
			t.Errorf("panel id %v used twice", id)
		}
		ids[id] = true
		gp, ok := p["gridPos"].(map[string]any)
		if !ok {
			t.Errorf("panel %v has no gridPos", p["title"])
		}
		// Grafana moves overlapping panels itself, so an overlap means the
		// layout on screen is not the one in the file.
		x, y, w, h := int(num(gp["x"])), int(num(gp["y"])), int(num(gp["w"])), int(num(gp["h"]))
		if w <= 0 || h <= 0 || x < 0 || x+w > 24 {
			t.Errorf("panel %v: gridPos %v outside the 24-column grid", p["title"], gp)
		}
		for cx := x; cx < x+w; cx++ {
			for cy := y; cy < y+h; cy++ {
				if other, ok := cells[[2]int{cx, cy}]; ok {
					t.Errorf("panel %v overlaps %v", p["title"], other)
					cx, cy = x+w, y+h
					continue
				}
				cells[[2]int{cx, cy}] = p["title"]
			}
		}
		if p["type"] == "row" {
			rows[p["title"].(string)] = true
			continue
		}
		ds, _ := p["datasource"].(map[string]any)
		if ds["uid"] != "${datasource}" {
			t.Errorf("panel %v: datasource %v, want the ${datasource} variable", p["title"], ds)
		}
	}
	for _, want := range []string{"Replication lag", "Capture", "Sink", "Reconcile", "Rollout"} {
		if !rows[want] {
			t.Errorf("row %q is missing", want)
		}
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.FromSlash(path))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestAlertRulesPromtool runs the alert rules' unit tests
// (prometheus/alerts_test.yml: lag held vs a blip, history lost, a stalled
// sink vs a paused one, divergence, trigger firings, a target down) with
// promtool, which parses every expression with Prometheus' own parser and
// evaluates it over synthetic series. promtool ships with Prometheus (Debian:
// apt-get install prometheus); without it this test is skipped, saying so.
func TestAlertRulesPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not on PATH under CI: `make test-deps` installs it (Debian package prometheus)")
		}
		t.Skip("promtool not on PATH (make test-deps, or apt-get install prometheus): alerts_test.yml not run")
	}
	out, err := exec.Command(promtool, "test", "rules", "prometheus/alerts_test.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}
