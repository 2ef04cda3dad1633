//go:build integration

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
)

// TestIntegrationDaemonRestartAfterKill runs the real binary with the sink
// role and its default sink.instance_id (<hostname>-<admin port>), kills it
// with SIGKILL once it applied a first batch, produces more records, and
// restarts it with the same config: it must apply the first new record
// within 10 s (a dynamic member waits out the dead one's 45 s session).
func TestIntegrationDaemonRestartAfterKill(t *testing.T) {
	e := newDaemonEnv(t, "rst")
	prefix := testbed.UniqueName(t, "rst")
	topic := prefix + "." + e.ns
	testbed.CreateTopic(t, testbed.KafkaAdmin(t), topic, 3)
	cfg := filepath.Join(e.dir, "tidemark.yaml")
	body := strings.Replace(e.config(freeAddr(t), prefix, "", ""), "roles: [capture, sink]", "roles: [sink]", 1)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	prod, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	put := func(from, to int64) {
		t.Helper()
		for i := from; i < to; i++ {
			doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: i}, {Key: "email", Value: fmt.Sprintf("r%d@x.org", i)}})
			ev := envelope.Event{Op: envelope.OpInsert, Namespace: e.ns, ID: bson.Raw(doc).Lookup("_id"),
				Version: envelope.Version{T: 1000, I: uint32(i)}, Doc: doc}
			b, err := envelope.Encode(nil, &ev)
			if err != nil {
				t.Fatal(err)
			}
			if err := prod.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: ev.Key(), Value: b}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// rows counts the users rows among ids from..to-1.
	rows := func(from, to int64) int {
		var ids []string
		for i := from; i < to; i++ {
			ids = append(ids, fmt.Sprintf("'%d'", i))
		}
		var n int
		if err := e.s.Query(fmt.Sprintf("SELECT count(*) FROM %s.users WHERE id IN (%s)", e.ks, strings.Join(ids, ","))).Scan(&n); err != nil {
			t.Logf("count: %v", err)
		}
		return n
	}
	waitRows := func(from, to int64, atLeast int) {
		t.Helper()
		for rows(from, to) < atLeast {
			select {
			case <-ctx.Done():
				t.Fatalf("%d of ids %d..%d written before the deadline", rows(from, to), from, to-1)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}

	put(0, 300)
	daemon := testbed.RunDaemon(t, ctx, e.bin, "daemon", cfg)
	waitRows(0, 300, 300)
	daemon.Process.Kill()
	daemon.Wait()

	put(1000, 1030)
	start := time.Now()
	testbed.RunDaemon(t, ctx, e.bin, "restarted daemon", cfg)
	waitRows(1000, 1030, 1)
	first := time.Since(start)
	waitRows(1000, 1030, 30)
	t.Logf("daemon restarted after SIGKILL: first record applied after %.2f s, all 30 after %.2f s",
		first.Seconds(), time.Since(start).Seconds())
	if first > 10*time.Second {
		t.Fatalf("restart -> first applied record took %v, want under 10 s", first)
	}
}
