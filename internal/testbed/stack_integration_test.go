//go:build integration

package testbed

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

func TestIntegrationKafkaGroupCommit(t *testing.T) {
	adm := KafkaAdmin(t)
	topic := UniqueName(t, "smoke")
	CreateTopic(t, adm, topic, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	prod, err := kgo.NewClient(kgo.SeedBrokers(KafkaBrokers()...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	const n = 300
	for i := 0; i < n; i++ {
		prod.Produce(ctx, &kgo.Record{Key: []byte(fmt.Sprintf("k%d", i%17)), Value: []byte(fmt.Sprint(i))}, nil)
	}
	if err := prod.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	group := topic + "-g"
	cons, err := kgo.NewClient(kgo.SeedBrokers(KafkaBrokers()...), kgo.ConsumeTopics(topic),
		kgo.ConsumerGroup(group), kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	seen := map[string]int{}
	byKey := map[string]int32{}
	for len(seen) < n {
		fs := cons.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of %d records: %v", len(seen), n, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			seen[string(r.Value)]++
			if p, ok := byKey[string(r.Key)]; ok && p != r.Partition {
				t.Errorf("key %s on partitions %d and %d", r.Key, p, r.Partition)
			}
			byKey[string(r.Key)] = r.Partition
		})
		if err := cons.CommitUncommittedOffsets(ctx); err != nil {
			t.Fatal(err)
		}
	}
	offsets, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	var committed int64
	offsets.Each(func(o kadm.OffsetResponse) { committed += o.At })
	if committed != n {
		t.Fatalf("group committed %d offsets in total, want %d", committed, n)
	}
}

func TestIntegrationCassandraWriteTimestamp(t *testing.T) {
	s := Cassandra(t)
	ks := UniqueName(t, "smoke")
	CreateKeyspace(t, s, ks)
	if err := s.Query("CREATE TABLE " + ks + ".kv (k text PRIMARY KEY, v text)").Exec(); err != nil {
		t.Fatal(err)
	}
	if err := s.Query("INSERT INTO "+ks+".kv (k, v) VALUES (?, ?) USING TIMESTAMP 200", "a", "newer").Exec(); err != nil {
		t.Fatal(err)
	}
	// An older write arriving later must lose: the invariant replays rely on.
	if err := s.Query("INSERT INTO "+ks+".kv (k, v) VALUES (?, ?) USING TIMESTAMP 100", "a", "older").Exec(); err != nil {
		t.Fatal(err)
	}
	var v string
	var ts int64
	if err := s.Query("SELECT v, WRITETIME(v) FROM "+ks+".kv WHERE k = ?", "a").Scan(&v, &ts); err != nil {
		t.Fatal(err)
	}
	if v != "newer" || ts != 200 {
		t.Fatalf("got %q at %d, want \"newer\" at 200", v, ts)
	}
	// A delete older than the row leaves it; a newer one removes it.
	s.Query("DELETE FROM "+ks+".kv USING TIMESTAMP 150 WHERE k = ?", "a").Exec()
	if err := s.Query("SELECT v FROM "+ks+".kv WHERE k = ?", "a").Scan(&v); err != nil || v != "newer" {
		t.Fatalf("older delete removed the row: %q %v", v, err)
	}
	s.Query("DELETE FROM "+ks+".kv USING TIMESTAMP 250 WHERE k = ?", "a").Exec()
	if err := s.Query("SELECT v FROM "+ks+".kv WHERE k = ?", "a").Scan(&v); err == nil {
		t.Fatalf("newer delete left %q", v)
	}
}

func TestIntegrationMongoChangeStreamResume(t *testing.T) {
	cl := Mongo(t)
	db := cl.Database(UniqueName(t, "smoke"))
	t.Cleanup(func() { db.Drop(context.Background()) })
	coll := db.Collection("users")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	opts := options.ChangeStream().SetFullDocument(options.UpdateLookup)
	cs, err := coll.Watch(ctx, mongo.Pipeline{}, opts)
	if err != nil {
		t.Fatalf("open change stream: %v", err)
	}
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: 1}, {Key: "n", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: 2}}}}); err != nil {
		t.Fatal(err)
	}
	type ev struct {
		Op          string        `bson:"operationType"`
		ClusterTime bson.RawValue `bson:"clusterTime"`
		Full        bson.Raw      `bson:"fullDocument"`
	}
	var got []ev
	var token bson.Raw
	// The delete waits for the update's event: updateLookup reads the
	// document when the event is read, and a deleted one is looked up as
	// null, as on MongoDB.
	for len(got) < 3 && cs.Next(ctx) {
		var e ev
		if err := cs.Decode(&e); err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			token = cs.ResumeToken()
		}
		got = append(got, e)
		if len(got) == 2 {
			if _, err := coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: 1}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cs.Err(); err != nil {
		t.Fatal(err)
	}
	cs.Close(ctx)
	if len(got) != 3 || got[0].Op != "insert" || got[1].Op != "update" || got[2].Op != "delete" {
		t.Fatalf("events: %+v", got)
	}
	if got[1].Full == nil || got[1].Full.Lookup("n").Int32() != 2 {
		t.Fatalf("update lookup did not return the document: %v", got[1].Full)
	}
	if _, _, ok := got[0].ClusterTime.TimestampOK(); !ok {
		t.Fatalf("clusterTime is %s, not a BSON timestamp", got[0].ClusterTime.Type)
	}

	// Resuming after the first event yields exactly the later ones, then new ones.
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: 2}}); err != nil {
		t.Fatal(err)
	}
	cs, err = coll.Watch(ctx, mongo.Pipeline{}, options.ChangeStream().SetResumeAfter(token))
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	defer cs.Close(ctx)
	var ops []string
	for len(ops) < 3 && cs.Next(ctx) {
		var e ev
		cs.Decode(&e)
		ops = append(ops, e.Op)
	}
	if fmt.Sprint(ops) != "[update delete insert]" {
		t.Fatalf("after resume got %v, want [update delete insert]", ops)
	}
}
