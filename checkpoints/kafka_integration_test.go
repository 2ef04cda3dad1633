//go:build integration

package checkpoints_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// stackKafka returns connection options for the stack's Kafka and a function
// that names a fresh topic, deleted at cleanup (the store creates it).
func stackKafka(t *testing.T) ([]kgo.Opt, func(t *testing.T) string) {
	kopts := []kgo.Opt{kgo.SeedBrokers(testbed.Kafka(t)...)}
	adm := testbed.KafkaAdmin(t)
	return kopts, func(t *testing.T) string {
		topic := testbed.UniqueName(t, "checkpoints")
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			adm.DeleteTopics(ctx, topic)
		})
		return topic
	}
}

// TestIntegrationKafkaStoreConformance runs the shared Store suite, two
// concurrent writers included, against the real broker.
func TestIntegrationKafkaStoreConformance(t *testing.T) {
	kopts, newTopic := stackKafka(t)
	checkpointstest.Conformance(t, func(t *testing.T) checkpointstest.Opener {
		topic := newTopic(t)
		return func(t *testing.T) checkpoints.Store { return openKafka(t, kopts, topic) }
	})
}

// TestIntegrationKafkaStoreTopicAndDamage checks, on the real broker, the topic
// the store creates, that a damaged record produced by another client leaves
// the previous value in place across a restart, and that topics that would
// lose state, or that the cluster cannot create, are refused with the fix.
//
// (min.insync.replicas cannot be exercised on one broker: Kafka 3.x caps it at
// the replication factor, so acks=all with one replica always succeeds.)
func TestIntegrationKafkaStoreTopicAndDamage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kopts, newTopic := stackKafka(t)
	topic := newTopic(t)
	s := openKafka(t, kopts, topic)

	rcs, err := testbed.KafkaAdmin(t).DescribeTopicConfigs(ctx, topic)
	must(t, err)
	for _, c := range rcs[0].Configs {
		if c.Key == "cleanup.policy" && (c.Value == nil || *c.Value != "compact") {
			t.Fatalf("cleanup.policy = %v, want compact", c.Value)
		}
	}

	must(t, s.Put(ctx, "capture/app.users", []byte(`{"token":"good"}`)))
	must(t, s.Append(ctx, checkpoints.AuditEntry{Actor: "op", Action: "pause", Result: "ok"}))
	raw := rawClient(t, kopts, topic)
	var good []byte
	for _, r := range readAll(t, kopts, topic) {
		if string(r.Key) == "capture/app.users" {
			good = r.Value
		}
	}
	produce(t, raw, "capture/app.users", good[:len(good)-5]) // a torn value
	produce(t, raw, "capture/app.users", []byte(`{"token":"forged"}`))
	must(t, s.Sync(ctx))
	for name, st := range map[string]*checkpoints.KafkaStore{"open": s, "restarted": openKafka(t, kopts, topic)} {
		if v, err := st.Get(ctx, "capture/app.users"); err != nil || string(v) != `{"token":"good"}` {
			t.Fatalf("%s store: %q %v, want the intact value", name, v, err)
		}
		if es, _ := st.Audit(ctx, checkpoints.AuditFilter{}); len(es) != 1 {
			t.Fatalf("%s store: audit %+v", name, es)
		}
	}

	// A topic an operator made with a delete policy is refused with the fix,
	// and a replication factor the cluster cannot meet is refused with the
	// setting to change.
	adm := testbed.KafkaAdmin(t)
	deleting := newTopic(t)
	if _, err := adm.CreateTopic(ctx, 1, 1, map[string]*string{"cleanup.policy": kadm.StringPtr("delete")}, deleting); err != nil {
		t.Fatal(err)
	}
	if _, err := checkpoints.OpenKafka(ctx, deleting, kopts, quiet); err == nil || !strings.Contains(err.Error(), "kafka-configs") {
		t.Fatalf("delete policy: %v, want a refusal with the fix", err)
	}
	if _, err := checkpoints.OpenKafka(ctx, newTopic(t), kopts, quiet, checkpoints.KafkaReplicationFactor(3)); err == nil || !strings.Contains(err.Error(), "replication_factor") {
		t.Fatalf("replication factor above the broker count: %v, want a refusal naming the setting", err)
	}
}

