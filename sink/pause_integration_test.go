//go:build integration

package sink

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
)

// TestIntegrationSinkPauseSurvivesRestart pauses one partition: it stops
// applying while its backlog is still reported, the pause holds across a
// restart of the sink, and on resume nothing is lost or skipped.
func TestIntegrationSinkPauseSurvivesRestart(t *testing.T) {
	s := testbed.Cassandra(t)
	adm := testbed.KafkaAdmin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	prefix := testbed.UniqueName(t, "pause")
	ns := "shop.users"
	topic := prefix + "." + ns
	testbed.CreateTopic(t, adm, topic, 2)
	m, _ := testbed.UsersMapping(t, s, ns, testbed.UniqueName(t, "ks"))
	store, err := checkpoints.OpenFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pcl, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer pcl.Close()
	docs := map[int64]bson.D{}
	write := func(from, to int64, gen int) {
		t.Helper()
		for i := from; i < to; i++ {
			d := userDoc(i, fmt.Sprintf("u%d.%d@x.org", i, gen), gen, gen%2 == 0)
			raw, _ := bson.Marshal(d)
			ev := envelope.Event{Op: envelope.OpInsert, Namespace: ns, ID: bsonValue(t, i), Version: envelope.Version{T: uint32(1000 + gen), I: uint32(i + 1)}, Doc: raw}
			b, err := envelope.Encode(nil, &ev)
			if err != nil {
				t.Fatal(err)
			}
			if err := pcl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: int32(i % 2), Key: ev.Key(), Value: b}).FirstErr(); err != nil {
				t.Fatal(err)
			}
			docs[i] = d
		}
	}
	w, err := NewCassandraWriter(ctx, s, m, "ONE")
	if err != nil {
		t.Fatal(err)
	}
	group := testbed.UniqueName(t, "g")
	start := func() (*Sink, context.CancelFunc, chan error) {
		sk, err := New(Config{Group: group, TopicPrefix: prefix}, Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)},
			Writer: w, Mapping: m, Store: store, Logger: slog.Default()})
		if err != nil {
			t.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- sk.Run(rctx); sk.Close() }()
		return sk, stop, done
	}
	lagOf := func(sk *Sink, p int32) PartitionLag {
		for _, l := range sk.Lag() {
			if l.Topic == topic && l.Partition == p {
				return l
			}
		}
		return PartitionLag{Committed: -1}
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if ctx.Err() != nil {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	write(0, 200, 1)
	sk, stop, done := start()
	waitFor("the first 200 records", func() bool { return lagOf(sk, 0).Committed >= 100 && lagOf(sk, 1).Committed >= 100 })
	if _, err := Pause(ctx, store, []TopicPartition{{Topic: topic, Partition: 0}}, true); err != nil {
		t.Fatal(err)
	}
	waitFor("partition 0 to pause", func() bool { return lagOf(sk, 0).Paused })
	held := lagOf(sk, 0).Committed
	write(200, 400, 2)
	waitFor("partition 1 to catch up while 0 is paused", func() bool { return lagOf(sk, 1).Committed >= 200 })
	// The paused partition is not fetched, yet its backlog must show.
	waitFor("partition 0's backlog to be reported", func() bool { return lagOf(sk, 0).RecordsBehind >= 100 })
	if l := lagOf(sk, 0); l.Committed != held {
		t.Fatalf("paused partition 0 moved from %d to %d", held, l.Committed)
	}

	// Restart: the pause is in checkpoints, so the new process holds it too.
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	sk, stop, done = start()
	defer func() { stop(); <-done }()
	write(400, 410, 3)
	waitFor("partition 1 after the restart", func() bool { return lagOf(sk, 1).Committed >= 205 })
	waitFor("partition 0 paused after the restart", func() bool { return lagOf(sk, 0).Paused })
	if l := lagOf(sk, 0); l.Committed > held {
		t.Fatalf("partition 0 was applied after the restart although paused: %d > %d", l.Committed, held)
	}

	if _, err := Pause(ctx, store, []TopicPartition{{Topic: topic, Partition: 0}}, false); err != nil {
		t.Fatal(err)
	}
	var want []bson.Raw
	for _, d := range docs {
		raw, _ := bson.Marshal(d)
		want = append(want, raw)
	}
	exp := testbed.Expected(t, m, ns, want)
	waitFor("Cassandra to equal every record after the resume", func() bool {
		return bytes.Equal(testbed.Snapshot(t, s, m, ns), exp)
	})
}
