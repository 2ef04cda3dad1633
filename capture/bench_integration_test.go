//go:build integration

package capture

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// BenchmarkCapture measures change events per second from the change stream
// into Kafka (transactions, checkpoints and all), next to the baseline of
// producing the same records with a plain franz-go client to the same broker,
// in the same run. The events are written to MongoDB first and replayed from
// the stream's T0, so the source's own write speed is not measured.
func BenchmarkCapture(b *testing.B) {
	const n = 20_000
	testbed.Kafka(b)
	mc := testbed.Mongo(b)
	ctx := context.Background()
	db := testbed.UniqueName(b, "bench")
	ns := db + ".c"
	coll := mc.Database(db).Collection("c")
	b.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	prefix := testbed.UniqueName(b, "bench")
	store, _ := checkpoints.OpenFile(b.TempDir())
	c, err := New(Config{TopicPrefix: prefix, Namespaces: []string{ns}, Partitions: 6, Backfill: BackfillConfig{Enabled: new(bool)}}, Deps{Mongo: mc, KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Store: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	t0, err := c.clusterTime(ctx, ns)
	if err != nil {
		b.Fatal(err)
	}
	checkpoints.PutJSON(ctx, store, streamKey(ns), streamState{StartT: t0.T, StartI: t0.I})
	var docs []any
	var recs []*kgo.Record
	for i := 0; i < n; i++ {
		d := bson.D{{Key: "_id", Value: int64(i)}, {Key: "name", Value: "user"}, {Key: "n", Value: i}, {Key: "pad", Value: "0123456789012345678901234567890123456789012345678901234567890123456789"}}
		docs = append(docs, d)
		doc, _ := bson.Marshal(d)
		e := envelope.Event{Op: envelope.OpInsert, Namespace: ns, ID: bson.Raw(doc).Lookup("_id"), Version: envelope.Version{T: 1, I: uint32(i)}, Doc: doc}
		v, _ := envelope.Encode(nil, &e)
		recs = append(recs, &kgo.Record{Key: e.Key(), Value: v})
	}
	for i := 0; i < n; i += 1000 {
		if _, err := coll.InsertMany(ctx, docs[i:i+1000]); err != nil {
			b.Fatal(err)
		}
	}
	var lastOp struct {
		TS primitive.Timestamp `bson:"ts"`
	}
	if err := mc.Database("local").Collection("oplog.rs").FindOne(ctx, bson.D{{Key: "ns", Value: ns}},
		options.FindOne().SetSort(bson.D{{Key: "$natural", Value: -1}})).Decode(&lastOp); err != nil {
		b.Fatal(err)
	}
	last := envelope.Version{T: lastOp.TS.T, I: lastOp.TS.I}
	// Topic creation and its first metadata are a one-off cost of starting,
	// not of capturing: done before the clock starts, as for the baseline.
	if err := c.ensureTopics(ctx); err != nil {
		b.Fatal(err)
	}
	waitLeaders(b, envelope.Topic(prefix, ns))
	b.ResetTimer()
	start := time.Now()
	rctx, stop := context.WithCancel(ctx)
	go c.Run(rctx)
	for {
		st, _, _ := checkpoints.GetJSON[streamState](ctx, store, streamKey(ns))
		if st.Token != nil && !(envelope.Version{T: st.T, I: st.I}).Before(last) {
			break
		}
		if time.Since(start) > 5*time.Minute {
			b.Fatal("capture did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	captureRate := float64(n) / time.Since(start).Seconds()
	stop()

	adm := testbed.KafkaAdmin(b)
	topic := prefix + ".raw"
	testbed.CreateTopic(b, adm, topic, 6)
	waitLeaders(b, topic)
	// franz-go's defaults but for MetadataMinAge, which capture lowers too:
	// with the default 5 s, a new partition's NOT_LEADER answer stalled
	// this baseline for 5 s in one run of three.
	raw, _ := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...), kgo.DefaultProduceTopic(topic),
		kgo.MetadataMinAge(250*time.Millisecond))
	defer raw.Close()
	start = time.Now()
	for i := 0; i < n; i += 1000 {
		if err := raw.ProduceSync(ctx, recs[i:i+1000]...).FirstErr(); err != nil {
			b.Fatal(err)
		}
	}
	rawRate := float64(n) / time.Since(start).Seconds()
	b.ReportMetric(captureRate, "capture_events/s")
	b.ReportMetric(rawRate, "baseline_raw_produce_events/s")
	b.ReportMetric(captureRate/rawRate, "of-baseline")
}

// waitLeaders returns once every partition of topic has a leader.
func waitLeaders(b *testing.B, topic string) {
	adm := testbed.KafkaAdmin(b)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		td, err := adm.ListTopics(context.Background(), topic)
		ok := err == nil && td[topic].Err == nil && len(td[topic].Partitions) > 0
		for _, p := range td[topic].Partitions {
			ok = ok && p.Leader >= 0 && p.Err == nil
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("topic %s has no leaders after 30s", topic)
		}
	}
}
