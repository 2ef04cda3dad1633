//go:build integration

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestIntegrationAuditVerifyFindsForgedAndDeletedEntries chains audit
// entries in a Kafka store on the stack, then does what any client with
// write access to the topic can: adds an entry in alice's name (a valid
// frame, no key) and tombstones an entry. tidemark audit verify, reading
// the topic afresh, names the first broken link each time.
func TestIntegrationAuditVerifyFindsForgedAndDeletedEntries(t *testing.T) {
	e := newDaemonEnv(t, "aud")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	topic := testbed.UniqueName(t, "aud") + ".checkpoints"
	key := "5f1c0e7a9b3d4c2e8f6a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e"
	if err := os.WriteFile(filepath.Join(e.dir, "audit-key"), []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(e.config("127.0.0.1:17099", testbed.UniqueName(t, "aud"), "", "audit: {hmac_key_file: "+e.dir+"/audit-key}\n"),
		"checkpoints: {kind: file, dir: "+e.dir+"/state}", "checkpoints: {kind: kafka, topic: "+topic+"}", 1)
	path := filepath.Join(e.dir, "audit.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	kopts := []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}
	raw, err := checkpoints.OpenKafka(ctx, topic, kopts)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	k, _ := checkpoints.ParseChainKey(key)
	chained, err := checkpoints.WithAuditChain(raw, k)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := chained.Append(ctx, checkpoints.AuditEntry{Actor: "bob", Action: "POST /v1/pause", Reason: fmt.Sprint("r", i), Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	verify := func(wantExit int, want ...string) {
		t.Helper()
		out, err := exec.CommandContext(ctx, e.bin, "audit", "verify", "--config", path).CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != wantExit {
			t.Fatalf("audit verify exit %d, want %d:\n%s", code, wantExit, out)
		}
		for _, w := range want {
			if !strings.Contains(string(out), w) {
				t.Fatalf("audit verify output lacks %q:\n%s", w, out)
			}
		}
		if strings.Contains(string(out), key) {
			t.Fatal("the key reached the output")
		}
	}
	verify(0, "5 entries: 5 verified", "chain intact")

	// A forgery: entry r2's content in alice's name, with r2's link copied.
	es, err := raw.AuditLog(ctx)
	if err != nil || len(es) != 5 {
		t.Fatalf("%d entries, %v", len(es), err)
	}
	forged := es[2]
	forged.Actor, forged.Reason, forged.Action = "alice", "approved", "POST /v1/rewind"
	if err := raw.Append(ctx, forged); err != nil {
		t.Fatal(err)
	}
	verify(1, "first broken link: forged: entry 5", "POST /v1/rewind by alice")

	// A deletion: tombstone r3's record, as kafka-console-producer could.
	cl, err := kgo.NewClient(append(kopts, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DefaultProduceTopic(topic))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var victim []byte
	for victim == nil {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatal("r3's record not found in the topic")
		}
		fs.EachRecord(func(r *kgo.Record) {
			if strings.HasPrefix(string(r.Key), "_audit/") && strings.Contains(string(r.Value), `"reason":"r3"`) {
				victim = r.Key
			}
		})
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Key: victim, Value: nil, Partition: 0}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	verify(1, "first broken link: missing: entry 3", `which is not in the log (deleted)`, "also: forged")
}
