//go:build integration

package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"golang.org/x/sync/errgroup"
)

// fixture is one test's source collection, target keyspace and state store.
type fixture struct {
	t      testing.TB
	s      *gocql.Session
	mc     *mongo.Client
	coll   *mongo.Collection
	ns, ks string
	m      *transform.Mapping
	store  checkpoints.Store
	prefix string
	group  string
	adm    *kadm.Client
	sink   *sink.Sink
}

func newFixture(t testing.TB) *fixture {
	s := testbed.Cassandra(t)
	mc := testbed.Mongo(t)
	testbed.Kafka(t)
	db := testbed.UniqueName(t, "rec")
	f := &fixture{t: t, s: s, mc: mc, ns: db + ".users", ks: testbed.UniqueName(t, "ks"), prefix: testbed.UniqueName(t, "rec"),
		group: testbed.UniqueName(t, "g")}
	f.coll = mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	f.m, _ = testbed.UsersMapping(t, s, f.ns, f.ks)
	store, err := checkpoints.OpenFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f.store = store
	f.adm = testbed.KafkaAdmin(t)
	return f
}

func userDoc(id int64, v int) bson.D {
	return bson.D{{Key: "_id", Value: id}, {Key: "email", Value: fmt.Sprintf("u%d@x.org", id)},
		{Key: "name", Value: bson.D{{Key: "first", Value: "U"}, {Key: "last", Value: fmt.Sprint(id)}}},
		{Key: "age", Value: int32(20 + v%60)}, {Key: "score", Value: float64(v) / 3},
		{Key: "created", Value: time.UnixMilli(1_700_000_000_000 + id*1000).UTC()},
		{Key: "tags", Value: bson.A{"a", fmt.Sprint(v % 7)}}, {Key: "address", Value: bson.D{{Key: "city", Value: "Paris"}, {Key: "zip", Value: fmt.Sprint(75000 + id%20)}}},
		{Key: "prefs", Value: bson.D{{Key: "lang", Value: "fr"}}}}
}

// load inserts n documents and writes their rows straight into Cassandra
// (through the sink's writer, at one backfill-like version), as if the
// pipeline had copied them: loading 100,000 rows through Kafka would take
// longer than the round under test.
func (f *fixture) load(ctx context.Context, n int) envelope.Version {
	t := f.t
	start := time.Now()
	v := envelope.Below(envelope.Version{T: uint32(time.Now().Unix())})
	w, err := sink.NewCassandraWriter(ctx, f.s, f.m, "ONE")
	if err != nil {
		t.Fatal(err)
	}
	const batch = 5000
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(48)
	for lo := 0; lo < n; lo += batch {
		docs := make([]any, 0, batch)
		raws := make([]bson.Raw, 0, batch)
		for i := lo; i < min(n, lo+batch); i++ {
			d := userDoc(int64(i), i)
			docs = append(docs, d)
			b, _ := bson.Marshal(d)
			raws = append(raws, b)
		}
		if _, err := f.coll.InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
		for _, raw := range raws {
			g.Go(func() error {
				rows, err := f.m.Apply(f.ns, raw)
				if err != nil {
					return err
				}
				ev := envelope.Event{Op: envelope.OpBackfill, Namespace: f.ns, ID: raw.Lookup("_id"), Version: v, Doc: raw}
				return retryWrites(gctx, func() error {
					for i := range rows {
						tb := rows[i].Table
						if tb.NeedsKeyMap() {
							err = w.ApplyMapped(gctx, tb, &ev, &rows[i])
						} else {
							err = w.Write(gctx, tb, []sink.Change{{Row: &rows[i], Version: v.Micros()}})
						}
						if err != nil {
							return err
						}
					}
					return nil
				})
			})
		}
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %d documents and their rows in %s", n, time.Since(start).Round(time.Millisecond))
	return v
}

// retryWrites runs write, which must be idempotent, until it succeeds, the
// target rejects it, or ten attempts failed: a busy single-node Cassandra
// times out a write now and then (seen loading 1,000,000 documents with
// the machine's load average above 30), and the sink would retry it too.
func retryWrites(ctx context.Context, write func() error) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := write()
		if err == nil || errors.Is(err, sink.ErrRejected) || attempt == 10 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// startPipeline runs capture (stream only, no initial backfill: the rows are
// loaded) and the sink until the test ends. It starts in a fresh second so
// that nothing loaded before shares the stream's start time.
func (f *fixture) startPipeline(ctx context.Context, partitions int32) {
	t := f.t
	for sec := time.Now().Unix(); time.Now().Unix() == sec; {
		time.Sleep(20 * time.Millisecond)
	}
	off := false
	kopts := []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cp, err := capture.New(capture.Config{TopicPrefix: f.prefix, Namespaces: []string{f.ns}, Partitions: partitions,
		Backfill: capture.BackfillConfig{Enabled: &off}}, capture.Deps{Mongo: f.mc, KafkaOpts: kopts, Store: f.store, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() { cp.Run(cctx); done <- struct{}{} }()
	w, err := sink.NewCassandraWriter(ctx, f.s, f.m, "ONE")
	if err != nil {
		t.Fatal(err)
	}
	sk, err := sink.New(sink.Config{Group: f.group, TopicPrefix: f.prefix}, sink.Deps{KafkaOpts: kopts, Writer: w, Mapping: f.m, Store: f.store, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	f.sink = sk
	go func() { sk.Run(cctx); done <- struct{}{} }()
	t.Cleanup(func() {
		stop()
		<-done
		<-done
		sk.Close()
		cp.Close()
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		f.adm.DeleteTopics(c, envelope.Topic(f.prefix, f.ns), envelope.DeadLetterTopic(f.prefix))
	})
	// Ready when the stream has fixed its start and the sink owns the partitions.
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, ok, _ := checkpoints.GetJSON[streamCheckpoint](ctx, f.store, checkpoints.PrefixCapture+f.ns)
		if ok && len(sk.Lag()) == int(partitions) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pipeline not ready after 60s (stream checkpoint %v, sink partitions %d)", ok, len(sk.Lag()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (f *fixture) reconciler(cfg Config) *Reconciler {
	lag := &PipelineLag{Store: f.store, Admin: f.adm, Mongo: f.mc, Group: f.group, TopicPrefix: f.prefix, Settle: time.Second}
	if f.sink != nil {
		lag.Applied = f.sink.Applied
	}
	if cfg.ReportDir == "" {
		cfg.ReportDir = f.t.TempDir()
	}
	r, err := New(cfg, Deps{Mongo: f.mc, Cassandra: f.s, Mapping: f.m, Store: f.store, Lag: lag,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// insertAndWrite inserts docs into the source collection and writes their
// rows straight into Cassandra, stamped just below now, as a caught-up
// pipeline would have: a clean start for a round. It returns the version
// the rows carry.
func (f *fixture) insertAndWrite(t *testing.T, ctx context.Context, docs []any) envelope.Version {
	t.Helper()
	if _, err := f.coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	w, err := sink.NewCassandraWriter(ctx, f.s, f.m, "ONE")
	if err != nil {
		t.Fatal(err)
	}
	v := envelope.Below(envelope.Version{T: uint32(time.Now().Unix())})
	for _, d := range docs {
		raw, _ := bson.Marshal(d)
		rows, err := f.m.Apply(f.ns, raw)
		if err != nil {
			t.Fatalf("%v: %v", d, err)
		}
		for i := range rows {
			if err := w.Write(ctx, rows[i].Table, []sink.Change{{Row: &rows[i], Version: v.Micros()}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	return v
}
