//go:build integration

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/internal/testbed"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// TestIntegrationHistoryLostOnTheStandin runs the daemon against its own
// stand-in, stops it, lets the capped oplog roll past capture's checkpoint,
// and restarts it: capture must stop with the history-lost error naming the
// recovery, set tidemark_capture_history_lost, and recover through
// `tidemark backfill --reset-stream` until Cassandra equals the source again,
// including the changes made while the history was lost.
func TestIntegrationHistoryLostOnTheStandin(t *testing.T) {
	e := newDaemonEnv(t, "hlost")
	st := testbed.StartStandin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mc, err := mongo.Connect(ctx, options.Client().ApplyURI(st.URI))
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Disconnect(context.Background())
	coll := mc.Database(e.db).Collection("users")
	var docs []any
	for i := 0; i < 200; i++ {
		docs = append(docs, bson.D{{Key: "_id", Value: int64(i)}, {Key: "email", Value: fmt.Sprintf("u%d@x.org", i)}, {Key: "age", Value: int32(i % 70)}})
	}
	if _, err := coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}

	addr := freeAddr(t)
	prefix := testbed.UniqueName(t, "hlost")
	cfg := strings.Replace(e.config(addr, prefix, "", ""), fmt.Sprintf("mongo: {uri: %q}", testbed.MongoURI()),
		fmt.Sprintf("mongo: {uri: %q}", st.URI), 1)
	if !strings.Contains(cfg, st.URI) {
		t.Fatalf("config does not name the test's stand-in:\n%s", cfg)
	}
	// TIDEMARK_MONGO_URI overrides the config file in the daemon: point it
	// at this test's stand-in too (newDaemonEnv has read the stack's already).
	t.Setenv("TIDEMARK_MONGO_URI", st.URI)
	conf := filepath.Join(e.dir, "tidemark.yaml")
	os.WriteFile(conf, []byte(cfg), 0o600)
	waitMatch := func(what string) {
		t.Helper()
		want := testbed.Expected(t, e.m, e.ns, testbed.SourceDocs(t, ctx, coll))
		for deadline := time.Now().Add(2 * time.Minute); ; {
			got := testbed.Snapshot(t, e.s, e.m, e.ns)
			if bytes.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Cassandra does not match the source: got %q want %q", what, testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	update := func(from, to int, email string) {
		t.Helper()
		for i := from; i < to; i++ {
			if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: int64(i)}},
				bson.D{{Key: "$set", Value: bson.D{{Key: "email", Value: fmt.Sprintf(email, i)}}}}); err != nil {
				t.Fatal(err)
			}
		}
	}

	// First run: backfill and live changes arrive, capture checkpoints.
	runCtx, stop := context.WithCancel(ctx)
	first := testbed.RunDaemon(t, runCtx, e.bin, "first daemon", conf)
	waitMatch("after backfill")
	update(0, 20, "a%d@x.org")
	waitMatch("after live updates")
	first.Process.Signal(os.Interrupt)
	first.Wait()
	stop()

	// While the daemon is down, the oplog rolls over: a 50-entry cap and
	// 100 more changes push capture's checkpoint out of it.
	cap, err := testbed.SetOplogCap(ctx, mc, 50, -1)
	if err != nil {
		t.Fatal(err)
	}
	update(20, 120, "b%d@x.org")
	if cap, err = testbed.SetOplogCap(ctx, mc, 0, -1); err != nil || cap.Entries != 50 {
		t.Fatalf("oplog after the roll-over: %+v, %v; want 50 entries", cap, err)
	}

	// Second run: capture stops the stream with the error and the metric.
	second := exec.CommandContext(ctx, e.bin, "run", "--config", conf)
	logs := &testbed.LockedBuffer{}
	second.Stdout, second.Stderr = logs, logs
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		second.Process.Signal(os.Interrupt)
		second.Wait()
		if t.Failed() {
			t.Logf("second daemon log tail:\n%s", logs.Tail(5000))
		}
	})
	lost := regexp.MustCompile(`tidemark_capture_history_lost\{namespace="` + regexp.QuoteMeta(e.ns) + `"\} (\S+)`)
	waitMetric := func(want string) {
		t.Helper()
		var last string
		for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			last = scrape(ctx, addr)
			if m := lost.FindStringSubmatch(last); m != nil && m[1] == want {
				return
			}
		}
		t.Fatalf("tidemark_capture_history_lost{namespace=%q} never became %s; metrics:\n%s", e.ns, want, grepLines(last, "history_lost"))
	}
	waitMetric("1")
	recovery := "tidemark backfill --namespace " + e.ns + " --reset-stream"
	if !strings.Contains(logs.String(), recovery) {
		t.Fatalf("the daemon's log does not name the recovery %q:\n%s", recovery, logs.Tail(3000))
	}

	// Recovery: the named command, then Cassandra equals the source,
	// including the 100 changes the lost history held.
	out, err := exec.CommandContext(ctx, e.bin, "backfill", "--namespace", e.ns, "--reset-stream", "--reason", "itest: oplog rolled over",
		"--addr", addr, "--token-file", e.tokenFile).CombinedOutput()
	if err != nil {
		t.Fatalf("backfill --reset-stream: %v\n%s", err, out)
	}
	waitMetric("0")
	waitMatch("after the recovery")
	update(120, 140, "c%d@x.org")
	waitMatch("after live updates following the recovery")
}

// scrape is the daemon's /metrics text, or "" while it does not answer.
func scrape(ctx context.Context, addr string) string {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
