//go:build integration

package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/reconcile"
	"go.mongodb.org/mongo-driver/bson"
)

// TestMain removes the binary the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	testbed.RemoveTidemark()
	os.Exit(code)
}

const segmentsToken = "segments-test-token"

// TestIntegrationSegmentedRoundSurvivesAKilledDaemon runs three tidemark
// daemons with reconcile.segments: 6 over one pipeline (capture and sink on
// a, sinks on b and c) and one checkpoints store. A round started on a
// splits its hashing across the three; c, slowed down, is killed with
// SIGKILL while it holds a segment. The round still ends with exactly the
// injected divergence (missing, different, extra rows), and c's segment
// was hashed again by another daemon (attempt 2, taken from c).
func TestIntegrationSegmentedRoundSurvivesAKilledDaemon(t *testing.T) {
	s, mc := testbed.Cassandra(t), testbed.Mongo(t)
	testbed.Kafka(t)
	bin := testbed.Tidemark(t)
	dir := t.TempDir()
	db := testbed.UniqueName(t, "seg")
	ns, ks := db+".users", testbed.UniqueName(t, "ks")
	_, specText := testbed.UsersMapping(t, s, ns, ks)
	for name, body := range map[string]string{"spec.yaml": specText, "tokens": "ci:" + segmentsToken + "\n", "token": segmentsToken} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })

	const n = 3000
	docs := make([]any, n)
	for i := range docs {
		docs[i] = bson.D{{Key: "_id", Value: int64(i)}, {Key: "email", Value: fmt.Sprintf("u%d@x.org", i)},
			{Key: "name", Value: bson.D{{Key: "first", Value: "U"}, {Key: "last", Value: fmt.Sprint(i)}}},
			{Key: "age", Value: int32(20 + i%60)}}
	}
	if _, err := mc.Database(db).Collection("users").InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}

	prefix := testbed.UniqueName(t, "seg")
	addrs := map[string]string{"a": testbed.FreeAddr(t), "b": testbed.FreeAddr(t), "c": testbed.FreeAddr(t)}
	config := func(name, roles, reconcileExtra string) string {
		return fmt.Sprintf(`roles: [%[9]s]
spec: %[1]s/spec.yaml
kafka: {brokers: [%[2]s]}
mongo: {uri: %[3]q}
cassandra: {hosts: [%[4]s]}
checkpoints: {kind: file, dir: %[1]s/state}
admin: {listen: %[5]q, tokens_file: %[1]s/tokens, open_status: true}
capture: {topic_prefix: %[6]s, namespaces: [%[7]s], partitions: 3}
sink: {group: %[6]s-g, consistency: ONE, mark_interval: 1s}
reconcile: {segments: 6, lease: 3s, in_flight_wait: 10s, report_dir: %[1]s/reports-%[8]s%[10]s}
`, dir, strings.Join(testbed.KafkaBrokers(), ","), testbed.MongoURI(), strings.Join(testbed.CassandraHosts(), ","),
			addrs[name], prefix, ns, name, roles, reconcileExtra)
	}
	for name, body := range map[string]string{
		// Throttled, so that the round lasts longer than a Worker's look
		// for rounds (every second), and c, slower still, holds its
		// segment for seconds when it is killed.
		"a.yaml": config("a", "capture, sink", ", docs_per_second: 150"),
		"b.yaml": config("b", "sink", ", docs_per_second: 150"),
		"c.yaml": config("c", "sink", ", docs_per_second: 50"),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	testbed.RunDaemon(t, ctx, bin, "daemon a", filepath.Join(dir, "a.yaml"))
	testbed.RunDaemon(t, ctx, bin, "daemon b", filepath.Join(dir, "b.yaml"))
	c := testbed.RunDaemon(t, ctx, bin, "daemon c", filepath.Join(dir, "c.yaml"))
	ac, err := admin.NewClient(addrs["a"], filepath.Join(dir, "token"))
	if err != nil {
		t.Fatal(err)
	}

	// The pipeline copies the collection; then the target is damaged.
	users := ks + ".users"
	for _, table := range []string{users, ks + ".users_by_email"} {
		waitUntil(t, "the backfill wrote every row of "+table, 3*time.Minute, func() bool {
			var rows int
			return s.Query("SELECT COUNT(*) FROM "+table).WithContext(ctx).Scan(&rows) == nil && rows == n
		})
	}
	want := map[string]string{}
	exec := func(q string, args ...any) {
		t.Helper()
		if err := s.Query(q, args...).ExecContext(ctx); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for i := 5; i < n; i += n / 6 {
		exec("DELETE FROM "+users+" WHERE id = ?", fmt.Sprint(i))
		want[fmt.Sprintf("%d/%s", i, reconcile.ClassMissing)] = ""
		exec("UPDATE "+users+" SET age = 999 WHERE id = ?", fmt.Sprint(i+1))
		want[fmt.Sprintf("%d/%s", i+1, reconcile.ClassDifferent)] = ""
	}
	for i := range 3 {
		exec("INSERT INTO "+users+" (id, email, name, age, status) VALUES (?, ?, 'No One', 40, 'active')",
			fmt.Sprintf("extra-%d", i), fmt.Sprintf("ghost%d@x.org", i))
		want[fmt.Sprintf("extra-%d/%s", i, reconcile.ClassExtra)] = ""
	}

	var st daemon.RoundStatus
	waitUntil(t, "daemon a starts a round", time.Minute, func() bool {
		return ac.Do(ctx, "POST", "/v1/reconcile", map[string]any{"reason": "segments test", "scope": map[string]any{"namespace": ns}}, &st) == nil
	})
	if st.Progress == nil {
		t.Fatalf("round start answered %+v", st)
	}
	id := st.Progress.ID

	store, err := checkpoints.OpenFile(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	var held string
	waitUntil(t, "daemon c holds a segment", 2*time.Minute, func() bool {
		all, _ := store.List(ctx, checkpoints.PrefixReconcile+"segment/")
		for key, b := range all {
			if strings.Contains(string(b), "/"+addrs["c"]+"/") && !strings.Contains(string(b), `"done":true`) {
				held = key
				return true
			}
		}
		return false
	})
	if err := c.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed daemon c while it held %s", held)

	var rep reconcile.Report
	waitUntil(t, "the round's report", 4*time.Minute, func() bool {
		return ac.Do(ctx, "GET", "/v1/reports/"+id, nil, &rep) == nil
	})
	got := map[string]string{}
	for _, k := range rep.Sample {
		if k.Table == users {
			got[fmt.Sprintf("%v/%s", k.PrimaryKey["id"], k.Class)] = ""
		}
	}
	t.Logf("round %s: %s in %.1fs, counts %v", rep.ID, rep.Status, rep.DurationSeconds, rep.Counts)
	if rep.Status != "divergent" || fmt.Sprint(keysOf(got)) != fmt.Sprint(keysOf(want)) {
		t.Fatalf("divergent keys of %s\n got %v\nwant %v\n(status %s, error %q)", users, keysOf(got), keysOf(want), rep.Status, rep.Error)
	}
	if rep.Counts["in_flight"] != 0 {
		t.Errorf("%d keys in flight on an idle pipeline", rep.Counts["in_flight"])
	}
	var k int
	fmt.Sscanf(held[strings.LastIndex(held, "/")+1:], "%d", &k)
	if len(rep.Segments) != 6 {
		t.Fatalf("%d segments reported, want 6", len(rep.Segments))
	}
	seg := rep.Segments[k]
	t.Logf("segments: %+v", rep.Segments)
	if seg.Attempt < 2 || !strings.Contains(seg.TookOverFrom, "/"+addrs["c"]+"/") || strings.Contains(seg.Owner, "/"+addrs["c"]+"/") {
		t.Fatalf("the killed daemon's segment %d: %+v; want it redone by another daemon, taken from c", k, seg)
	}
	owners := map[string]bool{}
	for _, s := range rep.Segments {
		owners[s.Owner] = true
	}
	if len(owners) < 2 {
		t.Errorf("segments hashed by %v; want the work shared", owners)
	}
}

func keysOf(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func waitUntil(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	testbed.Until(t, what, within, cond)
}
