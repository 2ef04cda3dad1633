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
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"go.mongodb.org/mongo-driver/bson"
)

const testToken = "itest-token-0123456789abcdef"

// TestIntegrationDaemonRewindWhileRunning runs the real binary against the
// local stack, then rewinds the sink by N records per partition with the CLI
// while the daemon keeps running. The replay is counted, and Cassandra ends
// equal to the transform of the source. Unauthenticated changes are refused
// and audited as refused.
func TestIntegrationDaemonRewindWhileRunning(t *testing.T) {
	s := testbed.Cassandra(t)
	mc := testbed.Mongo(t)
	testbed.Kafka(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "tidemark")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	db := testbed.UniqueName(t, "dmn")
	ns := db + ".users"
	ks := testbed.UniqueName(t, "ks")
	m, specText := testbed.UsersMapping(t, s, ns, ks)
	os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(specText), 0o600)
	os.WriteFile(filepath.Join(dir, "tokens"), []byte("ci:"+testToken+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "token"), []byte(testToken), 0o600)
	prefix := testbed.UniqueName(t, "dmn")
	addr := "127.0.0.1:17071"
	cfg := fmt.Sprintf(`roles: [capture, sink]
spec: %s/spec.yaml
kafka: {brokers: [%s]}
mongo: {uri: %q}
cassandra: {hosts: [%s]}
checkpoints: {kind: file, dir: %s/state}
admin: {listen: %q, tokens_file: %s/tokens, open_status: true}
capture: {topic_prefix: %s, namespaces: [%s], partitions: 3, backfill: {chunk_size: 500}}
sink: {group: %s-g, consistency: ONE, mark_interval: 1s}
`, dir, strings.Join(testbed.KafkaBrokers(), ","), testbed.MongoURI(), strings.Join(testbed.CassandraHosts(), ","), dir, addr, dir, prefix, ns, prefix)
	os.WriteFile(filepath.Join(dir, "tidemark.yaml"), []byte(cfg), 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	coll := mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	var docs []any
	for i := 0; i < 3000; i++ {
		docs = append(docs, bson.D{{Key: "_id", Value: int64(i)}, {Key: "email", Value: fmt.Sprintf("d%d@x.org", i)}, {Key: "age", Value: int32(i % 80)}})
	}
	if _, err := coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}

	daemon := exec.CommandContext(ctx, bin, "run", "--config", filepath.Join(dir, "tidemark.yaml"))
	var logs bytes.Buffer
	daemon.Stdout, daemon.Stderr = &logs, &logs
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		daemon.Process.Signal(os.Interrupt)
		daemon.Wait()
		if t.Failed() {
			t.Logf("daemon log tail:\n%s", tailOf(logs.String(), 4000))
		}
	})
	cli := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, append(args, "--addr", addr)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	waitMatch := func(what string) {
		t.Helper()
		want := testbed.Expected(t, m, ns, testbed.SourceDocs(t, ctx, coll))
		for deadline := time.Now().Add(2 * time.Minute); ; {
			got := testbed.Snapshot(t, s, m, ns)
			if bytes.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Cassandra does not match the source: got %q want %q", what, testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	waitMatch("after backfill")
	for i := 0; i < 500; i++ {
		coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: int64(i)}}, bson.D{{Key: "$set", Value: bson.D{{Key: "email", Value: fmt.Sprintf("n%d@x.org", i)}}}})
	}
	waitMatch("after live updates")

	// Unauthenticated changes are refused and audited.
	if out, err := cli("pause", "--topic", prefix+"."+ns, "--reason", "drill"); err == nil || !strings.Contains(out, "401") {
		t.Fatalf("unauthenticated pause was not refused: %v %s", err, out)
	}
	topic := prefix + "." + ns
	var before Status
	ac, _ := admin.NewClient(addr, filepath.Join(dir, "token"))
	if err := ac.Do(ctx, "GET", "/v1/status", nil, &before); err != nil {
		t.Fatal(err)
	}
	out, err := cli("rewind", "--topic", topic, "--by", "100", "--reason", "itest replay", "--token-file", filepath.Join(dir, "token"))
	if err != nil || !strings.Contains(out, "dry run: 300 records would be replayed") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	out, err = cli("rewind", "--topic", topic, "--by", "100", "--reason", "itest replay", "--execute", "--json", "--token-file", filepath.Join(dir, "token"))
	if err != nil {
		t.Fatalf("rewind: %v\n%s", err, out)
	}
	var plan RewindPlan
	if err := json.Unmarshal([]byte(out), &plan); err != nil || !plan.Executed || plan.Replay != 300 || len(plan.Done) != 3 {
		t.Fatalf("rewind plan: %+v %v\n%s", plan, err, out)
	}
	for _, p := range plan.Partitions {
		if p.Current-p.Target != 100 {
			t.Fatalf("partition %d moved %d -> %d, want 100 back", p.Partition, p.Current, p.Target)
		}
	}
	// The daemon keeps running and replays back to where it was.
	deadline := time.Now().Add(time.Minute)
	for {
		var st Status
		if err := ac.Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
			t.Fatalf("daemon stopped answering after the rewind: %v", err)
		}
		// A transactional topic ends with a commit marker, so a caught-up
		// partition is at most one offset behind its high watermark.
		caught := len(st.Partitions) == 3
		for i, p := range st.Partitions {
			caught = caught && p.RecordsBehind <= 1 && p.Committed >= before.Partitions[i].Committed
		}
		if caught {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink did not replay after the rewind: %+v", st.Partitions)
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitMatch("after the rewind")

	var es []checkpoints.AuditEntry
	if err := ac.Do(ctx, "GET", "/v1/audit", nil, &es); err != nil {
		t.Fatal(err)
	}
	var refused, rewound bool
	for _, e := range es {
		refused = refused || (e.Action == "POST /v1/pause" && e.Actor == "anonymous" && strings.HasPrefix(e.Result, "refused"))
		rewound = rewound || (e.Action == "POST /v1/rewind" && e.Actor == "ci" && e.Reason == "itest replay" && e.Result == "ok")
	}
	if !refused || !rewound {
		t.Fatalf("audit log lacks the refused pause (%v) or the rewind (%v): %+v", refused, rewound, es)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var metrics bytes.Buffer
	metrics.ReadFrom(resp.Body)
	for _, name := range []string{"tidemark_sink_rows_total", "tidemark_capture_events_total", "tidemark_replication_lag_records"} {
		if !strings.Contains(metrics.String(), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