// TestIntegrationKafkaCASCompacted has two daemons change two keys by
// compare-and-swap, racing, on a topic the real broker compacts within
// seconds (segments roll every 100 ms, any dirt is cleanable, tombstones
// go at once). Once the cleaner has run, the topic keeps one conditional
// record per key, and a store opened on it (a restarting daemon) has every
// key at the writers' value and version and can swap it from there.
func TestIntegrationKafkaCASCompacted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	kopts, newTopic := stackKafka(t)
	topic := newTopic(t)
	_, err := testbed.KafkaAdmin(t).CreateTopic(ctx, 1, 1, map[string]*string{
		"cleanup.policy":            kadm.StringPtr("compact"),
		"segment.ms":                kadm.StringPtr("100"),
		"min.cleanable.dirty.ratio": kadm.StringPtr("0.01"),
		"delete.retention.ms":       kadm.StringPtr("0"),
		"min.compaction.lag.ms":     kadm.StringPtr("0"),
	}, topic)
	must(t, err)
	a, b := openKafka(t, kopts, topic), openKafka(t, kopts, topic)
	keys := []string{"intent/paused", "leader/current"}
	const changes = 40
	var wg sync.WaitGroup
	for w, s := range []*checkpoints.KafkaStore{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < changes; i++ {
				for _, k := range keys {
					if _, err := checkpoints.UpdateJSON(ctx, s, k, func(v []string, _ bool) ([]string, error) {
						return append(v, fmt.Sprint(w, "-", i)), nil
					}); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	written := 0
	for _, r := range readAll(t, kopts, topic) {
		if strings.HasPrefix(string(r.Key), "_cas/") && r.Value != nil {
			written++
		}
	}
	// The cleaner never touches the active segment: keep rolling it with
	// a write of another key until only one conditional record per key
	// is left.
	var live int
	for tick := 0; ; tick++ {
		must(t, a.Put(ctx, "mark/tick", fmt.Append(nil, tick)))
		live = 0
		for _, r := range readAll(t, kopts, topic) {
			if strings.HasPrefix(string(r.Key), "_cas/") && r.Value != nil {
				live++
			}
		}
		if live <= len(keys) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("after %d changes of %d keys the compacted topic still keeps %d of %d conditional records", 2*changes, len(keys), live, written)
		case <-time.After(time.Second):
		}
	}
	t.Logf("%d changes of %d keys wrote %d conditional and settle records; the compacted topic keeps %d", 2*changes, len(keys), written, live)
	must(t, b.Sync(ctx))
	r := openKafka(t, kopts, topic)
	for _, k := range keys {
		wv, wver, err := b.GetVersion(ctx, k)
		must(t, err)
		var got []string
		must(t, json.Unmarshal(wv, &got))
		if len(got) != 2*changes {
			t.Fatalf("%s holds %d changes, want %d: %s", k, len(got), 2*changes, wv)
		}
		gv, gver, err := r.GetVersion(ctx, k)
		if err != nil || string(gv) != string(wv) || gver != wver {
			t.Fatalf("%s read from the compacted topic: %s version %d (%v); the writers have %s version %d", k, gv, gver, err, wv, wver)
		}
		if _, err := r.CompareAndSwap(ctx, k, gver, []byte(`["after"]`)); err != nil {
			t.Fatalf("%s: a swap from the compacted topic's version: %v", k, err)
		}
		must(t, a.Sync(ctx))
		if v, _ := a.Get(ctx, k); string(v) != `["after"]` {
			t.Fatalf("%s: a writer sees %s after the swap", k, v)
		}
	}
}
