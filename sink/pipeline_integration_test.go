//go:build integration

package sink

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// TestIntegrationPipelineMatchesSource runs the real path: documents in the
// MongoDB server, capture (backfill + change stream) into Kafka, the sink into
// Cassandra, while a workload inserts, updates (changing derived keys and
// dropping fields) and deletes. The sink is stopped and restarted mid-stream.
// Afterwards Cassandra equals the transform of the source, read on both sides.
func TestIntegrationPipelineMatchesSource(t *testing.T) {
	const existing, changes = 5000, 4000
	s := testbed.Cassandra(t)
	mc := testbed.Mongo(t)
	brokers := testbed.Kafka(t)
	db := testbed.UniqueName(t, "pipe")
	ns := db + ".users"
	coll := mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	ks := testbed.UniqueName(t, "ks")
	m, _ := testbed.UsersMapping(t, s, ns, ks)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	docs := make([]any, existing)
	for i := range docs {
		docs[i] = userDoc(int64(i), fmt.Sprintf("u%d@x.org", i), 0, i%2 == 0)
	}
	if _, err := coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	store, err := checkpoints.OpenFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	prefix := testbed.UniqueName(t, "pipe")
	kopts := []kgo.Opt{kgo.SeedBrokers(brokers...)}
	cp, err := capture.New(capture.Config{TopicPrefix: prefix, Namespaces: []string{ns}, Partitions: 6,
		Backfill: capture.BackfillConfig{ChunkSize: 500}}, capture.Deps{Mongo: mc, KafkaOpts: kopts, Store: store, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	cctx, stopCapture := context.WithCancel(ctx)
	defer stopCapture()
	go cp.Run(cctx)

	group := testbed.UniqueName(t, "g")
	startSink := func() (stop func()) {
		w, err := NewCassandraWriter(ctx, s, m, "ONE")
		if err != nil {
			t.Fatal(err)
		}
		sk, err := New(Config{Group: group, TopicPrefix: prefix}, Deps{KafkaOpts: kopts, Writer: w, Mapping: m, Store: store})
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { sk.Run(sctx); close(done) }()
		return func() { cancel(); <-done; sk.Close() }
	}
	stopSink := startSink()

	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < changes; i++ {
		id := int64(rng.IntN(existing + 500))
		var err error
		switch rng.IntN(5) {
		case 0:
			_, err = coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
		case 1:
			_, err = coll.ReplaceOne(ctx, bson.D{{Key: "_id", Value: id}}, userDoc(id, fmt.Sprintf("r%d-%d@x.org", id, i), i, false), options.Replace().SetUpsert(true))
		default:
			_, err = coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
				bson.D{{Key: "$set", Value: bson.D{{Key: "email", Value: fmt.Sprintf("e%d-%d@x.org", id, i)}, {Key: "age", Value: int32(i % 90)}}}},
				options.Update().SetUpsert(true))
		}
		if err != nil {
			t.Fatal(err)
		}
		if i == changes/2 {
			stopSink() // a daemon leaving mid-stream; its successor continues from the committed offsets
			stopSink = startSink()
		}
	}
	defer func() { stopSink() }()

	want := testbed.Expected(t, m, ns, testbed.SourceDocs(t, ctx, coll))
	var got []byte
	for deadline := time.Now().Add(3 * time.Minute); ; {
		got = testbed.Snapshot(t, s, m, ns)
		if bytes.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Cassandra never matched the source; first difference:\n got %q\nwant %q", testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("Cassandra matches the transform of %d source rows", bytes.Count(want, []byte{'\n'})+1)
}
