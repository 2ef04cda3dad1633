package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
)

// The in-process tests run the sink on app.items, whose capture topic has
// the default prefix.
const itemsTopic = "tidemark.app.items"

// itemsMapping maps app.items {_id, v} to one table keyed by id (row values
// [id, v]) or, with buckets > 0, keyed by a hash bucket of the id with the id
// as clustering key, so that rows share Cassandra partitions ([bucket, id, v]).
// Tables named in more get the same columns, from the same documents.
func itemsMapping(t testing.TB, buckets int, more ...string) *transform.Mapping {
	t.Helper()
	key, bucket := "partition_key: [id]", ""
	if buckets > 0 {
		key = "partition_key: [bucket]\n        clustering_key: [id]"
		bucket = fmt.Sprintf("\n          - {name: bucket, type: int, compute: hash_bucket, args: [_id], buckets: %d}", buckets)
	}
	spec := `
version: "t1"
collections:
  - namespace: app.items
    tables:`
	for _, table := range append([]string{"items"}, more...) {
		spec += fmt.Sprintf(`
      - keyspace: app
        table: %s
        %s
        columns:%s
          - {name: id, type: bigint, from: _id}
          - {name: v, type: int, from: v}`, table, key, bucket)
	}
	m, err := transform.Parse([]byte(spec + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// itemRecord is capture's record of the insert of {_id: id, v: v} at version (100, ver).
func itemRecord(t testing.TB, id int64, v any, ver uint32) *kgo.Record {
	t.Helper()
	doc, err := bson.Marshal(bson.D{{Key: "_id", Value: id}, {Key: "v", Value: v}})
	if err != nil {
		t.Fatal(err)
	}
	ev := envelope.Event{Op: envelope.OpInsert, Namespace: "app.items", ID: bson.Raw(doc).Lookup("_id"),
		Version: envelope.Version{T: 100, I: ver}, Doc: doc}
	b, err := envelope.Encode(nil, &ev)
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: itemsTopic, Key: ev.Key(), Value: b}
}

// kfakeTopic starts an in-process Kafka whose items topic has partitions
// partitions and holds recs, each on the partition it names.
func kfakeTopic(t testing.TB, partitions int, recs []*kgo.Record) kgo.Opt {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(int32(partitions), itemsTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	brokers := kgo.SeedBrokers(c.ListenAddrs()...)
	prod, err := kgo.NewClient(brokers, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	return brokers
}

// newItemsSink is a sink on the kfake topic, with a store of its own.
func newItemsSink(t testing.TB, brokers kgo.Opt, cfg Config, w Writer, m *transform.Mapping, reg prometheus.Registerer) *Sink {
	t.Helper()
	sk, err := New(cfg, Deps{KafkaOpts: []kgo.Opt{brokers}, Writer: w, Mapping: m, Store: checkpointstest.New(),
		Logger: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

// runSink runs sk in the background; the returned stop ends it and returns
// what Run returned.
func runSink(ctx context.Context, sk *Sink) (stop func() error) {
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sk.Run(rctx) }()
	return func() error { cancel(); return <-done }
}

// waitApplied waits until sk has applied n records over its partitions.
func waitApplied(t testing.TB, ctx context.Context, sk *Sink, n int64) {
	t.Helper()
	for {
		applied := int64(0)
		for _, l := range sk.Lag() {
			applied += max(0, l.Committed)
		}
		if applied == n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the sink applied %d of %d records: %+v", applied, n, sk.Lag())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// readDeadLetters reads the whole dead-letter topic of prefix. Dead letters
// are produced before their records count as applied, so once the sink has
// applied everything a reader started then sees them all.
func readDeadLetters(t testing.TB, ctx context.Context, brokers kgo.Opt, prefix string) []envelope.DeadLetter {
	t.Helper()
	rd, err := kgo.NewClient(brokers, kgo.ConsumeTopics(envelope.DeadLetterTopic(prefix)))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	// The topic has as many partitions as the broker gives a new topic, so
	// the reader counts against the sum of every partition's end offset.
	ends, err := kadm.NewClient(rd).ListEndOffsets(ctx, envelope.DeadLetterTopic(prefix))
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	total := int64(0)
	ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
	var dead []envelope.DeadLetter
	for int64(len(dead)) < total {
		fs := rd.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatal(err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			d, err := envelope.DecodeDeadLetter(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			dead = append(dead, d)
		})
	}
	return dead
}

// counterValue reads one series of a registered counter (label value "" for
// an unlabelled counter).
func counterValue(t testing.TB, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || (len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() == label) {
				return m.GetCounter().GetValue()
			}
		}
	}
	if name == "tidemark_sink_dead_letters_total" {
		return 0 // a vector has no series until its first dead letter
	}
	t.Fatalf("no series %s{%s}", name, label)
	return 0
}

// checkStoppedOnBrokenTarget checks how a sink ended whose target refuses
// every write (a table is gone): Run returned that cause, nothing counts as
// applied, nothing was retried and nothing was dead-lettered.
func checkStoppedOnBrokenTarget(t testing.TB, err error, lag []PartitionLag, reg *prometheus.Registry) {
	t.Helper()
	if !errors.Is(err, ErrTargetBroken) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Run returned %v; want it to stop on the missing table", err)
	}
	for _, l := range lag {
		if l.Committed > 0 {
			t.Fatalf("partition %d recorded %d as applied though no write succeeded", l.Partition, l.Committed)
		}
	}
	if got := counterValue(t, reg, "tidemark_sink_retries_total", ""); got != 0 {
		t.Fatalf("%v retries of writes no retry can fix", got)
	}
	if got := counterValue(t, reg, "tidemark_sink_dead_letters_total", ""); got != 0 {
		t.Fatalf("%v records dead-lettered because the target is broken", got)
	}
}
