//go:build integration

package checkpoints_test

import (
	"context"
	"strings"
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
