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
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
)

const testToken = "itest-token-0123456789abcdef"

// TestIntegrationDaemonRewindWhileRunning runs the real binary against the
// local stack, then rewinds the sink by N records per partition with the CLI
// while the daemon keeps running. The replay is counted, and Cassandra ends
// equal to the transform of the source. Unauthenticated changes are refused
// and audited as refused.
func TestIntegrationDaemonRewindWhileRunning(t *testing.T) {
	e := newDaemonEnv(t, "dmn")
	s, mc, dir, bin, db, ns, ks, m := e.s, e.mc, e.dir, e.bin, e.db, e.ns, e.ks, e.m
	prefix := testbed.UniqueName(t, "dmn")
	addr := "127.0.0.1:17071"
	cfg := e.config(addr, prefix, ", backfill: {chunk_size: 500}", "")
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

	testbed.RunDaemon(t, ctx, bin, "daemon", filepath.Join(dir, "tidemark.yaml"))
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
	var before daemon.Status
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
	var plan daemon.RewindPlan
	if err := json.Unmarshal([]byte(out), &plan); err != nil || !plan.Executed || plan.Replay != 300 || len(plan.Done) != 3 {
		t.Fatalf("rewind plan: %+v %v\n%s", plan, err, out)
	}
	for _, p := range plan.Partitions {
		if p.Current-p.Target != 100 {
			t.Fatalf("partition %d moved %d -> %d, want 100 back", p.Partition, p.Current, p.Target)
		}
	}
	// The daemon keeps running and replays back to where it was.
	waitCaughtUp(t, ctx, ac, before)
	waitMatch("after the rewind")

	// Rewind to a time on chosen partitions: exactly the records written
	// after it are replayed there, and nothing else moves.
	from := time.Now()
	time.Sleep(20 * time.Millisecond) // Kafka timestamps are milliseconds
	for i := 1000; i < 1200; i++ {
		coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: int64(i)}}, bson.D{{Key: "$set", Value: bson.D{{Key: "age", Value: int32(99)}}}})
	}
	waitMatch("after the second updates")
	recs := readTopic(t, ctx, topic)
	after := map[int32]int{}
	total := 0
	for _, r := range recs {
		if !r.Timestamp.Before(from) {
			after[r.Partition]++
			total++
		}
	}
	if total != 200 {
		t.Fatalf("%d records written after %s, want the 200 updates", total, from.Format(time.RFC3339Nano))
	}
	if err := ac.Do(ctx, "GET", "/v1/status", nil, &before); err != nil {
		t.Fatal(err)
	}
	out, err = cli("rewind", "--topic", topic, "--partitions", "0,2", "--to-time", from.Format(time.RFC3339Nano),
		"--reason", "itest replay by time", "--execute", "--json", "--token-file", filepath.Join(dir, "token"))
	if err != nil {
		t.Fatalf("rewind --to-time: %v\n%s", err, out)
	}
	plan = daemon.RewindPlan{}
	if err := json.Unmarshal([]byte(out), &plan); err != nil || !plan.Executed || len(plan.Partitions) != 2 || len(plan.Done) != 2 {
		t.Fatalf("rewind --to-time plan: %+v %v\n%s", plan, err, out)
	}
	for _, p := range plan.Partitions {
		replayed := 0
		for _, r := range recs {
			if r.Partition == p.Partition && r.Offset >= p.Target && r.Offset < p.Current {
				replayed++
			}
		}
		if replayed != after[p.Partition] || replayed == 0 {
			t.Fatalf("partition %d: the rewind replays %d records, %d were written after %s", p.Partition, replayed, after[p.Partition], from.Format(time.RFC3339Nano))
		}
		if p.FirstTime == nil || p.FirstTime.Before(from.Add(-time.Second)) || p.FirstVersion == "" {
			t.Fatalf("partition %d: plan does not describe the first replayed record: %+v", p.Partition, p)
		}
	}
	waitCaughtUp(t, ctx, ac, before)
	waitMatch("after the rewind to a time")

	// A rewind further back than gc_grace_seconds is refused with the reason.
	if err := s.Query("ALTER TABLE " + ks + ".users WITH gc_grace_seconds = 1").Exec(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		out, err = cli("rewind", "--topic", topic, "--by", "10", "--reason", "too far", "--token-file", filepath.Join(dir, "token"))
		if err != nil && strings.Contains(out, "gc_grace_seconds (1s)") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rewind past gc_grace_seconds was not refused: %v\n%s", err, out)
		}
		time.Sleep(300 * time.Millisecond)
	}

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
	// audit --follow prints entries written after it started.
	fcmd := exec.CommandContext(ctx, bin, "audit", "--follow", "--json", "--limit", "1", "--addr", addr, "--token-file", filepath.Join(dir, "token"))
	var fout testbed.LockedBuffer
	fcmd.Stdout, fcmd.Stderr = &fout, &fout
	if err := fcmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fcmd.Process.Kill(); fcmd.Wait() })
	if out, err := cli("pause", "--topic", topic, "--partitions", "1", "--reason", "follow me", "--token-file", filepath.Join(dir, "token")); err != nil {
		t.Fatalf("pause: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(fout.String(), `"reason":"follow me"`); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("audit --follow did not print the pause within 20s:\n%s", fout.String())
		}
	}
	cli("resume", "--topic", topic, "--partitions", "1", "--reason", "follow me", "--token-file", filepath.Join(dir, "token"))

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

// waitCaughtUp waits until every partition has committed at least as far as
// before and is caught up with its high watermark.
func waitCaughtUp(t *testing.T, ctx context.Context, ac *admin.Client, before daemon.Status) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var st daemon.Status
		if err := ac.Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
			t.Fatalf("daemon stopped answering after the rewind: %v", err)
		}
		// A transactional topic ends with a commit marker, so a caught-up
		// partition is at most one offset behind its high watermark.
		caught := len(st.Partitions) == len(before.Partitions)
		for i, p := range st.Partitions {
			caught = caught && p.RecordsBehind <= 1 && p.Committed >= before.Partitions[i].Committed
		}
		if caught {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink did not replay after the rewind: %+v", st.Partitions)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// readTopic returns every committed data record of topic up to its end.
func readTopic(t *testing.T, ctx context.Context, topic string) []*kgo.Record {
	t.Helper()
	ends, err := testbed.KafkaAdmin(t).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// Every transaction ends with one commit marker, so the last data record
	// of a partition sits just below the marker at end-1.
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			want[o.Partition] = o.Offset - 2
		}
	})
	seen := map[int32]int64{}
	var out []*kgo.Record
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		done := true
		for p, w := range want {
			done = done && seen[p] >= w
		}
		if done {
			return out
		}
		fs := cl.PollFetches(rctx)
		if rctx.Err() != nil {
			t.Fatalf("read %s: reached %v of %v", topic, seen, want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			out = append(out, r)
			seen[r.Partition] = r.Offset
		})
	}
}
